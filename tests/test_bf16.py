"""bf16 autocast training keeps PACT, DoReFa and SGT meaning what they mean in float32.

``train.precision: bf16`` runs the forward passes of a step under ``torch.autocast``: the
activations reaching PACT are bf16, the quantized weights are cast to bf16 by the convolution,
and SGT ranks saliencies computed through bf16 layers. Checked on the CIFAR ResNet-20 and on
torchvision's ResNet-18 (a model zoo whose blocks reuse one ReLU module).
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn

import qsgt_plugin
from qsgt_plugin import SaliencyGuidedTraining
from qsgt_plugin.quant import alphas, calibrate_alphas
from qsgt_plugin.quant.layers import QuantAct
from qsgt_plugin.quant.pact import pact_quantize
from qsgt_plugin.recipe import Recipe
from qsgt_plugin.training.loop import resolve_speed
from qsgt_plugin.training.step import make_train_step, native_bf16, resolve_precision

ROOT = Path(__file__).resolve().parents[1]
CL = torch.channels_last

ZOOS = {
    "resnet20": (lambda: timm.create_model("resnet20", num_classes=10), (8, 3, 32, 32)),
    "tv_resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (4, 3, 64, 64)),
}


def converted(zoo: str, bits: int, weight_quant: str | None = None):
    """A converted model of ``zoo`` in channels-last memory and a batch for it (fresh copies)."""
    model, x, y = _converted(zoo, bits, weight_quant)
    return copy.deepcopy(model).train(), x.clone(), y.clone()


@functools.cache
def _converted(zoo: str, bits: int, weight_quant: str | None):
    make, shape = ZOOS[zoo]
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = qsgt_plugin.convert(make(), bits=bits, weight_quant=weight_quant)
    model = model.to(memory_format=CL)
    x = torch.randn(shape, generator=generator).contiguous(memory_format=CL)
    y = torch.randint(0, 10, (shape[0],), generator=generator)
    calibrate_alphas(model, [(x[:4], None)], 99.0)  # alphas where activations are: some clip
    return model, x, y


def test_auto_is_bf16_exactly_where_the_device_computes_it_natively(monkeypatch):
    cpu = torch.device("cpu")
    for avx512_bf16, amx, expected in [
        (False, False, "fp32"),
        (True, False, "bf16"),
        (False, True, "bf16"),
    ]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert resolve_precision("auto", cpu) == expected
        assert resolve_precision("fp32", cpu) == "fp32"  # explicit values are kept
        assert resolve_precision("bf16", cpu) == "bf16"
    for capability, expected in [((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d, c=capability: c)
        assert native_bf16(torch.device("cuda")) is (expected == "bf16")


def test_a_run_records_what_auto_resolved_to(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    resolved = resolve_speed(Recipe(), torch.device("cpu"))
    assert (resolved.train.precision, resolved.train.channels_last) == ("fp32", True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    recipe = Recipe.model_validate({"train": {"channels_last": False}})
    resolved = resolve_speed(recipe, torch.device("cpu"))
    assert (resolved.train.precision, resolved.train.channels_last) == ("bf16", False)


@pytest.mark.parametrize("mode", ["plain", "captum", "fused"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_every_forward_pass_of_a_step_runs_at_the_asked_precision(precision, mode):
    """The clean pass, SGT's saliency pass and its masked pass: none escapes autocast."""
    model, x, y = converted("resnet20", 4)
    dtypes = []
    model.fc.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sgt = None if mode == "plain" else SaliencyGuidedTraining(model, 0.5, fused=mode == "fused")
    parts = make_train_step(model, opt, nn.CrossEntropyLoss(), sgt, precision)(x, y)
    assert len(dtypes) == {"plain": 1, "captum": 3, "fused": 2}[mode]
    assert set(dtypes) == {torch.bfloat16 if precision == "bf16" else torch.float32}
    assert parts.dtype == torch.float32 and torch.isfinite(parts).all()
    if mode != "plain":
        assert parts[2] > 0  # the KL term is there, in float32
    for p in model.parameters():
        assert p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32)


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("zoo", sorted(ZOOS))
def test_pact_activations_under_bf16_take_at_most_2k_values_on_their_grid(zoo, bits):
    model, x, _ = converted(zoo, bits)
    outputs = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantAct):
            module.register_forward_hook(lambda m, a, out, n=name: outputs.setdefault(n, out))
    with torch.autocast("cpu", torch.bfloat16):
        model(x)
    levels = 2**bits - 1
    clip = {name.rsplit(".act_quant", 1)[0]: a.item() for name, a in alphas(model).items()}
    checked = 0
    for name, out in outputs.items():
        assert out.dtype == torch.bfloat16  # autocast reached the activation
        values = out.float().unique()
        assert values.numel() <= levels + 1
        alpha = next(v for k, v in clip.items() if k.startswith(name))
        # every value is one of i * alpha / (2^k - 1), as bf16 rounds it
        grid = torch.arange(levels + 1) * (alpha / levels)
        nearest = (values[:, None] - grid.bfloat16().float()[None]).abs().min(1).values
        assert nearest.max() == 0
        checked += 1
    assert checked == len(alphas(model)) or zoo == "tv_resnet18"
    assert checked >= 17


