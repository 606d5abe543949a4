"""The PyTorch side of the deployment exports: a converted model's layers as integer tensors.

:func:`export_copy` returns a copy of a converted model in which

* every weight-quantized ``Conv1d`` / ``Conv2d`` / ``Linear`` is a float layer holding its
  quantized values, and :class:`IntegerWeight` their integers: unsigned ``bits``-bit levels
  ``u`` with a scale and a zero point per output channel (``w = (u - zero_point) * scale``;
  DoReFa's zero point is the half-integer ``(2^k - 1) / 2``);
* every PACT activation (or Brevitas learned-scale activation) is an :class:`IntegerActivation`:
  ``clip(round(x / s), 0, top) * s`` with ``s = alpha / (2^k - 1)``, ``top = 2^k - 1`` (for a
  ReLU6 site also at most ``round(6 / s)``), which is the quantizer's forward exactly.

The copy computes the converted model's values. Traced to ONNX, the activations are
``QuantizeLinear`` (uint8) -> integer ``Clip`` -> ``DequantizeLinear``; the weights are float
initializers that each format's rewrite replaces by its integer storage (torch's exporter would
fold any decoder written at trace time back into a float constant).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from brevitas.nn.quant_layer import QuantNonLinearActLayer, QuantWeightBiasInputOutputLayer
from torch import Tensor, nn

from qsgt_plugin.errors import ExportError
from qsgt_plugin.quant.pact import ALPHA_MIN, PACTReLU6
from qsgt_plugin.quant.state import clip_level

__all__ = ["IntegerActivation", "IntegerWeight", "export_copy", "integer_weight"]


@dataclass
class IntegerWeight:
    """``w = (u - zero_point) * scale`` per output channel (axis 0), ``u`` in ``0 .. 2^bits - 1``.

    ``zero_point`` is an integer or a half-integer (DoReFa's centre between two levels).
    """

    u: Tensor
    """uint8 (int16 for 9 to 16 bits) tensor of the weight's shape."""
    scale: Tensor
    """float32, one per output channel."""
    zero_point: Tensor
    """float64, one per output channel: an integer or a half-integer."""
    bits: int

    def values(self) -> Tensor:
        """The float weights the integers stand for."""
        shape = (-1,) + (1,) * (self.u.dim() - 1)
        centred = self.u.double() - self.zero_point.view(shape)
        return (centred * self.scale.double().view(shape)).float()

    def symmetric(self) -> tuple[Tensor, Tensor]:
        """``(j, t)`` with ``w = j * t``, ``j`` integer: ``u - z``, or ``2u - 2z`` (scale halved)
        where the zero point is a half-integer."""
        shape = (-1,) + (1,) * (self.u.dim() - 1)
        half = bool(((self.zero_point * 2) % 2 != 0).any())
        factor = 2 if half else 1
        j = factor * (self.u.double() - self.zero_point.view(shape))
        return j.round().to(torch.int32), self.scale / factor


def integer_weight(name: str, layer: QuantWeightBiasInputOutputLayer) -> IntegerWeight:
    """The quantized weights of a Brevitas layer as unsigned integers (refused if they are not)."""
    with torch.no_grad():
        quant = layer.quant_weight()
    value, bits = quant.value.detach().double(), int(quant.bit_width)
    out = value.shape[0]
    shape = (out,) + (1,) * (value.dim() - 1)
    scale = torch.as_tensor(quant.scale).detach().double().expand(shape)
    zero = torch.as_tensor(quant.zero_point).detach().double().expand(shape)
    if bool(quant.signed):  # Brevitas' signed integers: u = i + 2^(bits-1), zero point 2^(bits-1)
        zero = zero + 2 ** (bits - 1)
    u = value / scale + zero
    if (u - u.round()).abs().max() > 1e-3 or u.min() < -1e-3 or u.round().max() > 2**bits - 1:
        raise ExportError(
            f"{name}: its quantized weights are not {bits}-bit integers times a scale per "
            "output channel; only per-tensor or per-channel weight quantizers export"
        )
    if bool((scale.flatten(1) != scale.flatten(1)[:, :1]).any()):
        raise ExportError(f"{name}: weight scales below the output channel do not export")
    return IntegerWeight(
        u=u.round().to(torch.uint8 if bits <= 8 else torch.int16),
        scale=scale.flatten(1)[:, 0].float(),
        zero_point=zero.flatten(1)[:, 0],
        bits=bits,
    )


class _ActivationQuant(torch.autograd.Function):
    """``clip(round(x / s), 0, top) * s``, written to ONNX as Q -> Clip -> DQ on uint8, or with
    float ops (``integer=False``)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float, top: int, integer: bool) -> Tensor:
        return (x / scale).round().clamp(0, top) * scale

    @staticmethod
    def symbolic(g, x, scale: float, top: int, integer: bool):
        s = g.op("Constant", value_t=torch.tensor(scale, dtype=torch.float32))
        if not integer:
            low = g.op("Constant", value_t=torch.tensor(0.0))
            high = g.op("Constant", value_t=torch.tensor(float(top)))
            return g.op("Mul", g.op("Clip", g.op("Round", g.op("Div", x, s)), low, high), s)
        zp = g.op("Constant", value_t=torch.tensor(0, dtype=torch.uint8))
        q = g.op("QuantizeLinear", x, s, zp)
        if top < 255:  # uint8 saturation clips at 255 by itself
            high = g.op("Constant", value_t=torch.tensor(top, dtype=torch.uint8))
            q = g.op("Clip", q, zp, high)
        return g.op("DequantizeLinear", q, s, zp)


class IntegerActivation(nn.Module):
    """An unsigned activation quantizer with one clipping level, as in PACT.

    ``integer`` chooses its ONNX form: uint8 quantize / clip / dequantize (which onnxruntime
    runs on integer kernels, and which makes it quantize float weights next to it), or the same
    arithmetic in float ops.
    """

    def __init__(self, scale: float, top: int, bits: int) -> None:
        super().__init__()
        self.scale, self.top, self.bits = scale, top, bits
        self.integer = True

    def forward(self, x: Tensor) -> Tensor:
        return _ActivationQuant.apply(x, self.scale, self.top, self.integer)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, scale={self.scale:.6g}, top={self.top}"


def integer_activation(name: str, layer: QuantNonLinearActLayer) -> IntegerActivation:
    proxy = layer.act_quant
    level = clip_level(layer)
    if level is None or proxy.is_signed:
        raise ExportError(f"{name}: only unsigned activations with one clipping level export")
    bits = int(proxy.bit_width())
    if bits > 8:
        raise ExportError(f"{name}: {bits}-bit activations do not fit uint8")
    levels = 2**bits - 1
    alpha = level.detach().abs().clamp(min=ALPHA_MIN).float()
    scale = (alpha / levels).item()  # the quantizer's own float32 step
    top = levels
    act_impl = type(proxy.fused_activation_quant_proxy.activation_impl)
    if act_impl is PACTReLU6:  # ReLU6 first: no value above 6 survives
        top = min(top, round(6.0 / scale))
    return IntegerActivation(scale, top, bits)


def export_copy(model: nn.Module) -> tuple[nn.Module, list[IntegerWeight]]:
    """A float copy of ``model`` (eval mode) and the integer form of its quantized weights.

    In the copy, each weight-quantized layer is a plain float layer holding its quantized
    values (which the exporters find again in the traced graph by their bytes) and each
    activation quantizer an :class:`IntegerActivation`. Float layers stay as they are.
    """
    model = copy.deepcopy(model).eval()
    weights = []
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantNonLinearActLayer) and module.act_quant.is_quant_enabled:
            model.set_submodule(name, integer_activation(name, module))
        elif isinstance(module, QuantNonLinearActLayer):
            act = module.act_quant.fused_activation_quant_proxy.activation_impl
            model.set_submodule(name, nn.ReLU6() if isinstance(act, PACTReLU6) else nn.ReLU())
        elif isinstance(module, QuantWeightBiasInputOutputLayer):
            twin = _float_twin(module)
            if module.weight_quant.is_quant_enabled:
                weights.append(integer_weight(name, module))
                twin.weight.data.copy_(weights[-1].values())
            model.set_submodule(name, twin)
    return model, weights


def _float_twin(layer: QuantWeightBiasInputOutputLayer) -> nn.Module:
    """A float layer with the Brevitas layer's hyper-parameters, float weights and bias."""
    if isinstance(layer, nn.Linear):
        twin = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    else:
        cls = nn.Conv1d if layer.weight.dim() == 3 else nn.Conv2d
        twin = cls(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
        )
    if isinstance(twin, nn.Conv2d | nn.Conv1d) and layer.padding_mode != "zeros":
        raise ExportError(f"{type(layer).__name__} with padding_mode={layer.padding_mode!r}")
    twin.load_state_dict({k: v for k, v in layer.state_dict().items() if k in ("weight", "bias")})
    return twin.eval()
