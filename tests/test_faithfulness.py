"""Faithfulness, randomisation and complexity metrics: formulas by hand, Quantus on shared cases,
ties, seeds, and their behaviour on a model trained on real MNIST."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

from qsgt_plugin.attribution import (
    DeletionInsertion,
    SuiteResult,
    deletion_insertion,
    entropy,
    explanation_suite,
    gini,
    linear_imputation,
    mprt,
    random_logit,
    road,
)
from qsgt_plugin.report.statistics import summarise, welch
from qsgt_plugin.sgt import rank_mask, ranking, reduce_saliency, tie_fraction
from qsgt_plugin.sgt.saliency import attribute

# its tests share a module fixture: one worker computes it once (`-n 2`)
pytestmark = pytest.mark.xdist_group("faithfulness")

quantus = pytest.importorskip("quantus")


def small_net(bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 4, 3, padding=1)]
    layers += [nn.BatchNorm2d(4)] if bn else []
    layers += [nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten()]
    return nn.Sequential(*layers, nn.Linear(4 * 8 * 8, 3)).eval()


def batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=generator), torch.arange(n) % 3


# --- ties -------------------------------------------------------------------------------------


def test_ties_are_broken_by_a_seeded_random_order():
    flat = torch.zeros(4, 100)  # all equal
    masks = {
        seed: rank_mask(flat.view(4, 10, 10), 0.3, generator=torch.Generator().manual_seed(seed))
        for seed in (0, 1)
    }
    again = rank_mask(flat.view(4, 10, 10), 0.3, generator=torch.Generator().manual_seed(0))
    for mask in masks.values():
        assert mask.flatten(1).sum(1).tolist() == [30] * 4  # exactly the requested size
    assert not torch.equal(masks[0], masks[1])  # different across seeds
    assert torch.equal(masks[0], again)  # identical for the same seed
    assert not torch.equal(masks[0][0], masks[0][1])  # and no position is favoured
    # Distinct values keep their order; only ties are shuffled.
    scores = torch.tensor([[3.0, 1.0, 2.0, 1.0, 0.0]])
    order = ranking(scores, generator=torch.Generator().manual_seed(0))[0].tolist()
    assert order[:2] == [0, 2] and set(order[2:4]) == {1, 3} and order[4] == 4


def test_tie_fraction_counts_positions_sharing_a_value():
    scores = torch.tensor([[0.0, 0.0, 0.0, 1.0], [1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 6.0, 6.0]])
    assert tie_fraction(scores).tolist() == [0.75, 0.0, 1.0]


# --- complexity: the same numbers as Quantus --------------------------------------------------


def test_entropy_and_gini_match_quantus():
    model = small_net()
    x, y = batch()
    maps = attribute(model, x, y)
    args = dict(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=maps.numpy())
    expected = quantus.Complexity(disable_warnings=True)(**args, device="cpu")
    np.testing.assert_allclose(entropy(maps).numpy(), expected, rtol=1e-5)
    sparseness = quantus.Sparseness(disable_warnings=True)(**args, device="cpu")
    n = 64  # ours is rescaled by n / (n - 1) so that a one-hot map has exactly 1
    np.testing.assert_allclose(gini(maps).numpy(), np.asarray(sparseness) * n / (n - 1), rtol=1e-6)
    assert entropy(torch.ones(1, 1, 8, 8)).item() == pytest.approx(np.log(64))
    assert entropy(torch.zeros(1, 1, 8, 8)).item() == 0.0


# --- ROAD's imputation ------------------------------------------------------------------------


def test_imputation_of_one_pixel_is_the_weighted_mean_of_its_neighbours():
    x = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 0.0, 6.0], [7.0, 8.0, 9.0]]]])
    removed = torch.zeros(1, 3, 3, dtype=torch.bool)
    removed[0, 1, 1] = True
    expected = (1 / 12) * (1 + 3 + 7 + 9) + (1 / 6) * (2 + 4 + 6 + 8)
    out = linear_imputation(x, removed)
    assert out[0, 0, 1, 1].item() == pytest.approx(expected)
    assert torch.equal(out[~removed[:, None].expand_as(x)], x[~removed[:, None].expand_as(x)])
    # A corner pixel: its 3 in-image neighbours, the weights renormalised.
    removed = torch.zeros(1, 3, 3, dtype=torch.bool)
    removed[0, 0, 0] = True
    corner = ((1 / 6) * (2 + 4) + (1 / 12) * 0.0) / (1 / 6 + 1 / 6 + 1 / 12)
    assert linear_imputation(x, removed)[0, 0, 0, 0].item() == pytest.approx(corner)


def test_two_adjacent_pixels_are_solved_jointly():
    x = torch.arange(16.0).view(1, 1, 4, 4) ** 1.5
    removed = torch.zeros(1, 4, 4, dtype=torch.bool)
    removed[0, 1, 1] = removed[0, 1, 2] = True
    out = linear_imputation(x, removed)[0, 0]
    a, b = out[1, 1].item(), out[1, 2].item()
    img = x[0, 0]
    # each equals the weighted mean of its 8 neighbours, the other unknown among them
    w = lambda dr, dc: 1 / 6 if dr == 0 or dc == 0 else 1 / 12  # noqa: E731
    for (r, c), value in (((1, 1), a), ((1, 2), b)):
        total = 0.0
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if (dr, dc) == (0, 0):
                    continue
                rr, cc = r + dr, c + dc
                v = {(1, 1): a, (1, 2): b}.get((rr, cc), img[rr, cc].item())
                total += w(dr, dc) * v
        assert value == pytest.approx(total, rel=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_imputation_matches_quantus_noisy_linear_imputation(channels):
    from quantus.functions.perturb_func import noisy_linear_imputation

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, 9, 7, generator=generator)
    removed = torch.rand(2, 9, 7, generator=generator) < 0.6
    ours = linear_imputation(x, removed, tolerance=1e-10)
    for i in range(2):
        indices = np.flatnonzero(removed[i].numpy())
        theirs = noisy_linear_imputation(x[i].double().numpy(), indices, noise=0.0)
        np.testing.assert_allclose(ours[i].numpy(), theirs, atol=1e-4)


# --- randomisation ----------------------------------------------------------------------------


def test_mprt_matches_quantus_on_a_model_without_batchnorm():
    model = small_net()
    x, y = batch()
    ours = mprt(model, x, y, seed=42)

    def explain(model, inputs, targets, **kwargs):
        return attribute(model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

    theirs = quantus.MPRT(
        similarity_func=quantus.similarity_func.correlation_spearman,
        layer_order="top_down",
        seed=42,
        disable_warnings=True,
    )(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(),
        a_batch=attribute(model, x, y).numpy(), explain_func=explain, device="cpu",
    )  # fmt: skip
    assert ours["layers"] == ["5", "2", "0"]
    for layer, per_image in zip(ours["layers"], ours["per_image"], strict=True):
        np.testing.assert_allclose(per_image, theirs[layer], atol=1e-9)


def test_mprt_keeps_batchnorm_and_alphas_and_leaves_the_model_alone():
    import timm

    from qsgt_plugin import convert
    from qsgt_plugin.attribution.randomisation import weight_layers

    model = convert(timm.create_model("resnet20", in_chans=1), bits=4).eval()
    before = copy.deepcopy(model.state_dict())
    x, y = torch.randn(4, 1, 28, 28), torch.arange(4)
    result = mprt(model, x, y)
    assert len(result["layers"]) == len(weight_layers(model)) == 20
    assert result["layers"][0] == "fc" and result["layers"][-1] == "conv1"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # What mprt does to its copy: only conv / linear weights and biases change.
    twin = copy.deepcopy(model)
    for _, layer in weight_layers(twin):
        layer.reset_parameters()
    changed = {k for k, v in twin.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.endswith(("weight", "bias")) for k in changed)
    assert not any("bn" in k or "alpha" in k for k in changed)


def test_random_logit_compares_the_maps_of_the_label_and_of_a_random_other_class():
    from scipy.stats import spearmanr

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3, bias=False)).eval()
    x, y = batch()
    np.random.seed(7)  # Quantus draws the off classes like this
    classes = np.stack([np.arange(3)] * len(y))
    keep = np.ones_like(classes, dtype=bool)
    keep[np.arange(len(y)), y.numpy()] = False
    off = classes[keep].reshape(len(y), -1)[np.arange(len(y)), np.random.randint(0, 2, len(y))]
    weights = model[1].weight.detach().abs()  # d logit_k / d x = W[k]: the maps by hand
    expected = [spearmanr(weights[a], weights[b]).statistic for a, b in zip(y, off, strict=True)]
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    result = random_logit(model, x, y, num_classes=3, seed=7)
    np.testing.assert_allclose(result["per_image"], expected, atol=1e-9)
    assert np.array_equal(np.random.get_state()[1], before)  # NumPy's generator is left alone


# --- deletion / insertion ---------------------------------------------------------------------


def test_deletion_matches_quantus_pixel_flipping():
    model = small_net()
    x, _ = batch()
    with torch.no_grad():
        predicted = model(x).argmax(1)
    saliency = reduce_saliency(attribute(model, x, predicted))
    curves = DeletionInsertion(steps=8, fill_value=0.0)
    curves.add(model, x, predicted, predicted, saliency)
    ours = curves.result()["deletion"]["saliency"]

    def explain(model, inputs, targets, **kwargs):
        return attribute(model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

    theirs = quantus.PixelFlipping(
        features_in_step=8, perturb_baseline=0.0, abs=True, disable_warnings=True,
        return_auc_per_sample=False,
    )(
        model=model, x_batch=x.numpy(), y_batch=predicted.numpy(),
        a_batch=attribute(model, x, predicted).numpy(), explain_func=explain, device="cpu",
    )  # fmt: skip
    np.testing.assert_allclose(ours[1:], np.mean(theirs, axis=0), atol=1e-6)


def test_a_random_rankings_deletion_and_insertion_curves_mirror_each_other():
    model = small_net()
    x = torch.randn(400, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    result = deletion_insertion(model, [(x, torch.zeros(400, dtype=torch.long))], steps=8)
    deletion = np.asarray(result["deletion"]["random"])
    insertion = np.asarray(result["insertion"]["random"])
    # deleting a random t is inserting a random 1 - t: the same images in distribution
    np.testing.assert_allclose(deletion, insertion[::-1], atol=0.03)
    assert result["auc"]["deletion"]["random"] == pytest.approx(
        result["auc"]["insertion"]["random"], abs=0.02
    )


# --- statistics -------------------------------------------------------------------------------


def test_summaries_and_the_seed_noise_test():
    s = summarise([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == 1.0
    assert s["ci95"] == pytest.approx([2 - 4.302653 / 3**0.5, 2 + 4.302653 / 3**0.5])
    assert np.isnan(summarise([1.0])["std"])
    clear = welch([0.50, 0.51, 0.49], [0.30, 0.31, 0.29])
    assert clear["p"] < 0.001 and clear["difference"] == pytest.approx(-0.2)
    noise = welch([0.50, 0.40, 0.60], [0.52, 0.38, 0.61])
    assert noise["p"] > 0.05


def test_the_share_of_the_float_sgt_gain_a_quantized_sgt_model_keeps():
    from qsgt_plugin.report.markdown import _kept
    from qsgt_plugin.report.seeds import PAIRED, sgt_kept

    means = {"fp32": 0.30, "fp32+SGT": 0.20, "w4a4": 0.32, "w4a4+SGT": 0.24}
    groups = {
        label: {"runs": [f"run-{label}"], **{m: {"mean": mean} for m in PAIRED}}
        for label, mean in means.items()
    }
    pairs = [
        {"a": a, "b": b, "metric": m, "finding": a == "fp32" and m == "masking_auc"}
        for m in PAIRED
        for a, b in (("fp32", "fp32+SGT"), ("w4a4", "w4a4+SGT"))
    ]
    bits = {"run-fp32": "fp32", "run-fp32+SGT": "fp32", "run-w4a4": "w4a4", "run-w4a4+SGT": "w4a4"}
    rows = {r["metric"]: r for r in sgt_kept(groups, pairs, bits)}
    assert set(rows) == set(PAIRED)  # each pair counted once although listed once per area
    masking = rows["masking_auc"]  # lower is better: the float gain is -0.10
    assert masking["own"] == pytest.approx(0.8) and masking["vs_float"] == pytest.approx(0.6)
    assert (masking["quant"], masking["quant_sgt"]) == ("w4a4", "w4a4+SGT")
    # Higher is better for insertion: the same means are a float loss, with no gain to keep
    assert np.isnan(rows["insertion_auc"]["own"]) and np.isnan(rows["insertion_auc"]["vs_float"])
    text = "\n".join(_kept(list(rows.values())))
    assert rows["masking_auc"]["float_gain_beyond_noise"]
    assert rows["deletion_auc"]["float_gain_beyond_noise"] is False
    row = "| masking_auc | lower | 30.00 | 20.00 | yes | 32.00 | 24.00 | 80% | 60% |"
    assert "| w4a4+SGT (w4a4) " + row in text
    assert "n/a (no float gain)" in text
    # Without a float pair there is nothing to measure from
    assert sgt_kept(groups, [p for p in pairs if p["a"] == "w4a4"], bits) == []


# --- on a model trained on real MNIST ---------------------------------------------------------

needs_data = pytest.mark.skipif(not os.environ.get("QSGT_DATA"), reason="QSGT_DATA not set")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A float ResNet-20 trained for 150 steps on real MNIST, and 200 test images."""
    from qsgt_plugin.recipe import Recipe
    from qsgt_plugin.runs import load_run
    from qsgt_plugin.training.loop import train

    recipe = Recipe.model_validate(
        {
            "model": {"name": "resnet20"},
            "quant": {"enabled": False},
            "data": {"dataset": "mnist", "batch_size": 64, "test_subset": 200},
            "schedule": {"name": "onecycle"},
            "train": {"epochs": 1, "max_steps": 150},
            "output": {"dir": str(tmp_path_factory.mktemp("faithful") / "run")},
        }
    )
    run = load_run(train(recipe).run_dir)
    return run.model, next(iter(run.test_loader()))


