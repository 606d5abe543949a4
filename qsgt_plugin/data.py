"""MNIST and CIFAR-10 through torchvision, held as uint8 tensors and batched in tensors.

Where the data is looked for, in order: the recipe's ``data.root``, the ``QSGT_DATA`` variable,
then ``~/.cache/qsgt/data`` with torchvision's download. A dataset that is not where it was
looked for is a :class:`DatasetNotFoundError` naming the place; nothing falls back to fake data.

Augmentation works on whole uint8 batches on their device: CIFAR-10's pad-4 random crop and
horizontal flip, with torchvision's semantics (zero padding before normalisation).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import Tensor

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetNotFoundError",
    "Loader",
    "crop_flip",
    "crop_flip_params",
    "find_root",
    "load_split",
    "random_crop_flip",
]

DEFAULT_ROOT = Path("~/.cache/qsgt/data").expanduser()


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is missing or unreadable where it was looked for."""


@dataclass(frozen=True)
class DatasetInfo:
    cls: type
    folder: str
    files: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int = 10


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        torchvision.datasets.MNIST,
        "MNIST/raw",
        (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ),
        mean=(0.1307,),
        std=(0.3081,),
    ),
    "cifar10": DatasetInfo(
        torchvision.datasets.CIFAR10,
        "cifar-10-batches-py",
        (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
}


def find_root(root: str | os.PathLike | None = None) -> tuple[Path, str, bool]:
    """``(folder, where it came from, whether downloading is allowed)``."""
    if root is not None:
        return Path(root).expanduser(), "data.root", False
    if os.environ.get("QSGT_DATA"):
        return Path(os.environ["QSGT_DATA"]).expanduser(), "QSGT_DATA", False
    return DEFAULT_ROOT, "the default cache", True


def load_split(
    name: str, train: bool, root: str | os.PathLike | None = None
) -> tuple[Tensor, Tensor]:
    """All images of a split as ``uint8 (N, C, H, W)`` and their labels as ``int64 (N,)``."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    info = DATASETS[name]
    folder, source, download = find_root(root)
    missing = [f for f in info.files if not (folder / info.folder / f).is_file()]
    if missing and not download:
        raise DatasetNotFoundError(
            f"{name} not found: looked in {folder / info.folder} (from {source}) and missed "
            f"{', '.join(missing)}. Put the dataset there in torchvision's layout, or point "
            "data.root in the recipe or the QSGT_DATA variable at the folder that holds it."
        )
    try:
        dataset = info.cls(str(folder), train=train, download=download and bool(missing))
        images = torch.as_tensor(dataset.data)
        labels = torch.as_tensor(dataset.targets, dtype=torch.long)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, pickle errors, ...
        raise DatasetNotFoundError(
            f"{name} could not be loaded from {folder} (from {source}): {exc}. Check the files "
            "(a truncated or corrupted download?) or set data.root / QSGT_DATA."
        ) from exc
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous(), labels


def random_crop_flip(
    images: Tensor, padding: int = 4, generator: torch.Generator | None = None
) -> Tensor:
    """torchvision's ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()`` on a batch.

    Each image is zero-padded by ``padding``, cropped back to its size at an offset drawn
    uniformly from ``0 .. 2 * padding`` in each direction, and mirrored with probability 1/2.
    """
    crops, flips = crop_flip_params(images.shape[0], padding, generator, images.device)
    return crop_flip(images, padding, crops, flips)


def crop_flip_params(
    n: int, padding: int, generator: torch.Generator | None, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Per-image ``(top, left)`` offsets and flip flags, drawn on ``generator``."""
    crops = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=device)
    flips = torch.rand(n, generator=generator, device=device) < 0.5
    return crops, flips


def crop_flip(images: Tensor, padding: int, crops: Tensor, flips: Tensor) -> Tensor:
    """Apply given crop offsets and flips to a batch (see :func:`random_crop_flip`)."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    rows = crops[:, 0, None] + torch.arange(h, device=images.device)  # (N, H)
    cols = crops[:, 1, None] + torch.arange(w, device=images.device)  # (N, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


class Loader:
    """Normalised float batches from uint8 tensors: seeded shuffling, batch augmentation.

    Args:
        images, labels: a whole split (from :func:`load_split`).
        batch_size: images per batch; the last batch may be smaller.
        mean, std: per-channel normalisation on the 0..1 scale.
        shuffle: a new permutation each epoch, drawn on ``generator``.
        augment: CIFAR-style random crop and flip.
        device: where batches are produced (the split may already live there).
        generator: the random source of shuffling and augmentation (CPU).
        shard: ``(rank, world)``: this process takes every ``world``-th image of each batch,
            with every random draw made for the whole batch, so the ranks together see exactly
            the batches of a single process.
        resident: move the whole split to ``device`` once (uint8), so batches are gathered,
            augmented and normalised there.
        channels_last: produce batches in channels-last memory format.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        shuffle: bool = False,
        augment: bool = False,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
        shard: tuple[int, int] = (0, 1),
        resident: bool = False,
        channels_last: bool = False,
    ) -> None:
        if resident:
            images, labels = images.to(device), labels.to(device)
        self.images, self.labels = images, labels
        self.channels_last = channels_last
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.shuffle, self.augment = shuffle, augment
        self.generator = generator if generator is not None else torch.Generator()
        self.rank, self.world = shard

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.batches()

    def batches(self, skip: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of batches, the first ``skip`` left out (a run resumed mid-epoch).

        The epoch's random draws (order, crops, flips) are made at once on the CPU generator
        and moved to the device once, so producing a batch never waits for the host.
        """
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        if self.augment:
            crops, flips = crop_flip_params(n, 4, self.generator, torch.device("cpu"))
            crops, flips = crops.to(self.device), flips.to(self.device)
        order = order.to(self.images.device)
        mine = slice(self.rank, None, self.world)
        for start in range(skip * self.batch_size, n, self.batch_size):
            batch = slice(start, start + self.batch_size)
            index = order[batch][mine]
            x = self.images[index].to(self.device, non_blocking=True)
            y = self.labels[index.to(self.labels.device)].to(self.device, non_blocking=True)
            if self.augment:
                x = crop_flip(x, 4, crops[batch][mine], flips[batch][mine])
            x = (x.float().div_(255) - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y
