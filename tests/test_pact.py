"""PACT activation quantizers: forward formula, exact gradients, levels, state."""

from __future__ import annotations

import pytest
import torch
from brevitas.nn import QuantReLU

from qsgt_plugin.quant import PACTActPerTensorFloat, PACTLSQActPerTensorFloat, alphas
from qsgt_plugin.quant.layers import QuantAct
from qsgt_plugin.quant.pact import PACTReLU, pact_quantize


def make_act(injector=PACTActPerTensorFloat, bits=4, alpha=10.0) -> QuantAct:
    return QuantAct(PACTReLU, injector.let(bit_width=bits, alpha_init=alpha))


def formula(x: torch.Tensor, alpha: float, k: int) -> torch.Tensor:
    n = 2**k - 1
    return torch.round(torch.clamp(x, 0, alpha) * n / alpha) * alpha / n


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("injector", [PACTActPerTensorFloat, PACTLSQActPerTensorFloat])
def test_forward_equals_formula_and_takes_at_most_2k_values(injector, bits):
    x = torch.randn(4096) * 4
    act = make_act(injector, bits, alpha=3.0)
    y = act(x)
    torch.testing.assert_close(y, formula(x, 3.0, bits), atol=1e-6, rtol=0)
    assert y.unique().numel() <= 2**bits
    assert y.min().item() == 0 and y.max().item() == pytest.approx(3.0)


def test_exact_alpha_and_input_gradients():
    x = torch.linspace(-2, 12, 15, requires_grad=True)
    act = make_act(bits=4, alpha=10.0)
    act(x).sum().backward()
    alpha = alphas(torch.nn.Sequential(act))["0"]
    # d y_q / d alpha = 1 for x >= alpha: x = 10, 11, 12.
    assert alpha.grad.item() == 3.0
    # d y_q / d x = 1 on [0, alpha), 0 elsewhere.
    expected = ((x >= 0) & (x < 10)).float()
    assert torch.equal(x.grad, expected)
    assert x.grad[2] == 1.0  # x = 0 is inside [0, alpha)


def test_builtin_learned_scale_adds_lsq_term():
    # Brevitas' learned scale counts x = alpha as in range and adds sum(round(x/s) - x/s)/n
    # over in-range x: 2 + 0.5 / 15 on this input (2.03 where PACT gives 3.0).
    x = torch.linspace(-2, 12, 15)
    act = make_act(PACTLSQActPerTensorFloat, bits=4, alpha=10.0)
    act(x).sum().backward()
    (alpha,) = alphas(torch.nn.Sequential(act)).values()
    assert alpha.grad.item() == pytest.approx(2 + 0.5 / 15, abs=1e-5)


def test_alpha_is_the_parameter_itself_initialised_from_alpha_init():
    for injector in (PACTActPerTensorFloat, PACTLSQActPerTensorFloat):
        act = make_act(injector, alpha=7.5)
        (alpha,) = alphas(torch.nn.Sequential(act)).values()
        assert isinstance(alpha, torch.nn.Parameter) and alpha.item() == 7.5
        assert act.act_quant.scale().item() == pytest.approx(7.5 / 15)


def test_alpha_is_kept_positive():
    act = make_act(alpha=1.0)
    (alpha,) = alphas(torch.nn.Sequential(act)).values()
    with torch.no_grad():
        alpha.fill_(-5.0)
    y = act(torch.tensor([0.5, 1.0, 2.0]))
    assert torch.isfinite(y).all() and (y >= 0).all()


def test_both_variants_give_identical_forwards():
    x = torch.randn(8, 16, 5, 5) * 3
    exact, lsq = make_act(PACTActPerTensorFloat, 3, 2.5), make_act(PACTLSQActPerTensorFloat, 3, 2.5)
    assert torch.equal(exact(x), lsq(x))


def test_state_dict_round_trip():
    act = make_act(alpha=10.0)
    (alpha,) = alphas(torch.nn.Sequential(act)).values()
    with torch.no_grad():
        alpha.fill_(4.25)
    fresh = make_act(alpha=10.0)
    fresh.load_state_dict(act.state_dict())
    x = torch.randn(100) * 5
    assert torch.equal(fresh(x), act(x))
    assert next(iter(alphas(torch.nn.Sequential(fresh)).values())).item() == 4.25


def test_pact_quantize_is_usable_on_its_own():
    y = pact_quantize(torch.tensor([-1.0, 0.3, 0.5, 2.0]), torch.tensor(1.0), 2)
    torch.testing.assert_close(y, torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))


def test_works_inside_brevitas_own_layers():
    act = QuantReLU(act_quant=PACTActPerTensorFloat.let(bit_width=2, alpha_init=1.0))
    torch.testing.assert_close(
        act(torch.tensor([-1.0, 0.3, 0.5, 2.0])),
        formula(torch.tensor([-1.0, 0.3, 0.5, 2.0]), 1.0, 2),
    )


@pytest.mark.parametrize("injector", [PACTActPerTensorFloat, PACTLSQActPerTensorFloat])
def test_an_optimizer_built_before_load_state_dict_still_trains_alpha(injector):
    act = make_act(injector, alpha=10.0)
    (alpha,) = alphas(torch.nn.Sequential(act)).values()
    opt = torch.optim.SGD([alpha], lr=1.0)
    source = make_act(injector, alpha=10.0)
    with torch.no_grad():
        next(iter(alphas(torch.nn.Sequential(source)).values())).fill_(2.0)
    act.load_state_dict(source.state_dict())
    assert next(iter(alphas(torch.nn.Sequential(act)).values())) is alpha
    assert alpha.item() == 2.0
    act(torch.tensor([5.0, 6.0])).sum().backward()  # both clipped: d/d alpha = 2 (exact PACT)
    opt.step()
    assert alpha.item() < 2.0
