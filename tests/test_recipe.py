"""Recipes: defaults < file < --set, key paths and suggestions in errors, shipped recipes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from qsgt_plugin.recipe import Recipe, RecipeError, apply_overrides, load_recipe, save_recipe
from qsgt_plugin.training.build import check_recipe

RECIPES = Path(__file__).resolve().parents[1] / "qsgt_plugin" / "recipes"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_precedence_defaults_then_file_then_set(tmp_path):
    path = write(tmp_path, "optim: {lr: 0.2}\ntrain: {epochs: 3}\n")
    recipe = load_recipe(path, ["optim.lr=0.05", "model.kwargs.in_chans=1"])
    assert recipe.optim.lr == 0.05  # --set wins over the file
    assert recipe.train.epochs == 3  # the file wins over the default
    assert recipe.optim.momentum == 0.9  # default
    assert recipe.model.kwargs == {"in_chans": 1}


def test_set_values_are_parsed_as_yaml():
    data = apply_overrides({}, ["quant.first_last_bits=null", "sgt.enabled=true", "a.b=[1, 2]"])
    assert data == {
        "quant": {"first_last_bits": None},
        "sgt": {"enabled": True},
        "a": {"b": [1, 2]},
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("optim: {lrr: 0.1}", r"optim\.lrr: unknown key; did you mean 'lr'\? allowed: name, lr,"),
        ("trian: {epochs: 2}", r"trian: unknown key; did you mean 'train'\?"),
        (
            "quant: {weight_bits: 9}",
            r"quant\.weight_bits: Input should be less than or equal to 8 \(got 9\)",
        ),
        ("sgt: {fill: zeros}", r"sgt\.fill: Input should be 'uniform', 'mean' or 'constant'"),
        ("optim: {lr: fast}", r"optim\.lr: Input should be a valid number"),
        (
            "train: {device: tpu}",
            r"train\.device: device must be auto, cpu, cuda or cuda:N \(got 'tpu'\)",
        ),
        (
            "quant: {overrides: {fc: {bits: 3}}}",
            r"quant\.overrides\.fc\.bits: Input should be 'weight_bits' or 'act_bits'",
        ),
    ],
)
def test_bad_keys_and_values_name_the_path_value_and_allowed(tmp_path, text, expected):
    with pytest.raises(RecipeError, match=expected):
        load_recipe(write(tmp_path, text))


def test_an_unregistered_dataset_is_refused_before_anything_is_built(tmp_path):
    from qsgt_plugin.training.build import check_recipe

    recipe = load_recipe(write(tmp_path, "data: {dataset: imagenet}"))  # plugins may add it
    with pytest.raises(
        RecipeError, match=r"data\.dataset: unknown dataset 'imagenet'; registered: cifar10, mnist"
    ):
        check_recipe(recipe)


def test_every_problem_is_listed_at_once(tmp_path):
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, "optim: {lrr: 1}\ntrain: {epochs: 0}\n"))
    assert "optim.lrr" in str(info.value) and "train.epochs" in str(info.value)


def test_unreadable_recipes(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(RecipeError, match="is not valid YAML"):
        load_recipe(write(tmp_path, "model: [unclosed"))
    with pytest.raises(RecipeError, match="a recipe is a mapping of sections, got list"):
        load_recipe(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(RecipeError, match=r"optim\.lr is a value, not a section"):
        load_recipe(write(tmp_path, "optim: {lr: 0.1}"), ["optim.lr.x=1"])
    with pytest.raises(RecipeError, match=r"--set expects key\.path=value"):
        load_recipe(write(tmp_path, ""), ["optim.lr"])


def test_names_are_checked_against_the_registries():
    with pytest.raises(RecipeError, match=r"model\.name: unknown model 'resnet21'; did you mean"):
        check_recipe(Recipe.model_validate({"model": {"name": "resnet21"}}))
    with pytest.raises(
        RecipeError, match=r"quant\.method: unknown method 'lsq'; known: pact, pact_lsq"
    ):
        check_recipe(Recipe.model_validate({"quant": {"method": "lsq"}}))
    check_recipe(Recipe.model_validate({"quant": {"enabled": False, "method": "anything"}}))


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(RECIPES / "quickstart.yaml", ["optim.lr=0.05"])
    save_recipe(recipe, tmp_path / "resolved.yaml")
    text = (tmp_path / "resolved.yaml").read_text()
    assert "alpha_init: 10.0" in text  # every default is spelled out
    assert load_recipe(tmp_path / "resolved.yaml") == recipe


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipes_validate(path):
    recipe = load_recipe(path)
    check_recipe(recipe)
    assert recipe.name == path.stem
    assert recipe.output.dir == f"runs/{path.stem}"
    if path.stem != "quickstart":
        dataset, _, variant = path.stem.split("-", 2)
        variant = variant.removesuffix("-fast").removesuffix("-cpu")
        assert recipe.data.dataset == dataset
        assert recipe.quant.enabled == variant.startswith("w4a4")
        assert recipe.sgt.enabled == variant.endswith("sgt")
        if recipe.sgt.enabled:
            assert recipe.sgt.mask_fraction == (0.5 if dataset == "mnist" else 0.1)
        assert recipe.model.kwargs.get("in_chans", 3) == (1 if dataset == "mnist" else 3)
    if path.stem.endswith("-cpu"):  # the CPU parent: the fast trainers' ingredients
        assert recipe.data.flip == "alternate" and recipe.data.crop_padding in (None, 4)
        assert recipe.train.ema and recipe.train.label_smoothing > 0 and recipe.optim.nesterov
        assert recipe.schedule.name == "onecycle" and recipe.train.precision == "auto"
    elif path.stem.endswith("-fast"):  # the GPU recipe: the fast trainers' ingredients, all on
        assert recipe.quant.alpha_init == "calibrate" and recipe.data.flip == "alternate"
        assert recipe.train.ema and recipe.train.label_smoothing > 0 and recipe.optim.nesterov
        assert recipe.schedule.name == "onecycle"
    elif path.stem != "quickstart":
        # CIFAR-10: the papers' schedule; MNIST: a 6-epoch one-cycle schedule for the CPU
        decay = 2e-4 if dataset == "cifar10" else 5e-4
        assert (recipe.optim.lr, recipe.optim.momentum, recipe.optim.weight_decay) == (
            0.1,
            0.9,
            decay,
        )
        if dataset == "mnist":
            assert recipe.train.epochs == 6 and recipe.schedule.name == "onecycle"
            assert recipe.quant.alpha_init == "calibrate" or not recipe.quant.enabled


def test_quant_and_sgt_sections_are_the_keyword_arguments_they_feed():
    import inspect

    from qsgt_plugin import SaliencyGuidedTraining, convert
    from qsgt_plugin.quant import calibrate_alphas
    from qsgt_plugin.recipe import QuantSection, SGTSection
    from qsgt_plugin.training.build import CALIBRATION_KEYS

    for section, function in ((QuantSection, convert), (SGTSection, SaliencyGuidedTraining)):
        keys = set(section.model_fields) - {"enabled"} - CALIBRATION_KEYS
        assert keys <= set(inspect.signature(function).parameters), keys
    # the calibration keys feed calibrate_alphas (through build.calibrate)
    assert set(QuantSection.model_fields) >= CALIBRATION_KEYS
    assert {"batches", "percentile_q"} <= set(inspect.signature(calibrate_alphas).parameters)


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        # 100 steps; the factor at steps 0, 10, 30, 50, 75, 99
        ({"name": "constant"}, [1, 1, 1, 1, 1, 1]),
        ({"name": "constant", "warmup_steps": 20}, [0.05, 0.55, 1, 1, 1, 1]),
        (
            {"name": "cosine"},
            [
                1,
                0.5 * (1 + math.cos(0.1 * math.pi)),
                0.5 * (1 + math.cos(0.3 * math.pi)),
                0.5,
                0.5 * (1 + math.cos(0.75 * math.pi)),
                0.5 * (1 + math.cos(0.99 * math.pi)),
            ],
        ),
        (
            {"name": "onecycle"},
            [
                0.04,
                0.04 + 0.96 / 3,
                1,
                0.5 * (1 + math.cos(20 / 70 * math.pi)),
                0.5 * (1 + math.cos(45 / 70 * math.pi)),
                0.5 * (1 + math.cos(69 / 70 * math.pi)),
            ],
        ),
        ({"name": "step", "milestones": [0.5, 0.75], "gamma": 0.1}, [1, 1, 1, 0.1, 0.01, 0.01]),
    ],
)
def test_every_schedule_follows_its_formula(schedule, expected):
    from qsgt_plugin.recipe import ScheduleSection
    from qsgt_plugin.training.build import lr_factor

    section = ScheduleSection.model_validate(schedule)
    got = [lr_factor(step, 100, section) for step in (0, 10, 30, 50, 75, 99)]
    assert got == pytest.approx(expected)


@pytest.mark.parametrize(("alpha_decay", "expected"), [(None, 5e-4), (0.0, 0.0), (1e-3, 1e-3)])
def test_the_clipping_levels_get_their_own_weight_decay_group(alpha_decay, expected):
    import timm

    from qsgt_plugin import convert
    from qsgt_plugin.quant import alphas
    from qsgt_plugin.recipe import OptimSection
    from qsgt_plugin.training.build import make_optimizer

    model = convert(timm.create_model("resnet20"), bits=4)
    optim = OptimSection(weight_decay=5e-4, alpha_weight_decay=alpha_decay)
    weights, clip_levels = make_optimizer(model, optim).param_groups
    assert weights["weight_decay"] == 5e-4 and clip_levels["weight_decay"] == expected
    assert {id(p) for p in clip_levels["params"]} == {id(a) for a in alphas(model).values()}
    assert len(weights["params"]) + len(clip_levels["params"]) == len(list(model.parameters()))
    float_groups = make_optimizer(timm.create_model("resnet20"), optim).param_groups
    assert len(float_groups) == 1  # a float model has no clipping levels


def test_label_smoothing_and_nesterov_reach_the_criterion_and_optimizer():
    import torch.nn.functional as F

    from qsgt_plugin.recipe import OptimSection
    from qsgt_plugin.training.build import make_criterion, make_optimizer

    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    smoothed = make_criterion(0.1)(logits, y)
    log_p = F.log_softmax(logits, 1)
    expected = 0.9 * F.nll_loss(log_p, y) + 0.1 * (-log_p.mean(1)).mean()
    torch.testing.assert_close(smoothed, expected)
    torch.testing.assert_close(make_criterion(0.0)(logits, y), F.cross_entropy(logits, y))
    model = torch.nn.Linear(3, 2)
    (group,) = make_optimizer(model, OptimSection(nesterov=True, momentum=0.8)).param_groups
    assert group["nesterov"] is True and group["momentum"] == 0.8


@pytest.mark.parametrize(
    "path", sorted((RECIPES / "finetune").glob("cifar10-*-finetune.yaml")), ids=lambda p: p.stem
)
def test_cifar10_fine_tunings_start_from_the_float_parent_in_at_most_8_epochs(path):
    recipe = check_recipe(load_recipe(path))
    parent = check_recipe(load_recipe(RECIPES / "cifar10-resnet20-fp32-cpu.yaml"))
    assert recipe.name == path.stem and recipe.output.dir == f"runs/{path.stem}"
    assert recipe.model.init_from == "results/cifar10/cifar10-fp32-cpu-s0"
    assert recipe.train.epochs <= 8 and recipe.optim.lr == pytest.approx(parent.optim.lr / 10)
    assert not parent.quant.enabled and not parent.sgt.enabled
    variant = path.stem.removeprefix("cifar10-resnet20-").removesuffix("-finetune")
    assert recipe.quant.enabled == variant.startswith("w4a4")
    assert recipe.sgt.enabled == variant.endswith("sgt")
    if recipe.quant.enabled:
        assert recipe.quant.alpha_init == "calibrate"
        assert (recipe.quant.weight_bits, recipe.quant.act_bits) == (4, 4)
    if recipe.sgt.enabled:
        assert recipe.sgt.mask_fraction == 0.1
    # the same data and augmentation as the parent: only the model and the rate change
    assert recipe.data == parent.data


def test_a_recipe_states_only_its_differences_from_its_base(tmp_path):
    (tmp_path / "parent.yaml").write_text(
        "name: parent\ndata: {dataset: mnist, batch_size: 64}\n"
        "schedule: {name: step, milestones: [0.5, 0.75]}\ntrain: {epochs: 3}\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text(
        "base: ../parent.yaml\nname: child\ndata: {batch_size: 32}\nschedule: {milestones: [0.9]}\n"
    )
    (tmp_path / "grandchild.yaml").write_text("base: sub/child.yaml\ntrain: {epochs: 1}\n")
    recipe = load_recipe(tmp_path / "grandchild.yaml", ["data.batch_size=16"])
    assert recipe.name == "child"
    assert (recipe.data.dataset, recipe.data.batch_size) == ("mnist", 16)  # --set wins last
    assert recipe.schedule.milestones == [0.9]  # a list is replaced, not merged
    assert recipe.schedule.name == "step" and recipe.train.epochs == 1
    assert load_recipe(tmp_path / "sub" / "child.yaml").data.batch_size == 32


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, "the bases form a loop"),
        ({"a.yaml": "base: a.yaml\n"}, "the bases form a loop"),
        ({"a.yaml": "base: missing.yaml\n"}, r"its base missing.yaml is not a file"),
        ({"a.yaml": "base: [x]\n"}, "base must be the path of another recipe"),
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "[1, 2]\n"}, "b.yaml: a recipe is a mapping"),
    ],
    ids=["loop", "itself", "missing", "not-a-path", "bad-base"],
)
def test_a_broken_base_is_named(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(RecipeError, match=message):
        load_recipe(tmp_path / "a.yaml")


def test_a_base_chain_has_a_depth_limit(tmp_path):
    for i in range(12):
        (tmp_path / f"r{i}.yaml").write_text(f"base: r{i + 1}.yaml\n")
    (tmp_path / "r12.yaml").write_text("data: {dataset: mnist}\n")
    with pytest.raises(RecipeError, match="bases deep; flatten the chain"):
        load_recipe(tmp_path / "r0.yaml")


def test_the_shipped_variants_build_on_a_base_and_resolve_in_full(tmp_path):
    recipe = load_recipe(RECIPES / "mnist-resnet20-w4a4-sgt.yaml")
    assert "base:" in (RECIPES / "mnist-resnet20-w4a4-sgt.yaml").read_text()
    assert (recipe.quant.enabled, recipe.sgt.enabled, recipe.train.epochs) == (True, True, 6)
    assert recipe.quant.alpha_init == "calibrate" and recipe.data.crop_padding == 2
    save_recipe(recipe, tmp_path / "recipe.yaml")
    written = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    assert "base" not in written and written["sgt"]["mask_fraction"] == 0.5
    assert load_recipe(tmp_path / "recipe.yaml") == recipe


def _mapping_settings() -> list[tuple[str, str]]:
    """Every setting of the schema whose value is a mapping, as (section, key)."""
    out = []
    for section, field in Recipe.model_fields.items():
        for key, setting in getattr(field.annotation, "model_fields", {}).items():
            if getattr(setting.annotation, "__origin__", None) is dict:
                out.append((section, key))
    return out


# a value each mapping setting validates with
MAPPING_VALUES = {
    ("model", "kwargs"): {"in_chans": 1, "shortcut": "B"},
    ("quant", "overrides"): {"stem*": {"weight_bits": 8}},
    ("sgt", "attribution_kwargs"): {"n_steps": 8},
}


def test_every_mapping_setting_is_listed_here():
    assert sorted(_mapping_settings()) == sorted(MAPPING_VALUES)


@pytest.mark.parametrize("section,key", sorted(MAPPING_VALUES))
def test_a_child_recipe_replaces_a_mapping_setting_whole_and_empty_clears_it(
    tmp_path, section, key
):
    base = {section: {key: MAPPING_VALUES[section, key]}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"base": "base.yaml", section: {key: {}}}))
    assert getattr(getattr(load_recipe(child), section), key) == {}
    # a non-empty mapping replaces the base's too: no key of the base's survives
    one = dict([next(iter(MAPPING_VALUES[section, key].items()))])
    other = {**one} if len(MAPPING_VALUES[section, key]) > 1 else {}
    child.write_text(yaml.safe_dump({"base": "base.yaml", section: {key: other}}))
    assert getattr(getattr(load_recipe(child), section), key) == other
    # sections themselves still merge: the base's setting stays where the child is silent
    child.write_text(yaml.safe_dump({"base": "base.yaml", section: {}}))
    assert getattr(getattr(load_recipe(child), section), key) == MAPPING_VALUES[section, key]


@pytest.mark.parametrize(
    "text,message",
    [
        ("optim: {lr: 0.01, lr: 1.0}\n", r"optim\.lr is given twice \(lines 1 and 1\)"),
        (
            "quant:\n  weight_bits: 4\ndata: {dataset: mnist}\nquant:\n  weight_bits: 2\n",
            r"quant is given twice \(lines 1 and 4\)",
        ),
        (
            "quant:\n  overrides:\n    'stem*': {weight_bits: 8, weight_bits: 2}\n",
            r"quant\.overrides\.stem\*\.weight_bits is given twice",
        ),
    ],
)
def test_a_key_given_twice_is_refused_with_its_path(tmp_path, text, message):
    with pytest.raises(RecipeError, match=message + r".*YAML would keep only the last"):
        load_recipe(write(tmp_path, text))


def test_a_key_given_twice_in_a_set_value_is_refused():
    with pytest.raises(RecipeError, match=r"--set: quant\.bits is given twice"):
        apply_overrides({}, ["quant={bits: 1, bits: 2}"])


def test_yaml_merge_keys_and_aliases_are_not_duplicates(tmp_path):
    text = "x: &d {lr: 0.05}\noptim:\n  <<: *d\n  momentum: 0.8\n"
    data = yaml.safe_load(text)
    data.pop("x")
    path = write(tmp_path, yaml.safe_dump(data))
    assert load_recipe(path).optim.lr == 0.05


def test_a_packaged_recipe_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    from qsgt_plugin.recipe import find_recipe, packaged_recipes

    monkeypatch.chdir(tmp_path)  # outside the source tree
    names = packaged_recipes()
    assert {"quickstart", "mnist-resnet20-w4a4-sgt"} <= set(names)
    assert "finetune/cifar10-resnet20-w4a4-sgt-finetune" in names
    for spelling in ("quickstart", "quickstart.yaml", "recipes/quickstart.yaml"):
        assert find_recipe(spelling) == names["quickstart"]
    assert load_recipe("mnist-resnet20-w4a4-sgt").sgt.enabled  # its base: resolves beside it
    Path("quickstart").write_text("train: {epochs: 1}\ndata: {dataset: mnist}\n")
    assert find_recipe("quickstart") == Path("quickstart")  # a file wins over a name
    with pytest.raises(RecipeError, match=r"did you mean 'quickstart'\? `qsgt recipes` lists"):
        find_recipe("quikstart")
