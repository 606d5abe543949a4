"""Inputs that used to be accepted or to end in a traceback: each is refused in one line
(issue: what a hostile new user found)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from torch import nn

import qsgt_plugin
from qsgt_plugin.errors import CheckpointError, RecipeError
from qsgt_plugin.recipe import Recipe, load_recipe
from qsgt_plugin.report.seeds import _key
from qsgt_plugin.runs import model_from_checkpoint


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_an_empty_recipe_is_refused_instead_of_training_the_defaults(text, tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=r"empty\.yaml is empty \(or only comments\)"):
        load_recipe(path)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=.inf", "optim.lr"),
        ("sgt.fill_value=.nan", "sgt.fill_value"),
        ("quant.alpha_init=.inf", "quant.alpha_init"),
        ("train.label_smoothing=.nan", "train.label_smoothing"),
    ],
)
def test_infinite_and_nan_settings_are_refused(override, key, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data: {dataset: mnist}\n")
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        load_recipe(path, [override])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("inf"), "a finite number greater than 0.001, got inf"),
        (float("nan"), "a finite number greater than 0.001, got nan"),
        ("calibrate", "then call qsgt_plugin.quant.calibrate_alphas"),
        ("10", "must be a number, got '10'"),
    ],
)
def test_convert_refuses_alpha_inits_it_cannot_use(value, message):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        qsgt_plugin.convert(model, alpha_init=value)


def test_a_checkpoint_with_an_unknown_quantization_key_is_a_checkpoint_error():
    payload = {
        "model_config": {
            "name": "resnet20",
            "kwargs": {"in_chans": 1, "num_classes": 10},
            "quant": {"enabled": True, "from_the_future": 1},
        },
        "recipe": {"data": {"dataset": "mnist"}},
        "model": {},
    }
    with pytest.raises(CheckpointError, match=r"quant\.from_the_future: unknown key"):
        model_from_checkpoint(payload)


def _run(**train) -> SimpleNamespace:
    data = {k: train.pop(k) for k in ("eval_batch_size", "root") if k in train}
    return SimpleNamespace(recipe=Recipe.model_validate({"data": data, "train": train}))


def test_runs_that_differ_only_in_how_they_were_watched_are_one_group():
    base = _key(_run(seed=0))
    for same in (
        _run(seed=1),
        _run(seed=0, eval_batch_size=250),
        _run(seed=0, log_every=7, checkpoint_every=100),
        _run(seed=0, device="cpu", compile=False, fast_path=False),
        _run(seed=0, root="/elsewhere"),
    ):
        assert _key(same) == base
    for different in (
        _run(seed=0, precision="bf16"),
        _run(seed=0, epochs=3),
        _run(seed=0, label_smoothing=0.1),
    ):
        assert _key(different) != base


def test_a_corrupt_line_inside_the_metrics_log_is_named_not_dropped_silently(tmp_path, caplog):
    from qsgt_plugin.run_dir import read_metrics

    log = tmp_path / "metrics.jsonl"
    log.write_text(
        '{"kind": "train", "step": 1}\nnot json\n{"kind": "eval", "step": 3}\n{"step": 4, "cut sh'
    )
    with caplog.at_level("WARNING"):
        records = read_metrics(log)
    assert [r["step"] for r in records] == [1, 3]
    assert "line 2 is not a JSON record" in caplog.text
    assert "line 4" not in caplog.text  # the last line, cut short by a kill: expected


def test_a_training_subset_smaller_than_one_batch_is_refused():
    from qsgt_plugin.training.build import check_recipe

    recipe = Recipe.model_validate({"data": {"train_subset": 10, "batch_size": 32}})
    with pytest.raises(RecipeError, match="10 images make less than one batch of 32"):
        check_recipe(recipe)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sensitivity", "run", "--layers", ""], "leave --layers out for all layers"),
        (["sensitivity", "run", "--layers", " , "], "leave --layers out for all layers"),
        (["compare", "run", "--images", "100000"], "must be at most 64 (one grid row each"),
        (["report", "run", "--images", "65"], "must be at most 64"),
        (["evaluate", "run", "--bogus"], "qsgt evaluate: error: unrecognized arguments: --bogus"),
        (["methods", "extra"], "qsgt methods: error: unrecognized arguments: extra"),
    ],
)
def test_command_line_mistakes_name_the_subcommand_and_the_fix(argv, message, capsys):
    from qsgt_plugin.cli import main

    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_intervals_of_percentages_stay_within_0_and_100():
    from qsgt_plugin.report.markdown import _cell

    summary = {"n": 3, "mean": 0.01, "std": 0.02, "ci95": [-0.04, 0.06]}
    assert _cell(summary, 100) == "1.00 ± 2.00 [0.00, 6.00]"
    assert _cell({**summary, "mean": 0.99, "ci95": [0.94, 1.04]}, 100).endswith("[94.00, 100.00]")
    assert _cell(summary, 1) == "0.01 ± 0.02 [-0.04, 0.06]"  # not a percentage: as computed
