"""PACT activation quantizers as Brevitas injectors.

PACT: Choi et al. 2018, "PACT: Parameterized Clipping Activation for Quantized Neural Networks",
https://arxiv.org/abs/1805.06085.

    y   = clip(x, 0, alpha)
    y_q = round(y * (2^k - 1) / alpha) * alpha / (2^k - 1)

with one learned clipping level ``alpha`` per activation call site. The paper trains ``alpha``
with the straight-through estimator through ``round``, which gives

    d y_q / d alpha = 1 where x >= alpha, else 0
    d y_q / d x     = 1 where 0 <= x < alpha, else 0.

Two injectors share that forward:

* :class:`PACTActPerTensorFloat` implements exactly these gradients.
* :class:`PACTLSQActPerTensorFloat` is Brevitas' built-in learned scale
  (``Uint8ActPerTensorFloatMaxInit``), whose ``alpha`` gradient adds an LSQ-like term from the
  in-range values. Its ``alpha`` is the same number, so a model trained with one can run with the
  other (export uses this).

Both read ``bit_width`` and ``alpha_init`` (default 10.0, the paper's initial value).
"""

from __future__ import annotations

import torch
from brevitas import config as brevitas_config
from brevitas.core.utils import StatelessBuffer
from brevitas.inject import ExtendedInjector, this
from brevitas.proxy import ActQuantProxyFromInjector
from brevitas.quant.base import UintQuant
from brevitas.quant.scaled_int import Uint8ActPerTensorFloatMaxInit
from brevitas.quant.solver.act import ActQuantSolver
from torch import Tensor, nn

__all__ = [
    "ALPHA_MIN",
    "PACTActPerTensorFloat",
    "PACTClipLevel",
    "PACTLSQActPerTensorFloat",
    "PACTQuant",
    "PACTReLU",
    "PACTReLU6",
    "StableActQuantProxy",
    "pact_quantize",
]


ALPHA_MIN = 1e-3
"""The smallest clipping level: the forward pass floors alpha here, and ``convert()`` refuses an
``alpha_init`` at or below it."""


class _PACTFunction(torch.autograd.Function):
    """Forward of PACT with the paper's straight-through gradients."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, levels: Tensor) -> Tensor:
        ctx.save_for_backward(x, alpha)
        # round(clip(x, 0, alpha) * n / alpha) * alpha / n, in the order of Brevitas' integer
        # quantizer so that both injectors agree bit for bit.
        # In-place steps on the one intermediate: activations are the largest tensors here.
        scale = alpha / levels
        return (x / scale).round_().clamp_(0, levels).mul_(scale)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, alpha = ctx.saved_tensors
        grad_x = grad_alpha = None
        if x.device.type == "cpu" and alpha.numel() == 1:
            # Boolean masks are slow on the CPU; the fused backward kernels of hardtanh and
            # threshold select the same elements (reading alpha costs no device sync here).
            a = alpha.item()
            if ctx.needs_input_grad[0]:  # 0 <= x < alpha
                grad_x = torch.ops.aten.hardtanh_backward(grad, x, -_tiny(x), a)
            if ctx.needs_input_grad[1]:  # x >= alpha, i.e. x > the float just below alpha
                below = torch.nextafter(alpha, alpha.new_tensor(-torch.inf)).item()
                grad_alpha = torch.ops.aten.threshold_backward(grad, x, below).sum().view_as(alpha)
            return grad_x, grad_alpha, None
        clipped = x >= alpha
        if ctx.needs_input_grad[0]:
            grad_x = torch.where((x >= 0) & ~clipped, grad, 0.0)
        if ctx.needs_input_grad[1]:  # not needed by input-gradient (saliency) passes
            grad_alpha = torch.where(clipped, grad, 0.0).sum_to_size(alpha.shape)
        return grad_x, grad_alpha, None


def _tiny(x: Tensor) -> float:
    """A threshold t with ``x > -t`` exactly when ``x >= 0`` (up to negative denormals)."""
    return torch.finfo(x.dtype).tiny


def pact_quantize(x: Tensor, alpha: Tensor, bit_width: int | Tensor) -> Tensor:
    """Quantize ``x`` to ``bit_width`` unsigned bits on ``[0, alpha]``, PACT's way.

    Example::

        >>> x = torch.tensor([-1.0, 0.3, 0.5, 2.0])
        >>> pact_quantize(x, torch.tensor(1.0), 2)
        tensor([0.0000, 0.3333, 0.6667, 1.0000])
    """
    levels = torch.as_tensor(2.0**bit_width - 1, dtype=x.dtype, device=x.device)
    return _PACTFunction.apply(x, alpha, levels)


class PACTClipLevel(nn.Module):
    """The learned clipping level ``alpha``, stored as itself so weight decay on it is PACT's L2.

    Args:
        alpha_init: initial value of ``alpha``.
        alpha_min: floor applied in the forward pass, which keeps ``alpha`` positive.
    """

    def __init__(self, alpha_init: float, alpha_min: float) -> None:
        super().__init__()
        if not alpha_init > alpha_min:
            raise ValueError(f"alpha_init must be > {alpha_min}, got {alpha_init}")
        self.alpha_min = float(alpha_min)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def forward(self) -> Tensor:
        return self.alpha.clamp(min=self.alpha_min)


class PACTQuant(nn.Module):
    """Brevitas ``tensor_quant`` for exact PACT.

    Returns the tuple Brevitas activation proxies expect: the de-quantized output, the scale
    ``alpha / (2^k - 1)``, the zero point 0 and the bit width.
    """

    def __init__(self, clip_level_impl: nn.Module, bit_width_impl: nn.Module) -> None:
        super().__init__()
        self.clip_level_impl = clip_level_impl
        self.bit_width_impl = bit_width_impl
        self.zero_point = StatelessBuffer(torch.tensor(0.0))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        alpha = self.clip_level_impl()
        bit_width = self.bit_width_impl()
        y = pact_quantize(x, alpha, bit_width)
        scale = alpha / (2.0**bit_width - 1)
        return y, scale, self.zero_point(), bit_width


class _ClosedClamp(torch.autograd.Function):
    """``clamp(x, 0, upper)`` whose gradient is 1 on the closed-open interval ``[0, upper)``."""

    @staticmethod
    def forward(ctx, x: Tensor, upper: float | None) -> Tensor:
        ctx.save_for_backward(x)
        ctx.upper = upper
        return x.clamp(min=0) if upper is None else x.clamp(min=0, max=upper)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        if ctx.upper is None:  # x >= 0
            return torch.ops.aten.threshold_backward(grad, x, -_tiny(x)), None
        return torch.ops.aten.hardtanh_backward(grad, x, -_tiny(x), ctx.upper), None


class PACTReLU(nn.Module):
    """ReLU with PACT's boundary convention: the same values, gradient 1 at ``x = 0``."""

    def __init__(self) -> None:  # an explicit signature, for Brevitas' dependency injection
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return _ClosedClamp.apply(x, None)


