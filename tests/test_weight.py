"""Weight quantizers: DoReFa formula and levels, per-channel integers, gradients."""

from __future__ import annotations

import pytest
import torch
from brevitas.nn import QuantConv2d, QuantLinear

from qsgt_plugin.quant import DoReFaWeightPerTensorFloat, IntWeightPerChannelFloat, dorefa


def dorefa_by_hand(w: torch.Tensor, k: int) -> torch.Tensor:
    n = 2**k - 1
    t = torch.tanh(w)
    r = t / (2 * t.abs().max()) + 0.5
    return 2 * (torch.round(r * n) / n) - 1


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_dorefa_matches_formula_with_at_most_2k_values(bits):
    conv = QuantConv2d(8, 16, 3, weight_quant=DoReFaWeightPerTensorFloat.let(bit_width=bits))
    qw = conv.quant_weight()
    torch.testing.assert_close(qw.value, dorefa_by_hand(conv.weight.detach(), bits))
    assert qw.value.unique().numel() <= 2**bits
    assert qw.value.min() == -1 and qw.value.max() == 1
    # As a Brevitas quant tensor: unsigned k-bit integers 0 .. 2^k - 1.
    ints = (qw.value / qw.scale + qw.zero_point).round()
    assert ints.min() >= 0 and ints.max() <= 2**bits - 1
    torch.testing.assert_close((ints - qw.zero_point) * qw.scale, qw.value)


def test_dorefa_gradient_is_the_straight_through_one():
    w = torch.randn(6, 5, requires_grad=True)
    g = torch.randn(6, 5)
    (dorefa(w, 3) * g).sum().backward()
    # The same formula with rounding replaced by identity has the STE gradient.
    w2 = w.detach().clone().requires_grad_()
    t = torch.tanh(w2)
    (2 * (t / (2 * t.abs().max()) + 0.5) - 1).mul(g).sum().backward()
    torch.testing.assert_close(w.grad, w2.grad)
    assert w.grad.abs().sum() > 0


def test_dorefa_of_zero_weights_is_finite():
    assert torch.isfinite(dorefa(torch.zeros(3, 3), 4)).all()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_int_per_channel_at_most_2k_values_per_channel(bits):
    conv = QuantConv2d(4, 8, 3, weight_quant=IntWeightPerChannelFloat.let(bit_width=bits))
    qw = conv.quant_weight()
    assert qw.scale.shape == (8, 1, 1, 1)
    for channel in qw.value:
        assert channel.unique().numel() <= 2**bits
    # Symmetric max-abs scale: the largest weight of each channel is represented exactly.
    w = conv.weight.detach()
    torch.testing.assert_close(
        qw.value.abs().amax(dim=(1, 2, 3)), w.abs().amax(dim=(1, 2, 3)), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("injector", [DoReFaWeightPerTensorFloat, IntWeightPerChannelFloat])
def test_gradients_reach_the_float_weights(injector):
    fc = QuantLinear(10, 4, bias=True, weight_quant=injector.let(bit_width=4))
    fc(torch.randn(3, 10)).pow(2).sum().backward()
    assert fc.weight.grad is not None and fc.weight.grad.abs().sum() > 0
    assert torch.isfinite(fc.weight.grad).all()
