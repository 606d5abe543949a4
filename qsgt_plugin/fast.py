"""The fast path: data resident on the device, channels-last, ``torch.compile`` with a fallback.

Quantization-aware training launches many small kernels per layer; on a GPU the plain eager
loop is bound by those launches and by host round trips. The fast path (on by default with
CUDA, ``train.fast_path`` / ``train.compile`` in a recipe) keeps the whole dataset on the GPU as
uint8 with augmentation done there in batches, uses channels-last memory, and compiles the
model. A model that fails to compile trains eagerly, with a log line saying so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["CompiledStep", "resolve_auto"]

log = logging.getLogger(__name__)


def resolve_auto(value: bool | Literal["auto"], device: torch.device) -> bool:
    """``"auto"`` means on for CUDA devices, off elsewhere."""
    return device.type == "cuda" if value == "auto" else bool(value)


class CompiledStep:
    """Builds the training model, compiled when asked, and falls back to eager on failure.

    Args:
        net: the model (unwrapped, not compiled); its state is what checkpoints hold.
        wrap: puts the (possibly compiled) model in its training wrapper (DDP or identity).
        compile: try ``torch.compile``.
    """

    def __init__(self, net: nn.Module, wrap: Callable[[nn.Module], nn.Module], compile: bool):
        self.net = net
        self.wrap = wrap
        self.compiled = compile
        if compile:
            # Brevitas layers split the graph at every block; dynamo compiles each block
            # instance separately and, past its default limit of 8, silently runs the rest eagerly.
            limit = torch._dynamo.config.recompile_limit
            torch._dynamo.config.recompile_limit = max(limit, 64)
        self.model = wrap(torch.compile(net) if compile else net)
        self._checked = not compile
        self._buffers = {k: v.clone() for k, v in net.named_buffers()} if compile else {}
        log.info("training path: %s", "compiled (torch.compile)" if compile else "eager")

    def run(self, step: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
        """Run ``step(model, *args)``; if the first compiled run fails, go eager and rerun."""
        if self._checked:
            return step(self.model, *args)
        try:
            out = step(self.model, *args)
        except Exception as exc:  # compilation errors surface at the first call
            log.warning(
                "torch.compile failed (%s: %s); training eagerly",
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            with torch.no_grad():  # undo what the failed forward did to BatchNorm statistics
                for name, buffer in self.net.named_buffers():
                    buffer.copy_(self._buffers[name])
            self.compiled = False
            self.model = self.wrap(self.net)
            out = step(self.model, *args)
        self._checked = True
        self._buffers = {}
        return out
