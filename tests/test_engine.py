"""The training loop and the `qsgt train` / `qsgt evaluate` commands.

The loop's behaviour (checkpoints, resuming, the NaN stop, best.pt, EMA, init_from) is tested
on the tests' own dataset plugin (``tests/synthetic_data.py``, registered through the plugin
hooks), so the plain run trains; the same run on real MNIST and the CLI on the quick-start
recipe are the slow integration tests.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from qsgt_plugin.cli import main
from qsgt_plugin.common.evaluation import evaluate
from qsgt_plugin.errors import RecipeError, RunExistsError, TrainingDivergedError
from qsgt_plugin.quant import model_size_bytes, quantization_disabled
from qsgt_plugin.recipe import Recipe
from qsgt_plugin.report import accuracy_table
from qsgt_plugin.run_dir.checkpoint import CheckpointError, load_checkpoint
from qsgt_plugin.runs import load_run, model_from_checkpoint
from qsgt_plugin.training.loop import train

pytestmark = pytest.mark.usefixtures("synthetic_dataset")
QUICKSTART = "quickstart"  # the packaged recipe, by name
real_mnist = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("QSGT_DATA"), reason="QSGT_DATA not set"),
]

ROOT = Path(__file__).resolve().parents[1]


def tiny(tmp_path: Path, dataset: str = "synthetic", **sections) -> Recipe:
    """A W4A4 + SGT run on 256 images, 4 steps per epoch."""
    base = {
        "model": {"name": "resnet20"},
        "sgt": {"enabled": True, "mask_fraction": 0.5},
        "data": {"dataset": dataset, "batch_size": 64, "train_subset": 256, "test_subset": 200},
        "schedule": {"name": "constant"},
        "train": {"epochs": 2, "log_every": 2},
        "output": {"dir": str(tmp_path / "run")},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return Recipe.model_validate(base)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("dataset", ["synthetic", pytest.param("mnist", marks=real_mnist)])
def test_a_run_writes_recipe_metrics_and_loadable_checkpoints(tmp_path, dataset):
    result = train(tiny(tmp_path, dataset))
    run = result.run_dir
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pt",
        "last.pt",
        "metrics.jsonl",
        "recipe.yaml",
    ]
    assert result.step == 8
    logs = records(run)
    assert [r["kind"] for r in logs] == ["init"] + ["train", "train", "eval"] * 2
    assert logs[0]["alphas"] == {name: 10.0 for name in logs[1]["alphas"]}
    assert [r["step"] for r in logs if r["kind"] == "eval"] == [4, 8]
    assert [r["epoch"] for r in logs if r["kind"] == "eval"] == [1.0, 2.0]
    train_record = logs[1]
    assert {"loss", "ce", "kl", "lr"} <= set(train_record)
    assert train_record["loss"] == pytest.approx(train_record["ce"] + train_record["kl"], rel=1e-5)
    assert len(train_record["alphas"]) == 19 and "layer1.0.act1" in train_record["alphas"]
    payload = load_checkpoint(run / "last.pt")  # weights_only=True inside
    assert payload["step"] == 8 and payload["recipe"]["sgt"]["enabled"] is True
    assert payload["model_config"]["quant"]["weight_bits"] == 4
    model = model_from_checkpoint(payload)
    assert any("clip_level_impl.alpha" in k for k in model.state_dict())
    assert logs[-1]["test_acc"] == payload["test_acc"]


@pytest.mark.parametrize("channels_last", [True, False])
def test_a_run_read_back_evaluates_in_the_layout_it_trained_in(tmp_path, channels_last):
    """`qsgt evaluate` lays the model and batches out as training evaluated them: a quantizer
    turns the last-bit differences of another layout into whole levels (a CIFAR-10 W4A4 run
    moved 4 images of 10,000 evaluated contiguous instead of channels-last)."""
    result = train(tiny(tmp_path, train={"epochs": 1, "channels_last": channels_last}))
    run = load_run(result.run_dir / "last.pt")
    assert run.channels_last is channels_last
    model, loader = run.evaluation()
    weight = model.get_submodule("layer1.0.conv1").weight  # 16 channels in: the layouts differ
    assert weight.is_contiguous(memory_format=torch.channels_last) is channels_last
    assert loader.channels_last is channels_last
    assert evaluate(model, loader)[0] == result.test_acc
    # the run's own model keeps its layout for the analyses that read it
    conv = run.model.get_submodule("layer1.0.conv1").weight
    assert conv.is_contiguous() and (model is not run.model) is channels_last
    # the report's accuracy table evaluates the same way: the accuracy training recorded
    table = accuracy_table([run])
    assert [r["run"] for r in table] == ["run", "run (float view)"]
    assert table[0]["test_acc"] == result.test_acc
    # and sizes its float view with the quantizers off, in either layout (the channels-last
    # copy's quantizers were the ones switched off, and the size once read run.model's)
    with quantization_disabled(run.model):
        float_size = model_size_bytes(run.model)
    assert table[0]["size_bytes"] == model_size_bytes(run.model)
    assert table[1]["size_bytes"] == float_size > 6 * table[0]["size_bytes"]


@pytest.mark.parametrize("channels_last", [True, False])
def test_an_export_checks_its_graph_against_the_model_as_training_evaluated_it(
    tmp_path, channels_last, monkeypatch, capsys
):
    """`qsgt export`'s agreement with PyTorch, like `qsgt evaluate`, uses the layout the run
    trained in: model and batches channels-last for a channels-last run."""
    from qsgt_plugin.cli import main
    from qsgt_plugin.quant.export import writer

    result = train(tiny(tmp_path, train={"epochs": 1, "channels_last": channels_last}))
    seen = []
    real = writer.agreement

    def spy(model, path, inputs, **options):
        weight = model.get_submodule("layer1.0.conv1").weight  # 16 channels in
        seen.append((weight.is_contiguous(memory_format=torch.channels_last), options))
        return real(model, path, inputs, **options)

    monkeypatch.setattr(writer, "agreement", spy)
    out = tmp_path / "model.onnx"
    assert main(["export", str(result.run_dir), "--out", str(out), "--format", "qdq"]) == 0
    # the batches' layout inside agreement(): tests/test_deploy.py
    assert seen == [(channels_last, {"channels_last": channels_last})]
    assert "on its calibration images: same top-1 class as PyTorch on" in capsys.readouterr().out


def test_a_run_from_before_the_layout_setting_evaluates_contiguous():
    run = load_run(ROOT / "results/mnist/mnist-fp32-s0")  # recipe without train.channels_last
    assert "channels_last" not in run.checkpoint["recipe"]["train"]
    assert run.channels_last is False


def test_resume_continues_exactly_where_the_run_stopped(tmp_path):
    straight = train(tiny(tmp_path / "a"))
    first = train(tiny(tmp_path / "b", train={"epochs": 1}))
    assert first.step == 4
    with pytest.raises(RunExistsError, match="--resume"):
        train(tiny(tmp_path / "b"))
    resumed = train(tiny(tmp_path / "b"), resume=True)
    assert resumed.step == 8
    a = load_checkpoint(straight.run_dir / "last.pt")["model"]
    b = load_checkpoint(resumed.run_dir / "last.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    logs = records(resumed.run_dir)
    resumes = [r for r in logs if r["kind"] == "resume"]
    assert resumes == [
        {"kind": "resume", "step": 4, "epoch": 1.0, "changed": {"train.epochs": [1, 2]}}
    ]
    steps = [r["step"] for r in logs if r["kind"] != "resume"]
    assert steps == [r["step"] for r in records(straight.run_dir)]  # nothing duplicated


def test_resume_mid_epoch_from_a_step_checkpoint(tmp_path):
    straight = train(tiny(tmp_path / "a", train={"epochs": 1}))
    cut = tiny(tmp_path / "b", train={"epochs": 1, "checkpoint_every": 3})
    original_step = torch.optim.SGD.step
    calls = {"n": 0}

    def failing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original_step(self, *args, **kwargs)

    torch.optim.SGD.step = failing_step
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cut)
    finally:
        torch.optim.SGD.step = original_step
    assert load_checkpoint(cut.output.dir + "/last.pt")["step"] == 3
    resumed = train(cut, resume=True)
    a = load_checkpoint(straight.run_dir / "last.pt")["model"]
    b = load_checkpoint(resumed.run_dir / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from qsgt_plugin.training.data import Loader

    batches = Loader.batches

    def poisoned(self, skip=0, epoch=0):  # the 2nd batch of the 2nd epoch is infinite
        for i, (x, y) in enumerate(batches(self, skip, epoch), start=skip):
            yield (x * float("inf") if (epoch, i) == (1, 1) else x), y

    monkeypatch.setattr(Loader, "batches", poisoned)
    recipe = tiny(tmp_path, sgt={"enabled": False}, train={"epochs": 3, "log_every": 1})
    with pytest.raises(TrainingDivergedError, match=r"NaN or infinite at step 6;"):
        train(recipe)
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["step"] == 4  # the end of the first epoch, the last good state
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())
    logs = records(tmp_path / "run")
    assert max(r["step"] for r in logs) == 5  # nothing logged from the bad step on


def test_best_pt_holds_the_best_evaluation(tmp_path, monkeypatch):
    import qsgt_plugin.training.loop

    accuracies = iter([0.5, 0.8, 0.6])
    monkeypatch.setattr(qsgt_plugin.training.loop, "evaluate", lambda *a: (next(accuracies), 1.0))
    result = train(tiny(tmp_path, sgt={"enabled": False}, train={"epochs": 3}))
    best, last = (load_checkpoint(result.run_dir / n) for n in ("best.pt", "last.pt"))
    assert (best["step"], best["test_acc"]) == (8, 0.8)
    assert (last["step"], last["test_acc"]) == (12, 0.6)
    assert result.best_acc == 0.8 and result.test_acc == 0.6


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("QSGT_DATA"), reason="QSGT_DATA not set")
def test_cli_train_then_evaluate(tmp_path, capsys):
    out = tmp_path / "cli"
    args = [
        "train",
        QUICKSTART,
        "--set",
        "train.max_steps=3",
        "--set",
        "data.test_subset=100",
        "--set",
        f"output.dir={out}",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert re.search(
        rf"test accuracy \d+\.\d\d% \(best .*\) after 3 steps; run written to {out}", printed
    )
    assert main(["evaluate", str(out / "last.pt")]) == 0
    assert re.search(
        r"test accuracy \d+\.\d\d% .* on 100 mnist test images; checkpoint at step 3",
        capsys.readouterr().out,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "missing.yaml"], "recipe file not found: missing.yaml"),
        (
            ["train", QUICKSTART, "--set", "optim.lrr=1"],
            "optim.lrr: unknown key; did you mean 'lr'",
        ),
        (
            [
                "train",
                QUICKSTART,
                "--set",
                "quant.weight_bits=0",
            ],
            "quant.weight_bits: Input should be greater than or equal to 2",
        ),
        (
            [
                "train",
                QUICKSTART,
                "--set",
                "data.root=/nonexistent",
            ],
            "mnist not found: looked in /nonexistent/MNIST/raw",
        ),
        (["evaluate", "nowhere.pt"], "nowhere.pt does not exist"),
    ],
)
def test_cli_user_errors_exit_2_with_one_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match="corrupted or not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a qsgt checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    marker = tmp_path / "pwned"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "qsgt-checkpoint/1", "payload": RunsCode()}, tmp_path / "unsafe.pt")
    with pytest.raises(
        CheckpointError, match=r"refused by the safe loader .* would import or run code"
    ):
        load_checkpoint(tmp_path / "unsafe.pt")
    assert not marker.exists()


def test_resume_applies_a_new_learning_rate_and_logs_the_change(tmp_path):
    first = train(tiny(tmp_path, train={"epochs": 1}, optim={"lr": 0.1}))
    resumed = train(tiny(tmp_path, train={"epochs": 2}, optim={"lr": 0.01}), resume=True)
    logs = records(resumed.run_dir)
    (resume,) = [r for r in logs if r["kind"] == "resume"]
    assert resume["changed"] == {"optim.lr": [0.1, 0.01], "train.epochs": [1, 2]}
    after = [r for r in logs if r["kind"] == "train" and r["step"] > first.step]
    assert after and all(r["lr"] == pytest.approx(0.01) for r in after)  # constant schedule
    optimizer = load_checkpoint(resumed.run_dir / "last.pt")["optimizer"]
    assert [g["lr"] for g in optimizer["param_groups"]] == pytest.approx([0.01, 0.01])


@pytest.mark.parametrize("started", ["fp32", "bf16"])
def test_resume_keeps_the_precision_and_layout_the_run_started_with(tmp_path, monkeypatch, started):
    """A run started where auto meant one precision resumes on a machine where it means the
    other: it keeps its own (and its recipe.yaml says so); an explicit value changes it."""
    import qsgt_plugin.training.step as step

    other = "bf16" if started == "fp32" else "fp32"
    monkeypatch.setattr(step, "native_bf16", lambda device: started == "bf16")
    plain = {"sgt": {"enabled": False}}
    train(tiny(tmp_path, train={"epochs": 1, "channels_last": False}, **plain))
    monkeypatch.setattr(step, "native_bf16", lambda device: other == "bf16")  # another machine
    resumed = train(tiny(tmp_path, train={"epochs": 2}, **plain), resume=True)
    saved = load_checkpoint(resumed.run_dir / "last.pt")["recipe"]["train"]
    assert (saved["precision"], saved["channels_last"]) == (started, False)
    recipe_yaml = (resumed.run_dir / "recipe.yaml").read_text()
    assert f"precision: {started}" in recipe_yaml and "channels_last: false" in recipe_yaml
    (resume,) = [r for r in records(resumed.run_dir) if r["kind"] == "resume"]
    assert resume["changed"] == {"train.epochs": [1, 2]}
    # asked for by name, the change is made and recorded
    asked = train(tiny(tmp_path, train={"epochs": 3, "precision": other}, **plain), resume=True)
    last = [r for r in records(asked.run_dir) if r["kind"] == "resume"][-1]
    assert last["changed"]["train.precision"] == [started, other]


@pytest.mark.parametrize(
    ("section", "change", "key"),
    [
        ("quant", {"weight_bits": 3}, "quant.weight_bits"),
        ("model", {"kwargs": {"in_chans": 1, "shortcut": "B"}}, "model.kwargs"),
        ("sgt", {"mask_fraction": 0.3}, "sgt.mask_fraction"),
        ("data", {"batch_size": 32}, "data.batch_size"),
        ("train", {"seed": 5}, "train.seed"),
    ],
)
def test_resume_refuses_changes_the_weights_depend_on(tmp_path, section, change, key):
    train(tiny(tmp_path, train={"epochs": 1}))
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(RecipeError, match=rf"--resume cannot change {re.escape(key)} \("):
        train(tiny(tmp_path, **{section: change}), resume=True)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before  # nothing touched


def test_a_resumed_run_logs_what_the_uninterrupted_run_logs(tmp_path):
    straight = train(tiny(tmp_path / "a", train={"epochs": 2, "checkpoint_every": 3}))
    cut = tiny(tmp_path / "b", train={"epochs": 2, "checkpoint_every": 3, "max_steps": 6})
    train(cut)
    resumed = train(tiny(tmp_path / "b", train={"epochs": 2, "checkpoint_every": 3}), resume=True)

    def evals(run):
        return [r for r in records(run) if r["kind"] == "eval"]

    a, b = evals(straight.run_dir), evals(resumed.run_dir)
    # b evaluated at step 6 when it stopped; its final record matches a's
    assert a[-1]["step"] == b[-1]["step"] == 8
    assert b[-1]["train_loss"] == pytest.approx(a[-1]["train_loss"], rel=1e-6)
    assert b[-1]["test_acc"] == a[-1]["test_acc"]
    assert b[-1]["elapsed"] > evals(resumed.run_dir)[0]["elapsed"] > 0


def test_ema_evaluates_and_saves_the_average(tmp_path):
    result = train(tiny(tmp_path, train={"epochs": 1, "ema": 0.9}))
    payload = load_checkpoint(result.run_dir / "last.pt")
    assert set(payload["model"]) == set(payload["train_model"])
    differs = [
        k
        for k in payload["model"]
        if not torch.equal(payload["model"][k], payload["train_model"][k])
    ]
    assert any("alpha" in k for k in differs) and any("conv" in k for k in differs)
    model = model_from_checkpoint(payload)
    from qsgt_plugin.common.evaluation import evaluate
    from qsgt_plugin.runs import load_run

    run = load_run(result.run_dir / "last.pt")
    assert evaluate(model, run.test_loader())[0] == payload["test_acc"]  # the average was evaluated


def test_init_from_a_float_run_then_calibrate(tmp_path):
    float_run = train(tiny(tmp_path / "fp32", quant={"enabled": False}, train={"epochs": 1}))
    source = load_checkpoint(float_run.run_dir / "last.pt")["model"]
    recipe = tiny(
        tmp_path / "q",
        model={"init_from": str(float_run.run_dir)},
        quant={"alpha_init": "calibrate", "calibration_images": 64},
        train={"epochs": 1, "max_steps": 1},
        optim={"lr": 1e-9},
    )
    result = train(recipe)
    logs = records(result.run_dir)
    alphas = logs[0]["alphas"]
    assert len(set(alphas.values())) > 5 and all(a != 10.0 for a in alphas.values())
    trained = load_checkpoint(result.run_dir / "last.pt")["model"]
    assert torch.allclose(trained["conv1.weight"], source["conv1.weight"], atol=1e-6)
    with pytest.raises(RecipeError, match=r"model\.init_from: .* holds a different model"):
        train(
            tiny(
                tmp_path / "bad",
                model={"name": "resnet32", "init_from": str(float_run.run_dir)},
            )
        )
    with pytest.raises(RecipeError, match=r"model\.init_from: .*nowhere does not exist$"):
        train(tiny(tmp_path / "bad", model={"init_from": str(tmp_path / "nowhere")}))
    # a shipped recipe's relative init_from, run from another folder: where it was looked for
    with pytest.raises(RecipeError, match=r"read from the current folder, .*--set model\.init_"):
        train(tiny(tmp_path / "bad", model={"init_from": "results/cifar10/nowhere-s0"}))
    assert not (tmp_path / "bad").exists()  # refused before anything was written
