"""Attribution metrics, masking curves and figures on small models and tensors."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from torch import nn

from qsgt_plugin import convert
from qsgt_plugin.attribution import (
    ModelView,
    alpha_figure,
    attribution_grid,
    compare_views,
    gini,
    infidelity_score,
    masking_curve,
    masking_curve_figure,
    sensitivity_score,
    spearman,
    top_overlap,
)
from qsgt_plugin.quant import model_size_bytes, quantization_disabled
from qsgt_plugin.sgt.saliency import attribute


def test_gini_of_one_hot_is_1_and_of_constant_is_0():
    one_hot = torch.zeros(2, 1, 6, 6)
    one_hot[0, 0, 2, 3] = 5.0
    one_hot[1, 0, 0, 0] = -1.0
    assert gini(one_hot).tolist() == pytest.approx([1.0, 1.0])
    assert gini(torch.full((2, 3, 6, 6), 0.7)).tolist() == pytest.approx([0.0, 0.0], abs=1e-12)
    assert gini(torch.zeros(1, 1, 4, 4)).item() == 0.0
    spread = torch.zeros(1, 1, 4, 4)
    spread[0, 0, :2] = 1.0  # half the positions
    assert 0.4 < gini(spread).item() < 0.6


def test_rank_correlation_of_a_map_with_itself_is_1():
    maps = torch.randn(4, 3, 8, 8)
    assert spearman(maps, maps).tolist() == pytest.approx([1.0] * 4)
    assert top_overlap(maps, maps).tolist() == pytest.approx([1.0] * 4)
    other = torch.randn(4, 3, 8, 8)
    assert spearman(maps, other).abs().mean() < 0.3
    # Reversing the ranking gives -1.
    reduced = maps.abs().mean(1)
    reversed_maps = (reduced.max() - reduced + 1).unsqueeze(1)
    assert spearman(maps, reversed_maps).tolist() == pytest.approx([-1.0] * 4)


def test_top_overlap_counts_shared_top_positions():
    a = torch.arange(100.0).view(1, 1, 10, 10)  # top 10%: positions 90..99
    b = a.clone()
    b[0, 0, 9, :5] = 0  # five of them drop out of b's top
    assert top_overlap(a, b, 0.1).item() == pytest.approx(0.5)


def small_model() -> nn.Module:
    return timm.create_model("resnet20", in_chans=1, num_classes=4).eval()


def test_comparison_of_a_model_with_its_float_view_without_a_copy():
    qmodel = convert(small_model(), bits=4, alpha_init=2.0).eval()
    views = [
        ModelView("q", qmodel),
        ModelView("q float", qmodel, float_view=True),
        ModelView("q again", qmodel),
    ]
    x, y = torch.randn(3, 1, 28, 28), torch.tensor([0, 1, 2])
    result = compare_views(views, x, y, fidelity=True, progress=False)
    assert set(result.maps) == {"q", "q float", "q again"}
    pairs = {(p["a"], p["b"]): p for p in result.pairs}
    assert pairs["q", "q again"]["spearman"] == pytest.approx(1.0)
    assert pairs["q", "q float"]["spearman"] < 0.999  # quantization changes the maps
    with quantization_disabled(qmodel):
        torch.testing.assert_close(result.maps["q float"], attribute(qmodel, x, y))
    for numbers in result.views.values():
        assert 0 <= numbers["gini"] <= 1
        assert numbers["infidelity"] >= 0 and numbers["sensitivity_max"] >= 0
    # every view sees the same seeded noise: two views of one model, the same numbers
    assert result.views["q"] == result.views["q again"]
    assert result.views["q"]["sensitivity_max"] != result.views["q float"]["sensitivity_max"]


def test_sensitivity_and_infidelity_draw_their_noise_from_their_seed_not_the_global_generator():
    qmodel = convert(small_model(), bits=4, alpha_init=2.0).eval()
    x, y = torch.randn(3, 1, 28, 28), torch.tensor([0, 1, 2])
    maps = attribute(qmodel, x, y)
    state = torch.get_rng_state()
    first = sensitivity_score(qmodel, x, y, seed=3), infidelity_score(qmodel, x, y, maps, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator was not used
    torch.manual_seed(123)  # and does not matter
    again = sensitivity_score(qmodel, x, y, seed=3), infidelity_score(qmodel, x, y, maps, seed=3)
    other = sensitivity_score(qmodel, x, y, seed=4), infidelity_score(qmodel, x, y, maps, seed=4)
    for a, b, c in zip(first, again, other, strict=True):
        assert a.shape == (3,) and torch.equal(a, b) and not torch.equal(a, c)


def test_sensitivity_perturbs_within_its_radius_uniformly():
    """The perturbation is Captum's: uniform in the L-infinity ball of ``radius``."""
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(x.detach().clone())
            return x.flatten(1)[:, :3] * 1.0

    x, y = torch.zeros(2, 1, 16, 16), torch.tensor([0, 1])
    sensitivity_score(Spy(), x, y, radius=0.05, n_perturb_samples=4)
    noise = torch.cat([t for t in seen if t.shape[0] == 8])  # the 4 perturbations per image
    assert noise.abs().max() <= 0.05 and noise.abs().max() > 0.049
    assert abs(noise.mean().item()) < 0.002
    assert noise.std().item() == pytest.approx(0.05 / 3**0.5, rel=0.03)  # a uniform's std


