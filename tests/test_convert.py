"""convert() on model zoos not written here, plus its policies and errors."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision
from torch import nn

import qsgt_plugin
from qsgt_plugin.quant import QuantizationWarning, alphas, convert, quantization_disabled
from qsgt_plugin.quant.layers import CallSiteActivation, QuantAct

# timm zero-initialises the last BatchNorm of each block, which zeroes every gradient inside the
# residual branches at initialisation; the gradient checks need them alive.
ZOO = {
    "timm_resnet18": (
        lambda: timm.create_model("resnet18", num_classes=10, zero_init_last=False),
        3,
    ),
    "timm_resnet50": (
        lambda: timm.create_model("resnet50", num_classes=10, zero_init_last=False),
        3,
    ),
    "tv_resnet18": (lambda: torchvision.models.resnet18(num_classes=10), 3),
    "tv_mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), 3),
    "resnet20": (lambda: timm.create_model("resnet20", num_classes=10), 3),
}


def act_outputs(model: nn.Module) -> tuple[list, list]:
    """Collect the outputs of every quantized activation of ``model`` during a forward."""
    outs = []
    handles = [
        m.register_forward_hook(lambda _m, _i, o: outs.append(o.detach()))
        for m in model.modules()
        if isinstance(m, QuantAct)
    ]
    return outs, handles


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_forward_backward_levels_and_alpha_gradients(name, bits):
    build, chans = ZOO[name]
    float_model = build()
    qmodel = convert(float_model, bits=bits, alpha_init=0.5)
    qmodel.train()
    x = torch.randn(4, chans, 64, 64)
    outs, handles = act_outputs(qmodel)
    y = qmodel(x)
    for h in handles:
        h.remove()
    y.logsumexp(1).sum().backward()
    assert y.shape == (4, 10) and torch.isfinite(y).all()
    assert outs, "no quantized activation ran"
    for out in outs:
        assert out.unique().numel() <= 2**bits
    for layer, alpha in alphas(qmodel).items():
        assert alpha.grad is not None and alpha.grad.abs() > 0, layer
    grads = [p.grad for p in qmodel.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_with_quantization_disabled_reproduces_float(name):
    build, chans = ZOO[name]
    float_model = build().eval()
    qmodel = convert(float_model, bits=4).eval()
    x = torch.randn(2, chans, 64, 64)
    with torch.no_grad():
        expected = float_model(x)
        with quantization_disabled(qmodel):
            got = qmodel(x)
        quantized = qmodel(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(quantized, expected, atol=1e-3)  # quantization is back on after


def test_one_alpha_per_call_site_of_torchvision_resnet():
    qmodel = convert(torchvision.models.resnet18(), bits=4)
    sites = alphas(qmodel)
    assert len(sites) == 17  # stem + 8 blocks x 2 calls of one shared relu
    assert len({id(a) for a in sites.values()}) == 17
    assert isinstance(qmodel.layer1[0].relu, CallSiteActivation)
    assert {"layer1.0.relu.0", "layer1.0.relu.1"} <= set(sites)


def test_call_sites_get_their_own_quantizer_in_order():
    qmodel = convert(torchvision.models.resnet18(), bits=4).train()
    a0, a1 = qmodel.layer1[0].relu
    with torch.no_grad():
        next(iter(alphas(nn.Sequential(a0)).values())).fill_(0.25)
        next(iter(alphas(nn.Sequential(a1)).values())).fill_(0.75)
    seen = []
    hooks = [
        a.register_forward_hook(lambda _m, _i, o: seen.append(o.max().item())) for a in (a0, a1)
    ]
    for _ in range(2):  # the second pass must start again at site 0
        seen.clear()
        qmodel(torch.randn(2, 3, 32, 32))
        assert seen == pytest.approx([0.25, 0.75])
    for h in hooks:
        h.remove()


def test_does_not_modify_its_argument_unless_inplace():
    model = timm.create_model("resnet20")
    before = copy.deepcopy(model.state_dict())
    qmodel = convert(model, bits=4)
    assert qmodel is not model and type(model.conv1) is nn.Conv2d
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    same = convert(model, bits=4, inplace=True)
    assert same is model and type(model.conv1) is not nn.Conv2d
    # inplace keeps the very same parameter objects (an existing optimizer stays valid)
    assert same.layer1[0].conv1.weight is same.layer1[0].conv1.weight


def test_inplace_shares_parameters_with_the_float_model():
    model = timm.create_model("resnet20")
    w = model.layer2[1].conv2.weight
    convert(model, bits=4, inplace=True)
    assert model.layer2[1].conv2.weight is w


def test_first_and_last_layers_default_to_8_bits_or_float():
    summary = convert(timm.create_model("resnet20"), bits=4).qsgt_summary
    assert summary.quantized["conv1"] == "Conv2d w8 int_per_channel"
    assert summary.quantized["fc"] == "Linear w8 int_per_channel"
    assert summary.quantized["layer1.0.conv1"] == "Conv2d w4 dorefa"
    qmodel = convert(timm.create_model("resnet20"), bits=4, first_last_bits=None)
    assert type(qmodel.conv1) is nn.Conv2d and type(qmodel.fc) is nn.Linear
    assert set(qmodel.qsgt_summary.kept_float) == {"conv1", "fc"}


def test_first_and_last_keep_the_weight_scale_unless_asked():
    float_model = timm.create_model("resnet20")
    qmodel = convert(float_model, bits=4)
    # Per-channel integers keep the classifier's weights close to the float ones; DoReFa maps
    # them to [-1, 1], which would inflate the logits of a layer with no BatchNorm after it.
    w, qw = float_model.fc.weight, qmodel.fc.quant_weight().value
    assert (qw - w).abs().max() <= w.abs().amax(1).max() / 127
    dorefa_ends = convert(float_model, bits=4, first_last_weight_quant=None)
    assert dorefa_ends.qsgt_summary.quantized["fc"] == "Linear w8 dorefa"
    assert dorefa_ends.fc.quant_weight().value.abs().max() == 1


def test_first_and_last_follow_execution_order_not_registration_order():
    class Reordered(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 3)  # registered first, runs last
            self.stem = nn.Conv2d(1, 8, 3)

        def forward(self, x):
            return self.head(self.stem(x).mean((2, 3)))

    summary = convert(Reordered(), bits=3, example_inputs=torch.randn(1, 1, 8, 8)).qsgt_summary
    assert summary.quantized == {
        "head": "Linear w8 int_per_channel",
        "stem": "Conv2d w8 int_per_channel",
    }


def test_separate_weight_and_activation_bits_and_overrides():
    qmodel = convert(
        timm.create_model("resnet20"),
        bits=4,
        weight_bits=3,
        act_bits=5,
        overrides={
            "layer3.*": {"weight_bits": 6},
            "layer3.2.act2": None,
            "layer1.0.act1": {"act_bits": 2},
        },
    )
    s = qmodel.qsgt_summary.quantized
    assert s["layer1.0.conv1"] == "Conv2d w3 dorefa"
    assert s["layer1.0.act2"] == "ReLU a5"
    assert s["layer1.0.act1"] == "ReLU a2"
    assert s["layer3.1.conv2"] == "Conv2d w6 dorefa"
    assert type(qmodel.layer3[2].act2) is nn.ReLU
    assert qmodel.layer2[0].conv1.weight_quant.bit_width() == 3
    assert qmodel.layer1[0].act1.act_quant.bit_width() == 2


def test_unsupported_layers_are_reported_not_skipped_silently():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GELU(), nn.Conv2d(8, 8, 3), nn.SiLU(), nn.ReLU())
    with pytest.warns(QuantizationWarning, match=r"1 \(GELU.*3 \(SiLU"):
        qmodel = convert(model, bits=4, example_inputs=torch.randn(1, 3, 16, 16))
    assert set(qmodel.qsgt_summary.unquantized) == {"1", "3"}
    assert "4" in qmodel.qsgt_summary.quantized


def test_conv_subclasses_with_their_own_forward_are_reported():
    model = timm.create_model("resnet18", num_classes=4, pretrained=False)
    model.conv1 = timm.layers.Conv2dSame(3, 64, 7, stride=2)
    with pytest.warns(QuantizationWarning, match="Conv2dSame"):
        qmodel = convert(model, bits=4)
    assert type(qmodel.conv1) is timm.layers.Conv2dSame


@pytest.mark.parametrize("bits", [0, 1, 9, 4.0, "4", True, None])
def test_bad_bits_are_value_errors(bits):
    with pytest.raises(ValueError, match=r"2\.\.8"):
        convert(timm.create_model("resnet20"), bits=bits)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown quantization method 'lsq'; known: pact, pact_lsq"
    ):
        convert(timm.create_model("resnet20"), method="lsq")
    with pytest.raises(ValueError, match="unknown weight quantizer 'int8'; known: dorefa"):
        convert(timm.create_model("resnet20"), weight_quant="int8")


def test_override_that_matches_nothing_is_an_error():
    with pytest.raises(ValueError, match=r"\['layer9\.\*'\] match no"):
        convert(timm.create_model("resnet20"), overrides={"layer9.*": {"weight_bits": 8}})
    with pytest.raises(ValueError, match="unknown key 'bits'"):
        convert(timm.create_model("resnet20"), overrides={"fc": {"bits": 8}})
    with pytest.raises(ValueError, match=r"2\.\.8"):
        convert(timm.create_model("resnet20"), overrides={"fc": {"weight_bits": 12}})


def test_converting_twice_is_an_error():
    qmodel = convert(timm.create_model("resnet20"))
    with pytest.raises(ValueError, match="already contains Brevitas"):
        convert(qmodel)


def test_pact_lsq_and_int_per_channel_from_the_registry():
    qmodel = convert(
        timm.create_model("resnet18"), bits=4, method="pact_lsq", weight_quant="int_per_channel"
    )
    assert qmodel.qsgt_summary.method == "pact_lsq"
    assert qmodel.layer1[0].conv1.weight_quant.scale().shape == (64, 1, 1, 1)
    assert len(alphas(qmodel)) == 17


def test_public_api_matches_the_readme():
    model = timm.create_model("resnet20", num_classes=10)
    qmodel = qsgt_plugin.convert(model, bits=4)
    assert qmodel(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert {"pact", "pact_lsq"} <= set(qsgt_plugin.list_methods())
