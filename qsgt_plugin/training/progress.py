"""Where a training run stands: running loss sums and the position in the run.

Both are saved in every checkpoint, so a resumed run logs what the uninterrupted run would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["Meter", "Progress"]


class Meter:
    """Running sums of the loss terms over training steps, kept on the device until read."""

    FIELDS = ("loss", "ce", "kl")

    def __init__(self, device: torch.device, state: dict[str, Any] | None = None) -> None:
        self.sums = torch.zeros(len(self.FIELDS), device=device)
        self.count = torch.zeros((), device=device)
        if state:
            self.sums += torch.tensor(state["sums"], device=device)
            self.count += state["count"]

    def add(self, parts: Tensor) -> None:
        """``parts``: this step's ``[loss, ce, kl]``."""
        self.sums += parts
        self.count += 1

    def means(self) -> dict[str, float]:
        values = (self.sums / self.count.clamp(min=1)).tolist()
        return dict(zip(self.FIELDS, values, strict=True))

    def reset(self) -> None:
        self.sums.zero_()
        self.count.zero_()

    def state(self) -> dict[str, Any]:
        return {"sums": self.sums.tolist(), "count": self.count.item()}


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint, so a resumed run logs what it would have."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches done in the current epoch
    best_acc: float = -1.0
    test_acc: float = float("nan")  # of the last evaluation
    elapsed: float = 0.0  # training seconds, summed over every process that ran it
    epoch_rng: Tensor | None = None  # loader generator state at the start of the epoch
    meters: dict[str, dict] = field(default_factory=dict)  # Meter states, at checkpoints
