"""The training engine and the `qsgt train` / `qsgt evaluate` commands on real MNIST."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from qsgt_plugin.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from qsgt_plugin.cli import main
from qsgt_plugin.engine import RunExistsError, TrainingDivergedError, train
from qsgt_plugin.recipe import Recipe

pytestmark = pytest.mark.skipif(not os.environ.get("QSGT_DATA"), reason="QSGT_DATA not set")

ROOT = Path(__file__).resolve().parents[1]


def tiny(tmp_path: Path, **sections) -> Recipe:
    """A W4A4 + SGT run on 256 real MNIST images, 4 steps per epoch."""
    base = {
        "model": {"name": "resnet20", "kwargs": {"in_chans": 1}},
        "sgt": {"enabled": True, "mask_fraction": 0.5},
        "data": {"dataset": "mnist", "batch_size": 64, "train_subset": 256, "test_subset": 200},
        "schedule": {"name": "constant"},
        "train": {"epochs": 2, "log_every": 2},
        "output": {"dir": str(tmp_path / "run")},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return Recipe.model_validate(base)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_writes_recipe_metrics_and_loadable_checkpoints(tmp_path):
    result = train(tiny(tmp_path))
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
    steps = [r["step"] for r in records(resumed.run_dir)]
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


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    recipe = tiny(
        tmp_path, optim={"lr": 1e30}, sgt={"enabled": False}, train={"epochs": 3, "log_every": 1}
    )
    with pytest.raises(TrainingDivergedError, match=r"NaN or infinite at step \d+"):
        train(recipe)


def test_cli_train_then_evaluate(tmp_path, capsys):
    out = tmp_path / "cli"
    args = [
        "train",
        str(ROOT / "recipes/quickstart.yaml"),
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
            ["train", str(ROOT / "recipes/quickstart.yaml"), "--set", "optim.lrr=1"],
            "optim.lrr: unknown key; did you mean 'lr'",
        ),
        (
            ["train", str(ROOT / "recipes/quickstart.yaml"), "--set", "quant.weight_bits=0"],
            "quant.weight_bits: Input should be greater than or equal to 2",
        ),
        (
            ["train", str(ROOT / "recipes/quickstart.yaml"), "--set", "data.root=/nonexistent"],
            "mnist not found: looked in /nonexistent/MNIST/raw",
        ),
        (["evaluate", "nowhere.pt"], "checkpoint not found: nowhere.pt"),
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
