"""The GPU stage scripts, run as CI runs them: on the CPU, with --dry-run, end to end.

A GPU minute must never be lost to a typo: each stage runs every one of its steps here with
tiny settings, and its JSON turns into rows (in a scratch file, never RESULTS.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("QSGT_DATA"), reason="QSGT_DATA not set"),
]


def run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_stage1_dry_run_measures_every_step_and_makes_rows(tmp_path):
    done = run("benchmarks/gpu_stage1.py", "--dry-run", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-2000:]
    stage = json.loads((tmp_path / "out" / "stage1.json").read_text())
    assert stage["dry_run"] is True and stage["device"] == "CPU"
    assert stage["gpu_tests"]["status"] == 0  # the gpu tests collect (and skip on the CPU)
    modes = {(r["model"], r["training"], r["mode"]) for r in stage["throughput"]["rows"]}
    assert ("w4a4", "captum", "eager") in modes and ("fp32", "plain", "eager") in modes
    assert stage["mnist"]["status"] == 0 and stage["mnist"]["final_acc"] is not None
    results = tmp_path / "R.md"
    done = run("benchmarks/gpu_rows.py", str(tmp_path / "out" / "stage1.json"), "--results",
               str(results))  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line for line in results.read_text().splitlines() if line.startswith("| stage1")]
    assert len(rows) == 2 + len(stage["throughput"]["rows"])
    assert all("| CPU |" in row and "gpu_stage1.py" in row for row in rows)
    refused = run("benchmarks/gpu_rows.py", str(tmp_path / "out" / "stage1.json"))
    assert refused.returncode == 2 and "dry run" in refused.stderr


def test_stage2_dry_run_trains_its_three_runs(tmp_path):
    done = run("benchmarks/gpu_stage2.py", "--dry-run", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-2000:]
    stage = json.loads((tmp_path / "out" / "stage2.json").read_text())
    assert list(stage["runs"]) == [
        "cifar10-w4a4-sgt-fast",
        "cifar10-w4a4-fast",
        "cifar10-fp32-fast",
    ]
    assert all(r["status"] == 0 and r["final_acc"] is not None for r in stage["runs"].values())
    done = run("benchmarks/gpu_rows.py", str(tmp_path / "out" / "stage2.json"), "--results",
               str(tmp_path / "R.md"))  # fmt: skip
    assert done.returncode == 0
    assert (tmp_path / "R.md").read_text().count("| stage2-cifar10") == 3


def test_stage2_without_cifar_says_so(tmp_path):
    env = {**os.environ, "QSGT_DATA": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_stage2.py", "--dry-run", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert "CIFAR-10 is not ready (missing in" in done.stderr
