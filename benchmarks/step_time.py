"""Step time of plain and saliency-guided training, today's path against the new default.

ResNet-20 at CIFAR shape, float32 and PACT W4A4, one full training step each (forward, loss,
backward, SGD update; the engine's own step), timed side by side in one process after warm-up.
The configurations are interleaved round by round so that machine drift affects them alike;
medians are reported. Three paths:

* ``fp32``: float32, contiguous memory, one optimizer kernel per tensor (the step this
  benchmark timed until 2026-12-02);
* ``fp32-cl``: the same in channels-last memory (the engine's CPU path before
  ``train.precision``);
* ``auto``: the engine's step now: what ``train.precision: auto`` and
  ``train.channels_last: auto`` resolve to on this device (bf16 autocast and channels-last on a
  CPU with AVX512-BF16 or AMX), with the optimizer's ``foreach`` update.

Every path uses the engine's optimizer groups (weights, and the clipping levels with PACT's L2).

    python benchmarks/step_time.py            # batch 128, 20 timed rounds, torch's threads
    python benchmarks/step_time.py --threads 2
    python benchmarks/step_time.py --quick    # a smoke run (CI)
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import timm
import torch
from torch import nn

import qsgt_plugin
from qsgt_plugin import SaliencyGuidedTraining
from qsgt_plugin.recipe import OptimSection
from qsgt_plugin.training.build import make_optimizer
from qsgt_plugin.training.step import (
    CompiledStep,
    make_train_step,
    resolve_channels_last,
    resolve_precision,
)

SGT_TARGETS = {"captum": 2.8, "fused": 2.4}  # CPU targets of SGT / plain step time
SPEEDUP_TARGETS = {("fp32", "plain"): 1.9, ("w4a4", "captum"): 1.7, ("w4a4", "fused"): 1.7}
MODELS = ("fp32", "w4a4")
MODES = ("plain", "captum", "fused")


def paths(device: torch.device) -> dict[str, tuple[str, bool, bool]]:
    """``{name: (precision, channels_last, foreach)}`` of the compared paths on ``device``."""
    auto = (resolve_precision("auto", device), resolve_channels_last("auto", device), True)
    return {"fp32": ("fp32", False, False), "fp32-cl": ("fp32", True, False), "auto": auto}


def make_step(
    model: nn.Module,
    mode: str,
    precision: str,
    x: torch.Tensor,
    y: torch.Tensor,
    foreach: bool = True,
):
    """The engine's training step on a fixed batch (``plain``, ``captum`` or ``fused`` SGT)."""
    opt = make_optimizer(model, OptimSection(lr=0.01))
    for group in opt.param_groups:
        group["foreach"] = foreach
    sgt = None if mode == "plain" else SaliencyGuidedTraining(model, 0.1, fused=mode == "fused")
    step = make_train_step(model, opt, nn.CrossEntropyLoss(), sgt, precision=precision)
    return lambda: step(x, y)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(device: torch.device, batch: int, compiled: bool = False) -> dict:
    """A step per (path, model, mode), each on a model and a batch of its own.

    ``compiled`` adds the ``auto`` path with the model compiled (``auto+compile``), as
    ``train.compile: true`` runs it (eager if compilation fails, with a log line).
    """
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    variants = dict(paths(device))
    if compiled:
        variants["auto+compile"] = variants["auto"]
    steps = {}
    for path, (precision, channels_last, foreach) in variants.items():
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        xp = x.contiguous(memory_format=fmt)
        for name in MODELS:
            for mode in MODES:
                model = new_model(name, device, fmt)
                if path == "auto+compile":
                    runner = CompiledStep(
                        model,
                        lambda m: m,
                        functools.partial(
                            _engine_step, model=model, mode=mode, precision=precision
                        ),
                        compile=True,
                    )
                    steps[path, name, mode] = functools.partial(runner, xp, y)
                else:
                    steps[path, name, mode] = make_step(model, mode, precision, xp, y, foreach)
    return steps


def new_model(name: str, device: torch.device, fmt: torch.memory_format) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("resnet20", num_classes=10)
    if name == "w4a4":
        model = qsgt_plugin.convert(model, bits=4)
    return model.to(device, memory_format=fmt).train()


