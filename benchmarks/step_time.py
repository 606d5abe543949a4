"""Step time of plain training vs saliency-guided training (Captum path and fused path).

ResNet-20 at CIFAR shape, float32 and PACT W4A4, one full training step each (forward, loss,
backward, SGD update), timed side by side in one process after warm-up. The configurations are
interleaved round by round so that machine drift affects them alike; medians are reported.

    python benchmarks/step_time.py            # batch 128, 20 timed rounds
    python benchmarks/step_time.py --quick    # a smoke run (CI)
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
from torch import nn

import qsgt_plugin
from qsgt_plugin import SaliencyGuidedTraining
from qsgt_plugin.step import make_train_step

TARGETS = {"captum": 2.8, "fused": 2.4}  # CPU targets of SGT / plain step time


def make_step(model: nn.Module, mode: str, x: torch.Tensor, y: torch.Tensor):
    """The engine's training step on a fixed batch (``plain``, ``captum`` or ``fused`` SGT)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sgt = None if mode == "plain" else SaliencyGuidedTraining(model, 0.1, fused=mode == "fused")
    step = make_train_step(model, opt, nn.CrossEntropyLoss(), sgt)
    return lambda: step(x, y)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="batch 16, 2 rounds: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.rounds, args.warmup = 16, 2, 1
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    steps = {}
    for precision in ("fp32", "w4a4"):
        for mode in ("plain", "captum", "fused"):
            model = timm.create_model("resnet20", num_classes=10)
            if precision == "w4a4":
                model = qsgt_plugin.convert(model, bits=4)
            model = model.to(device).train()
            steps[precision, mode] = make_step(model, mode, x, y)

    print(
        f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
        f"ResNet-20, batch {args.batch}x3x32x32, median of {args.rounds} rounds after "
        f"{args.warmup} warm-up"
    )
    report(measure(steps, args.rounds, args.warmup, device))
    print(
        f"CPU targets: SGT/plain <= {TARGETS['captum']} (Captum path), "
        f"<= {TARGETS['fused']} (fused path)"
    )


def measure(steps: dict, rounds: int, warmup: int, device: torch.device) -> dict:
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[key].append(time.perf_counter() - start)
    return {key: 1e3 * statistics.median(values) for key, values in times.items()}


def report(ms: dict) -> None:
    print(
        f"{'model':6s} {'plain ms':>9s} {'SGT captum ms':>14s} {'ratio':>6s} "
        f"{'SGT fused ms':>13s} {'ratio':>6s}"
    )
    for precision in ("fp32", "w4a4"):
        plain, captum, fused = (ms[precision, mode] for mode in ("plain", "captum", "fused"))
        print(
            f"{precision:6s} {plain:9.1f} {captum:14.1f} {captum / plain:6.2f} "
            f"{fused:13.1f} {fused / plain:6.2f}"
        )


if __name__ == "__main__":
    main()
