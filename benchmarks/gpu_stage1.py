"""GPU stage 1, one device call of at most 8 minutes: MNIST and synthetic data only.

Fills the RESULTS.md rows whose experiment starts with ``stage1``: the GPU tests
(``stage1-gpu-tests``), the throughput benchmark (``stage1-throughput ...``, every
configuration eager, compiled fp32 plain and W4A4 + SGT on both paths, compile time apart from
the steady state) and the MNIST W4A4 + SGT recipe with its time to 99.5% (``stage1-mnist-w4a4-
sgt``). The stage is measured when RESULTS.md has those rows; if not, it is the next one to run
on a GPU (after it, ``benchmarks/gpu_stage2.py``).

On the GPU machine (see shared/GPU.md for the wheels and MNIST), one call::

    python benchmarks/gpu_stage1.py --out $OUT          # writes stage1.json and logs there

then, back here, ``python benchmarks/gpu_rows.py FILES_AT/stage1.json`` appends the rows,
naming the device the JSON records. ``--dry-run`` runs every step on the CPU with tiny settings
(CI does), so a GPU minute is never lost to a typo.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from stage_common import run_logged, training_summary

TARGET = 0.995  # MNIST W4A4 + SGT test accuracy


def gpu_tests(out: Path, dry_run: bool) -> dict:
    # On the CPU the gpu-marked tests skip themselves; collecting them checks the file.
    extra = ["--collect-only"] if dry_run else []
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *extra]
    status, seconds = run_logged(command, out / "gpu-tests.log", 120)
    tail = (out / "gpu-tests.log").read_text().strip().splitlines()[-1:] or [""]
    return {"status": status, "seconds": seconds, "summary": tail[0]}


def throughput(out: Path, dry_run: bool, budget: float) -> dict:
    options = ["--quick"] if dry_run else ["--budget", str(budget)]
    command = [sys.executable, "benchmarks/throughput.py", *options, "--json", str(out / "tp.json")]
    status, seconds = run_logged(command, out / "throughput.log", budget + 120)
    rows = json.loads((out / "tp.json").read_text()) if (out / "tp.json").exists() else {}
    return {"status": status, "seconds": seconds, **rows}


def mnist(out: Path, dry_run: bool, timeout: float) -> dict:
    run = out / "mnist-w4a4-sgt"
    sets = ["train.log_every=100", f"output.dir={run}"]
    if dry_run:
        sets += [
            "train.max_steps=3",
            "data.train_subset=256",
            "data.test_subset=200",
            "quant.calibration_images=64",
        ]
    command = [
        sys.executable,
        "-m",
        "qsgt_plugin.cli",
        "train",
        "qsgt_plugin/recipes/mnist-resnet20-w4a4-sgt.yaml",
        "--overwrite",
    ]
    command += [arg for s in sets for arg in ("--set", s)]
    status, seconds = run_logged(command, out / "mnist.log", timeout)
    return {"status": status, "seconds": seconds, **training_summary(run, TARGET)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "stage1-out")))
    parser.add_argument("--dry-run", action="store_true", help="tiny settings on the CPU")
    parser.add_argument("--budget", type=float, default=420, help="seconds for the whole stage")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    import torch

    result = {
        "stage": 1,
        "dry_run": args.dry_run,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    result["gpu_tests"] = gpu_tests(args.out, args.dry_run)
    result["throughput"] = throughput(args.out, args.dry_run, budget=0.35 * args.budget)
    left = args.budget - (time.perf_counter() - started)
    result["mnist"] = mnist(args.out, args.dry_run, timeout=max(left, 60))
    result["seconds"] = time.perf_counter() - started
    (args.out / "stage1.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "throughput"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
