"""Two data-parallel processes (gloo, CPU) with SGT through `qsgt train --nproc 2`."""

from __future__ import annotations

import json
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
from qsgt_plugin.recipe import Recipe
from qsgt_plugin.run_dir.checkpoint import load_checkpoint
from qsgt_plugin.training.loop import train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("QSGT_DATA"), reason="QSGT_DATA not set"),
]


def recipe(out: Path, images: int, fused: bool = False) -> dict:
    return {
        "model": {"name": "resnet20", "kwargs": {"in_chans": 1}},
        "quant": {"enabled": False},
        "sgt": {"enabled": True, "mask_fraction": 0.5, "fused": fused},
        "data": {"dataset": "mnist", "batch_size": 64, "train_subset": images, "test_subset": 1000},
        "optim": {"lr": 0.05},
        "schedule": {"name": "onecycle"},
        "train": {"epochs": 1, "log_every": 16},
        "output": {"dir": str(out)},
    }


def run_ddp(tmp_path: Path, config: dict) -> dict:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--nproc", "2"]) == 0
    out = Path(config["output"]["dir"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    (ranks,) = [r for r in records if r["kind"] == "ranks"]
    assert ranks["world"] == 2 and ranks["identical"] is True  # bit-identical weights
    return load_checkpoint(out / "last.pt")


def test_two_ranks_with_sgt_stay_identical_and_match_one_process(tmp_path):
    single = train(Recipe.model_validate(recipe(tmp_path / "single", 8192)))
    ddp = run_ddp(tmp_path, recipe(tmp_path / "ddp", 8192))
    assert ddp["step"] == single.step == 128  # the same global batches, split over the ranks
    # Each rank normalises its half batch on its own, so the runs differ within noise.
    assert abs(ddp["test_acc"] - single.test_acc) < 0.03, (ddp["test_acc"], single.test_acc)
    assert ddp["test_acc"] > 0.9


def test_the_fused_path_keeps_ranks_in_sync(tmp_path):
    ddp = run_ddp(tmp_path, recipe(tmp_path / "ddp", 1024, fused=True))
    assert ddp["step"] == 16
    assert not any(torch.isnan(t).any() for t in ddp["model"].values() if t.is_floating_point())


def test_a_user_error_inside_the_ranks_prints_once_without_torchruns_report(tmp_path, capfd):
    config = recipe(tmp_path / "nan", 1024)
    config["optim"] = {"lr": 1e30}  # the loss diverges on the ranks, after the launch
    config["train"]["log_every"] = 1
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--nproc=2"]) == 2
    err = capfd.readouterr().err
    assert err.count("qsgt train: error: the loss became NaN or infinite at step") == 1
    assert "ChildFailedError" not in err and "Traceback" not in err


def test_killing_the_launcher_stops_its_ranks_and_frees_the_run(tmp_path):
    # 32 steps: the kill comes after the first checkpoint (step 4), long before the last one,
    # and the resume below trains only what is left
    config = recipe(tmp_path / "killed", 2048)
    config["train"]["checkpoint_every"] = 4
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    launcher = subprocess.Popen(
        [sys.executable, "-m", "qsgt_plugin.cli", "train", str(path), "--nproc", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out = tmp_path / "killed"
    deadline = time.time() + 300
    while not (out / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (out / "last.pt").exists(), "the ranks never wrote a checkpoint"
    assert ranks_writing(out), "no rank was running"
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    deadline = time.time() + 20
    while ranks_writing(out) and time.time() < deadline:
        time.sleep(0.2)
    assert not ranks_writing(out), "ranks outlived their launcher"
    size = (out / "metrics.jsonl").stat().st_size
    time.sleep(2)
    assert (out / "metrics.jsonl").stat().st_size == size  # nobody writes any more
    assert main(["train", str(path), "--resume"]) == 0  # the lock died with them


def ranks_writing(out: Path) -> list[int]:
    """Processes whose command line names this run's recipe (torchrun and its ranks)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().split()[2]
        except OSError:
            continue
        if str(out.parent / "recipe.yaml") in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids
