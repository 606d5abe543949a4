"""Per-layer sensitivity, HAWQ-v2's Hessian traces and mixed precision under a size budget."""

from __future__ import annotations

import itertools
import json
import os
import random
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from qsgt_plugin.cli import main
from qsgt_plugin.precision import (
    Choice,
    choose_bits,
    effective_weights,
    hessian_traces,
    layer_units,
    sensitivity,
    unit_overrides,
    variant,
)
from qsgt_plugin.quant import model_size_bytes
from qsgt_plugin.recipe import Recipe, parse_recipe
from qsgt_plugin.runs import load_run
from qsgt_plugin.training.loop import train

# its tests share a module fixture: one worker computes it once (`-n 2`)
pytestmark = pytest.mark.xdist_group("precision")

PNG = b"\x89PNG\r\n\x1a\n"
needs_data = pytest.mark.skipif(not os.environ.get("QSGT_DATA"), reason="QSGT_DATA not set")


# --- the knapsack ------------------------------------------------------------------------------


def brute_force(options: dict[str, list[Choice]], budget: int) -> float | None:
    best = None
    for combo in itertools.product(*options.values()):
        if sum(c.size for c in combo) <= budget:
            cost = sum(c.cost for c in combo)
            best = cost if best is None else min(best, cost)
    return best


def test_the_choice_on_a_hand_checked_case():
    options = {
        "a": [Choice(2, 0.50, 2), Choice(4, 0.0, 4)],
        "b": [Choice(2, 0.10, 2), Choice(4, 0.0, 4)],
        "c": [Choice(2, 0.30, 2), Choice(3, 0.05, 3), Choice(4, 0.0, 4)],
    }
    # 9 bytes: a must stay at 4 (0.5 is the dearest saving); b at 2 (0.10) and c at 3 (0.05)
    # cost 0.15, while b 4 + c 2 costs 0.30 and b 2 + c 2 (0.40) is smaller than needed.
    chosen = choose_bits(options, 9)
    assert {k: c.bits for k, c in chosen.items()} == {"a": 4, "b": 2, "c": 3}
    assert sum(c.size for c in chosen.values()) == 9
    assert choose_bits(options, 12) == {k: v[-1] for k, v in options.items()}  # all fits
    assert choose_bits(options, 5) is None  # the smallest is 6 bytes


def test_a_measured_gain_buys_no_lower_width_the_budget_does_not_need():
    """Layer b "gains" 3 images at 2 bits (noise). With room for every layer as trained,
    nothing is lowered; with room for one lowered layer it is b (no measured loss), not a."""
    from qsgt_plugin.precision.mixed import FREE_BIT_COST, unit_costs

    class Unit:
        def __init__(self, weight: str) -> None:
            self.weight, self.bits = weight, 4

        def size_bits(self, bits: int) -> int:
            return 8 * bits

    result = {
        "rows": [
            {"unit": "a", "bits": 2, "accuracy_drop": 0.02, "drift": 0.0},
            {"unit": "b", "bits": 2, "accuracy_drop": -0.03, "drift": 0.0},
        ]
    }
    options = unit_costs(result, [Unit("a"), Unit("b")])
    assert options["b"][0].cost == pytest.approx(2 * FREE_BIT_COST) and options["b"][0].cost > 0
    assert options["a"][0].cost == pytest.approx(0.02)
    assert {k: c.bits for k, c in choose_bits(options, 8).items()} == {"a": 4, "b": 4}
    assert {k: c.bits for k, c in choose_bits(options, 6).items()} == {"a": 4, "b": 2}


def test_the_choice_is_optimal_and_within_budget_on_random_cases():
    rng = random.Random(0)
    for _ in range(200):
        options = {
            f"u{i}": [
                Choice(b, rng.random() * (8 - b), rng.randint(1, 3) * b) for b in (2, 3, 4, 8)
            ]
            for i in range(rng.randint(1, 4))
        }
        budget = rng.randint(0, 40)
        chosen = choose_bits(options, budget)
        best = brute_force(options, budget)
        if best is None:
            assert chosen is None
            continue
        assert sum(c.size for c in chosen.values()) <= budget
        assert sum(c.cost for c in chosen.values()) == pytest.approx(best, abs=1e-9)


# --- Hessian traces ----------------------------------------------------------------------------


def test_hutchinson_matches_the_exact_trace_of_each_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).eval()
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    names = ["0", "2"]
    exact = {}
    for name in names:
        layer = model.get_submodule(name)
        w0 = layer.weight.detach().clone()

        def loss(w, layer=layer):
            saved = layer.weight
            del layer.weight
            layer.weight = w
            value = nn.functional.cross_entropy(model(x), y)
            layer.weight = saved
            return value

        hessian = torch.autograd.functional.hessian(loss, w0)
        exact[name] = hessian.reshape(w0.numel(), w0.numel()).trace().item()
    with effective_weights(model, names) as params:
        estimate = hessian_traces(model, [(x, y)], params, samples=400, seed=1)
    for name in names:
        error = abs(estimate[name]["trace"] - exact[name])
        assert error < 4 * estimate[name]["stderr"] + 1e-6, (name, estimate[name], exact[name])
    assert "forward" not in vars(model[0])  # the layers' own forwards are back


def test_effective_weights_give_the_models_own_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    x = torch.randn(3, 1, 4, 4)
    model(x).sum().backward()
    with effective_weights(model, ["0", "3"]) as leaves:
        grads = torch.autograd.grad(model(x).sum(), [leaves["0"], leaves["3"]])
    torch.testing.assert_close(grads[0], model[0].weight.grad)
    torch.testing.assert_close(grads[1], model[3].weight.grad)


# --- on trained runs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A W4A4 and a float ResNet-20, 80 steps each on real MNIST."""
    if not os.environ.get("QSGT_DATA"):
        pytest.skip("QSGT_DATA not set")
    root = tmp_path_factory.mktemp("precision")
    out = {}
    for name, quant in (("w4a4", True), ("fp32", False)):
        recipe = Recipe.model_validate(
            {
                "name": f"mnist-{name}",
                "model": {"name": "resnet20", "kwargs": {"in_chans": 1}},
                "quant": {"enabled": quant},
                "data": {"dataset": "mnist", "batch_size": 64, "test_subset": 300},
                "optim": {"lr": 0.05},
                "schedule": {"name": "onecycle"},
                "train": {"max_steps": 80, "log_every": 40},
                "output": {"dir": str(root / name)},
            }
        )
        out[name] = train(recipe).run_dir
    return out


def _bit_widths(model: nn.Module) -> dict[str, tuple]:
    from brevitas.nn.quant_layer import QuantNonLinearActLayer, QuantWeightBiasInputOutputLayer

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantWeightBiasInputOutputLayer):
            out[name] = ("w", int(m.weight_quant.bit_width()), m.weight_quant.is_quant_enabled)
        elif isinstance(m, QuantNonLinearActLayer):
            out[name] = ("a", int(m.act_quant.bit_width()), m.act_quant.is_quant_enabled)
    return out


@pytest.mark.slow
@needs_data
def test_a_variant_changes_only_its_layer_and_activation(runs):
    run = load_run(runs["w4a4"])
    units = layer_units(run)
    assert len(units) == 20 and units[-1].act is None  # 19 convolutions with a ReLU, the fc
    unit = next(u for u in units if u.weight == "layer2.1.conv1")
    assert unit.act == "layer2.1.act1" and (unit.bits, unit.act_bits) == (4, 4)
    changed = variant(run, unit_overrides(unit, 2))
    before, after = _bit_widths(run.model), _bit_widths(changed)
    assert before.keys() == after.keys()
    differ = {k for k in before if before[k] != after[k]}
    assert differ == {"layer2.1.conv1", "layer2.1.act1"}
    assert after["layer2.1.conv1"][1] == after["layer2.1.act1"][1] == 2
    a, b = run.model.state_dict(), changed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    levels = changed.get_submodule("layer2.1.conv1").quant_weight().value.unique()
    assert len(levels) <= 4  # 2-bit weights
    assert model_size_bytes(changed) < model_size_bytes(run.model)


@pytest.mark.slow
@needs_data
def test_a_float_run_gets_only_the_one_layer_quantized(runs):
    run = load_run(runs["fp32"])
    unit = layer_units(run)[3]
    assert unit.bits == 32
    changed = variant(run, unit_overrides(unit, 3))
    quantized = {k: v for k, v in _bit_widths(changed).items() if v[2]}
    assert quantized == {unit.weight: ("w", 3, True), unit.act: ("a", 3, True)}
    alpha = [p for n, p in changed.named_parameters() if unit.act in n]
    assert len(alpha) == 1 and 0.01 <= alpha[0].item() < 10.0  # calibrated, not the default


@pytest.mark.slow
@needs_data
def test_drift_is_zero_at_the_trained_bit_width_and_grows_below(runs):
    run = load_run(runs["w4a4"])
    result = sensitivity(
        run, bits=(2, 4), images=120, hessian_samples=2, layers=["layer1.0.*", "fc"]
    )
    rows = {(r["unit"], r["bits"]): r for r in result["rows"]}
    assert len(rows) == 6
    for name in ("layer1.0.conv1", "layer1.0.conv2"):
        same = rows[(name, 4)]
        assert same["accuracy_drop"] == 0 and same["drift"] == 0 and same["hawq"] == 0
        assert same["top10_overlap"] == 1 and same["deletion_auc_change"] == 0
        assert rows[(name, 2)]["drift"] > 0.01 and rows[(name, 2)]["hawq"] != 0
    assert rows[("fc", 4)]["drift"] > 0  # the classifier was trained at 8 bits
    assert result["images"] == 120 and set(result["hessian"]) == {
        "layer1.0.conv1", "layer1.0.conv2", "fc"
    }  # fmt: skip


@pytest.mark.slow
@needs_data
def test_the_commands_write_a_figure_and_a_recipe_that_fits_and_trains(runs, tmp_path, capsys):
    run_dir = runs["w4a4"]
    args = ["--bits", "2,3", "--images", "100", "--hessian-samples", "2", "--layers", "layer3.*"]
    out = tmp_path / "sens"
    assert main(["sensitivity", str(run_dir), *args, "--out", str(out)]) == 0
    assert (out / "sensitivity.png").read_bytes()[:8] == PNG
    result = json.loads((out / "sensitivity.json").read_text())
    assert len(result["rows"]) == 12 and "Sorted by explanation drift" in capsys.readouterr().out

    run = load_run(run_dir)
    uniform = model_size_bytes(run.model)
    budget_kb = (uniform - 4000) / 1000  # must drop some layer3 convolutions below 4 bits
    (run_dir / "sensitivity").mkdir(exist_ok=True)
    (run_dir / "sensitivity" / "sensitivity.json").write_text(json.dumps(result))
    recipe_path = tmp_path / "mixed.yaml"
    relative = os.path.relpath(run_dir)  # as a user types it, from where they stand
    code = main(
        ["mixed-precision", relative, "--size-kb", str(budget_kb), *args,
         "--out", str(recipe_path)]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "using the sensitivity measured" in printed and "uniform, for reference" in printed
    recipe = parse_recipe(yaml.safe_load(recipe_path.read_text()))
    assert recipe.model.init_from == str(run.path.resolve())  # trains from any folder
    assert Path(recipe.model.init_from).is_absolute()
    lowered = {k for k, v in recipe.quant.overrides.items() if v and min(v.values()) < 4}
    assert lowered and all(k.startswith("layer3.") for k in lowered)
    assert recipe.quant.overrides["conv1"] == {"weight_bits": 8}
    assert recipe.quant.overrides["act1"] == {"act_bits": 4}  # as trained
    built = variant(run, recipe.quant.overrides, calibrate_new=False)
    assert model_size_bytes(built) <= budget_kb * 1000

    out_dir = tmp_path / "finetuned"
    assert main(
        ["train", str(recipe_path), "--set", "train.max_steps=6", "--set", "train.log_every=3",
         "--set", f"output.dir={out_dir}"]
    ) == 0  # fmt: skip
    assert load_run(out_dir).checkpoint["step"] == 6


@pytest.mark.slow
@needs_data
def test_an_impossible_budget_is_one_line_and_exit_2(runs, capsys):
    code = main(
        ["mixed-precision", str(runs["w4a4"]), "--size-kb", "1", "--bits", "2", "--images", "50",
         "--hessian-samples", "2", "--layers", "fc"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "fits 1 kB" in err and "Raise --size-kb" in err


def test_bad_bit_lists_and_layers_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sensitivity", str(tmp_path), "--bits", "2,9"])
    assert exit_info.value.code == 2 and "bit widths must be 2..8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["mixed-precision", str(tmp_path)])  # no --size-kb
    assert "--size-kb" in capsys.readouterr().err
    (tmp_path / "model.pt").write_bytes(b"")  # never read: the options are checked first
    for option, value, message in (
        ("--size-kb", "-5", "--size-kb must be positive"),
        ("--drift-weight", "-1", "--drift-weight must be 0 or more"),
    ):
        extra = [] if option == "--size-kb" else ["--size-kb", "100"]
        assert main(["mixed-precision", str(tmp_path), option, value, *extra]) == 2
        assert message in capsys.readouterr().err


FINETUNE = Path(__file__).resolve().parents[1] / "qsgt_plugin" / "recipes" / "finetune"


@pytest.mark.parametrize(
    ("pattern", "dataset", "source", "lr", "mask", "mixed", "uniform", "budget"),
    [
        (
            "mnist-*.yaml",
            "mnist",
            "results/mnist/mnist-w4a4-sgt-s0",
            0.01,
            0.5,
            "mnist-resnet20-mixed-112kb",
            "mnist-resnet20-w3a3-sgt-finetune",
            112_308,
        ),
        (
            "cifar10-*-from-w4a4.yaml",
            "cifar10",
            "results/cifar10/cifar10-w4a4-sgt-ft-s0",
            0.002,
            0.1,
            "cifar10-resnet20-mixed-113kb-from-w4a4",
            "cifar10-resnet20-w3a3-sgt-from-w4a4",
            112_596,
        ),
    ],
    ids=["mnist", "cifar10"],
)
def test_the_mixed_precision_fine_tunings_start_from_w4a4_sgt_and_fit_uniform_w3a3s_size(
    pattern, dataset, source, lr, mask, mixed, uniform, budget
):
    from qsgt_plugin.recipe import load_recipe
    from qsgt_plugin.training.build import build_model, check_recipe, example_batch

    sizes = {}
    for path in sorted(FINETUNE.glob(pattern)):
        recipe = check_recipe(load_recipe(path))
        assert recipe.name == path.stem and recipe.output.dir == f"runs/{path.stem}"
        assert recipe.model.init_from == source
        assert (Path(__file__).resolve().parents[1] / source / "model.pt").is_file()
        assert recipe.optim.lr == pytest.approx(lr) and recipe.train.epochs == 2
        assert recipe.sgt.enabled and recipe.sgt.mask_fraction == mask
        model = build_model(
            recipe.model.name, recipe.model.kwargs, recipe.quant, example_batch(dataset)
        )
        sizes[path.stem] = model_size_bytes(model)
    assert set(sizes) == {mixed, uniform}
    # uniform W3A3 (first and last layers at 8 bits) is the budget the mixed recipe was given
    assert sizes[mixed] <= sizes[uniform] == budget


def test_a_recipe_with_per_layer_widths_is_labelled_mixed():
    def label(overrides):
        return Recipe.model_validate({"quant": {"overrides": overrides}}).quant.label

    assert label({}) == "w4a4"
    assert label({"fc": None, "conv1": {"weight_bits": 8}}) == "w4a4"  # float / first-last
    assert label({"layer3.*": {"weight_bits": 2, "act_bits": 2}}) == "mixed"
    assert Recipe.model_validate({"quant": {"enabled": False}}).quant.label == "fp32"


@pytest.mark.slow
@needs_data
def test_mobilenet_v2_on_cifar10_pairs_its_relu6_and_changes_one_layer(tmp_path):
    recipe = Recipe.model_validate(
        {
            "model": {"name": "mobilenetv2_050"},
            "data": {"dataset": "cifar10", "batch_size": 16, "train_subset": 64, "test_subset": 32},
            "quant": {"calibration_images": 32},
            "train": {"max_steps": 2, "log_every": 1},
            "output": {"dir": str(tmp_path / "mnv2")},
        }
    )
    run = load_run(train(recipe).run_dir)
    units = layer_units(run)
    assert len(units) == 53 and sum(u.act is not None for u in units) == 35
    unit = next(u for u in units if u.weight == "blocks.1.0.conv_pw")
    assert unit.act == "blocks.1.0.bn1.act"  # timm's BatchNormAct2d holds the ReLU6
    before, after = _bit_widths(run.model), _bit_widths(variant(run, unit_overrides(unit, 3)))
    assert {k for k in before if before[k] != after[k]} == {unit.weight, unit.act}
    result = sensitivity(run, bits=(3,), images=32, hessian_samples=2, layers=[unit.weight])
    assert result["rows"][0]["drift"] > 0 and result["rows"][0]["act"] == unit.act
