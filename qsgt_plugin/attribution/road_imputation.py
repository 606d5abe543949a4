"""ROAD: remove and debias, with noisy linear imputation.

Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution Methods",
https://arxiv.org/abs/2202.00449. Replacing pixels by a constant leaks the mask's shape to the
model (the class can be read off *where* pixels were removed). ROAD instead imputes each removed
pixel as the weighted mean of its 8 neighbours (weight 1/6 for the 4 direct ones, 1/12 for the
diagonals, renormalised at the border), all removed pixels solved jointly, plus a little
Gaussian noise; then it measures the accuracy as the most relevant (MoRF) or least relevant
(LeRF) pixels are removed. A faithful ranking loses accuracy fast under MoRF and slowly under
LeRF.

The linear system is the same for every channel of an image; it is symmetric positive
semi-definite and solved for the whole batch at once by conjugate gradients, whose matrix
product is one 3x3 convolution.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qsgt_plugin.attribution.faithfulness import auc, top_mask
from qsgt_plugin.common.modes import eval_mode
from qsgt_plugin.sgt.masking import ranking, reduce_saliency
from qsgt_plugin.sgt.saliency import attribute

__all__ = ["NEIGHBOURS", "Road", "linear_imputation", "road"]

NEIGHBOURS = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])
"""Weights of the 8 neighbours in the imputation (Rong et al. 2022)."""


def _neighbour_sum(x: Tensor) -> Tensor:
    """Weighted sum of each pixel's in-image neighbours, for ``(B, 1, H, W)``."""
    kernel = NEIGHBOURS.to(x.device, x.dtype).view(1, 1, 3, 3)
    return F.conv2d(x, kernel, padding=1)


def linear_imputation(
    x: Tensor,
    removed: Tensor,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    tolerance: float = 1e-6,
) -> Tensor:
    """``x`` with the ``removed`` pixels imputed from their neighbours, solved jointly.

    Every removed pixel equals the weighted mean of its in-image neighbours (removed or not):
    ``d_i x_i - sum_j w_ij x_j = 0`` with ``d_i = sum_j w_ij``. A group of removed pixels with
    no kept neighbour has no information; it is filled with 0 (the dataset mean of normalised
    inputs).

    Args:
        x: ``(N, C, H, W)`` images.
        removed: ``(N, H, W)`` boolean, the pixels to impute (in every channel).
        noise: standard deviation of the Gaussian noise added to the imputed pixels.
        generator: for the noise.
        tolerance: conjugate gradients stop when every residual is this small, relative to
            its right-hand side.

    Example::

        >>> x = torch.arange(9.0).view(1, 1, 3, 3)
        >>> removed = torch.zeros(1, 3, 3, dtype=torch.bool)
        >>> removed[0, 1, 1] = True  # the centre: (1/12 (0+2+6+8) + 1/6 (1+3+5+7)) / 1
        >>> linear_imputation(x, removed)[0, 0, 1, 1]
        tensor(4.)
    """
    n, c, h, w = x.shape
    flat = x.reshape(n * c, 1, h, w)
    unknown = removed[:, None].expand(n, c, h, w).reshape(n * c, 1, h, w)
    degree = _neighbour_sum(torch.ones_like(flat))
    known = torch.where(unknown, torch.zeros_like(flat), flat)
    b = torch.where(unknown, _neighbour_sum(known), torch.zeros_like(flat))

    def matvec(u: Tensor) -> Tensor:
        return torch.where(unknown, degree * u - _neighbour_sum(u), torch.zeros_like(u))

    u = _conjugate_gradients(matvec, b, tolerance, max_iterations=4 * (h + w) + 50)
    if noise:
        u = u + noise * torch.randn(u.shape, generator=generator, device=generator.device).to(u)
    return torch.where(unknown, u, flat).reshape(n, c, h, w)


def _conjugate_gradients(matvec, b: Tensor, tolerance: float, max_iterations: int) -> Tensor:
    """Solve ``A u = b`` for a batch of symmetric positive semi-definite systems (one per row)."""
    u = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = (r * r).sum(dim=(1, 2, 3), keepdim=True)
    limit = tolerance**2 * rr.clamp(min=1e-30)
    for _ in range(max_iterations):
        if bool((rr <= limit).all()):
            break
        ap = matvec(p)
        pap = (p * ap).sum(dim=(1, 2, 3), keepdim=True)
        step = torch.where(pap > 0, rr / pap.clamp(min=1e-30), torch.zeros_like(rr))
        u = u + step * p
        r = r - step * ap
        rr_next = (r * r).sum(dim=(1, 2, 3), keepdim=True)
        p = r + torch.where(rr > 0, rr_next / rr.clamp(min=1e-30), torch.zeros_like(rr)) * p
        rr = rr_next
    return u


class Road:
    """Accuracy sums of ROAD's curves over batches (see the module docstring).

    The random ranking has no most- or least-relevant end, so one random curve is the control
    of both orders.
    """

    def __init__(
        self,
        fractions: tuple[float, ...] = tuple(i / 10 for i in range(10)),
        noise: float = 0.01,
        seed: int = 0,
    ) -> None:
        self.fractions = fractions
        self.noise = noise
        self.generator = torch.Generator().manual_seed(seed)
        self.correct = {k: torch.zeros(len(fractions)) for k in ("morf", "lerf", "random")}
        self.images = 0
        self.rows: dict[str, list[Tensor]] = {"morf": [], "lerf": []}  # (images, fractions)

    @torch.no_grad()
    def add(self, model: nn.Module, x: Tensor, y: Tensor, saliency: Tensor) -> None:
        """One batch and its ``(N, H, W)`` saliency; the model in eval mode."""
        flat = saliency.flatten(1)
        clean_right = (model(x).argmax(1) == y).float().cpu()
        clean = clean_right.sum()
        orders = {
            "morf": ranking(flat, descending=True, generator=self.generator),
            "lerf": ranking(flat, descending=False, generator=self.generator),
            "random": ranking(torch.zeros_like(flat), generator=self.generator),
        }
        for curve, order in orders.items():
            rows = torch.zeros(len(y), len(self.fractions))
            for i, t in enumerate(self.fractions):
                if t == 0:
                    self.correct[curve][i] += clean
                    rows[:, i] = clean_right
                    continue
                removed = top_mask(order, t, saliency.shape)
                imputed = linear_imputation(x, removed, self.noise, self.generator)
                right = model(imputed).argmax(1) == y
                self.correct[curve][i] += right.sum().cpu().float()
                rows[:, i] = right.float().cpu()
            if curve in self.rows:
                self.rows[curve].append(rows)
        self.images += len(y)

    def result(self) -> dict:
        fractions = list(self.fractions)
        curves = {k: (v / self.images).tolist() for k, v in self.correct.items()}
        out: dict = {"fractions": fractions, "images": self.images, **curves}
        out["auc"] = {k: auc(v, fractions) for k, v in curves.items()}
        out["auc_normalised"] = {
            k: auc([a / max(v[0], 1e-12) for a in v], fractions) for k, v in curves.items()
        }
        out["per_image_auc"] = {
            k: torch.trapezoid(torch.cat(rows), torch.tensor(fractions)).tolist()
            for k, rows in self.rows.items()
            if rows
        }
        return out


def road(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    method: str = "Saliency",
    fractions: tuple[float, ...] = tuple(i / 10 for i in range(10)),
    noise: float = 0.01,
    seed: int = 0,
    **attribution_kwargs,
) -> dict:
    """Accuracy as the most (MoRF) or least (LeRF) relevant pixels are imputed away.

    The label's saliency (``|a|``, channel mean, Captum ``method``) ranks the pixels.

    Returns:
        ``{"fractions", "morf", "lerf", "random"}`` with the accuracy at each fraction,
        ``"auc"`` and ``"auc_normalised"`` (each curve divided by the clean accuracy first).
    """
    curves = Road(fractions, noise, seed)
    with eval_mode(model):
        for x, y in batches:
            maps = attribute(model, x, y, method, **attribution_kwargs)
            curves.add(model, x, y, reduce_saliency(maps))
    return curves.result()
