"""One training step, and the fast path that runs it compiled with an eager fallback.

:func:`make_train_step` is the step the engine and the benchmarks share: cross-entropy, or the
SGT objective when one is given, backward, and the optimizer update. :class:`CompiledStep`
runs it on a model that ``torch.compile`` compiled; a model that fails to compile trains
eagerly, with a log line saying so.

Quantization-aware training launches many small kernels per layer; on a GPU the plain eager
loop is bound by those launches and by host round trips. The fast path (``train.fast_path``)
keeps the whole dataset on the device as uint8 with augmentation done there in batches and
uses channels-last memory; ``train.compile`` compiles the model.

``train.precision`` runs the step's forward passes (the clean one, SGT's saliency pass and its
masked pass) under ``torch.autocast`` in bfloat16 where the hardware computes it natively;
parameters, their gradients, the optimizer state and the losses stay float32, and the backward
pass runs outside the autocast region, as ``torch.autocast`` asks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from qsgt_plugin.sgt import SaliencyGuidedTraining

__all__ = [
    "CompiledStep",
    "TrainStep",
    "make_train_step",
    "native_bf16",
    "resolve_auto",
    "resolve_channels_last",
    "resolve_precision",
]

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "auto"]

TrainStep = Callable[[Tensor, Tensor], Tensor]
"""``step(x, y)`` trains on one batch and returns ``[loss, ce, kl]`` (detached, on the device)."""


def resolve_auto(value: bool | Literal["auto"], device: torch.device) -> bool:
    """``"auto"`` means on for CUDA devices, off elsewhere."""
    return device.type == "cuda" if value == "auto" else bool(value)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (where autocast pays).

    CPUs with AVX512-BF16 or AMX tiles (oneDNN's bf16 kernels), CUDA devices of compute
    capability 8.0 (Ampere) or newer. Elsewhere bf16 is emulated and slower than float32.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def resolve_precision(value: Precision, device: torch.device) -> Literal["fp32", "bf16"]:
    """``"auto"`` is ``bf16`` where :func:`native_bf16` says the device has it, else ``fp32``."""
    if value == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return value


def resolve_channels_last(value: bool | Literal["auto"], device: torch.device) -> bool:
    """``"auto"``: on for CPUs and CUDA devices, where it measured faster for these CNNs.

    ResNet-20 at batch 128 on 2 CPU cores: float32 11-17% faster, bf16 autocast needs it for
    oneDNN's blocked kernels (``benchmarks/step_time.py``); on CUDA, tensor-core convolutions
    take channels-last (NHWC) natively.
    """
    if value == "auto":
        return device.type in ("cpu", "cuda")
    return bool(value)


def make_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: Callable[[Tensor, Tensor], Tensor],
    sgt: SaliencyGuidedTraining | None = None,
    precision: Literal["fp32", "bf16"] = "fp32",
) -> TrainStep:
    """A function that trains ``model`` on one batch.

    Args:
        model: what the forward passes run (compiled or DDP-wrapped as the caller likes).
        optimizer: stepped once per call, after the backward pass.
        criterion: the loss on the clean logits.
        sgt: the SGT objective on ``model``; None trains with ``criterion`` alone.
        precision: ``bf16`` runs the forward passes (SGT's saliency and masked passes included)
            under ``torch.autocast``; the logits are cast to float32 before any loss.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16 (resolve auto first), got {precision!r}")

    def forward(x: Tensor, y: Tensor, device_type: str) -> tuple[Tensor, Tensor]:
        with torch.autocast(device_type, torch.bfloat16, enabled=precision == "bf16"):
            if sgt is not None and sgt.active:
                loss = sgt.loss(x, y, criterion)
                return loss, torch.stack([loss.detach(), sgt.last["ce"], sgt.last["kl"]])
            loss = criterion(model(x).float(), y)
        detached = loss.detach()
        return loss, torch.stack([detached, detached, torch.zeros_like(detached)])

    def step(x: Tensor, y: Tensor) -> Tensor:
        loss, parts = forward(x, y, x.device.type)
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
            # SGT's fused path takes the input gradient with retain_graph=True before the
            # step's backward; AOTAutograd's donated buffers (a memory saving) forbid that.
            torch._functorch.config.donated_buffer = False
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