def test_pact_gradients_at_the_clipping_level_are_the_float32_ones_for_bf16_inputs():
    """bf16 activations on either side of alpha: the same x and alpha gradients as in float32."""
    alpha = torch.tensor(3.3)  # not a bf16 value: its bf16 neighbours lie on both sides
    below = torch.nextafter(alpha.bfloat16(), torch.tensor(-9.0).bfloat16())
    at = alpha.bfloat16()
    above = torch.nextafter(at, torch.tensor(9.0).bfloat16())
    values = torch.stack([torch.tensor(-0.5).bfloat16(), below, at, above]).float()
    grads = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = values.to(dtype).detach().clone().requires_grad_()
        a = alpha.clone().requires_grad_()
        upstream = torch.tensor([1.0, 2.0, 4.0, 8.0]).to(dtype)
        pact_quantize(x, a, 4).backward(upstream)
        grads[dtype] = (x.grad.float(), a.grad)
    # 3.296875 < alpha: passes x's gradient; 3.3125 >= alpha: its gradient goes to alpha
    assert at.item() < alpha.item() < above.item()
    assert grads[torch.float32][0].tolist() == [0.0, 2.0, 4.0, 0.0]
    assert grads[torch.float32][1].item() == 8.0
    torch.testing.assert_close(grads[torch.bfloat16][0], grads[torch.float32][0])
    torch.testing.assert_close(grads[torch.bfloat16][1], grads[torch.float32][1])


@pytest.mark.parametrize("zoo", sorted(ZOOS))
def test_the_alpha_gradient_of_one_layer_under_bf16_is_float32_s_within_bf16_rounding(zoo):
    """Given the same bf16 activation and upstream gradient, PACT's alpha gradient sums them in
    float32 up to bf16's relative precision (2^-8); the activations come from the zoo's model."""
    model, x, _ = converted(zoo, 4)
    acts = [m for m in model.modules() if isinstance(m, QuantAct)]
    inputs = []
    hook = acts[len(acts) // 2].register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    with torch.autocast("cpu", torch.bfloat16), torch.no_grad():
        model(x)
    hook.remove()
    act_in = inputs[0]
    assert act_in.dtype == torch.bfloat16
    alpha = torch.quantile(act_in.float().flatten()[:100_000], 0.9).detach()
    upstream = torch.randn(act_in.shape).bfloat16()
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        xi = act_in.to(dtype).detach().clone().requires_grad_()
        a = alpha.clone().requires_grad_()
        pact_quantize(xi, a, 4).backward(upstream.to(dtype))
        results.append(a.grad)
    exact = upstream.float()[act_in.float() >= alpha].sum()
    torch.testing.assert_close(results[0], exact, rtol=1e-5, atol=1e-4)
    clipped_mass = upstream.float()[act_in.float() >= alpha].abs().sum()
    assert (results[1] - exact).abs() <= 2**-8 * clipped_mass + 1e-3


@pytest.mark.parametrize("weight_quant", ["dorefa", "int_per_channel"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("zoo", sorted(ZOOS))
def test_weight_levels_survive_the_bf16_cast_of_the_convolution(zoo, bits, weight_quant):
    """Autocast casts each quantized weight to bf16: no two levels may merge."""
    model, _, _ = converted(zoo, bits, weight_quant)
    checked = 0
    for module in model.modules():
        if hasattr(module, "quant_weight") and module.weight_quant.is_quant_enabled:
            value = module.quant_weight().value.detach()
            for row in value.flatten(1)[:8]:  # per output channel (DoReFa: a subset of levels)
                levels = row.unique().numel()
                assert row.bfloat16().unique().numel() == levels
            checked += 1
    assert checked >= 19


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("QSGT_DATA"), reason="QSGT_DATA not set")
@pytest.mark.parametrize(
    ("run", "least_mean", "least_image"),
    [("mnist-w4a4-sgt-s0", 0.86, 0.78), ("mnist-fp32-s0", 0.96, 0.92)],
)
def test_sgt_masks_under_bf16_overlap_the_float32_masks_on_trained_models(
    run, least_mean, least_image
):
    """Measured on 500 MNIST test images, mask fraction 0.5 (a random mask overlaps by 0.5):
    W4A4 + SGT 0.881 on average (0.819 at worst), fp32 0.975 (0.941) on 1000 images."""
    from qsgt_plugin.runs import load_run

    loaded = load_run(ROOT / "results" / "mnist" / run)
    sgt = SaliencyGuidedTraining(loaded.model, mask_fraction=0.5)
    overlaps = []
    for x, y in loaded.test_loader(limit=500):
        masks = []
        for bf16 in (False, True):
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                masks.append(sgt.mask(x, y))
        fp32, bf16_mask = masks
        assert (fp32.flatten(1).sum(1) == bf16_mask.flatten(1).sum(1)).all()  # same fraction
        overlaps.append((fp32 & bf16_mask).flatten(1).sum(1) / fp32.flatten(1).sum(1))
    overlap = torch.cat(overlaps)
    assert overlap.mean() >= least_mean
    assert overlap.min() >= least_image


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("QSGT_DATA"), reason="QSGT_DATA not set")
def test_alpha_gradients_of_a_trained_model_under_bf16_point_where_float32_s_do():
    """Every activation in bf16 moves the model's alpha gradients (rounding flips levels), but
    on a trained model they keep their direction: cosine 0.96 on 256 MNIST test images."""
    from qsgt_plugin.runs import load_run

    loaded = load_run(ROOT / "results" / "mnist" / "mnist-w4a4-sgt-s0")
    model = loaded.model.train()
    x, y = next(iter(loaded.test_loader(limit=256)))
    grads = []
    for bf16 in (False, True):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = model(x)
        nn.functional.cross_entropy(out.float(), y).backward()
        grads.append(torch.stack([a.grad for a in alphas(model).values()]))
    assert nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.9
