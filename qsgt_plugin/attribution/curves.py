"""Accuracy when the most salient pixels are replaced: SGT's evaluation (its Figure 3).

For each fraction t, the top-t of each test image's positions by saliency (``|attribution|``,
channel mean) are replaced in every channel by a fixed value, with no retraining, and the
accuracy is measured. A random ranking of positions gives the baseline. A model whose saliency
points at what it uses loses accuracy faster under the saliency ranking than under the random
one; SGT aims to make that gap larger.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from tqdm import tqdm

from qsgt_plugin.common.evaluation import correct_count
from qsgt_plugin.common.modes import eval_mode
from qsgt_plugin.sgt.masking import apply_mask, rank_mask, reduce_saliency
from qsgt_plugin.sgt.saliency import attribute

__all__ = ["FRACTIONS", "masking_curve"]

FRACTIONS: tuple[float, ...] = tuple(i / 10 for i in range(10))  # 0, 10, ..., 90 %


def masking_curve(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    method: str = "Saliency",
    fractions: tuple[float, ...] = FRACTIONS,
    fill_value: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    **attribution_kwargs,
) -> dict[str, dict[float, float]]:
    """Accuracy after masking the top fractions of positions, by saliency and at random.

    Args:
        model: any classifier; it runs in eval mode.
        batches: ``(images, labels)`` of normalised images, e.g. an engine ``Loader``.
        method: Captum attribution that ranks the positions.
        fractions: fractions of positions to replace; 0 gives the clean accuracy exactly.
        fill_value: the replacement, in the model's input units; 0 is the dataset mean for
            inputs normalised by the dataset's mean and std.
        seed: seed of the random ranking.
        progress: show a progress bar.

    Returns:
        ``{"saliency": {t: accuracy}, "random": {t: accuracy}}``.
    """
    generator = torch.Generator().manual_seed(seed)
    correct = {
        kind: torch.zeros(len(fractions), dtype=torch.long) for kind in ("saliency", "random")
    }
    total = 0
    bar = tqdm(batches, desc="masking curve", leave=False, disable=None if progress else True)
    with eval_mode(model):
        for x, y in bar:
            saliency = reduce_saliency(attribute(model, x, y, method, **attribution_kwargs))
            random = torch.rand(saliency.shape, generator=generator).to(saliency.device)
            fill = torch.full_like(x, fill_value)
            with torch.no_grad():
                for kind, scores in (("saliency", saliency), ("random", random)):
                    for i, t in enumerate(fractions):
                        masked = apply_mask(x, rank_mask(scores, t, lowest=False), fill)
                        correct[kind][i] += correct_count(model(masked), y).cpu()
            total += len(y)
    return {
        kind: {t: counts[i].item() / total for i, t in enumerate(fractions)}
        for kind, counts in correct.items()
    }
