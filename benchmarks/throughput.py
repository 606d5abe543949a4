"""Training throughput (images/s) and peak memory, eager and compiled, side by side.

ResNet-20 at CIFAR shape (batch 512 by default): fp32 plain, PACT W4A4 plain, W4A4 + SGT through
the Captum path and through the fused path; each eager and with ``torch.compile``. Every
configuration runs in this one process on one device, after warm-up; ratios are to fp32 plain
(eager). GPU goals: W4A4 plain >= 0.6x and W4A4 + SGT >= 0.3x fp32 plain (SGT's arithmetic
ceiling is about 0.43).

    python benchmarks/throughput.py                 # on the GPU if there is one
    python benchmarks/throughput.py --quick         # small and eager only: a CPU smoke run (CI)
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
from torch import nn

import qsgt_plugin
from qsgt_plugin import SaliencyGuidedTraining
from qsgt_plugin.step import make_train_step

CONFIGS = [("fp32", "plain"), ("w4a4", "plain"), ("w4a4", "captum"), ("w4a4", "fused")]
GOALS = {("w4a4", "plain"): 0.6, ("w4a4", "captum"): 0.3, ("w4a4", "fused"): 0.3}


def build(precision: str, mode: str, compiled: bool, device: torch.device, channels_last: bool):
    model = timm.create_model("resnet20", num_classes=10)
    if precision == "w4a4":
        model = qsgt_plugin.convert(model, bits=4)
    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    run = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sgt = None if mode == "plain" else SaliencyGuidedTraining(run, 0.1, fused=mode == "fused")
    return make_train_step(run, opt, nn.CrossEntropyLoss(), sgt)


def measure(step, x, y, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """Images per second and peak memory (GiB on CUDA, nan elsewhere)."""
    for _ in range(warmup):
        step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = float("nan")
    return steps * x.shape[0] / (time.perf_counter() - start), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-compile", action="store_true", help="eager configurations only")
    parser.add_argument("--quick", action="store_true", help="batch 16, 2 steps, eager only")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.steps, args.warmup, args.no_compile = 16, 2, 1, True
    device = torch.device(args.device)
    channels_last = device.type == "cuda"
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), device=device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{name}, torch {torch.__version__}, ResNet-20, batch {args.batch}x3x32x32, "
        f"{args.steps} timed steps after {args.warmup} warm-up"
    )
    print(
        f"{'model':6s} {'training':8s} {'mode':9s} {'images/s':>10s} {'peak GiB':>9s} "
        f"{'x fp32':>7s} {'goal':>6s}"
    )
    base = None
    for compiled in (False, True) if not args.no_compile else (False,):
        for precision, mode in CONFIGS:
            try:
                step = build(precision, mode, compiled, device, channels_last)
                rate, peak = measure(step, x, y, args.steps, args.warmup, device)
            except Exception as exc:  # a configuration that does not compile is reported
                print(
                    f"{precision:6s} {mode:8s} {'compiled' if compiled else 'eager':9s} "
                    f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
                )
                continue
            base = rate if base is None else base
            goal = GOALS.get((precision, mode))
            print(
                f"{precision:6s} {mode:8s} {'compiled' if compiled else 'eager':9s} "
                f"{rate:10.0f} {peak:9.2f} {rate / base:7.2f} "
                f"{'>= ' + str(goal) if goal else '':>6s}"
            )


if __name__ == "__main__":
    main()
