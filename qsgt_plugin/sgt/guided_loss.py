"""Saliency-Guided Training as a loss object or as hooks on an existing training loop.

Ismail et al. 2021, "Improving Deep Learning Interpretability by Saliency Guided Training",
https://arxiv.org/abs/2111.14338. Each step:

    S        = reduce(|d logit_y / d x|)               (Captum, model in eval mode)
    x_masked = x with the lowest ``mask_fraction`` of S replaced (uniform noise by default)
    loss     = CE(f(x), y) + kl_weight * KL(p(x) || p(x_masked))

with the gradient flowing through both branches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qsgt_plugin.common.modes import unwrap
from qsgt_plugin.sgt.masking import (
    Fill,
    apply_mask,
    check_fill,
    check_fraction,
    fill_values,
    rank_mask,
    reduce_saliency,
)
from qsgt_plugin.sgt.saliency import attribute, make_attribution

__all__ = [
    "FUSED_METHODS",
    "REDUCTIONS",
    "SaliencyGuidedTraining",
    "check_targets",
    "fused_input",
    "reduction_of",
]

# Attributions the fused path can read off the clean forward's input gradient.
FUSED_METHODS = ("Saliency", "InputXGradient")


class SaliencyGuidedTraining:
    """The SGT objective for any model, float or converted, in any training loop.

    Args:
        model: the model being trained.
        mask_fraction: fraction of each sample's spatial positions to mask (lowest saliency).
        kl_weight: weight of KL(p(x) || p(x_masked)); 0 gives plain cross-entropy.
        attribution: Captum method for the saliency (``"Saliency"``, ``"InputXGradient"``,
            ``"IntegratedGradients"``, ``"SmoothGrad"`` or a captum.attr class name).
        attribution_kwargs: extra arguments for the method's ``attribute`` call.
        signed: rank by signed attribution instead of its absolute value.
        fill: ``"uniform"`` (U[min, max] per image and channel), ``"mean"`` or ``"constant"``.
        fill_value: the constant for ``fill="constant"``.
        fused: read the saliency off the clean forward's input gradient instead of a separate
            Captum pass in eval mode: no extra forward, but in train mode (BatchNorm couples the
            samples of a batch). ``benchmarks/step_time.py`` compares the two.
        generator: random generator for the uniform fill (the global one when None).

    Example::

        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
        >>> criterion, opt = nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1)
        >>> loader = [(torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,)))]
        >>> sgt = SaliencyGuidedTraining(model, mask_fraction=0.5, kl_weight=1.0)
        >>> for x, y in loader:
        ...     loss = sgt.loss(x, y, criterion)
        ...     opt.zero_grad(); loss.backward(); opt.step()
        >>> sorted(sgt.last)  # the last step's terms
        ['ce', 'kl']
    """

    def __init__(
        self,
        model: nn.Module,
        mask_fraction: float = 0.5,
        kl_weight: float = 1.0,
        *,
        attribution: str = "Saliency",
        attribution_kwargs: dict[str, Any] | None = None,
        signed: bool = False,
        fill: Fill = "uniform",
        fill_value: float = 0.0,
        fused: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        check_fraction(mask_fraction)
        check_fill(fill)
        if not kl_weight >= 0.0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        if fused and attribution not in FUSED_METHODS:
            raise ValueError(
                f"the fused path computes {' or '.join(FUSED_METHODS)} only, not {attribution!r}"
            )
        make_attribution(model, attribution)  # fail now on an unknown or refused method
        self.model = model
        self.mask_fraction = mask_fraction
        self.kl_weight = kl_weight
        self.attribution = attribution
        self.attribution_kwargs = dict(attribution_kwargs or {})
        self.signed = signed
        self.fill: Fill = fill
        self.fill_value = fill_value
        self.fused = fused
        self.generator = generator
        self.last: dict[str, Tensor] = {}

    @property
    def active(self) -> bool:
        """False when the KL term is zero by construction (plain cross-entropy training)."""
        return self.kl_weight > 0 and self.mask_fraction > 0

    def saliency(
        self,
        x: Tensor,
        y: Tensor,
        select: Callable[[Any], Tensor] | None = None,
        call: Callable[[Tensor], Any] | None = None,
    ) -> Tensor:
        """``(N, H, W)`` saliency of the target logits from a Captum pass in eval mode.

        ``select`` picks the logits out of a tuple or dict output; ``call`` runs the model on
        an input it takes by keyword.
        """
        # On the module inside a DDP wrapper: an extra forward through the wrapper would
        # prepare a gradient reduction that this input-only backward never completes.
        model = unwrap(self.model)
        maps = attribute(
            model, x, y, self.attribution, select=select, call=call, **self.attribution_kwargs
        )
        return reduce_saliency(maps, self.signed)

    def mask(self, x: Tensor, y: Tensor, saliency: Tensor | None = None) -> Tensor:
        """Boolean ``(N, H, W)`` mask of the positions SGT replaces."""
        saliency = self.saliency(x, y) if saliency is None else saliency
        return rank_mask(saliency, self.mask_fraction, lowest=True)

    def masked_input(self, x: Tensor, y: Tensor, saliency: Tensor | None = None) -> Tensor:
        """``x`` with its lowest-saliency positions replaced (no gradient to ``x``)."""
        x = x.detach()
        fill = fill_values(x, self.fill, self.fill_value, self.generator)
        return apply_mask(x, self.mask(x, y, saliency), fill)

    def loss(self, x: Tensor, y: Tensor, criterion: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """``criterion(f(x), y) + kl_weight * KL(p(x) || p(x_masked))``.

        The KL term is reduced as the criterion reduces (its ``reduction`` attribute:
        ``mean``, the default, is the batch mean; ``sum`` sums over the batch; ``none`` gives
        one term per sample, added to the criterion's per-sample losses).
        """
        self.check_batch(x, y)
        reduction = reduction_of(criterion)
        if self.fused and self.active:
            x = fused_input(x)
        logits = self.model(x)
        if not isinstance(logits, Tensor):
            raise TypeError(
                f"SaliencyGuidedTraining.loss needs a model that returns its logits as a "
                f"tensor; this one returns a {type(logits).__name__}. Use register_sgt(model, "
                "criterion), which follows the logits out of a tuple, dict or dataclass output"
            )
        _check_labels(y, logits)
        ce = criterion(logits.float(), y)  # under bf16 autocast the logits are bf16
        if not self.active:
            return ce
        self.last = {"ce": ce.detach()}
        return ce + self.kl_term(x, y, logits, reduction)

    def check_batch(self, x: Tensor, y: Tensor) -> None:
        """``ValueError`` / ``TypeError`` for a batch SGT cannot mask (no device sync)."""
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] == 0:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"SGT needs a non-empty batch of images (N, C, H, W), got {shape}")
        expected = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), None)
        if not x.is_floating_point() or (expected is not None and x.dtype != expected):
            raise TypeError(f"images must be {expected or 'floating point'}, got {x.dtype}")
        if (
            not isinstance(y, Tensor)
            or y.shape != (x.shape[0],)
            or y.is_floating_point()
            or y.dtype == torch.bool
        ):
            got = f"{tuple(y.shape)} {y.dtype}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"labels must be integers shaped ({x.shape[0]},), got {got}")

    def kl_term(
        self,
        x: Tensor,
        y: Tensor,
        logits: Tensor,
        reduction: str = "mean",
        select: Callable[[Any], Tensor] | None = None,
        call: Callable[[Tensor], Any] | None = None,
    ) -> Tensor:
        """``kl_weight * KL(p(x) || p(x_masked))`` given the clean forward's logits.

        ``reduction`` over the batch: ``mean`` (per-sample KL averaged), ``sum`` or ``none``;
        ``select`` picks the logits out of the model's output where it is a tuple or a dict;
        ``call`` runs the model on an input (default ``model(x)``), as the loop called it.
        """
        check_targets(y, logits)
        if self.fused:
            if not x.requires_grad:
                raise ValueError(
                    "the fused path needs the clean forward to run on x.requires_grad_()"
                )
            target_logits = logits.gather(1, y.unsqueeze(1)).sum()
            (grad,) = torch.autograd.grad(target_logits, x, retain_graph=True)
            maps = grad * x.detach() if self.attribution == "InputXGradient" else grad
            saliency = reduce_saliency(maps, self.signed)
        else:
            saliency = self.saliency(x, y, select, call)
        masked_logits = (call or self.model)(self.masked_input(x, y, saliency))
        if select is not None:
            masked_logits = select(masked_logits)
        # In float32 whatever autocast made of the logits: log_softmax stays bf16 on the CPU.
        per_sample = F.kl_div(
            F.log_softmax(masked_logits.float(), dim=1),
            F.log_softmax(logits.float(), dim=1),
            log_target=True,
            reduction="none",
        ).sum(dim=1)
        kl = {"mean": per_sample.mean, "sum": per_sample.sum}.get(reduction, lambda: per_sample)()
        self.last["kl"] = kl.detach()
        return self.kl_weight * kl


REDUCTIONS = ("mean", "sum", "none")


def reduction_of(criterion: Callable) -> str:
    """How ``criterion`` reduces over the batch: its ``reduction`` attribute, else ``mean``.

    Raises:
        ValueError: a reduction SGT cannot follow (``batchmean`` of ``nn.KLDivLoss``, ...).
    """
    reduction = getattr(criterion, "reduction", "mean")
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"the criterion reduces with {reduction!r}; SGT's KL term follows mean, sum or none"
        )
    return reduction


def fused_input(x: Tensor) -> Tensor:
    """``x`` ready for the fused path's input gradient, keeping its own graph.

    A batch computed from parameters (``x * w``, a learned augmentation) already requires a
    gradient and is used as it is, so the loss still reaches those parameters (and a leaf
    ``x``'s ``.grad``); a plain batch becomes a leaf that requires one.
    """
    return x if x.requires_grad else x.detach().requires_grad_()


def check_targets(y: Any, logits: Tensor) -> None:
    """SGT explains each sample's class: ``y`` holds class indices, one per sample.

    Raises:
        ValueError: ``y`` is not an integer tensor shaped ``(N,)`` (multi-label, regression
            or probability targets), or holds an index outside the classes (``ignore_index``).
    """
    n = logits.shape[0]
    if (
        not isinstance(y, Tensor)
        or y.shape != (n,)
        or y.is_floating_point()
        or y.is_complex()
        or y.dtype == torch.bool
    ):
        got = f"{tuple(y.shape)} {y.dtype}" if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(
            f"SGT needs class-index targets, an integer tensor shaped ({n},) with values in "
            f"0..{logits.shape[1] - 1}, got {got}. Multi-label, regression and probability "
            "targets name no class whose saliency SGT could follow"
        )
    _check_labels(y, logits)


def _check_labels(y: Tensor, logits: Tensor) -> None:
    """Labels in ``0 .. classes - 1``; checked on the CPU only (on a GPU it would sync)."""
    if y.device.type == "cpu" and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
        hint = (
            " (a label the criterion ignores, ignore_index, names no class for SGT to explain: "
            "leave those samples out of the batch)"
            if int(y.min()) < 0
            else ""
        )
        raise ValueError(
            f"labels must be class indices in 0..{logits.shape[1] - 1}, "
            f"got {int(y.min())}..{int(y.max())}{hint}"
        )