@pytest.mark.parametrize("method", ["GuidedBackprop", "DeepLift"])
def test_module_hook_methods_are_refused_for_quantized_models(method):
    qmodel = convert(small_model(), bits=4)
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=f"{method} rewrites the gradients of nn.ReLU"):
        compare_views([ModelView("q", qmodel)], x, y, method=method, progress=False)


def test_masking_curve_starts_at_the_clean_accuracy_exactly():
    model = small_model()
    batches = [(torch.randn(8, 1, 28, 28), torch.randint(0, 4, (8,))) for _ in range(3)]
    curve = masking_curve(model, batches, progress=False)
    with torch.no_grad():
        clean = sum((model(x).argmax(1) == y).sum().item() for x, y in batches) / 24
    assert curve["saliency"][0.0] == clean and curve["random"][0.0] == clean
    assert list(curve["saliency"]) == [i / 10 for i in range(10)]


def test_masking_curve_replaces_exactly_the_top_fraction():
    # A linear model that reads only the first 10% of positions: masking the 10% most salient
    # positions with its fill erases all its evidence.
    model = nn.Sequential(nn.Flatten(), nn.Linear(100, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[1, :10] = 1.0
        model[1].bias.copy_(torch.tensor([0.5, 0.0]))
    x = torch.zeros(4, 1, 10, 10)
    x.view(4, 100)[:, :10] = 1.0  # class 1 everywhere (score 10 > 0.5)
    y = torch.ones(4, dtype=torch.long)
    curve = masking_curve(model, [(x, y)], fill_value=0.0, progress=False)
    assert curve["saliency"][0.0] == 1.0
    assert curve["saliency"][0.1] == 0.0  # its 10 salient positions are gone


def test_figures_are_written(tmp_path):
    images = torch.randn(3, 1, 28, 28)
    maps = {"a": torch.randn(3, 1, 28, 28), "b": torch.randn(3, 1, 28, 28)}
    grid = attribution_grid(
        images,
        maps,
        tmp_path / "grid.png",
        mean=(0.13,),
        std=(0.31,),
        titles=["label 1", "label 2", "label 3"],
    )
    curves = {"m": {"saliency": {0.0: 0.9, 0.5: 0.4}, "random": {0.0: 0.9, 0.5: 0.8}}}
    curve = masking_curve_figure(curves, tmp_path / "curve.png")
    records = [
        {"kind": "train", "epoch": e / 2, "step": e, "alphas": {"a1": 10 - e, "a2": 9 - e}}
        for e in range(4)
    ]
    alpha = alpha_figure(records, tmp_path / "alpha.png")
    for path in (grid, curve, alpha):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(ValueError, match="no alpha values"):
        alpha_figure([{"kind": "train", "epoch": 0, "step": 1}], tmp_path / "none.png")


def test_model_size_counts_quantized_weights_at_their_bit_width():
    model = timm.create_model("resnet20")
    fp32 = model_size_bytes(model)
    state = sum(t.numel() * 4 for k, t in model.state_dict().items() if "num_batches" not in k)
    assert fp32 == state
    qmodel = convert(model, bits=4)
    inner = sum(
        m.weight.numel()
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and n != "conv1"
    )
    ends = model.conv1.weight.numel() + model.fc.weight.numel()
    expected_bits = 32 * fp32 // 4 - 32 * (inner + ends) + 4 * inner + 8 * ends
    scales = 18 * 32 + (16 + 10) * 32  # one per DoReFa tensor, one per channel at the ends
    alphas = 19 * 32  # the clipping levels are stored too
    assert model_size_bytes(qmodel) == -(-(expected_bits + scales + alphas) // 8)
    with quantization_disabled(qmodel):
        assert model_size_bytes(qmodel) == fp32 + 19 * 4  # float weights, plus the alphas


def test_metrics_survive_a_json_round_trip_with_their_values():
    torch.manual_seed(0)
    result = compare_views(
        [ModelView("m", small_model()), ModelView("n", small_model())],
        torch.randn(2, 1, 28, 28),
        torch.tensor([0, 1]),
        fidelity=False,
        progress=False,
    )
    numbers = result.numbers()
    assert json.loads(json.dumps(numbers)) == numbers  # plain floats and strings, nothing lost
    assert set(numbers["views"]) == {"m", "n"}
    assert all(0 <= v["gini"] <= 1 for v in numbers["views"].values())
    (pair,) = numbers["pairs"]
    assert (pair["a"], pair["b"]) == ("m", "n") and -1 <= pair["spearman"] <= 1
