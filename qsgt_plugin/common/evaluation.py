"""Top-1 accuracy and cross-entropy of a classifier over batches: the one accuracy loop."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qsgt_plugin.common.modes import eval_mode

__all__ = ["correct_count", "evaluate"]


def correct_count(logits: Tensor, labels: Tensor) -> Tensor:
    """How many rows of ``logits`` have their largest value at the label (a 0-dim tensor)."""
    return (logits.argmax(1) == labels).sum()


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy over ``(images, labels)`` batches, in eval mode.

    The sums stay on the device until the end (one host read per call); every submodule's
    training flag is restored afterwards.
    """
    correct = loss = None
    total = 0
    with eval_mode(model):
        for x, y in batches:
            logits = model(x)
            batch_correct = correct_count(logits, y)
            batch_loss = F.cross_entropy(logits.float(), y, reduction="sum")
            correct = batch_correct if correct is None else correct + batch_correct
            loss = batch_loss if loss is None else loss + batch_loss
            total += len(y)
    if not total:
        raise ValueError("evaluate() got no batches")
    return correct.item() / total, loss.item() / total
