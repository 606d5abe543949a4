"""Saliency masking as pure, vectorised functions (SGT training and masking-curve evaluation).

Saliency-Guided Training: Ismail et al. 2021, "Improving Deep Learning Interpretability by
Saliency Guided Training", https://arxiv.org/abs/2111.14338. Each sample's saliency map is
reduced over channels, the chosen fraction of its spatial positions is selected by rank, and
those positions are replaced in every channel.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "FILLS",
    "apply_mask",
    "check_fill",
    "check_fraction",
    "fill_values",
    "mask_count",
    "rank_mask",
    "reduce_saliency",
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


def rank_mask(saliency: Tensor, fraction: float, lowest: bool = True) -> Tensor:
    """Boolean ``(N, H, W)`` mask of each sample's lowest (or highest) ``fraction`` of positions.

    Exactly :func:`mask_count` positions are set per sample; ties are broken by position.

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
        index = torch.topk(flat, k, dim=1, largest=not lowest, sorted=False).indices
        mask.scatter_(1, index, True)
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
