"""GPU stage 2: CIFAR-10 W4A4 + SGT to 91.3% within 6 minutes of training, then fp32 and W4A4.

Fills the RESULTS.md rows whose experiment starts with ``stage2``: ``stage2-cifar10-w4a4-sgt-
fast`` (``qsgt_plugin/recipes/cifar10-resnet20-w4a4-sgt-fast.yaml``, on the full test set, with
its training time) and, in the time left, ``stage2-cifar10-w4a4-fast`` and
``stage2-cifar10-fp32-fast`` (the same recipe without SGT, and without quantization). The stage
is measured when RESULTS.md has those rows; run stage 1 (``benchmarks/gpu_stage1.py``) first.

CIFAR-10 travels in three device calls (shared/GPU.md); the third one runs::

    python benchmarks/gpu_stage2.py --out $OUT           # writes stage2.json and the logs

then ``python benchmarks/gpu_rows.py FILES_AT/stage2.json`` appends the rows here.
``--dry-run`` runs it on the CPU with tiny settings (CI does).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from stage_common import run_logged, training_summary

RECIPE = "qsgt_plugin/recipes/cifar10-resnet20-w4a4-sgt-fast.yaml"
TARGET = 0.913  # PACT Table 1, 4-bit ResNet-20 on CIFAR-10
TRAINING_LIMIT = 360  # seconds of training for the W4A4 + SGT run
# name -> overrides of the fast recipe, in the order they run
RUNS = {
    "cifar10-w4a4-sgt-fast": [],
    "cifar10-w4a4-fast": ["sgt.enabled=false"],
    "cifar10-fp32-fast": ["sgt.enabled=false", "quant.enabled=false"],
}
DRY = [
    "train.max_steps=3",
    "data.train_subset=512",
    "data.test_subset=200",
    "data.batch_size=64",
    "quant.calibration_images=64",
]


def check_data() -> str | None:
    """Why CIFAR-10 cannot be read where QSGT_DATA points, or None."""
    root = Path(os.environ.get("QSGT_DATA", ""))
    folder = root / "cifar-10-batches-py"
    names = ["batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6))]
    missing = [n for n in names if not (folder / n).is_file()]
    return f"missing in {folder}: {', '.join(missing)}" if missing else None


def train(name: str, sets: list[str], out: Path, timeout: float) -> dict:
    run = out / name
    command = [
        sys.executable,
        "-m",
        "qsgt_plugin.cli",
        "train",
        RECIPE,
        "--overwrite",
        "--set",
        f"output.dir={run}",
        "--set",
        "train.log_every=100",
    ]
    command += [arg for s in sets for arg in ("--set", s)]
    status, seconds = run_logged(command, out / f"{name}.log", timeout)
    summary = training_summary(run, TARGET)
    return {"status": status, "seconds": seconds, "overrides": sets, **summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "stage2-out")))
    parser.add_argument("--dry-run", action="store_true", help="tiny settings on the CPU")
    parser.add_argument("--budget", type=float, default=560, help="seconds for the whole stage")
    args = parser.parse_args(argv)
    problem = check_data()
    if problem:
        print(f"gpu_stage2: CIFAR-10 is not ready ({problem}); see shared/GPU.md", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    started = time.perf_counter()
    result = {
        "stage": 2,
        "dry_run": args.dry_run,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "recipe": RECIPE,
        "runs": {},
    }
    for i, (name, sets) in enumerate(RUNS.items()):
        left = args.budget - (time.perf_counter() - started)
        needed = TRAINING_LIMIT + 60 if i == 0 else 120
        if left < needed and not args.dry_run:
            result["runs"][name] = {"skipped": f"{left:.0f} s left of the budget"}
            continue
        sets = sets + (DRY if args.dry_run else [])
        result["runs"][name] = train(name, sets, args.out, timeout=max(left - 10, 30))
        (args.out / "stage2.json").write_text(json.dumps(result, indent=2))
    result["seconds"] = time.perf_counter() - started
    (args.out / "stage2.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