@needs_data
@pytest.mark.slow
def test_on_a_trained_model_saliency_beats_the_random_ranking(trained):
    model, (x, y) = trained
    curves = deletion_insertion(model, [(x, y)], steps=10)
    assert curves["auc"]["deletion"]["saliency"] < curves["auc"]["deletion"]["random"] - 0.1
    assert curves["auc"]["insertion"]["saliency"] > curves["auc"]["insertion"]["random"] + 0.03
    result = road(model, [(x, y)])
    assert result["auc"]["morf"] < result["auc"]["random"] - 0.1  # MoRF hurts faster
    similarity = mprt(model, x[:64], y[:64])["similarity"]
    assert similarity[-1] < similarity[0] - 0.2  # falls as more layers are randomised


@needs_data
@pytest.mark.slow
def test_the_suite_gives_every_metric_and_its_time(trained):
    model, (x, y) = trained
    result = explanation_suite(model, [(x[:64], y[:64])], num_classes=10, mprt_images=32)
    assert set(result.seconds) == {
        "saliency", "complexity", "deletion_insertion", "road", "random_logit",
        "sensitivity_max", "mprt",
    }  # fmt: skip
    assert all(t > 0 for t in result.seconds.values())
    assert result.images == 64 and len(result.mprt.similarity) == 20
    assert 0 <= result.gini <= 1 and 0 < result.entropy <= np.log(784)
    assert -1 <= result.random_logit <= 1 and 0 <= result.tied_fraction <= 1
    assert len(result.deletion_insertion.accuracy.saliency) == 11
    assert SuiteResult.from_json(json.loads(json.dumps(result.to_json()))) == result


