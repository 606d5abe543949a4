"""MNIST and CIFAR-10, read through torchvision and checked against the official md5s: the
built-in dataset plugin (``builtin_datasets`` in the package's entry points)."""

from __future__ import annotations

import torchvision

from qsgt_plugin.common.cifar import CIFAR10_MEAN, CIFAR10_STD
from qsgt_plugin.datasets.base import TorchvisionDataset
from qsgt_plugin.markers import hookimpl

__all__ = ["CIFAR10", "MNIST", "register_datasets"]

MNIST = TorchvisionDataset(
    "mnist",
    shape=(1, 28, 28),
    mean=(0.1307,),
    std=(0.3081,),
    train_size=60_000,
    cls=torchvision.datasets.MNIST,
    folder="MNIST/raw",
    # the uncompressed files' published md5s
    files={
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
)
CIFAR10 = TorchvisionDataset(
    "cifar10",
    shape=(3, 32, 32),
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    train_size=50_000,
    padding=4,
    flip="random",
    cls=torchvision.datasets.CIFAR10,
    folder="cifar-10-batches-py",
    files={
        **dict(torchvision.datasets.CIFAR10.train_list),
        **dict(torchvision.datasets.CIFAR10.test_list),
        "batches.meta": torchvision.datasets.CIFAR10.meta["md5"],
    },
)


@hookimpl
def register_datasets(register) -> None:
    register(MNIST)
    register(CIFAR10)
