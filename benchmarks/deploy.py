"""Every export format of a shipped run in onnxruntime, beside the float graph and onnxruntime's
own int8 quantization of it: file size, the integer convolutions and layout changes (transposes)
in the graph onnxruntime runs, latency, agreement with PyTorch on the test set.

The float baseline is the dataset's shipped fp32 run, seed 0 (``results/DATASET/DATASET-fp32-s0``,
for CIFAR-10 the CPU parent ``cifar10-fp32-cpu-s0``)
exported with ``torch.onnx.export``; onnxruntime's int8 is ``quantize_static`` of that graph
(QDQ, int8 per-channel weights, uint8 activations, calibrated on the same training images as
the ``qdq`` format). Latency: median wall time of ``session.run`` after warm-up, at batch 1 and
128, with 1 and 2 intra-op threads; the flavours are timed round by round, interleaved, so that
drift hits them alike. Agreement: top-1 class and logits of each graph against its own PyTorch
model on the whole test split.

    python benchmarks/deploy.py                                     # the shipped MNIST W4A4 + SGT
    python benchmarks/deploy.py results/mnist/mnist-w2a2-sgt-s0
    python benchmarks/deploy.py results/cifar10/cifar10-w4a4-sgt-ft-s0
    python benchmarks/deploy.py --agreement mnist      # every shipped run: qdq, packed vs PyTorch
    python benchmarks/deploy.py --quick                             # a smoke run (CI)

Run it on a quiet machine: timings taken while something else runs are meaningless.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from qsgt_plugin.quant import model_size_bytes
from qsgt_plugin.quant.export import export_onnx
from qsgt_plugin.quant.export.qdq import integer_kernel_report
from qsgt_plugin.quant.export.writer import agreement, ort_session
from qsgt_plugin.runs import load_run
from qsgt_plugin.training.build import make_loader

ROOT = Path(__file__).resolve().parents[1]


def float_graph(run, path: Path, example: torch.Tensor) -> Path:
    with torch.no_grad():
        torch.onnx.export(
            run.model.eval(),
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def float_baseline(dataset: str) -> Path:
    """The dataset's shipped float run, seed 0 (CIFAR-10's is the CPU parent of the
    fine-tunings)."""
    for name in (f"{dataset}-fp32-s0", f"{dataset}-fp32-cpu-s0"):
        if (ROOT / "results" / dataset / name).is_dir():
            return ROOT / "results" / dataset / name
    raise SystemExit(f"no shipped fp32 run of {dataset} under results/{dataset}; pass --fp32 RUN")


def ort_int8(fp32: Path, path: Path, calibration: torch.Tensor) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": b.numpy()} for b in calibration.split(64)])

        def get_next(self):
            return next(self.batches, None)

    prepared = path.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(prepared))
    quantize_static(
        str(prepared),
        str(path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return path


def latencies(paths: dict[str, Path], shape, threads, batches, rounds) -> dict:
    """``{(name, threads, batch): median ms}``, interleaved round by round."""
    sessions = {(n, t): ort_session(p, threads=t) for n, p in paths.items() for t in threads}
    inputs = {b: np.random.default_rng(0).random((b, *shape), dtype=np.float32) for b in batches}
    times: dict = {(n, t, b): [] for (n, t) in sessions for b in batches}
    for session in sessions.values():  # warm-up
        for b in batches:
            session.run(None, {"input": inputs[b]})
    for _ in range(rounds):
        for (n, t), session in sessions.items():
            for b in batches:
                reps = max(1, 64 // b)
                start = time.perf_counter()
                for _ in range(reps):
                    session.run(None, {"input": inputs[b]})
                times[(n, t, b)].append((time.perf_counter() - start) / reps * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def agreement_table(dataset: str, images: int | None) -> None:
    """``qdq`` and ``packed`` of every shipped quantized run of ``dataset`` against PyTorch."""
    cpu = torch.device("cpu")
    head = ["run"] + [f"{f}: {c}" for f in ("qdq", "packed") for c in ("same top-1", "mean |diff|")]
    print("| " + " | ".join(head) + " |")
    print("|---|---|---|---|---|")
    for folder in sorted((ROOT / "results" / dataset).iterdir()):
        run = load_run(folder)
        if not run.recipe.quant.enabled:
            continue
        n = run.recipe.quant.calibration_images
        loader = make_loader(run.recipe, True, cpu, limit=n, calibration=True)
        calibration = torch.cat([x for x, _ in loader])
        test = torch.cat([x for x, _ in make_loader(run.recipe, False, cpu, limit=images)])
        cells = []
        with tempfile.TemporaryDirectory() as tmp:
            for fmt in ("qdq", "packed"):
                path = Path(tmp) / f"{fmt}.onnx"
                export_onnx(
                    run.model, path, calibration[:1], format=fmt, calibration_inputs=calibration
                )
                check = agreement(
                    run.evaluated_model(), path, test, channels_last=run.channels_last
                )
                cells += [f"{100 * check.same_prediction:.2f}%", f"{check.mean_abs_diff:.3g}"]
        print(f"| {folder.name} | " + " | ".join(cells) + " |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", default=str(ROOT / "results/mnist/mnist-w4a4-sgt-s0"))
    parser.add_argument("--fp32", help="the float run (default: the dataset's fp32 seed 0)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="few images and rounds (CI)")
    parser.add_argument(
        "--agreement", metavar="DATASET", help="only the agreement of every shipped run"
    )
    args = parser.parse_args(argv)
    if args.agreement:
        agreement_table(args.agreement, 64 if args.quick else None)
        return 0
    run = load_run(args.run)
    dataset = run.recipe.data.dataset
    fp32_run = load_run(args.fp32 or float_baseline(dataset))
    images = 64 if args.quick else None
    rounds = 2 if args.quick else args.rounds
    cpu = torch.device("cpu")
    n_cal = run.recipe.quant.calibration_images
    calibration = torch.cat(
        [x for x, _ in make_loader(run.recipe, True, cpu, limit=n_cal, calibration=True)]
    )
    test = torch.cat([x for x, _ in make_loader(run.recipe, False, cpu, limit=images)])
    example = calibration[:1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        paths = {"fp32 (torch.onnx)": float_graph(fp32_run, out / "fp32.onnx", example)}
        paths["onnxruntime int8 of fp32"] = ort_int8(
            paths["fp32 (torch.onnx)"], out / "ort-int8.onnx", calibration
        )
        for fmt in ("qdq", "packed", "qcdq"):
            paths[fmt] = export_onnx(
                run.model, out / f"{fmt}.onnx", example, format=fmt, calibration_inputs=calibration
            )
        # each graph against its PyTorch model in the layout training evaluated it in
        owners = {n: (fp32_run if "fp32" in n else run) for n in paths}
        checks = {
            n: agreement(
                owners[n].evaluated_model(), p, test, channels_last=owners[n].channels_last
            )
            for n, p in paths.items()
        }
        ms = latencies(paths, tuple(example.shape[1:]), (1, 2), (1, 128), rounds)
        sizes = {n: p.stat().st_size for n, p in paths.items()}
        fused = {n: integer_kernel_report(p).get("QLinearConv", 0) for n, p in paths.items()}
        layout = {
            n: integer_kernel_report(p, level="all").get("Transpose", 0) for n, p in paths.items()
        }
    base = "fp32 (torch.onnx)"
    print(f"run: {args.run} ({model_size_bytes(run.model):,} bytes at its bit widths)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads available")
    columns = ["graph", "file kB", "QLinearConv", "Transpose"]
    columns += [
        f"batch {b}, {t} thread{'s' * (t > 1)}: ms (x fp32)" for b in (1, 128) for t in (1, 2)
    ]
    columns += ["same top-1 as PyTorch", "mean abs logit diff"]
    print("| " + " | ".join(columns) + " |")
    print("|---" * len(columns) + "|")
    for n in paths:
        cells = [f"{sizes[n] / 1000:.1f}", str(fused[n]), str(layout[n])]
        for b in (1, 128):
            for t in (1, 2):
                value = ms[(n, t, b)]
                cells.append(f"{value:.3f} ({ms[(base, t, b)] / value:.2f}x)")
        c = checks[n]
        cells += [f"{100 * c.same_prediction:.2f}% of {c.images}", f"{c.mean_abs_diff:.3g}"]
        print(f"| {n} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
