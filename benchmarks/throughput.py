"""Training throughput (images/s) and peak memory, eager and compiled, side by side.

ResNet-20 at CIFAR shape (batch 512 by default): fp32 plain, PACT W4A4 plain, W4A4 + SGT through
the Captum path and through the fused path; each eager and with ``torch.compile``. Every
configuration runs in this one process on one device, after warm-up; ratios are to fp32 plain
(eager). The first compiled step's time (compilation) is reported apart from the steady state.
GPU goals: W4A4 plain >= 0.6x and W4A4 + SGT >= 0.3x fp32 plain (anchors measured on an H200
with plain PyTorch + Brevitas: 0.43 and 0.19).

    python benchmarks/throughput.py                     # on the GPU if there is one
    python benchmarks/throughput.py --budget 180 --json out.json   # stop starting configs at 180 s
    python benchmarks/throughput.py --quick             # small and eager only: a CPU smoke run (CI)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import timm
import torch
from torch import nn

import qsgt_plugin
from qsgt_plugin import SaliencyGuidedTraining
from qsgt_plugin.training.step import make_train_step, resolve_precision

CONFIGS = [("fp32", "plain"), ("w4a4", "plain"), ("w4a4", "captum"), ("w4a4", "fused")]
# compiled: fp32 plain and W4A4 + SGT on both paths first (what a short budget must cover)
COMPILED = [("fp32", "plain"), ("w4a4", "captum"), ("w4a4", "fused"), ("w4a4", "plain")]
GOALS = {("w4a4", "plain"): 0.6, ("w4a4", "captum"): 0.3, ("w4a4", "fused"): 0.3}


def build(
    precision: str,
    mode: str,
    compiled: bool,
    device: torch.device,
    channels_last: bool,
    autocast: str = "fp32",
):
    model = timm.create_model("resnet20", num_classes=10)
    if precision == "w4a4":
        model = qsgt_plugin.convert(model, bits=4)
    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compiled:  # Brevitas splits the graph at every block (see qsgt_plugin.training.step)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        torch._functorch.config.donated_buffer = False  # the fused path's retain_graph
    run = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sgt = None if mode == "plain" else SaliencyGuidedTraining(run, 0.1, fused=mode == "fused")
    return make_train_step(run, opt, nn.CrossEntropyLoss(), sgt, precision=autocast)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step, x, y, steps: int, warmup: int, device: torch.device) -> dict:
    """First step (compilation, for a compiled model) in s, images/s after warm-up, peak GiB."""
    start = time.perf_counter()
    step(x, y)
    _sync(device)
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step(x, y)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    _sync(device)
    rate = steps * x.shape[0] / (time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"first_step_s": first, "images_per_s": rate, "peak_gib": peak}


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    channels_last = device.type == "cuda"
    autocast = resolve_precision(args.precision, device)  # the training default: bf16 on GPUs
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), device=device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    result = {
        "device": name,
        "torch": torch.__version__,
        "batch": args.batch,
        "precision": autocast,
        "rows": [],
    }
    print(
        f"{name}, torch {torch.__version__}, ResNet-20, batch {args.batch}x3x32x32, "
        f"{autocast}, {args.steps} timed steps after {args.warmup} warm-up"
    )
    print(
        f"{'model':6s} {'training':8s} {'mode':9s} {'first s':>8s} {'images/s':>10s} "
        f"{'peak GiB':>9s} {'x fp32':>7s} {'goal':>6s}"
    )
    started, base = time.perf_counter(), None
    plan = [(c, False) for c in CONFIGS] + (
        [] if args.no_compile else [(c, True) for c in COMPILED]
    )
    for (precision, mode), compiled in plan:
        label = "compiled" if compiled else "eager"
        if args.budget and time.perf_counter() - started > args.budget:
            result["rows"].append(
                {"model": precision, "training": mode, "mode": label, "skipped": "time budget"}
            )
            print(f"{precision:6s} {mode:8s} {label:9s} skipped: the time budget is spent")
            continue
        try:
            step = build(precision, mode, compiled, device, channels_last, autocast)
            row = measure(step, x, y, args.steps, args.warmup, device)
        except Exception as exc:  # a configuration that does not compile is reported
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
            result["rows"].append(
                {"model": precision, "training": mode, "mode": label, "failed": message}
            )
            print(f"{precision:6s} {mode:8s} {label:9s} failed: {message}")
            continue
        base = row["images_per_s"] if base is None else base
        goal = GOALS.get((precision, mode))
        row = {
            "model": precision,
            "training": mode,
            "mode": label,
            **row,
            "ratio": row["images_per_s"] / base,
            "goal": goal,
        }
        result["rows"].append(row)
        peak = f"{row['peak_gib']:9.2f}" if row["peak_gib"] is not None else f"{'-':>9s}"
        print(
            f"{precision:6s} {mode:8s} {label:9s} {row['first_step_s']:8.1f} "
            f"{row['images_per_s']:10.0f} {peak} {row['ratio']:7.2f} "
            f"{'>= ' + str(goal) if goal else '':>6s}",
            flush=True,
        )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-compile", action="store_true", help="eager configurations only")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="train.precision of every step (auto: bf16 where the device has it)",
    )
    parser.add_argument("--budget", type=float, help="start no configuration after this many s")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--quick", action="store_true", help="batch 16, 2 steps, eager only")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.warmup, args.no_compile = 16, 2, 1, True
    result = run(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
