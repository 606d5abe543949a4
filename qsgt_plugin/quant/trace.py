"""One dry forward pass that records which layers run, in what order, and how often."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from qsgt_plugin.common.modes import eval_mode
from qsgt_plugin.quant.functional import FunctionalTrace, record_functional

__all__ = ["CallTrace", "example_input", "trace_calls"]


@dataclass
class CallTrace:
    """Modules in the order of their first call, the number of calls of each (by ``id``), and
    the activations called as functions."""

    order: list[nn.Module] = field(default_factory=list)
    calls: Counter[int] = field(default_factory=Counter)
    functional: FunctionalTrace = field(default_factory=FunctionalTrace)


def example_input(model: nn.Module) -> Tensor:
    """A random input shaped for ``model``: timm's ``pretrained_cfg`` input size when present.

    The channel count comes from the first convolution (``in_chans`` may differ from the cfg);
    models without a cfg get 224x224 images. Raises ``ValueError`` when the first weight layer
    does not tell the input's shape.
    """
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    first = next(
        (m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))), None
    )
    if isinstance(first, nn.Conv2d):
        size = tuple(cfg.get("input_size", (0, 224, 224)))[1:]
        shape: tuple[int, ...] = (1, first.in_channels, *size)
    elif isinstance(first, nn.Conv1d):
        shape = (1, first.in_channels, 224)
    elif isinstance(first, nn.Linear):
        shape = (1, first.in_features)
    else:
        raise ValueError(
            f"cannot guess an input for {type(model).__name__}: its first layer is not a "
            "Conv1d, Conv2d or Linear. Pass example_inputs=."
        )
    param = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=generator).to(device=param.device, dtype=param.dtype)


def trace_calls(
    model: nn.Module, inputs: Tensor | tuple, types: tuple[type[nn.Module], ...]
) -> CallTrace:
    """Run ``model`` once in eval mode without gradients; record calls of modules of ``types``
    and of activation functions (``F.relu``, ...).

    Training flags of every submodule are restored afterwards; BatchNorm statistics are untouched.
    """
    trace = CallTrace()
    seen: set[int] = set()

    def record(module: nn.Module, _args) -> None:
        trace.calls[id(module)] += 1
        if id(module) not in seen:
            seen.add(id(module))
            trace.order.append(module)

    handles = [m.register_forward_pre_hook(record) for m in model.modules() if type(m) in types]
    try:
        with eval_mode(model), torch.no_grad(), record_functional(trace.functional):
            model(*inputs) if isinstance(inputs, tuple) else model(inputs)
    except Exception as exc:
        raise ValueError(
            f"the dry forward pass that finds layer call sites failed ({exc}); pass "
            "example_inputs= with an input the model accepts"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
    return trace
