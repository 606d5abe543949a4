"""The ``qsgt`` command.

User errors (a bad recipe, a missing dataset, a bad checkpoint, an existing run) print one
message that names the problem and the fix, and exit with status 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import NoReturn

from qsgt_plugin.errors import QsgtError

log = logging.getLogger("qsgt_plugin")


def _strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N`` (the ranks run one process each)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _train(args: argparse.Namespace) -> int:
    from qsgt_plugin.engine import train
    from qsgt_plugin.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch(args, recipe)
    result = train(recipe, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return 0
    print(
        f"test accuracy {100 * result.test_acc:.2f}% (best {100 * result.best_acc:.2f}%) "
        f"after {result.step} steps; run written to {result.run_dir}"
    )
    return 0


def _launch(args: argparse.Namespace, recipe) -> int:
    """Check everything once, hold the run's lock, and run the ranks under torchrun."""
    from qsgt_plugin.engine import preflight
    from qsgt_plugin.launch import launch
    from qsgt_plugin.run_dir import LOCK_ENV, RunDir

    recipe = preflight(recipe, args.resume, args.overwrite, world=args.nproc)
    run = RunDir(Path(recipe.output.dir))
    run.path.mkdir(parents=True, exist_ok=True)
    with run.lock():
        status, error = launch(
            _strip_nproc(args.argv), args.nproc, {LOCK_ENV: str(run.path.resolve())}
        )
    if error is not None:
        print(f"qsgt train: error: {error}", file=sys.stderr)
        return 2
    return status


def _evaluate(args: argparse.Namespace) -> int:
    from qsgt_plugin.build import resolve_device
    from qsgt_plugin.evaluation import evaluate
    from qsgt_plugin.run_dir import load_run

    run = load_run(args.checkpoint, data_root=args.data_root)
    device = resolve_device(args.device)
    loader = run.test_loader(device=device)
    accuracy, loss = evaluate(run.model.to(device), loader)
    print(
        f"test accuracy {100 * accuracy:.2f}% (loss {loss:.4f}) on {len(loader.labels)} "
        f"{run.recipe.data.dataset} test images; checkpoint at step {run.checkpoint['step']}"
    )
    return 0


def _runs(args: argparse.Namespace) -> list:
    from qsgt_plugin.report import load_runs

    return load_runs(args.runs, data_root=args.data_root)


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
    from qsgt_plugin.report import compare_runs, write_json

    numbers = compare_runs(
        _runs(args),
        Path(args.out),
        images=args.images,
        method=args.method,
        float_views=not args.no_float_views,
    )
    write_json(numbers, Path(args.out).with_suffix(".json"))
    _print_comparison(numbers)
    print(f"\nfigure: {numbers['figure']}; numbers: {Path(args.out).with_suffix('.json')}")
    return 0


def _masking_curve(args: argparse.Namespace) -> int:
    from qsgt_plugin.report import masking_curves, write_json

    images = None if args.images == 0 else args.images
    numbers = masking_curves(
        _runs(args), Path(args.out), images=images, method=args.method, fill_value=args.fill
    )
    write_json(numbers, Path(args.out).with_suffix(".json"))
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
    from qsgt_plugin.report import alpha_plot

    (run,) = _runs(args)
    out = Path(args.out) if args.out else run.path / "alpha.png"
    print(f"figure: {alpha_plot(run, out)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from qsgt_plugin.report import build_report

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
    from qsgt_plugin.build import example_batch
    from qsgt_plugin.quant import model_size_bytes, quantization_disabled
    from qsgt_plugin.quant.export import export_onnx
    from qsgt_plugin.report import check_output
    from qsgt_plugin.run_dir import load_run

    run = load_run(args.checkpoint)
    out = check_output(Path(args.out) if args.out else run.path / "model.onnx")
    # The input shape comes from the recipe's dataset; no data is read.
    export_onnx(run.model, out, example_batch(run.recipe.data.dataset, 1))
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


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line naming the problem and where help is, then exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qsgt", description="PACT quantization and saliency-guided training.")
    parser.add_argument("--version", action="version", version=_version())
    debug = dict(action="store_true", help="show the traceback of an error")
    parser.add_argument("--debug", **debug)
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        # After the subcommand too; SUPPRESS keeps a --debug given before it.
        p.add_argument("--debug", **debug, default=argparse.SUPPRESS)
        return p

    p = command("train", "train from a YAML recipe")
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
        type=_count(1),
        default=1,
        metavar="N",
        help="data-parallel processes on this machine (runs torchrun; one per GPU)",
    )
    p.set_defaults(func=_train)

    p = command("evaluate", "test accuracy of a checkpoint")
    p.add_argument("checkpoint", help="a last.pt or best.pt written by `qsgt train`")
    p.add_argument("--data-root", help="dataset folder (default: the recipe's, then QSGT_DATA)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=_evaluate)

    def analysis(name: str, help: str, many: bool = True) -> argparse.ArgumentParser:
        p = command(name, help)
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
    p.add_argument("--images", type=_count(1), default=16, help="test images to explain (16)")
    p.add_argument("--method", default="Saliency", help=attribution_methods)
    p.add_argument(
        "--no-float-views",
        action="store_true",
        help="leave out quantized runs' float versions (quantization disabled)",
    )
    p.add_argument("--out", default="attributions.png", help="figure path (numbers: .json beside)")
    p.set_defaults(func=_compare)

    p = analysis("masking-curve", "accuracy as the most salient pixels are replaced")
    p.add_argument("--images", type=_count(0), default=1000, help="test images (1000; 0 = all)")
    p.add_argument("--method", default="Saliency", help=attribution_methods)
    p.add_argument(
        "--fill",
        type=_finite,
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
    p.add_argument(
        "--images", type=_count(1), default=16, help="images in the attribution grid (16)"
    )
    p.add_argument(
        "--curve-images",
        type=_count(0),
        default=1000,
        help="test images of the masking curves (1000; 0 = all)",
    )
    p.add_argument("--method", default="Saliency", help=attribution_methods)
    p.set_defaults(func=_report)

    p = command("export", "export a checkpoint as a QCDQ ONNX model")
    p.add_argument("checkpoint", help="a run directory or a checkpoint written by `qsgt train`")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="onnx (QCDQ)")
    p.add_argument("--out", help="output file (default: model.onnx beside the checkpoint)")
    p.set_defaults(func=_export)

    p = command("methods", "list quantization methods and weight quantizers")
    p.set_defaults(func=_methods)
    p = command("models", "list models registered by plugins")
    p.set_defaults(func=_models)
    return parser


def _one_line(message: str) -> str:
    """A multi-line message (a recipe's list of problems) joined into one line."""
    lines = [line.strip().removeprefix("- ") for line in message.splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    head, rest = lines[0], lines[1:]
    return head + (" " if head.endswith(":") else "; ") + "; ".join(rest) if rest else head


def main(argv: Sequence[str] | None = None) -> int:
    from qsgt_plugin.launch import report_rank_error

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except QsgtError as exc:
        if args.debug:
            raise
        message = _one_line(str(exc))
        # Under `qsgt train --nproc`, the launcher prints a rank's error once.
        handed_over = "WORLD_SIZE" in os.environ and report_rank_error(message)
        if not handed_over and os.environ.get("RANK", "0") == "0":
            print(f"qsgt {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qsgt {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"qsgt {args.command}: internal error ({type(exc).__name__}: "
            f"{_one_line(str(exc))}). This is a bug in qsgt; rerun with --debug for the "
            "traceback and report it.",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
