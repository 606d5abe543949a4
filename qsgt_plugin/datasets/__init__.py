"""Datasets as plugins: the :class:`Dataset` a plugin registers, MNIST and CIFAR-10 built in.

A leaf like ``models/``: it imports only ``common/``, ``errors`` and the pluggy markers.
"""

from qsgt_plugin.common.cifar import CIFAR10_MEAN, CIFAR10_STD
from qsgt_plugin.datasets.base import FLIPS, Dataset, TorchvisionDataset, find_root
from qsgt_plugin.datasets.mnist_cifar10 import CIFAR10, MNIST

__all__ = [
    "CIFAR10",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "FLIPS",
    "MNIST",
    "Dataset",
    "TorchvisionDataset",
    "find_root",
]
