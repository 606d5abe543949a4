"""The ``qsgt`` command.

User errors (a bad recipe, a missing dataset, a bad checkpoint, an existing run) print one
message that names the problem and the fix, and exit with status 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

log = logging.getLogger("qsgt_plugin")


def _launch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Re-run this command under torchrun with ``--nproc`` processes."""
    rest = list(argv)
    i = rest.index("--nproc")
    del rest[i : i + 2]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.nproc}",
        "-m",
        "qsgt_plugin.cli",
        *rest,
    ]
    log.info("launching %s", " ".join(command))
    return subprocess.call(command)


def _train(args: argparse.Namespace) -> int:
    from qsgt_plugin.engine import train
    from qsgt_plugin.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    result = train(recipe, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return 0
    print(
        f"test accuracy {100 * result.test_acc:.2f}% (best {100 * result.best_acc:.2f}%) "
        f"after {result.step} steps; run written to {result.run_dir}"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from qsgt_plugin.build import make_loader, resolve_device
    from qsgt_plugin.checkpoint import load_checkpoint, model_from_checkpoint
    from qsgt_plugin.engine import evaluate as run_evaluation
    from qsgt_plugin.recipe import apply_overrides, parse_recipe

    payload = load_checkpoint(args.checkpoint)
    extra = [f"data.root={args.data_root}"] if args.data_root else []
    extra += [f"train.device={args.device}"]
    recipe = parse_recipe(apply_overrides(payload["recipe"], extra), source=str(args.checkpoint))
    device = resolve_device(recipe.train.device)
    model = model_from_checkpoint(payload).to(device)
    test_loader = make_loader(recipe, False, device)
    accuracy, loss = run_evaluation(model, test_loader)
    print(
        f"test accuracy {100 * accuracy:.2f}% (loss {loss:.4f}) on {len(test_loader.labels)} "
        f"{recipe.data.dataset} test images; checkpoint at step {payload['step']}"
    )
    return 0


def _runs(args: argparse.Namespace) -> list:
    from qsgt_plugin.attribution import load_run

    return [load_run(path, data_root=args.data_root) for path in args.runs]


def _print_comparison(numbers: dict) -> None:
    print(f"{'view':44s} {'Gini':>6s} {'infidelity':>11s} {'sensitivity':>11s}")
    for view, v in numbers["views"].items():
        print(
            f"{view:44s} {v['gini']:6.3f} {v.get('infidelity', float('nan')):11.3g} "
            f"{v.get('sensitivity_max', float('nan')):11.3f}"
        )
    print(f"\n{'map A':44s} {'map B':44s} {'Spearman':>8s} {'top-10%':>8s}")
    for p in numbers["pairs"]:
        print(f"{p['a']:44s} {p['b']:44s} {p['spearman']:8.3f} {p['top10_overlap']:8.3f}")


def _compare(args: argparse.Namespace) -> int:
    from qsgt_plugin.attribution import compare_runs

    numbers = compare_runs(
        _runs(args),
        Path(args.out),
        images=args.images,
        method=args.method,
        float_views=not args.no_float_views,
    )
    Path(args.out).with_suffix(".json").write_text(json.dumps(numbers, indent=2))
    _print_comparison(numbers)
    print(f"\nfigure: {numbers['figure']}; numbers: {Path(args.out).with_suffix('.json')}")
    return 0


def _masking_curve(args: argparse.Namespace) -> int:
    from qsgt_plugin.attribution import masking_curves

    images = None if args.images == 0 else args.images
    numbers = masking_curves(
        _runs(args), Path(args.out), images=images, method=args.method, fill_value=args.fill
    )
    Path(args.out).with_suffix(".json").write_text(json.dumps(numbers, indent=2))
    print(f"{'run':40s} {'ranking':9s} " + " ".join(f"{10 * i:>5d}%" for i in range(10)))
    for name, curve in numbers["curves"].items():
        for kind, points in curve.items():
            print(f"{name:40s} {kind:9s} " + " ".join(f"{100 * a:6.1f}" for a in points.values()))
    print(
        f"\n{numbers['images']} test images; figure: {numbers['figure']}; numbers: "
        f"{Path(args.out).with_suffix('.json')}"
    )
    return 0


def _alpha_plot(args: argparse.Namespace) -> int:
    from qsgt_plugin.attribution import alpha_plot

    (run,) = _runs(args)
    out = Path(args.out) if args.out else run.path / "alpha.png"
    print(f"figure: {alpha_plot(run, out)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from qsgt_plugin.attribution import build_report

    images = None if args.curve_images == 0 else args.curve_images
    build_report(
        args.runs,
        args.out,
        images=args.images,
        curve_images=images,
        method=args.method,
        data_root=args.data_root,
    )
    print(f"report: {Path(args.out) / 'report.md'}; numbers: {Path(args.out) / 'metrics.json'}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from qsgt_plugin.attribution import load_run
    from qsgt_plugin.quant import model_size_bytes, quantization_disabled
    from qsgt_plugin.quant.export import export_onnx

    run = load_run(args.checkpoint, data_root=args.data_root)
    source = Path(args.checkpoint)
    out = (
        Path(args.out)
        if args.out
        else (source if source.is_dir() else source.parent) / "model.onnx"
    )
    x, _ = next(iter(run.test_loader(limit=1)))
    export_onnx(run.model, out, x)
    quantized = model_size_bytes(run.model)
    with quantization_disabled(run.model):
        fp32 = model_size_bytes(run.model)
    print(f"wrote {out} ({out.stat().st_size:,} bytes ONNX)")
    print(
        f"model size at its quantized bit widths: {quantized:,} bytes; as fp32: {fp32:,} bytes "
        f"({fp32 / quantized:.1f}x smaller)"
    )
    return 0


def _methods(_args: argparse.Namespace) -> int:
    from qsgt_plugin.plugins import get_registry

    registry = get_registry()
    for name in sorted(registry.methods):
        method = registry.methods[name]
        print(f"{name:16s} {method.description} [weights: {method.weight_quant}]")
    print("\nweight quantizers:")
    for name in sorted(registry.weight_quantizers):
        print(f"{name:16s} {registry.weight_quantizers[name].description}")
    return 0


def _models(_args: argparse.Namespace) -> int:
    from qsgt_plugin.plugins import get_registry

    for name in sorted(get_registry().models):
        print(name)
    return 0


def _version() -> str:
    try:
        return version("qsgt-plugin")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qsgt", description="PACT quantization and saliency-guided training."
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train from a YAML recipe")
    p.add_argument("recipe", help="recipe file, e.g. recipes/quickstart.yaml")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. --set optim.lr=0.05 (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in output.dir")
    p.add_argument("--overwrite", action="store_true", help="replace the run in output.dir")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="data-parallel processes on this machine (runs torchrun; one per GPU)",
    )
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="test accuracy of a checkpoint")
    p.add_argument("checkpoint", help="a last.pt or best.pt written by `qsgt train`")
    p.add_argument("--data-root", help="dataset folder (default: the recipe's, then QSGT_DATA)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=_evaluate)

    def analysis(name: str, help: str, many: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument(
            "runs",
            nargs="+" if many else 1,
            metavar="RUN",
            help="run directories written by `qsgt train` (or checkpoints)",
        )
        p.add_argument("--data-root", help="dataset folder (default: the recipe's, then QSGT_DATA)")
        return p

    attribution_methods = "Saliency, InputXGradient, IntegratedGradients, SmoothGrad"
    p = analysis("compare", "attribution maps of several runs side by side, with numbers")
    p.add_argument("--images", type=int, default=16, help="test images to explain (16)")
    p.add_argument("--method", default="Saliency", help=attribution_methods)
    p.add_argument(
        "--no-float-views",
        action="store_true",
        help="leave out quantized runs' float versions (quantization disabled)",
    )
    p.add_argument("--out", default="attributions.png", help="figure path (numbers: .json beside)")
    p.set_defaults(func=_compare)

    p = analysis("masking-curve", "accuracy as the most salient pixels are replaced")
    p.add_argument("--images", type=int, default=1000, help="test images (1000; 0 = all)")
    p.add_argument("--method", default="Saliency", help=attribution_methods)
    p.add_argument(
        "--fill",
        type=float,
        default=0.0,
        help="replacement value in normalised units (0 = the dataset mean)",
    )
    p.add_argument("--out", default="masking-curve.png", help="figure path (numbers: .json)")
    p.set_defaults(func=_masking_curve)

    p = analysis("alpha-plot", "PACT clipping levels per layer over training", many=False)
    p.add_argument("--out", help="figure path (default: RUN/alpha.png)")
    p.set_defaults(func=_alpha_plot)

    p = analysis("report", "report.md with every figure, an accuracy table and metrics.json")
    p.add_argument("--out", default="report", help="output folder (report/)")
    p.add_argument("--images", type=int, default=16, help="images in the attribution grid (16)")
    p.add_argument(
        "--curve-images",
        type=int,
        default=1000,
        help="test images of the masking curves (1000; 0 = all)",
    )
    p.add_argument("--method", default="Saliency", help=attribution_methods)
    p.set_defaults(func=_report)

    p = sub.add_parser("export", help="export a checkpoint as a QCDQ ONNX model")
    p.add_argument("checkpoint", help="a run directory or a checkpoint written by `qsgt train`")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="onnx (QCDQ)")
    p.add_argument("--out", help="output file (default: model.onnx beside the checkpoint)")
    p.add_argument("--data-root", help="dataset folder for the example input")
    p.set_defaults(func=_export)

    p = sub.add_parser("methods", help="list quantization methods and weight quantizers")
    p.set_defaults(func=_methods)
    p = sub.add_parser("models", help="list models registered by plugins")
    p.set_defaults(func=_models)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from qsgt_plugin.attribution import RunError
    from qsgt_plugin.checkpoint import CheckpointError
    from qsgt_plugin.data import DatasetNotFoundError
    from qsgt_plugin.engine import TrainingDivergedError
    from qsgt_plugin.plugins import PluginError
    from qsgt_plugin.recipe import RecipeError
    from qsgt_plugin.run_dir import RunDirError, RunExistsError

    return (
        RecipeError,
        RunError,
        DatasetNotFoundError,
        CheckpointError,
        RunExistsError,
        RunDirError,
        TrainingDivergedError,
        PluginError,
        PermissionError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "train" and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch(args, argv)
    try:
        return args.func(args)
    except _user_errors() as exc:
        if args.debug:
            raise
        print(f"qsgt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qsgt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
