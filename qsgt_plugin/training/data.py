"""MNIST and CIFAR-10 through torchvision, held as uint8 tensors and batched in tensors.

Where the data is looked for, in order: the recipe's ``data.root``, the ``QSGT_DATA`` variable,
then ``~/.cache/qsgt/data`` with torchvision's download. A dataset that is not where it was
looked for is a :class:`DatasetNotFoundError` naming the place; nothing falls back to fake data.

Augmentation works on whole uint8 batches on their device: CIFAR-10's pad-4 random crop and
horizontal flip, with torchvision's semantics (zero padding before normalisation).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import Tensor

from qsgt_plugin.errors import DatasetNotFoundError
from qsgt_plugin.models.resnet_cifar import CIFAR10_MEAN, CIFAR10_STD

__all__ = [
    "DATASETS",
    "FLIPS",
    "DatasetInfo",
    "DatasetNotFoundError",
    "Loader",
    "crop_flip",
    "crop_flip_params",
    "find_root",
    "load_split",
]

DEFAULT_ROOT = Path("~/.cache/qsgt/data").expanduser()


@dataclass(frozen=True)
class DatasetInfo:
    cls: type
    folder: str
    files: dict[str, str]
    """File name -> md5 of the official release (the uncompressed MNIST files' published md5s,
    CIFAR-10's as torchvision lists them)."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    shape: tuple[int, int, int]
    """``(channels, height, width)`` of an image."""
    train_size: int
    padding: int
    """Random-crop padding of the default augmentation (0: none)."""
    flip: str
    """Horizontal flips of the default augmentation (digits are not mirrored)."""
    num_classes: int = 10
    test_size: int = 10_000


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        torchvision.datasets.MNIST,
        "MNIST/raw",
        {
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        shape=(1, 28, 28),
        train_size=60000,
        mean=(0.1307,),
        std=(0.3081,),
        padding=0,
        flip="none",
    ),
    "cifar10": DatasetInfo(
        torchvision.datasets.CIFAR10,
        "cifar-10-batches-py",
        {
            **{name: md5 for name, md5 in torchvision.datasets.CIFAR10.train_list},
            **{name: md5 for name, md5 in torchvision.datasets.CIFAR10.test_list},
            "batches.meta": torchvision.datasets.CIFAR10.meta["md5"],
        },
        shape=(3, 32, 32),
        train_size=50000,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        padding=4,
        flip="random",
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
    name: str, train: bool, root: str | os.PathLike | None = None, verify: bool = True
) -> tuple[Tensor, Tensor]:
    """All images of a split as ``uint8 (N, C, H, W)`` and their labels as ``int64 (N,)``.

    With ``verify`` the files must be the official release (their md5s); the labels must always
    be class indices. A corrupted copy would otherwise train silently at chance.
    """
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
    if verify and not missing:
        _verify(name, folder / info.folder, source)
    try:
        dataset = info.cls(str(folder), train=train, download=download and bool(missing))
        images = torch.as_tensor(dataset.data)
        labels = torch.as_tensor(dataset.targets, dtype=torch.long)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, pickle errors, ...
        raise DatasetNotFoundError(
            f"{name} could not be loaded from {folder} (from {source}): {exc}. Check the files "
            "(a truncated or corrupted download?) or set data.root / QSGT_DATA."
        ) from exc
    if len(labels) and (int(labels.min()) < 0 or labels.max() >= info.num_classes):
        raise DatasetNotFoundError(
            f"{name} in {folder} has labels {int(labels.min())}..{int(labels.max())}, outside "
            f"0..{info.num_classes - 1}: the files are corrupted; use the official release"
        )
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous(), labels


_VERIFIED: dict[tuple[str, int, int], bool] = {}  # (path, size, mtime_ns) of files found good


def _verify(name: str, folder: Path, source: str) -> None:
    """Each file of the dataset has the md5 of the official release."""
    for file, md5 in DATASETS[name].files.items():
        path = folder / file
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key in _VERIFIED:
            continue
        digest = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        if digest.hexdigest() != md5:
            raise DatasetNotFoundError(
                f"{path} (from {source}) is not the official {name} file: its md5 is "
                f"{digest.hexdigest()}, the release's is {md5}. Replace the file with the "
                "official one, or set data.verify: false to use a modified copy on purpose"
            )
        _VERIFIED[key] = True


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


FLIPS = ("none", "random", "alternate")


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
