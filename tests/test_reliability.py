"""No lost work: a run killed with SIGKILL resumes exactly; broken inputs are clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from qsgt_plugin.cli import main
from qsgt_plugin.errors import RunDirError
from qsgt_plugin.recipe import Recipe
from qsgt_plugin.run_dir import RunDir
from qsgt_plugin.run_dir.checkpoint import CheckpointError, load_checkpoint
from qsgt_plugin.training.data import DatasetNotFoundError, load_split
from qsgt_plugin.training.loop import train

needs_data = pytest.mark.skipif(not os.environ.get("QSGT_DATA"), reason="QSGT_DATA not set")


def recipe_dict(out: Path) -> dict:
    """W4A4 on 512 real MNIST images: 8 steps an epoch, a checkpoint every 3 steps."""
    return {
        "model": {"name": "resnet20", "kwargs": {"in_chans": 1}},
        "data": {"dataset": "mnist", "batch_size": 64, "train_subset": 512, "test_subset": 200},
        "schedule": {"name": "cosine"},
        "train": {"epochs": 3, "log_every": 2, "checkpoint_every": 3},
        "output": {"dir": str(out)},
    }


@needs_data
@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(tmp_path):
    straight = train(Recipe.model_validate(recipe_dict(tmp_path / "straight")))

    killed = tmp_path / "killed"
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe_dict(killed)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "qsgt_plugin.cli", "train", str(recipe_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    step, deadline = 0, time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if (killed / "last.pt").exists():
            step = load_checkpoint(killed / "last.pt")["step"]
            if step >= 9:  # inside the second epoch
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted_at = load_checkpoint(killed / "last.pt")["step"]
    assert 9 <= interrupted_at < 24 and interrupted_at % 8 != 0

    assert main(["train", str(recipe_file), "--resume"]) == 0
    a = load_checkpoint(straight.run_dir / "last.pt")
    b = load_checkpoint(killed / "last.pt")
    assert a["step"] == b["step"] == 24
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    records = RunDir(killed).records()
    resumes = [r for r in records if r["kind"] == "resume"]
    assert [r["step"] for r in resumes] == [interrupted_at] and resumes[0]["changed"] == {}
    steps = [r["step"] for r in records if r["kind"] != "resume"]
    assert steps == [r["step"] for r in RunDir(straight.run_dir).records()]  # not duplicated


def test_a_metrics_line_cut_by_a_kill_is_skipped(tmp_path):
    run = RunDir(tmp_path)
    run.log({"kind": "train", "step": 2})
    with run.metrics.open("a") as f:
        f.write('{"kind": "train", "st')  # the process died mid-write
    assert run.records() == [{"kind": "train", "step": 2}]
    run.start_log(resumed_step=2)
    assert run.metrics.read_text() == '{"kind": "train", "step": 2}\n'


@pytest.mark.parametrize(
    "line,why",
    [
        ("[1, 2]", "a JSON list, not an object"),
        ('"text"', "a JSON str, not an object"),
        ('{"kind": 5, "step": 3}', "no string 'kind'"),
        ('{"kind": "train", "step": "3"}', "no step count"),
        ('{"kind": "train"}', "no step count"),
        ('{"kind": "eval", "step": 3, "test_acc": "high"}', "test_acc is not a number"),
        ('{"kind": "eval", "step": 3, "alphas": {"act1": "big"}}', "alphas are not numbers"),
        ('{"kind": "eval", "step": 3, "alphas": [1.0]}', "alphas are not numbers"),
    ],
)
def test_a_metrics_line_of_the_wrong_shape_is_skipped_and_named(tmp_path, caplog, line, why):
    run = RunDir(tmp_path)
    run.log({"kind": "train", "step": 2, "alphas": {"act1": 3.5}})
    with run.metrics.open("a") as f:
        f.write(line + "\n")
    run.log({"kind": "eval", "step": 4, "test_acc": 0.5})
    assert [r["step"] for r in run.records()] == [2, 4]
    assert f"line 2 is not a metrics record ({why}" in caplog.text
    run.start_log(resumed_step=4)  # what --resume does with the log: no KeyError, no TypeError
    assert [r["step"] for r in run.records()] == [2, 4]


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    from qsgt_plugin.run_dir.checkpoint import save_checkpoint

    save_checkpoint({"step": 1, "model": {}, "model_config": {}, "recipe": {}}, tmp_path / "c.pt")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(
            {"step": 2, "model": {}, "model_config": {}, "recipe": {}}, tmp_path / "c.pt"
        )
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "c.pt")["step"] == 1  # the previous file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_an_output_directory_that_cannot_be_written(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(RunDirError, match=r"cannot write the run to .*a-file/run"):
        RunDir.check(blocker / "run", resume=False, overwrite=False)
    recipe = Path(__file__).resolve().parents[1] / "qsgt_plugin/recipes/quickstart.yaml"
    assert main(["train", str(recipe), "--set", f"output.dir={blocker}/run"]) == 2
    assert "--set output.dir=PATH" in capsys.readouterr().err


@needs_data
def test_a_truncated_dataset_file_is_a_clear_error(tmp_path):
    raw = Path(os.environ["QSGT_DATA"]) / "MNIST/raw"
    copy = tmp_path / "MNIST/raw"
    copy.mkdir(parents=True)
    for f in raw.iterdir():
        (copy / f.name).symlink_to(f)
    (copy / "t10k-images-idx3-ubyte").unlink()
    (copy / "t10k-images-idx3-ubyte").write_bytes(
        (raw / "t10k-images-idx3-ubyte").read_bytes()[:100_000]
    )
    with pytest.raises(DatasetNotFoundError, match=r"t10k-images-idx3-ubyte .* not the official"):
        load_split("mnist", train=False, root=tmp_path)
    with pytest.raises(
        DatasetNotFoundError, match=r"mnist could not be loaded from .*truncated or corrupted"
    ):
        load_split("mnist", train=False, root=tmp_path, verify=False)


def test_debug_shows_the_traceback_instead(tmp_path):
    from qsgt_plugin.recipe import RecipeError

    with pytest.raises(RecipeError):
        main(["--debug", "train", str(tmp_path / "missing.yaml")])


def test_a_checkpoint_from_elsewhere_is_refused_by_evaluate(tmp_path, capsys):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    assert main(["evaluate", str(tmp_path / "foreign.pt")]) == 2
    assert "is not a qsgt checkpoint" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "foreign.pt")
