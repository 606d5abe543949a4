"""Saliency masking as pure, vectorised functions (SGT training and masking-curve evaluation).

Saliency-Guided Training: Ismail et al. 2021, "Improving Deep Learning Interpretability by
Saliency Guided Training", https://arxiv.org/abs/2111.14338. Each sample's saliency map is
reduced over channels, the chosen fraction of its spatial positions is selected by rank, and
those positions are replaced in every channel.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "FILLS",
    "TIE_SEED",
    "apply_mask",
    "check_fill",
    "check_fraction",
    "fill_values",
    "mask_count",
    "rank_mask",
    "ranking",
    "reduce_saliency",
    "tie_fraction",
]

Fill = Literal["uniform", "mean", "constant"]
FILLS: tuple[str, ...] = ("uniform", "mean", "constant")


def reduce_saliency(attribution: Tensor, signed: bool = False) -> Tensor:
    """``(N, C, H, W)`` attributions -> ``(N, H, W)`` saliency: ``|a|`` (or ``a``), channel mean."""
    if attribution.dim() != 4:
        raise ValueError(
            f"expected attributions of shape (N, C, H, W), got {tuple(attribution.shape)}"
        )
    return (attribution if signed else attribution.abs()).mean(dim=1)


def check_fraction(fraction: float) -> float:
    """``fraction`` if it lies in [0, 1]; ``ValueError`` otherwise."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"mask fraction must be in [0, 1], got {fraction}")
    return fraction


def check_fill(fill: str) -> str:
    """``fill`` if it is one of :data:`FILLS`; ``ValueError`` otherwise."""
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; allowed: {', '.join(FILLS)}")
    return fill


def mask_count(fraction: float, height: int, width: int) -> int:
    """Number of positions a fraction of an ``height x width`` map covers: ``round(f * H * W)``."""
    return round(check_fraction(fraction) * height * width)


TIE_SEED = 0
"""Seed of the tie-breaking permutations when no generator is given."""


def ranking(
    scores: Tensor, *, descending: bool = True, generator: torch.Generator | None = None
) -> Tensor:
    """``(N, P)`` positions of each row of ``scores`` ordered by score; ties in random order.

    Equal scores are ordered by a random permutation of the positions, one per row, drawn from
    ``generator`` (a new one seeded with :data:`TIE_SEED` when None): the same seed gives the
    same order, and no position is favoured. Quantized models have many exactly-equal scores
    (PACT zeroes the gradient of clipped activations), and ``torch.topk`` leaves their order
    unspecified.

    Example::

        >>> ranking(torch.tensor([[0.0, 0.5, 0.0, 0.9]]))[0, :2]
        tensor([3, 1])
    """
    n, p = scores.shape
    if generator is None:
        permutation = _default_permutation(n, p, scores.device)
    else:
        noise = torch.rand(n, p, generator=generator, device=generator.device)
        permutation = noise.argsort(dim=1).to(scores.device)
    order = scores.gather(1, permutation).sort(dim=1, descending=descending, stable=True).indices
    return permutation.gather(1, order)


@functools.lru_cache(maxsize=8)
def _default_permutation(n: int, p: int, device: torch.device) -> Tensor:
    """The tie-breaking permutations of a generator seeded with :data:`TIE_SEED`.

    The same every call, so they are drawn once per shape: SGT ranks every training batch.
    """
    generator = torch.Generator(device=device).manual_seed(TIE_SEED)
    noise = torch.rand(n, p, generator=generator, device=device)
    return noise.argsort(dim=1)


def tie_fraction(scores: Tensor) -> Tensor:
    """Per row of ``(N, P)`` scores, the fraction of positions whose value another one shares."""
    values = scores.sort(dim=1).values
    equal = values[:, 1:] == values[:, :-1]
    tied = torch.zeros_like(values, dtype=torch.bool)
    tied[:, 1:] |= equal
    tied[:, :-1] |= equal
    return tied.float().mean(dim=1)


def rank_mask(
    saliency: Tensor,
    fraction: float,
    lowest: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Boolean ``(N, H, W)`` mask of each sample's lowest (or highest) ``fraction`` of positions.

    Exactly :func:`mask_count` positions are set per sample; ties are broken as
    :func:`ranking` breaks them (a seeded random order).

    Example::

        >>> rank_mask(torch.tensor([[[0.3, 0.1], [0.4, 0.2]]]), 0.5)
        tensor([[[False,  True],
                 [False,  True]]])
    """
    n, h, w = saliency.shape
    k = mask_count(fraction, h, w)
    flat = saliency.reshape(n, h * w)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k:
        order = ranking(flat, descending=not lowest, generator=generator)
        mask.scatter_(1, order[:, :k], True)
    return mask.reshape(n, h, w)


def fill_values(
    x: Tensor, fill: Fill = "uniform", value: float = 0.0, generator: torch.Generator | None = None
) -> Tensor:
    """Replacement values shaped like ``x``, per image and channel.

    Args:
        x: ``(N, C, H, W)`` images.
        fill: ``"uniform"``: U[min, max] of each image-channel; ``"mean"``: its mean;
            ``"constant"``: ``value``.
        value: the constant for ``fill="constant"``.
        generator: for ``"uniform"``, a ``torch.Generator`` on ``x``'s device.
    """
    if fill == "uniform":
        lo = x.amin(dim=(2, 3), keepdim=True)
        hi = x.amax(dim=(2, 3), keepdim=True)
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return lo + (hi - lo) * noise
    if fill == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    check_fill(fill)
    return torch.full_like(x, value)


def apply_mask(x: Tensor, mask: Tensor, fill: Tensor) -> Tensor:
    """``x`` with the positions of the ``(N, H, W)`` mask replaced by ``fill`` in every channel."""
    return torch.where(mask.unsqueeze(1), fill, x)
