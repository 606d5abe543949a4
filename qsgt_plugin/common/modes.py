"""Small helpers shared by the leaves (quant, sgt, attribution)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "eval_mode",
    "frozen_parameters",
    "training_mode",
    "unwrap",
]


@contextmanager
def training_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Put every submodule in training (or eval) mode, then restore each one's own flag."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.train(training)
        yield model
    finally:
        for module, mode in modes.items():
            module.training = mode


def eval_mode(model: nn.Module):
    """:func:`training_mode` with ``training=False``."""
    return training_mode(model, False)


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Parameters stop requiring gradients inside the block (input-gradient passes).

    Autograd then records nothing for the weights: no weight-quantizer graph, no weight or
    BatchNorm-affine gradients, no clipping-level gradients, and no ``.grad`` is touched.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model
