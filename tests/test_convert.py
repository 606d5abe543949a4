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
    # F.relu after every convolution: functional call sites only
    "tv_googlenet": (
        lambda: torchvision.models.googlenet(num_classes=10, aux_logits=False, init_weights=True),
        3,
    ),
    # nn.ReLU modules and one F.relu before the classifier
    "tv_densenet121": (lambda: torchvision.models.densenet121(num_classes=10), 3),
}


def record_activations(model: nn.Module) -> tuple[dict, list]:
    """Input, output and output gradient of every quantized activation, by module."""
    seen: dict[nn.Module, dict] = {}

    def forward(module, inputs, output):
        seen[module] = {"input": inputs[0].detach(), "output": output.detach()}

    def backward(module, grad_input, grad_output):
        seen[module]["grad_output"] = grad_output[0].detach()

    handles = []
    for m in model.modules():
        if isinstance(m, QuantAct):
            handles += [m.register_forward_hook(forward), m.register_full_backward_hook(backward)]
    return seen, handles


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_forward_backward_levels_and_alpha_gradients(name, bits):
    build, chans = ZOO[name]
    float_model = build()
    qmodel = convert(float_model, bits=bits, alpha_init=0.5)
    qmodel.train()
    x = torch.randn(4, chans, 64, 64)
    seen, handles = record_activations(qmodel)
    y = qmodel(x)
    y.logsumexp(1).sum().backward()
    for h in handles:
        h.remove()
    assert y.shape == (4, 10) and torch.isfinite(y).all()
    assert len(seen) == len(alphas(qmodel)), "every quantized activation ran once"
    for module, record in seen.items():
        assert record["output"].unique().numel() <= 2**bits
        # PACT: d loss / d alpha = the output gradient summed where the input reaches alpha
        alpha = next(p for p in module.act_quant.parameters() if p.dim() == 0)
        clipped = record["grad_output"][record["input"] >= alpha.detach()]
        # float32 sums of many signed terms in another order: the error scales with the terms'
        # magnitudes, not with the (cancelling) sum
        tolerance = 1e-5 + 1e-5 * clipped.abs().sum().item()
        torch.testing.assert_close(alpha.grad, clipped.sum(), rtol=0, atol=tolerance)
    moving = sum(bool(a.grad.abs() > 0) for a in alphas(qmodel).values())
    assert moving >= 0.9 * len(seen)  # only a few saturated layers see no clipped input
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
    weight = model.layer1[0].conv1.weight
    same = convert(model, bits=4, inplace=True)
    assert same is model and type(model.conv1) is not nn.Conv2d
    # inplace keeps the very same parameter objects (an existing optimizer stays valid)
    assert same.layer1[0].conv1.weight is weight


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


class TwoFunctionalReLUs(nn.Module):
    """conv -> F.relu -> conv -> x.relu(), plus a float nn.ReLU module left alone by an override."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.keep = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.nn.functional.relu(self.conv1(x))
        x = self.keep(self.conv2(x)).relu()
        return self.fc(x.mean((2, 3)))


def test_functional_activations_get_a_quantizer_per_call_in_order():
    torch.manual_seed(0)
    qmodel = convert(TwoFunctionalReLUs(), bits=2, overrides={"keep": None}).eval()
    sites = alphas(qmodel)
    assert list(sites) == ["qsgt_functional.0", "qsgt_functional.1"]
    assert "keep" in qmodel.qsgt_summary.kept_float
    assert qmodel.qsgt_summary.quantized["qsgt_functional"] == (
        "F.relu, F.relu a2 (functional, 2 call sites)"
    )
    with torch.no_grad():
        sites["qsgt_functional.0"].fill_(0.3)
        sites["qsgt_functional.1"].fill_(0.9)
    seen = []
    hooks = [
        site.register_forward_hook(lambda _m, _i, o: seen.append(o.max().item()))
        for site in qmodel.qsgt_functional
    ]
    x = torch.randn(8, 1, 6, 6) * 5
    for _ in range(2):  # every forward starts again at the first call site
        seen.clear()
        with torch.no_grad():
            qmodel(x)
        assert seen == pytest.approx([0.3, 0.9])
        assert type(qmodel.keep) is nn.ReLU  # the float module's own F.relu is not routed
    for h in hooks:
        h.remove()


def test_functional_sites_follow_a_deep_copy_and_survive_a_failing_forward():
    qmodel = convert(TwoFunctionalReLUs(), bits=4)
    twin = copy.deepcopy(qmodel)  # e.g. an EMA of the weights
    with torch.no_grad():
        for alpha in alphas(twin).values():
            alpha.fill_(0.1)
    x = torch.randn(4, 1, 6, 6) * 5
    with torch.no_grad():
        assert not torch.equal(twin(x), qmodel(x))  # each routes to its own quantizers
    with pytest.raises(RuntimeError):
        qmodel(torch.randn(4, 2, 6, 6))  # wrong channel count: the forward fails midway
    assert not torch._C._is_torch_function_mode_enabled()  # no routing mode left behind
    with torch.no_grad():
        qmodel(x)


def test_activations_without_a_quantized_form_are_listed():
    with pytest.warns(QuantizationWarning, match=r"stay float: .*SiLU"):
        qmodel = convert(timm.create_model("efficientnet_b0", num_classes=10), bits=4)
    assert any("SiLU" in reason or "silu" in name for name, reason in
               qmodel.qsgt_summary.unquantized.items())  # fmt: skip


class GeluHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.nn.functional.gelu(self.fc(x))


def test_functional_activations_without_a_quantized_form_are_listed():
    with pytest.warns(QuantizationWarning, match=r"<root>: F\.gelu \(no quantized form"):
        qmodel = convert(GeluHead(), bits=4, first_last_bits=None)
    assert qmodel.qsgt_summary.unquantized == {
        "<root>: F.gelu": "no quantized form of this activation"
    }