def _engine_step(runner: nn.Module, *, model: nn.Module, mode: str, precision: str):
    """The step on ``runner`` (the compiled model) with the optimizer of ``model``."""
    opt = make_optimizer(model, OptimSection(lr=0.01))
    sgt = None if mode == "plain" else SaliencyGuidedTraining(runner, 0.1, fused=mode == "fused")
    return make_train_step(runner, opt, nn.CrossEntropyLoss(), sgt, precision=precision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="batch 16, 2 rounds: a smoke run")
    parser.add_argument("--compile", action="store_true", help="add the compiled auto path")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.rounds, args.warmup = 16, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps = build(device, args.batch, args.compile)
    resolved = paths(device)["auto"]
    print(
        f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
        f"ResNet-20, batch {args.batch}x3x32x32, median of {args.rounds} rounds after "
        f"{args.warmup} warm-up; auto = precision {resolved[0]}, channels_last {resolved[1]}"
    )
    ms = measure(steps, args.rounds, args.warmup, device)
    report_sgt(ms)
    report_paths(ms, args.batch)
    if args.compile:
        report_compiled(ms, args.batch)


def measure(steps: dict, rounds: int, warmup: int, device: torch.device) -> dict:
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[tuple, list[float]] = {key: [] for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[key].append(time.perf_counter() - start)
    return {key: 1e3 * statistics.median(values) for key, values in times.items()}


def report_sgt(ms: dict) -> None:
    """SGT step time over plain step time, on each path."""
    print("\nSGT / plain step time")
    print(
        f"{'path':8s} {'model':6s} {'plain ms':>9s} {'SGT captum ms':>14s} {'ratio':>6s} "
        f"{'SGT fused ms':>13s} {'ratio':>6s}"
    )
    for path in ("fp32", "auto"):
        for name in MODELS:
            plain, captum, fused = (ms[path, name, mode] for mode in MODES)
            print(
                f"{path:8s} {name:6s} {plain:9.1f} {captum:14.1f} {captum / plain:6.2f} "
                f"{fused:13.1f} {fused / plain:6.2f}"
            )
    print(
        f"CPU targets: SGT/plain <= {SGT_TARGETS['captum']} (Captum path), "
        f"<= {SGT_TARGETS['fused']} (fused path)"
    )


def report_compiled(ms: dict, batch: int) -> None:
    """Images/s of the compiled auto path against the eager one."""
    print("\nimages/s, auto eager and compiled (torch.compile; eager if it fails: see the log)")
    print(f"{'model':6s} {'step':7s} {'eager':>7s} {'compiled':>9s} {'ratio':>6s}")
    for name in MODELS:
        for mode in MODES:
            eager = 1e3 * batch / ms["auto", name, mode]
            compiled = 1e3 * batch / ms["auto+compile", name, mode]
            print(f"{name:6s} {mode:7s} {eager:7.0f} {compiled:9.0f} {compiled / eager:6.2f}")


def report_paths(ms: dict, batch: int) -> None:
    """Images/s on each path and the speed-up of the new default over the two older paths."""
    print("\nimages/s by path, and speed-up of auto over fp32 (contiguous) and fp32-cl")
    print(
        f"{'model':6s} {'step':7s} {'fp32':>7s} {'fp32-cl':>8s} {'auto':>7s} "
        f"{'auto/fp32':>10s} {'auto/fp32-cl':>13s} {'target':>7s}"
    )
    for name in MODELS:
        for mode in MODES:
            rate = {
                path: 1e3 * batch / ms[path, name, mode] for path in ("fp32", "fp32-cl", "auto")
            }
            target = SPEEDUP_TARGETS.get((name, mode))
            goal = f">= {target}" if target else ""
            print(
                f"{name:6s} {mode:7s} {rate['fp32']:7.0f} {rate['fp32-cl']:8.0f} "
                f"{rate['auto']:7.0f} {rate['auto'] / rate['fp32']:10.2f} "
                f"{rate['auto'] / rate['fp32-cl']:13.2f} {goal:>7s}"
            )


if __name__ == "__main__":
    main()
