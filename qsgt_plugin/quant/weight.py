"""Weight quantizers as Brevitas injectors.

* :class:`DoReFaWeightPerTensorFloat`: DoReFa-Net's k-bit weights (Zhou et al. 2016,
  https://arxiv.org/abs/1606.06160, eq. 9), the weight quantizer of the PACT paper:

      w_q = 2 * quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1,
      quantize_k(r) = round((2^k - 1) r) / (2^k - 1)

  with the straight-through estimator through ``round``. Values lie on ``2^k`` levels in
  ``[-1, 1]``; as a Brevitas quant tensor they are ``(i - zero_point) * scale`` with
  ``i`` in ``0 .. 2^k - 1``, ``scale = 2 / (2^k - 1)`` and ``zero_point = (2^k - 1) / 2``.
* :class:`IntWeightPerChannelFloat`: Brevitas' symmetric narrow-range per-channel integer
  weights with a max-abs scale, the export-friendly option.

Both read ``bit_width``.
"""

from __future__ import annotations

import torch
from brevitas.function.ops_ste import round_ste
from brevitas.inject import ExtendedInjector
from brevitas.quant.base import UintQuant
from brevitas.quant.scaled_int import Int8WeightPerChannelFloat
from brevitas.quant.solver.weight import WeightQuantSolver
from torch import Tensor, nn

__all__ = ["DoReFaWeightPerTensorFloat", "DoReFaWeightQuant", "IntWeightPerChannelFloat", "dorefa"]


def dorefa(w: Tensor, bit_width: int | Tensor) -> Tensor:
    """DoReFa k-bit weight quantization of ``w`` (straight-through through the rounding).

    Example::

        >>> dorefa(torch.tensor([-2.0, -0.1, 0.0, 0.1, 2.0]), 2)
        tensor([-1.0000, -0.3333,  0.3333,  0.3333,  1.0000])
    """
    levels = 2.0**bit_width - 1
    t = torch.tanh(w)
    # A weight tensor of zeros has no range; the floor keeps it finite (all values map to the
    # level next to zero, as DoReFa has no zero level for odd 2^k - 1).
    r = t / (2 * t.abs().max().clamp(min=1e-12)) + 0.5
    # (2 i - n) / n, written as integer times scale: the form a symmetric integer quantizer
    # dequantizes to, so an export with scale 1/n reproduces these values bit for bit.
    return (2 * round_ste(r * levels) - levels) * (1 / levels)


class DoReFaWeightQuant(nn.Module):
    """Brevitas ``tensor_quant`` for DoReFa weights: returns value, scale, zero point, bit width."""

    def __init__(self, bit_width_impl: nn.Module) -> None:
        super().__init__()
        self.bit_width_impl = bit_width_impl

    def forward(self, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        bit_width = self.bit_width_impl()
        levels = 2.0**bit_width - 1
        return dorefa(w, bit_width), 2.0 / levels, levels / 2.0, bit_width


class DoReFaScaling(ExtendedInjector):
    """Mixin: DoReFa's tanh-normalised, parameter-free weight scaling."""

    tensor_quant = DoReFaWeightQuant


class DoReFaWeightPerTensorFloat(UintQuant, DoReFaScaling, WeightQuantSolver):
    """k-bit DoReFa weights, one range per tensor.

    Example::

        >>> from brevitas.nn import QuantConv2d
        >>> conv = QuantConv2d(3, 8, 3, weight_quant=DoReFaWeightPerTensorFloat.let(bit_width=2))
        >>> conv.quant_weight().value.unique().numel() <= 4
        True
    """

    bit_width = 4


class IntWeightPerChannelFloat(Int8WeightPerChannelFloat):
    """Symmetric narrow-range k-bit integer weights with one max-abs scale per output channel."""

    bit_width = 4
