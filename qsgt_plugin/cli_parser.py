"""The ``qsgt`` command line: one function per group of subcommands.

Bad arguments print one line that names the problem and where help is, and exit with status 2.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

__all__ = ["build_parser"]

Handler = Callable[[argparse.Namespace], int]
ATTRIBUTION_METHODS = "Saliency, InputXGradient, IntegratedGradients, SmoothGrad"
_DEBUG = dict(action="store_true", help="show the traceback of an error")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _count(minimum: int, maximum: int | None = None, why: str = "") -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}{why}, got {value}")
        return value

    return parse


GRID_IMAGES = 64
"""The most images an attribution grid shows (the test loader's first batch holds them)."""


def _layer_list(text: str) -> list[str]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(
            f"expected layer names or patterns, got {text!r}; leave --layers out for all layers"
        )
    return parts


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _version() -> str:
    try:
        return version("qsgt-plugin")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser(handlers: dict[str, Handler]) -> argparse.ArgumentParser:
    """The ``qsgt`` parser; each subcommand's ``func`` is ``handlers[name]``."""
    parser = _Parser(prog="qsgt", description="PACT quantization and saliency-guided training.")
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--debug", **_DEBUG)
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        # After the subcommand too; SUPPRESS keeps a --debug given before it.
        p.add_argument("--debug", **_DEBUG, default=argparse.SUPPRESS)
        p.set_defaults(func=handlers[name])
        return p

    _training(command)
    _analyses(command)
    command("recipes", "list the recipes shipped with the package (qsgt train NAME)")
    command("methods", "list quantization methods and weight quantizers")
    command("models", "list models registered by plugins")
    return parser


def _training(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = command("train", "train from a YAML recipe")
    p.add_argument("recipe", help="recipe file, or a packaged recipe's name (qsgt recipes)")
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
    p = command("evaluate", "test accuracy of a checkpoint")
    p.add_argument("checkpoint", help="a run directory, or a checkpoint written by `qsgt train`")
    p.add_argument("--data-root", help="dataset folder (default: the recipe's, then QSGT_DATA)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p = command("export", "export a checkpoint as an ONNX model for onnxruntime")
    p.add_argument("checkpoint", help="a run directory or a checkpoint written by `qsgt train`")
    p.add_argument(
        "--format",
        choices=["qdq", "packed", "qcdq"],
        default="qdq",
        help="qdq: integer kernels in onnxruntime, the fastest (default; calibrates 8-bit "
        "quantizers on the recipe's training images); packed: weights stored at their bit "
        "width, the smallest file, float kernels; qcdq: Brevitas' graph for FINN",
    )
    p.add_argument("--out", help="output file (default: model.onnx beside the checkpoint)")


def _analyses(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
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

    p = analysis("compare", "attribution maps of several runs side by side, with numbers")
    p.add_argument(
        "--images",
        type=_count(1, GRID_IMAGES, " (one grid row each; numbers over many images: report)"),
        default=16,
        help=f"test images to explain (16, at most {GRID_IMAGES})",
    )
    p.add_argument("--method", default="Saliency", help=ATTRIBUTION_METHODS)
    p.add_argument(
        "--no-float-views",
        action="store_true",
        help="leave out quantized runs' float versions (quantization disabled)",
    )
    p.add_argument("--out", default="attributions.png", help="figure path (numbers: .json beside)")
    p = analysis("masking-curve", "accuracy as the most salient pixels are replaced")
    p.add_argument("--images", type=_count(0), default=1000, help="test images (1000; 0 = all)")
    p.add_argument("--method", default="Saliency", help=ATTRIBUTION_METHODS)
    p.add_argument(
        "--fill",
        type=_finite,
        default=0.0,
        help="replacement value in normalised units (0 = the dataset mean)",
    )
    p.add_argument("--out", default="masking-curve.png", help="figure path (numbers: .json)")
    p = analysis("alpha-plot", "PACT clipping levels per layer over training", many=False)
    p.add_argument("--out", help="figure path (default: RUN/alpha.png)")
    p = analysis("report", "report.md with every figure and number, statistics over seeds")
    p.add_argument("--out", default="report", help="output folder (report/)")
    p.add_argument(
        "--images",
        type=_count(1, GRID_IMAGES, " (one grid row each)"),
        default=16,
        help=f"images in the attribution grid (16, at most {GRID_IMAGES})",
    )
    p.add_argument(
        "--curve-images",
        type=_count(0),
        default=1000,
        help="test images of every curve and metric (1000; 0 = all)",
    )
    p.add_argument(
        "--offset",
        type=_count(0),
        default=0,
        help="index of the first test image of the metrics (0): another --offset gives a "
        "disjoint held-out subset, e.g. --curve-images 1000 --offset 1000",
    )
    p.add_argument(
        "--mprt-images",
        type=_count(1),
        help="images of the randomisation test (default: --curve-images)",
    )
    p.add_argument("--method", default="Saliency", help=ATTRIBUTION_METHODS)
    _precision(analysis)


def _bit_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected bit widths separated by commas, like 2,3,4; got {text!r}"
        ) from None
    wrong = [b for b in values if not 2 <= b <= 8]
    if wrong:
        raise argparse.ArgumentTypeError(f"bit widths must be 2..8, got {wrong}")
    return tuple(sorted(set(values)))


def _precision(analysis: Callable[..., argparse.ArgumentParser]) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--bits", type=_bit_list, default=(2, 3, 4), help="bit widths to try (2,3,4)"
        )
        p.add_argument(
            "--images", type=_count(1), default=500, help="test images of each measurement (500)"
        )
        p.add_argument(
            "--hessian-samples",
            type=_count(2),
            default=16,
            help="Hutchinson vectors of the HAWQ-v2 score (16)",
        )
        p.add_argument(
            "--layers",
            type=_layer_list,
            help="weight layers to try, comma-separated names or patterns (default: all)",
        )

    p = analysis(
        "sensitivity",
        "accuracy drop and explanation drift with one layer at a time at fewer bits",
        many=False,
    )
    common(p)
    p.add_argument("--out", help="output folder (default: RUN/sensitivity)")
    p = analysis(
        "mixed-precision",
        "bits per layer within a model size, from the sensitivity; writes a recipe",
        many=False,
    )
    p.add_argument(
        "--size-kb", type=_finite, required=True, help="model size budget in kB (1000 bytes)"
    )
    p.add_argument(
        "--drift-weight",
        type=_finite,
        default=1.0,
        help="cost = accuracy drop + W x explanation drift (1.0)",
    )
    p.add_argument(
        "--epochs",
        type=_count(1),
        default=2,
        help="fine-tuning epochs of the written recipe, at a tenth of the run's lr (2)",
    )
    common(p)
    p.add_argument(
        "--out", help="recipe to write (default: RUN/mixed-precision.yaml); fine-tunes from RUN"
    )
