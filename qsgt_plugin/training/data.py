"""The datasets a recipe names, held as uint8 tensors and batched in tensors.

Datasets come from plugins (:mod:`qsgt_plugin.datasets`: MNIST and CIFAR-10 built in,
any other through the ``register_datasets`` hook); :func:`load_split` checks what a plugin
returns before anything trains on it.

Augmentation works on whole uint8 batches on their device: CIFAR-10's pad-4 random crop and
horizontal flip, with torchvision's semantics (zero padding before normalisation).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch import Tensor

from qsgt_plugin.datasets import FLIPS, Dataset, find_root
from qsgt_plugin.errors import DatasetNotFoundError, QsgtError, RecipeError
from qsgt_plugin.plugins import get_registry

__all__ = [
    "FLIPS",
    "Dataset",
    "DatasetNotFoundError",
    "Loader",
    "crop_flip",
    "crop_flip_params",
    "find_root",
    "get_dataset",
    "load_split",
]


def get_dataset(name: str) -> Dataset:
    """The registered dataset ``name``.

    Raises:
        RecipeError: no plugin registered it (the message names those that are).
    """
    datasets = get_registry().datasets
    if name not in datasets:
        raise RecipeError(
            f"data.dataset: unknown dataset {name!r}; registered: {', '.join(sorted(datasets))} "
            "(a plugin adds one with the register_datasets hook)"
        )
    return datasets[name]


def load_split(
    name: str, train: bool, root: str | os.PathLike | None = None, verify: bool = True
) -> tuple[Tensor, Tensor]:
    """All images of a split as ``uint8 (N, C, H, W)`` and their labels as ``int64 (N,)``.

    With ``verify`` a dataset that can checks its files are the official release. Whatever
    the dataset's ``load`` returns must match what it declares (dtype, shape, size, labels are
    class indices): a corrupted copy or a wrong plugin would otherwise train silently at chance.
    """
    dataset = get_dataset(name)
    split = "training" if train else "test"
    source = _source(name)
    try:
        loaded = dataset.load(train, root, verify)
    except QsgtError:
        raise
    except NotImplementedError:
        raise DatasetNotFoundError(
            f"dataset {name!r} ({source}) has no load(); the plugin must implement it"
        ) from None
    except Exception as exc:
        raise DatasetNotFoundError(
            f"dataset {name!r} ({source}) failed to load its {split} split: "
            f"{type(exc).__name__}: {exc}. Fix the plugin's load()"
        ) from exc
    if not (isinstance(loaded, (tuple, list)) and len(loaded) == 2):
        raise DatasetNotFoundError(
            f"dataset {name!r} ({source}): load() returned {type(loaded).__name__}, not "
            "(images, labels)"
        )
    images, labels = loaded
    size = dataset.train_size if train else dataset.test_size
    for what, value in (("images", images), ("labels", labels)):
        if not isinstance(value, Tensor) or value.is_meta:
            kind = "meta tensors (no data)" if isinstance(value, Tensor) else type(value).__name__
            raise DatasetNotFoundError(
                f"dataset {name!r} ({source}): load() returned {what} as {kind}, not a torch "
                "tensor with data (torch.from_numpy converts a numpy array)"
            )
    problems = []
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != dataset.shape:
        problems.append(
            f"images are {images.dtype} {tuple(images.shape[1:])}, not uint8 {dataset.shape}"
        )
    if labels.dtype != torch.long or labels.shape != (len(images),):
        problems.append(f"labels are {labels.dtype} {tuple(labels.shape)}, not int64 (N,)")
    if len(images) != size:
        problems.append(f"{len(images)} images where the dataset declares {size}")
    if problems:
        raise DatasetNotFoundError(
            f"{name}'s {split} split does not match its declaration: {'; '.join(problems)}. "
            f"Fix the dataset plugin's load() or its declared shape and sizes"
        )
    if len(labels) and (int(labels.min()) < 0 or labels.max() >= dataset.num_classes):
        raise DatasetNotFoundError(
            f"{name} has labels {int(labels.min())}..{int(labels.max())}, outside "
            f"0..{dataset.num_classes - 1}: the files are corrupted; use the official release"
        )
    return images, labels


def _source(name: str) -> str:
    plugin = get_registry().owner("dataset", name)
    return f"from plugin {plugin!r}" if plugin else "not from a plugin"


def crop_flip_params(
    n: int, padding: int, generator: torch.Generator | None, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Per-image ``(top, left)`` offsets and flip flags, drawn on ``generator``."""
    crops = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=device)
    flips = torch.rand(n, generator=generator, device=device) < 0.5
    return crops, flips


def crop_flip(images: Tensor, padding: int, crops: Tensor, flips: Tensor) -> Tensor:
    """torchvision's ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()`` with given draws.

    Each image is zero-padded by ``padding``, cropped back to its size at the ``(top, left)``
    offset of ``crops`` (drawn from ``0 .. 2 * padding``), and mirrored where ``flips`` is set.
    """
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
        padding: random crop after zero padding by this many pixels (0: no crop).
        flip: horizontal flips: ``"none"``, ``"random"`` (each image with probability 1/2,
            drawn anew every epoch) or ``"alternate"`` (a random half of the images in the
            first epoch, then the flips of every image alternate from epoch to epoch, so each
            image is seen both ways in any two consecutive epochs).
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
        padding: int = 0,
        flip: str = "none",
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
        shard: tuple[int, int] = (0, 1),
        resident: bool = False,
        channels_last: bool = False,
    ) -> None:
        if flip not in FLIPS:
            raise ValueError(f"unknown flip {flip!r}; allowed: {', '.join(FLIPS)}")
        if resident:
            images, labels = images.to(device), labels.to(device)
        self.images, self.labels = images, labels
        self.channels_last = channels_last
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.shuffle, self.padding, self.flip = shuffle, padding, flip
        self.generator = generator if generator is not None else torch.Generator()
        self.rank, self.world = shard
        self._first_flips = (
            torch.rand(len(labels), generator=self.generator) < 0.5 if flip == "alternate" else None
        )

    @property
    def augment(self) -> bool:
        return self.padding > 0 or self.flip != "none"

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.batches()

    def batches(self, skip: int = 0, epoch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of batches, the first ``skip`` left out (a run resumed mid-epoch).

        ``epoch`` (0-based) sets the flips of ``flip="alternate"``. The epoch's random draws
        (order, crops, flips) are made at once on the CPU generator and moved to the device
        once, so producing a batch never waits for the host.
        """
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        if self.augment:
            crops, flips = crop_flip_params(n, self.padding, self.generator, torch.device("cpu"))
            if self.flip == "none":
                flips = torch.zeros_like(flips)
            elif self.flip == "alternate":
                flips = self._first_flips[order] ^ bool(epoch % 2)
            crops, flips = crops.to(self.device), flips.to(self.device)
        order = order.to(self.images.device)
        mine = slice(self.rank, None, self.world)
        for start in range(skip * self.batch_size, n, self.batch_size):
            batch = slice(start, start + self.batch_size)
            index = order[batch][mine]
            x = self.images[index].to(self.device, non_blocking=True)
            y = self.labels[index.to(self.labels.device)].to(self.device, non_blocking=True)
            if self.augment:
                x = crop_flip(x, self.padding, crops[batch][mine], flips[batch][mine])
            x = (x.float().div_(255) - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y
