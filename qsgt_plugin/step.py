"""One training step, and the fast path that runs it compiled with an eager fallback.

:func:`make_train_step` is the step the engine and the benchmarks share: cross-entropy, or the
SGT objective when one is given, backward, and the optimizer update. :class:`CompiledStep`
runs it on a model that ``torch.compile`` compiled; a model that fails to compile trains
eagerly, with a log line saying so.

Quantization-aware training launches many small kernels per layer; on a GPU the plain eager
loop is bound by those launches and by host round trips. The fast path (``train.fast_path``)
keeps the whole dataset on the device as uint8 with augmentation done there in batches and
uses channels-last memory; ``train.compile`` compiles the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from qsgt_plugin.sgt import SaliencyGuidedTraining

__all__ = ["CompiledStep", "TrainStep", "make_train_step", "resolve_auto"]

log = logging.getLogger(__name__)

TrainStep = Callable[[Tensor, Tensor], Tensor]
"""``step(x, y)`` trains on one batch and returns ``[loss, ce, kl]`` (detached, on the device)."""


def resolve_auto(value: bool | Literal["auto"], device: torch.device) -> bool:
    """``"auto"`` means on for CUDA devices, off elsewhere."""
    return device.type == "cuda" if value == "auto" else bool(value)


def make_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: Callable[[Tensor, Tensor], Tensor],
    sgt: SaliencyGuidedTraining | None = None,
) -> TrainStep:
    """A function that trains ``model`` on one batch.

    Args:
        model: what the forward passes run (compiled or DDP-wrapped as the caller likes).
        optimizer: stepped once per call, after the backward pass.
        criterion: the loss on the clean logits.
        sgt: the SGT objective on ``model``; None trains with ``criterion`` alone.
    """

    def step(x: Tensor, y: Tensor) -> Tensor:
        if sgt is not None and sgt.active:
            loss = sgt.loss(x, y, criterion)
            parts = torch.stack([loss.detach(), sgt.last["ce"], sgt.last["kl"]])
        else:
            loss = criterion(model(x), y)
            parts = torch.stack([loss.detach(), loss.detach(), torch.zeros_like(loss.detach())])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return parts

    return step


class CompiledStep:
    """Runs a training step on the model compiled when asked, eagerly if compilation fails.

    Args:
        model: the model (unwrapped, not compiled); its state is what checkpoints hold.
        wrap: puts the (possibly compiled) model in its training wrapper (DDP or identity).
        build: makes the step function for the model to run (see :func:`make_train_step`).
        compile: try ``torch.compile``.
    """

    def __init__(
        self,
        model: nn.Module,
        wrap: Callable[[nn.Module], nn.Module],
        build: Callable[[nn.Module], TrainStep],
        compile: bool,
    ) -> None:
        self.model = model
        self.wrap = wrap
        self.build = build
        self.compiled = compile
        if compile:
            # Brevitas layers split the graph at every block; dynamo compiles each block
            # instance separately and, past its default limit of 8, silently runs the rest eagerly.
            limit = torch._dynamo.config.recompile_limit
            torch._dynamo.config.recompile_limit = max(limit, 64)
        self.runner = wrap(torch.compile(model) if compile else model)
        self.step = build(self.runner)
        self._checked = not compile
        self._buffers = {k: v.clone() for k, v in model.named_buffers()} if compile else {}

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """Train on one batch; if the first compiled step fails, go eager and rerun it."""
        if self._checked:
            return self.step(x, y)
        try:
            out = self.step(x, y)
        except Exception as exc:  # compilation errors surface at the first call
            log.warning(
                "torch.compile failed (%s: %s); training eagerly",
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            # The optimizer has not stepped (it runs last); undo what the failed forward did to
            # BatchNorm statistics.
            with torch.no_grad():
                for name, buffer in self.model.named_buffers():
                    buffer.copy_(self._buffers[name])
            self.compiled = False
            self.runner = self.wrap(self.model)
            self.step = self.build(self.runner)
            out = self.step(x, y)
        self._checked = True
        self._buffers = {}
        return out