class PACTReLU6(nn.Module):
    """ReLU6 with the boundary convention of :class:`PACTReLU`."""

    def __init__(self) -> None:
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return _ClosedClamp.apply(x, 6.0)


class StableActQuantProxy(ActQuantProxyFromInjector):
    """Brevitas' activation proxy that keeps its quantizer across ``load_state_dict``.

    Brevitas re-creates a proxy's quantizer (and so its ``alpha`` parameter) whenever a state
    dict is loaded, which silently detaches the parameter from any optimizer built before the
    load. A learned clipping level has nothing to re-derive from the loaded weights, so the
    values are loaded into the existing parameter instead.
    """

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        reinit = brevitas_config.REINIT_ON_STATE_DICT_LOAD
        brevitas_config.REINIT_ON_STATE_DICT_LOAD = False
        try:
            super()._load_from_state_dict(*args, **kwargs)
        finally:
            brevitas_config.REINIT_ON_STATE_DICT_LOAD = reinit


class PACTClipScaling(ExtendedInjector):
    """Mixin: a learned clipping level with PACT's exact gradients."""

    proxy_class = StableActQuantProxy
    tensor_quant = PACTQuant
    clip_level_impl = PACTClipLevel
    alpha_init = 10.0
    alpha_min = ALPHA_MIN


class PACTActPerTensorFloat(UintQuant, PACTClipScaling, ActQuantSolver):
    """Unsigned k-bit activations on ``[0, alpha]``, one ``alpha`` per layer, exact PACT gradient.

    Example::

        >>> from brevitas.nn import QuantReLU
        >>> act = QuantReLU(act_quant=PACTActPerTensorFloat.let(bit_width=2, alpha_init=1.0))
        >>> act(torch.tensor([-1.0, 0.3, 0.5, 2.0]))
        tensor([0.0000, 0.3333, 0.6667, 1.0000], grad_fn=<_PACTFunctionBackward>)
    """

    bit_width = 4


class PACTLSQActPerTensorFloat(Uint8ActPerTensorFloatMaxInit):
    """Brevitas' learned-scale activations, initialised and read as PACT's ``alpha``."""

    proxy_class = StableActQuantProxy
    bit_width = 4
    alpha_init = 10.0
    max_val = this.alpha_init
