"""What the GPU stage scripts share: running a logged command, reading a run's evaluations."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from qsgt_plugin.run_dir import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def run_logged(command: list[str], log: Path, timeout: float) -> tuple[int, float]:
    """Run ``command`` in the repository with its output in ``log``; (exit status, seconds).

    A command still running after ``timeout`` seconds is stopped and gets status 124.
    """
    started = time.perf_counter()
    with log.open("w") as f:
        try:
            status = subprocess.run(
                command, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT
            ).returncode
        except subprocess.TimeoutExpired:
            f.write(f"\n[stopped after {timeout:.0f} s]\n")
            status = 124
    return status, time.perf_counter() - started


def training_summary(run: Path, target: float) -> dict:
    """The evaluations a ``qsgt train`` run logged, and when it first reached ``target``."""
    evals = [r for r in read_metrics(run) if r["kind"] == "eval"]  # the run_dir's own reader
    reached = next((r for r in evals if r["test_acc"] >= target), None)
    return {
        "evals": [{k: r[k] for k in ("epoch", "step", "test_acc", "elapsed")} for r in evals],
        "final_acc": evals[-1]["test_acc"] if evals else None,
        "training_s": evals[-1]["elapsed"] if evals else None,
        "time_to_target_s": reached["elapsed"] if reached else None,
        "target": target,
        "compiled": evals[-1].get("compiled") if evals else None,
    }
