"""Deletion and insertion curves (RISE) and their areas.

Petsiuk et al. 2018, "RISE: Randomized Input Sampling for Explanation of Black-box Models",
https://arxiv.org/abs/1806.07421. Positions are ranked by saliency; for a fraction t of them the
*deletion* curve replaces the top-ranked positions by a substrate and the *insertion* curve
starts from the substrate and restores them. Each point is the probability of the class the
model predicted on the clean image. A faithful map makes the deletion curve fall fast (small
area) and the insertion curve rise fast (large area). A random ranking, computed the same way,
is the control.

Raw areas depend on the model's own confidence, so fp32 and W4A4 models are not comparable
through them; the *normalised* area divides every image's curve by its clean probability first.
The deletion pass also reads off the accuracy (against the labels) at each fraction: with the
mean substrate that is the masking curve of SGT's Figure 3.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
import torchvision.transforms.functional as TF
from torch import Tensor, nn

from qsgt_plugin.common.modes import eval_mode
from qsgt_plugin.sgt.masking import apply_mask, ranking, reduce_saliency
from qsgt_plugin.sgt.saliency import attribute

__all__ = [
    "SUBSTRATES",
    "DeletionInsertion",
    "auc",
    "class_probability",
    "deletion_insertion",
    "substrate",
    "top_mask",
]

SUBSTRATES = ("mean", "blur")
RANKINGS = ("saliency", "random")


def substrate(x: Tensor, kind: Literal["mean", "blur"] = "mean", value: float = 0.0) -> Tensor:
    """What removed positions become: ``value`` (0 is the dataset mean of normalised inputs), or
    the image blurred by a Gaussian of sigma a fifth of its size (RISE's blurred substrate)."""
    if kind == "mean":
        return torch.full_like(x, value)
    if kind == "blur":
        sigma = max(x.shape[-2:]) / 5
        size = 2 * int(2 * sigma) + 1
        return TF.gaussian_blur(x, [size, size], [sigma, sigma])
    raise ValueError(f"unknown substrate {kind!r}; allowed: {', '.join(SUBSTRATES)}")


def auc(values: list[float] | Tensor, fractions: list[float] | Tensor) -> float:
    """Area under a curve sampled at ``fractions`` (trapezoid rule)."""
    return torch.trapezoid(torch.as_tensor(values), torch.as_tensor(fractions)).item()


def top_mask(order: Tensor, fraction: float, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """``(N, H, W)`` mask of the first ``round(fraction * H * W)`` positions of ``order``."""
    n, h, w = shape
    mask = torch.zeros(n, h * w, dtype=torch.bool, device=order.device)
    mask.scatter_(1, order[:, : round(fraction * h * w)], True)
    return mask.view(n, h, w)


PER_IMAGE = ("masking", "deletion", "deletion_normalised", "insertion", "insertion_normalised")
"""Curves of the saliency ranking whose area :class:`DeletionInsertion` keeps image by image
(``masking``: whether the image is still classified right, the deletion pass against the
labels); their mean is the area of the mean curve."""


class DeletionInsertion:
    """Sums of the deletion / insertion curves over batches (see the module docstring)."""

    def __init__(
        self,
        steps: int = 10,
        substrate_kind: Literal["mean", "blur"] = "mean",
        fill_value: float = 0.0,
        seed: int = 0,
    ) -> None:
        if substrate_kind not in SUBSTRATES:
            raise ValueError(f"unknown substrate {substrate_kind!r}; allowed: {SUBSTRATES}")
        self.fractions = torch.linspace(0, 1, steps + 1)
        self.substrate_kind, self.fill_value = substrate_kind, fill_value
        self.generator = torch.Generator().manual_seed(seed)
        shape = (len(RANKINGS), len(self.fractions))
        self.sums = {
            key: torch.zeros(shape)
            for key in ("deletion", "insertion", "deletion_n", "insertion_n")
        }
        self.correct = torch.zeros(shape)  # deletion, against the labels
        self.images = 0
        # the saliency ranking's curves image by image, (images, fractions) per batch
        self.rows: dict[str, list[Tensor]] = {key: [] for key in PER_IMAGE}

    @torch.no_grad()
    def add(self, model: nn.Module, x: Tensor, y: Tensor, predicted: Tensor, saliency: Tensor):
        """One batch: ``predicted`` classes and their ``(N, H, W)`` saliency; model in eval."""
        flat = saliency.flatten(1)
        base = substrate(x, self.substrate_kind, self.fill_value)
        clean_logits, base_logits = model(x), model(base)
        clean = class_probability(clean_logits, predicted).clamp(min=1e-12)
        rows = {key: torch.zeros(len(x), len(self.fractions)) for key in PER_IMAGE}
        for r, scores in enumerate((flat, torch.zeros_like(flat))):  # saliency, random
            order = ranking(scores, generator=self.generator)
            for i, t in enumerate(self.fractions.tolist()):
                top = top_mask(order, t, saliency.shape)
                for curve, images, ends in (
                    ("deletion", apply_mask(x, top, base), (clean_logits, base_logits)),
                    ("insertion", apply_mask(base, top, x), (base_logits, clean_logits)),
                ):
                    # at 0 and 1 the images are the clean ones or the substrate: no forward
                    logits = {0.0: ends[0], 1.0: ends[1]}.get(t)
                    logits = model(images) if logits is None else logits
                    p = class_probability(logits, predicted)
                    self.sums[curve][r, i] += p.sum().cpu()
                    self.sums[f"{curve}_n"][r, i] += (p / clean).sum().cpu()
                    if curve == "deletion":
                        right = (logits.argmax(1) == y).float().cpu()
                        self.correct[r, i] += right.sum()
                    if r == 0:
                        rows[curve][:, i] = p.float().cpu()
                        rows[f"{curve}_normalised"][:, i] = (p / clean).float().cpu()
                        if curve == "deletion":
                            rows["masking"][:, i] = right
        for key, values in rows.items():
            self.rows[key].append(values)
        self.images += len(x)

    def result(self) -> dict:
        fractions = self.fractions.tolist()
        out: dict = {"fractions": fractions, "images": self.images, "auc": {}}
        out["auc_normalised"] = {}
        for curve in ("deletion", "insertion"):
            for key, target in ((curve, out), (f"{curve}_n", out.setdefault("normalised", {}))):
                means = {
                    r: (self.sums[key][i] / self.images).tolist() for i, r in enumerate(RANKINGS)
                }
                target[curve] = means
                areas = out["auc_normalised" if key.endswith("_n") else "auc"]
                areas[curve] = {r: auc(v, fractions) for r, v in means.items()}
        out["accuracy"] = self._means(self.correct)
        out["per_image_auc"] = {
            key: torch.trapezoid(torch.cat(rows), self.fractions).tolist()
            for key, rows in self.rows.items()
            if rows
        }
        return out

    def _means(self, sums: Tensor) -> dict[str, list[float]]:
        return {r: (sums[i] / self.images).tolist() for i, r in enumerate(RANKINGS)}


def class_probability(logits: Tensor, target: Tensor) -> Tensor:
    """Softmax probability of each row's ``target`` class."""
    return logits.softmax(dim=1).gather(1, target[:, None]).squeeze(1)


def deletion_insertion(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    method: str = "Saliency",
    steps: int = 10,
    substrate_kind: Literal["mean", "blur"] = "mean",
    fill_value: float = 0.0,
    seed: int = 0,
    **attribution_kwargs,
) -> dict:
    """Deletion and insertion curves, by saliency and at random, with their areas.

    Args:
        model: any classifier; it runs in eval mode.
        batches: ``(images, labels)``; the curves follow the *predicted* class, whose saliency
            (``|a|``, channel mean, from the Captum ``method``) ranks the positions.
        steps: the curves are sampled at ``steps + 1`` fractions from 0 to 1.
        substrate_kind, fill_value: see :func:`substrate`.
        seed: seeds the tie-breaking of the saliency ranking and the random ranking.

    Returns:
        ``{"fractions", "deletion": {"saliency", "random"}, "insertion": {...}}`` with the mean
        probability at each fraction; ``"normalised"`` (each image's curve divided by its clean
        probability); ``"auc"`` / ``"auc_normalised"`` by curve and ranking; ``"accuracy"``:
        the deletion pass's accuracy against the labels.
    """
    curves = DeletionInsertion(steps, substrate_kind, fill_value, seed)
    with eval_mode(model):
        for x, y in batches:
            with torch.no_grad():
                predicted = model(x).argmax(1)
            maps = attribute(model, x, predicted, method, **attribution_kwargs)
            curves.add(model, x, y, predicted, reduce_saliency(maps))
    return curves.result()
