"""The ``qsgt`` command.

User errors (a bad recipe, a missing dataset, a bad checkpoint, an existing run) print one
message that names the problem and the fix, and exit with status 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

log = logging.getLogger("qsgt_plugin")


def _train(args: argparse.Namespace) -> int:
    from qsgt_plugin.engine import train
    from qsgt_plugin.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    result = train(recipe, resume=args.resume, overwrite=args.overwrite)
    print(
        f"test accuracy {100 * result.test_acc:.2f}% (best {100 * result.best_acc:.2f}%) "
        f"after {result.step} steps; run written to {result.run_dir}"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from qsgt_plugin.build import resolve_device
    from qsgt_plugin.checkpoint import load_checkpoint, model_from_checkpoint
    from qsgt_plugin.engine import evaluate as run_evaluation
    from qsgt_plugin.engine import make_loaders
    from qsgt_plugin.recipe import apply_overrides, parse_recipe

    payload = load_checkpoint(args.checkpoint)
    extra = [f"data.root={args.data_root}"] if args.data_root else []
    extra += [f"train.device={args.device}"]
    recipe = parse_recipe(apply_overrides(payload["recipe"], extra), source=str(args.checkpoint))
    device = resolve_device(recipe.train.device)
    model = model_from_checkpoint(payload).to(device)
    _, test_loader = make_loaders(recipe, device)
    accuracy, loss = run_evaluation(model, test_loader)
    print(
        f"test accuracy {100 * accuracy:.2f}% (loss {loss:.4f}) on {len(test_loader.labels)} "
        f"{recipe.data.dataset} test images; checkpoint at step {payload['step']}"
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
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="test accuracy of a checkpoint")
    p.add_argument("checkpoint", help="a last.pt or best.pt written by `qsgt train`")
    p.add_argument("--data-root", help="dataset folder (default: the recipe's, then QSGT_DATA)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("methods", help="list quantization methods and weight quantizers")
    p.set_defaults(func=_methods)
    p = sub.add_parser("models", help="list models registered by plugins")
    p.set_defaults(func=_models)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from qsgt_plugin.checkpoint import CheckpointError
    from qsgt_plugin.data import DatasetNotFoundError
    from qsgt_plugin.engine import RunExistsError, TrainingDivergedError
    from qsgt_plugin.plugins import PluginError
    from qsgt_plugin.recipe import RecipeError

    return (
        RecipeError,
        DatasetNotFoundError,
        CheckpointError,
        RunExistsError,
        TrainingDivergedError,
        PluginError,
        PermissionError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
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
