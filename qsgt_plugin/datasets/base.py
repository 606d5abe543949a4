"""Datasets as plugins: what a dataset plugin registers (a :class:`Dataset`).

A dataset is a :class:`Dataset`: the shape, normalisation and default augmentation of its
images, and a ``load`` that returns a whole split as uint8 tensors. A plugin registers one with
the ``register_datasets`` hook; a recipe names it in ``data.dataset``. The built-in datasets
are a plugin too (``builtin_datasets`` in the package's entry points)::

    class Shapes(Dataset):
        def load(self, train, root=None, verify=True):
            ...  # (N, C, H, W) uint8 images, (N,) int64 labels

    @qsgt_plugin.hookimpl
    def register_datasets(register):
        register(Shapes("shapes", shape=(1, 16, 16), mean=(0.5,), std=(0.25,), train_size=5000))

MNIST and CIFAR-10 are read through torchvision. Where they are looked for, in order: the
recipe's ``data.root``, the ``QSGT_DATA`` variable, then ``~/.cache/qsgt/data`` with
torchvision's download. A dataset that is not where it was looked for is a
:class:`DatasetNotFoundError` naming the place; nothing falls back to fake data.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from qsgt_plugin.errors import DatasetNotFoundError

__all__ = ["FLIPS", "Dataset", "TorchvisionDataset", "find_root"]

DEFAULT_ROOT = Path("~/.cache/qsgt/data").expanduser()
FLIPS = ("none", "random", "alternate")


@dataclass(frozen=True)
class Dataset:
    """An image classification dataset a recipe can name.

    Args:
        name: what ``data.dataset`` says.
        shape: ``(channels, height, width)`` of an image.
        mean, std: per-channel normalisation on the 0..1 scale.
        train_size, test_size: images in each split (``load`` must return this many).
        num_classes: labels are ``0 .. num_classes - 1``.
        padding: random-crop padding of the default augmentation (0: none).
        flip: horizontal flips of the default augmentation (``none``, ``random``, ``alternate``).
    """

    name: str
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int
    test_size: int = 10_000
    num_classes: int = 10
    padding: int = 0
    flip: str = "none"

    def __post_init__(self) -> None:
        def refuse(field: str, need: str) -> None:
            got = getattr(self, field)
            raise ValueError(f"dataset {self.name!r}: {field} must be {need}, got {got!r}")

        if not isinstance(self.name, str) or not self.name:
            refuse("name", "a non-empty string")
        if len(self.shape) != 3 or not all(_positive_int(n) for n in self.shape):
            refuse("shape", "(channels, height, width), three positive integers")
        channels = self.shape[0]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"dataset {self.name!r}: mean and std need one value per channel ({channels})"
            )
        if not all(isinstance(m, (int, float)) and math.isfinite(m) for m in self.mean):
            refuse("mean", "finite numbers")
        if not all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in self.std):
            refuse("std", "positive finite numbers (images are divided by it)")
        for field in ("train_size", "test_size"):
            if not _positive_int(getattr(self, field)):
                refuse(field, "a positive integer")
        if not _positive_int(self.num_classes) or self.num_classes < 2:
            refuse("num_classes", "an integer of at least 2")
        if not isinstance(self.padding, int) or isinstance(self.padding, bool) or self.padding < 0:
            refuse("padding", "an integer of at least 0")
        if self.flip not in FLIPS:
            raise ValueError(f"dataset {self.name!r}: flip {self.flip!r} is not one of {FLIPS}")

    def load(
        self, train: bool, root: str | os.PathLike | None = None, verify: bool = True
    ) -> tuple[Tensor, Tensor]:
        """A whole split: ``uint8 (N, C, H, W)`` images and ``int64 (N,)`` labels.

        Args:
            train: the training split, else the test split.
            root: the recipe's ``data.root`` (None: the dataset's own default).
            verify: check the files are the official release, where the dataset can.
        """
        raise NotImplementedError(f"dataset {self.name!r} does not implement load()")


@dataclass(frozen=True, kw_only=True)
class TorchvisionDataset(Dataset):
    """A dataset torchvision reads from its own folder layout, checked against published md5s.

    Args:
        cls: the torchvision dataset class.
        folder: where its files sit under the root.
        files: file name -> md5 of the official release.
    """

    cls: type
    folder: str
    files: dict[str, str]

    def load(
        self, train: bool, root: str | os.PathLike | None = None, verify: bool = True
    ) -> tuple[Tensor, Tensor]:
        folder, source, download = find_root(root)
        missing = [f for f in self.files if not (folder / self.folder / f).is_file()]
        if missing and not download:
            raise DatasetNotFoundError(
                f"{self.name} not found: looked in {folder / self.folder} (from {source}) and "
                f"missed {', '.join(missing)}. Put the dataset there in torchvision's layout, or "
                "point data.root in the recipe or the QSGT_DATA variable at the folder that "
                "holds it."
            )
        if verify and not missing:
            self._verify(folder / self.folder, source)
        try:
            dataset = self.cls(str(folder), train=train, download=download and bool(missing))
            images = torch.as_tensor(dataset.data)
            labels = torch.as_tensor(dataset.targets, dtype=torch.long)
        except Exception as exc:  # torchvision raises RuntimeError, URLError, pickle errors, ...
            raise DatasetNotFoundError(
                f"{self.name} could not be loaded from {folder} (from {source}): {exc}. Check "
                "the files (a truncated or corrupted download?) or set data.root / QSGT_DATA."
            ) from exc
        images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
        return images.contiguous(), labels

    def _verify(self, folder: Path, source: str) -> None:
        """Each file of the dataset has the md5 of the official release."""
        for file, md5 in self.files.items():
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
                    f"{path} (from {source}) is not the official {self.name} file: its md5 is "
                    f"{digest.hexdigest()}, the release's is {md5}. Replace the file with the "
                    "official one, or set data.verify: false to use a modified copy on purpose"
                )
            _VERIFIED[key] = True


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


_VERIFIED: dict[tuple[str, int, int], bool] = {}  # (path, size, mtime_ns) of files found good


def find_root(root: str | os.PathLike | None = None) -> tuple[Path, str, bool]:
    """``(folder, where it came from, whether downloading is allowed)``."""
    if root is not None:
        return Path(root).expanduser(), "data.root", False
    if os.environ.get("QSGT_DATA"):
        return Path(os.environ["QSGT_DATA"]).expanduser(), "QSGT_DATA", False
    return DEFAULT_ROOT, "the default cache", True
