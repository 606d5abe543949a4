"""The ``qsgt`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version


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
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    methods = sub.add_parser("methods", help="list quantization methods and weight quantizers")
    methods.set_defaults(func=_methods)
    models = sub.add_parser("models", help="list models registered by plugins")
    models.set_defaults(func=_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
