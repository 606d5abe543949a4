"""Numbers for attribution maps: agreement between models, sparseness, Captum's fidelity metrics.

Maps are compared on their channel-reduced magnitude ``|a|`` averaged over channels, the same
reduction SGT ranks pixels by.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from captum.metrics import infidelity, sensitivity_max
from scipy.stats import spearmanr
from torch import Tensor, nn

from qsgt_plugin.common.modes import eval_mode
from qsgt_plugin.sgt.masking import rank_mask, reduce_saliency
from qsgt_plugin.sgt.saliency import attribute

__all__ = ["entropy", "gini", "infidelity_score", "sensitivity_score", "spearman", "top_overlap"]


def _flat(maps: Tensor) -> Tensor:
    """``(N, C, H, W)`` attributions or ``(N, H, W)`` saliency -> ``(N, H*W)`` magnitudes."""
    reduced = reduce_saliency(maps) if maps.dim() == 4 else maps.abs()
    return reduced.flatten(1).double()


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Per-image Spearman rank correlation of two models' maps of the same images."""
    rows = [
        spearmanr(x.numpy(), y.numpy()).statistic for x, y in zip(_flat(a), _flat(b), strict=True)
    ]
    return torch.tensor(np.nan_to_num(np.asarray(rows, dtype=float), nan=0.0))


def top_overlap(a: Tensor, b: Tensor, fraction: float = 0.1) -> Tensor:
    """Per-image share of the top ``fraction`` positions that two maps have in common."""
    fa, fb = _flat(a), _flat(b)
    ma = rank_mask(fa.unsqueeze(1), fraction, lowest=False)
    mb = rank_mask(fb.unsqueeze(1), fraction, lowest=False)
    return (ma & mb).flatten(1).sum(1) / ma.flatten(1).sum(1).clamp(min=1)


def gini(maps: Tensor) -> Tensor:
    """Per-image Gini index of ``|attribution|``: 0 for a constant map, 1 for a one-hot map.

    Hurley and Rickard's sparseness measure, ``1 - 2 sum_k c_k / |c|_1 * (n - k + 1/2) / n`` over
    the sorted magnitudes, rescaled by ``n / (n - 1)`` so that its range is exactly [0, 1].
    """
    c = _flat(maps).sort(dim=1).values
    n = c.shape[1]
    k = torch.arange(1, n + 1, dtype=c.dtype)
    total = c.sum(1, keepdim=True)
    g = 1 - 2 * ((c / total.clamp(min=1e-30)) * (n - k + 0.5) / n).sum(1)
    g = g * n / (n - 1)
    return torch.where(total.squeeze(1) > 0, g, torch.zeros_like(g))


def entropy(maps: Tensor) -> Tensor:
    """Per-image Shannon entropy (nats) of ``|attribution|`` normalised to sum to 1.

    Bhatt et al. 2020's complexity: ``log(H * W)`` for a constant map, 0 for a one-hot map.
    A map of zeros has entropy 0.
    """
    c = _flat(maps)
    total = c.sum(1, keepdim=True)
    p = c / total.clamp(min=1e-30)
    terms = torch.where(p > 0, -p * p.clamp(min=1e-300).log(), torch.zeros_like(p))
    return torch.where(total.squeeze(1) > 0, terms.sum(1), torch.zeros_like(total.squeeze(1)))


def infidelity_score(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    maps: Tensor,
    noise_std: float = 0.1,
    n_perturb_samples: int = 8,
    seed: int = 0,
) -> Tensor:
    """Captum's ``infidelity`` per image (lower is better), with Gaussian perturbations.

    Attributions are rescaled to their best fit (``normalize=True``), so models whose maps have
    different scales compare fairly. The noise comes from its own generator seeded by ``seed``:
    the same call gives the same number, and models scored with one seed see the same noise.
    """
    generator = torch.Generator().manual_seed(seed)

    def perturb(inputs: Tensor) -> tuple[Tensor, Tensor]:
        draw = torch.randn(inputs.shape, generator=generator, dtype=torch.float32)
        noise = draw.to(device=inputs.device, dtype=inputs.dtype) * noise_std
        return noise, inputs - noise

    with torch.no_grad(), eval_mode(model):
        return infidelity(
            model,
            perturb,
            x,
            maps,
            target=target,
            n_perturb_samples=n_perturb_samples,
            normalize=True,
        ).detach()


def sensitivity_score(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    method: str = "Saliency",
    radius: float = 0.02,
    n_perturb_samples: int = 8,
    seed: int = 0,
    **kwargs: Any,
) -> Tensor:
    """Captum's ``sensitivity_max`` per image: how much the map moves under small input noise.

    The noise is uniform in the L-infinity ball of ``radius`` (Captum's default), drawn from
    its own generator seeded by ``seed``, not from the global one: the same call gives the same
    number, and models scored with one seed see the same perturbations.
    """
    generator = torch.Generator().manual_seed(seed)

    def perturb(inputs: Tensor, perturb_radius: float) -> tuple[Tensor]:
        # Captum hands one input over as a tensor and passes what this returns to explain()
        draw = torch.empty(inputs.shape).uniform_(-1, 1, generator=generator) * perturb_radius
        return (inputs + draw.to(device=inputs.device, dtype=inputs.dtype),)

    def explain(inputs: tuple[Tensor], target: Tensor) -> tuple[Tensor]:
        # Captum passes the inputs as a tuple and expects the explanations in the same form.
        return (attribute(model, inputs[0], target, method, **kwargs),)

    return sensitivity_max(
        explain,
        x,
        perturb_func=perturb,
        target=target,
        perturb_radius=radius,
        n_perturb_samples=n_perturb_samples,
    ).detach()
