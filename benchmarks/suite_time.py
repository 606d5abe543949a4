"""Seconds each explanation metric takes for one run on its first N test images.

    python benchmarks/suite_time.py results/mnist/mnist-w4a4-sgt-s0 --images 1000
    python benchmarks/suite_time.py RUN --quick        # 32 images: a smoke run (CI)

Target: the whole suite on 1,000 MNIST test images for one ResNet-20 within 5 minutes on
2 CPU cores. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from qsgt_plugin.attribution import explanation_suite
from qsgt_plugin.runs import load_run
from qsgt_plugin.training.data import get_dataset

TARGET_S = 300


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run directory or checkpoint")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="32 images")
    args = parser.parse_args(argv)
    images = 32 if args.quick else args.images
    run = load_run(args.run)
    started = time.perf_counter()
    result = explanation_suite(
        run.model,
        run.test_loader(limit=images),
        num_classes=get_dataset(run.recipe.data.dataset).num_classes,
    )
    total = time.perf_counter() - started
    print(
        f"{run.name} ({run.label}), {result.images} {run.recipe.data.dataset} test images, "
        f"{torch.get_num_threads()} threads on {os.cpu_count()} cores, torch {torch.__version__}"
    )
    print(f"{'metric':22s} {'seconds':>8s}")
    for name, seconds in result.seconds.items():
        print(f"{name:22s} {seconds:8.1f}")
    print(f"{'total':22s} {total:8.1f}   (target <= {TARGET_S} s for 1,000 images)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
