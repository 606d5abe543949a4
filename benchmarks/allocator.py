"""Evaluation time with glibc's default allocator settings against ``keep_freed_memory()``.

Each measurement is a fresh process that loads a shipped run and evaluates it as ``qsgt
evaluate`` does (``Run.evaluation``), on one thread; the two settings alternate round by round.
Prints wall, user and system seconds, page faults, peak resident size and the accuracy, which
must be the same to the image::

    python benchmarks/allocator.py                      # cifar10-w4a4-sgt-ft-s0, 3 rounds
    python benchmarks/allocator.py results/mnist/mnist-w4a4-sgt-s0 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ONE = """
import json, resource, sys, time, torch
torch.set_num_threads(1)
from qsgt_plugin.common.evaluation import evaluate
from qsgt_plugin.common.memory import keep_freed_memory
from qsgt_plugin.runs import load_run
kept = sys.argv[2] == "keep" and keep_freed_memory()
model, loader = load_run(sys.argv[1]).evaluation()
if int(sys.argv[3]):
    loader = load_run(sys.argv[1]).test_loader(int(sys.argv[3]), channels_last=loader.channels_last)
start, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
accuracy, _ = evaluate(model, loader)
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps(dict(
    kept=kept, accuracy=accuracy, images=len(loader.labels),
    wall=time.perf_counter() - start, user=r1.ru_utime - r0.ru_utime,
    sys=r1.ru_stime - r0.ru_stime, faults=r1.ru_minflt - r0.ru_minflt,
    peak_gb=r1.ru_maxrss / 1e6,
)))
"""


def measure(run: str, mode: str, images: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", ONE, run, mode, str(images)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = ROOT / "results/cifar10/cifar10-w4a4-sgt-ft-s0"
    parser.add_argument("run", nargs="?", default=str(default))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round on 2,000 images (CI)")
    args = parser.parse_args(argv)
    rounds, images = (1, 2000) if args.quick else (args.rounds, 0)
    results: dict[str, list[dict]] = {"default": [], "keep": []}
    for _ in range(rounds):
        for mode in results:
            results[mode].append(measure(args.run, mode, images))
    first = results["default"][0]
    print(f"run: {args.run}, {first['images']:,} test images, 1 thread, {rounds} rounds")
    print("| allocator | wall s | user s | system s | page faults | peak GB | accuracy |")
    print("|---|---|---|---|---|---|---|")
    median = {}
    for mode, rows in results.items():
        m = {k: statistics.median(r[k] for r in rows) for k in ("wall", "user", "sys", "faults")}
        median[mode] = m
        peak = max(r["peak_gb"] for r in rows)
        name = "glibc default" if mode == "default" else "keep_freed_memory()"
        print(
            f"| {name} | {m['wall']:.1f} | {m['user']:.1f} | {m['sys']:.1f} | "
            f"{m['faults']:,.0f} | {peak:.2f} | {100 * rows[0]['accuracy']:.2f}% |"
        )
    accuracies = {r["accuracy"] for rows in results.values() for r in rows}
    if not all(r["kept"] for r in results["keep"]):
        print("keep_freed_memory() had no effect here (no glibc mallopt)")
    print(f"speed-up: {median['default']['wall'] / median['keep']['wall']:.2f}x")
    if len(accuracies) != 1:
        print(f"the accuracies differ: {sorted(accuracies)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
