"""SGT as hooks on an existing training loop: ``register_sgt(model, criterion)``.

The model's forward hook records every training-mode forward (its input and the tensors of its
output); the criterion's forward hook finds which recorded output its input comes from (the
output itself, an element of a tuple or dict output, or a tensor computed from it, such as
``model(x) / T``, found through the autograd graph) and adds SGT's KL term for that forward.
The KL term compares the model's own outputs on the clean and the masked input, whatever the
loop did to them on the way to the criterion. A training-mode criterion call whose input comes
from no recorded forward is told once per handle (:class:`SGTNotAppliedWarning`): SGT did not
apply there.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from qsgt_plugin.sgt.guided_loss import (
    SaliencyGuidedTraining,
    check_targets,
    fused_input,
    reduction_of,
)

__all__ = ["SGTHandle", "SGTNotAppliedWarning", "register_sgt"]

# How far back from the criterion's input the autograd graph is searched for a model output.
GRAPH_SEARCH_NODES = 64
# Training-mode forwards remembered between two criterion calls.
RECORDS = 8


class SGTNotAppliedWarning(UserWarning):
    """A hooked criterion ran on something that is not a recorded output of the hooked model."""


class SGTHandle:
    """Returned by :func:`register_sgt`; ``remove()`` restores plain training."""

    def __init__(self, sgt: SaliencyGuidedTraining, handles: list, model: nn.Module) -> None:
        self.sgt = sgt
        self._handles = handles
        self._model = model

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if getattr(self._model, "_qsgt_sgt_handle", None) is self:
            del self._model._qsgt_sgt_handle


def register_sgt(model: nn.Module, criterion: nn.Module, **options: Any) -> SGTHandle:
    """Add SGT to an existing loop without restructuring it.

    After this, ``loss = criterion(model(x), y)`` in training mode returns the SGT loss, also
    where the loop passes the images by keyword (``model(pixel_values=x)``), picks the logits
    out of a tuple, dict or dataclass output, transforms them (``model(x) / T``), calls the
    criterion by keyword, or runs several forwards before it; evaluation (``model.eval()`` or
    ``torch.no_grad()``) is unchanged. Where SGT cannot follow (no ``(N, classes)`` logits in
    the output, such as a segmentation map; no single image batch in the call) the criterion
    call warns (:class:`SGTNotAppliedWarning`); targets that are not class indices are a
    ``ValueError``.

    Args:
        model: the model of the loop.
        criterion: the loss module the loop applies to the model's output (``nn.CrossEntropyLoss``).
        **options: :class:`SaliencyGuidedTraining` arguments.

    Raises:
        TypeError: ``criterion`` is not a module.
        ValueError: SGT is already registered on ``model``; a reduction SGT cannot follow.

    Example::

        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
        >>> criterion = nn.CrossEntropyLoss()
        >>> x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
        >>> handle = register_sgt(model, criterion, mask_fraction=0.5)
        >>> loss = criterion(model(x), y)  # now CE + KL(p(x) || p(x_masked))
        >>> torch.allclose(loss, handle.sgt.last["ce"] + handle.sgt.last["kl"])
        True
        >>> handle.remove()  # plain training again
    """
    if not isinstance(criterion, nn.Module):
        raise TypeError(
            f"register_sgt needs a criterion module (e.g. nn.CrossEntropyLoss()) to hook, got "
            f"{criterion!r}; for a loss function use SaliencyGuidedTraining(...).loss instead"
        )
    if getattr(model, "_qsgt_sgt_handle", None) is not None:
        raise ValueError(
            "SGT is already registered on this model; call .remove() on the first handle "
            "before registering again"
        )
    sgt = SaliencyGuidedTraining(model, **options)
    reduction = reduction_of(criterion)
    state: dict[str, Any] = {"busy": False, "records": [], "warned": False, "unrecorded": None}

    def before_model(module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        if state["busy"] or not sgt.fused or not (module.training and torch.is_grad_enabled()):
            return None
        where = _image_argument(args, kwargs)
        if where is None:
            return None
        return _substitute(args, kwargs, where, fused_input(_argument(args, kwargs, where)))

    def after_model(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if state["busy"] or not (module.training and torch.is_grad_enabled()):
            return
        where = _image_argument(args, kwargs)
        if where is None:
            state["unrecorded"] = _why_no_image(args, kwargs)
            return
        tensors = list(_tensors(output))
        if not tensors:
            state["unrecorded"] = _why_no_logits(output)
            return
        state["unrecorded"] = None
        x = _argument(args, kwargs, where)
        plain = where == 0 and len(args) == 1 and not kwargs  # model(x): called as it is
        call = None if plain else _caller(module, args, kwargs, where)
        state["records"] = [*state["records"][-(RECORDS - 1) :], (x, tensors, call)]

    def after_criterion(module: nn.Module, args: tuple, kwargs: dict, loss: Tensor) -> Any:
        if state["busy"] or not sgt.active:
            return None
        if not state["records"]:
            if state["unrecorded"]:  # the model ran in training mode but SGT could not follow
                _warn_once(state, state["unrecorded"])
            return None
        logits = args[0] if args else kwargs.get("input")
        target = args[1] if len(args) > 1 else kwargs.get("target")
        found = _source(logits, state["records"]) if isinstance(logits, Tensor) else None
        if found is None:
            why = "its input is not an output of the hooked model"
            if state["unrecorded"]:
                why += f" (a training forward was not followed: {state['unrecorded']})"
            _warn_once(state, why)
            return None
        x, raw, select, call = found
        check_targets(target, raw)
        state["records"] = [r for r in state["records"] if r[0] is not x]
        state["busy"] = True
        try:
            sgt.last = {"ce": loss.detach()}
            return loss + sgt.kl_term(x, target, raw, reduction, select, call)
        finally:
            state["busy"] = False

    handles = [
        model.register_forward_pre_hook(before_model, with_kwargs=True),
        model.register_forward_hook(after_model, with_kwargs=True),
        criterion.register_forward_hook(after_criterion, with_kwargs=True),
    ]
    handle = SGTHandle(sgt, handles, model)
    model._qsgt_sgt_handle = handle
    return handle


def _image_argument(args: tuple, kwargs: dict) -> int | str | None:
    """Where the images are in a model call: the first positional argument, else the one
    ``(N, C, H, W)`` floating tensor among the keyword arguments (``pixel_values=x``)."""
    if args:
        return 0 if _is_images(args[0]) else None
    named = [name for name, value in kwargs.items() if _is_images(value)]
    return named[0] if len(named) == 1 else None


def _is_images(value: Any) -> bool:
    return isinstance(value, Tensor) and value.is_floating_point() and value.dim() == 4


def _argument(args: tuple, kwargs: dict, where: int | str) -> Tensor:
    return args[where] if isinstance(where, int) else kwargs[where]


def _substitute(args: tuple, kwargs: dict, where: int | str, x: Tensor) -> tuple[tuple, dict]:
    if isinstance(where, int):
        return (*args[:where], x, *args[where + 1 :]), kwargs
    return args, {**kwargs, where: x}


def _caller(model: nn.Module, args: tuple, kwargs: dict, where: int | str) -> Callable:
    """The model called as the loop called it, with other images in the images' place."""

    def call(x: Tensor) -> Any:
        new_args, new_kwargs = _substitute(args, kwargs, where, x)
        return model(*new_args, **new_kwargs)

    return call


