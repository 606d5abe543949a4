"""A dataset plugin only the tests register: oriented gratings, learnable in a few steps.

It is registered the way a third-party package registers one (a ``register_datasets`` hook
implementation; ``tests/conftest.py`` installs it, or an entry point in a subprocess), so the
plain test run trains, resumes and stops through the real training loop without real data.

Four classes, one per stripe orientation (0, 45, 90, 135 degrees), on 1 x 16 x 16 images with a
random phase and noise: a shape and a class count unlike MNIST's and CIFAR-10's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from qsgt_plugin import hookimpl
from qsgt_plugin.datasets import Dataset

NAME = "synthetic"


class Gratings(Dataset):
    """Oriented sine gratings; each split is drawn from its own fixed seed."""

    def load(self, train: bool, root=None, verify: bool = True) -> tuple[Tensor, Tensor]:
        n = self.train_size if train else self.test_size
        generator = torch.Generator().manual_seed(1 if train else 2)
        labels = torch.randint(0, self.num_classes, (n,), generator=generator)
        angle = labels.float() * math.pi / self.num_classes
        phase = torch.rand(n, generator=generator) * 2 * math.pi
        size = self.shape[1]
        coords = torch.arange(size, dtype=torch.float32)
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        along = xx * angle.cos()[:, None, None] + yy * angle.sin()[:, None, None]
        stripes = torch.sin(along * (2 * math.pi / 4) + phase[:, None, None])
        noise = torch.randn(n, size, size, generator=generator) * 0.3
        images = ((stripes + noise) * 60 + 128).clamp(0, 255).to(torch.uint8)
        return images.unsqueeze(1), labels


GRATINGS = Gratings(
    NAME,
    shape=(1, 16, 16),
    mean=(0.5,),
    std=(0.25,),
    train_size=512,
    test_size=256,
    num_classes=4,
)


@hookimpl
def register_datasets(register) -> None:
    register(GRATINGS)