def test_random_logit_on_three_channel_images():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 5))
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    result = random_logit(model.eval(), x, y, num_classes=5)
    assert len(result["per_image"]) == 4 and all(-1 <= s <= 1 for s in result["per_image"])


def test_random_logit_without_quantus_names_the_extra(monkeypatch):
    from qsgt_plugin.errors import MissingDependencyError, QsgtError

    monkeypatch.setitem(sys.modules, "quantus", None)  # import quantus raises ImportError
    model = small_net()
    x, y = batch()
    with pytest.raises(MissingDependencyError, match=r"pip install 'qsgt-plugin\[xai\]'") as info:
        random_logit(model, x, y, num_classes=3)
    assert isinstance(info.value, QsgtError) and isinstance(info.value, ImportError)


def test_the_suite_result_is_typed_and_round_trips_through_json():
    model = small_net()
    x, y = batch()
    result = explanation_suite(model, [(x, y)], num_classes=3, steps=4, mprt_images=2)
    assert isinstance(result, SuiteResult)
    # every number is a function of the seed: the same call again gives the same result
    torch.manual_seed(1234)  # the global generator plays no part
    again = explanation_suite(model, [(x, y)], num_classes=3, steps=4, mprt_images=2)
    assert dataclasses.replace(again, seconds=result.seconds) == result
    di = result.deletion_insertion
    assert len(di.fractions) == len(di.accuracy.saliency) == len(di.normalised.insertion.random)
    assert result.road.auc.morf == result.to_json()["road"]["auc"]["morf"]
    data = json.loads(json.dumps(result.to_json()))
    assert SuiteResult.from_json(data) == result
    data["road"]["auc"].pop("lerf")
    data["road"]["auc"]["lerf_typo"] = 0.0
    message = r"^road\.auc: not a RoadOrders; missing lerf; unknown lerf_typo"
    with pytest.raises(ValueError, match=message):
        SuiteResult.from_json(data)