def _why_no_image(args: tuple, kwargs: dict) -> str:
    given = [_describe(a) for a in args] + [f"{k}={_describe(v)}" for k, v in kwargs.items()]
    return (
        f"the model was called as model({', '.join(given)}); SGT masks one batch of images "
        "(N, C, H, W), passed first or as the only such keyword argument"
    )


def _why_no_logits(output: Any) -> str:
    shapes = [tuple(t.shape) for _, t in _tensors(output, dims=None)]
    if shapes:
        return (
            f"the model's output holds no (N, classes) logits, only tensors shaped {shapes}; SGT "
            "explains one class per image (a segmentation output has one per pixel)"
        )
    return (
        f"the model returned a {type(output).__name__}, not a tensor, or a tuple, list, dict or "
        "dataclass holding the logits"
    )


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"{'x'.join(map(str, value.shape))} {str(value.dtype).removeprefix('torch.')}"
    return type(value).__name__


def _tensors(output: Any, path: tuple = (), dims: int | None = 2) -> Iterator[tuple[tuple, Tensor]]:
    """``(path, tensor)`` of the floating tensors (of ``dims`` dimensions) of a model output: a
    tensor, or a tuple, list, dict or dataclass holding them."""
    if isinstance(output, Tensor):
        if output.is_floating_point() and (dims is None or output.dim() == dims):
            yield path, output
    elif isinstance(output, (tuple, list)):
        for i, item in enumerate(output):
            yield from _tensors(item, (*path, i), dims)
    elif isinstance(output, dict):
        for key, item in output.items():
            yield from _tensors(item, (*path, key), dims)
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        for field in dataclasses.fields(output):
            yield from _tensors(getattr(output, field.name), (*path, _Field(field.name)), dims)


@dataclasses.dataclass(frozen=True)
class _Field:
    """A step of an output path that is a dataclass field (read with ``getattr``)."""

    name: str


def _source(logits: Tensor, records: list[tuple]) -> tuple | None:
    """The recorded forward ``logits`` comes from: its input, the output tensor, a selector
    and the call that reruns it."""
    for x, tensors, call in reversed(records):  # the latest forward first
        for path, tensor in tensors:
            if logits is tensor or _derives_from(logits, tensor):
                select = (lambda out, p=path: _pick(out, p)) if path else None
                return x, tensor, select, call
    return None


def _derives_from(tensor: Tensor, source: Tensor) -> bool:
    """Whether ``source``'s autograd node is among the first nodes behind ``tensor``'s."""
    target, start = source.grad_fn, tensor.grad_fn
    if target is None or start is None:
        return False
    seen, queue = set(), [start]
    while queue and len(seen) < GRAPH_SEARCH_NODES:
        node = queue.pop(0)
        if node is target:
            return True
        if node in seen:
            continue
        seen.add(node)
        queue.extend(n for n, _ in node.next_functions if n is not None)
    return False


def _pick(output: Any, path: tuple) -> Tensor:
    for key in path:
        output = getattr(output, key.name) if isinstance(key, _Field) else output[key]
    return output


def _warn_once(state: dict, why: str) -> None:
    if state["warned"]:
        return
    state["warned"] = True
    warnings.warn(
        f"register_sgt: a training-mode call of the hooked criterion got no SGT term: {why} "
        "(SGT follows the model's output, an element of it, or a tensor computed from it). "
        "That step trained with the criterion alone; use SaliencyGuidedTraining(...).loss in "
        "this loop. Told once per handle.",
        SGTNotAppliedWarning,
        stacklevel=3,
    )
