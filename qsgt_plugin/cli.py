"""The ``qsgt`` command.

User errors (a bad recipe, a missing dataset, a bad checkpoint, an existing run) print one
message that names the problem and the fix, and exit with status 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from qsgt_plugin.cli_parser import build_parser
from qsgt_plugin.common.memory import keep_freed_memory
from qsgt_plugin.errors import DISK_FULL, QsgtError

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
    from qsgt_plugin.recipe import load_recipe
    from qsgt_plugin.training.loop import train

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
    from qsgt_plugin.run_dir import LOCK_ENV, RunDir
    from qsgt_plugin.training.launch import launch
    from qsgt_plugin.training.loop import preflight

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
    from qsgt_plugin.common.evaluation import evaluate
    from qsgt_plugin.runs import load_run
    from qsgt_plugin.training.build import resolve_device

    run = load_run(args.checkpoint, data_root=args.data_root)
    device = resolve_device(args.device)
    model, loader = run.evaluation(device)  # in the memory layout training evaluated it
    accuracy, loss = evaluate(model, loader)
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

    numbers = build_report(
        args.runs,
        args.out,
        images=args.images,
        curve_images=None if args.curve_images == 0 else args.curve_images,
        offset=args.offset,
        method=args.method,
        mprt_images=args.mprt_images,
        data_root=args.data_root,
    )
    runs = numbers["runs"]
    names = list(next(iter(runs.values()))["suite"]["seconds"])
    print(f"{'seconds':40s} " + " ".join(f"{n[:12]:>12s}" for n in names))
    for name, run in runs.items():
        seconds = run["suite"]["seconds"]
        print(f"{name[:40]:40s} " + " ".join(f"{seconds[n]:12.1f}" for n in names))
    print(f"report: {Path(args.out) / 'report.md'}; numbers: {Path(args.out) / 'metrics.json'}")
    return 0


def _sensitivity(args: argparse.Namespace) -> int:
    from qsgt_plugin.precision.tasks import write_sensitivity
    from qsgt_plugin.report import check_output

    (run,) = _runs(args)
    out = check_output(Path(args.out) if args.out else run.path / "sensitivity", folder=True)
    result = write_sensitivity(
        run, out, args.bits, args.images, args.hessian_samples, layers=args.layers
    )
    print((out / "sensitivity.md").read_text())
    seconds = result["seconds"]
    print(
        f"{len(result['rows'])} variants on {result['images']} images in "
        f"{seconds['total']:.0f} s (Hessian traces {seconds['hessian']:.0f} s); "
        f"figure: {result['figure']}; numbers: {out / 'sensitivity.json'}"
    )
    return 0


def _mixed_precision(args: argparse.Namespace) -> int:
    from qsgt_plugin.errors import UsageError
    from qsgt_plugin.precision.tasks import (
        SizedUnits,
        check_budget,
        load_sensitivity,
        plan_mixed_precision,
        uniform_sizes,
        write_recipe,
        write_sensitivity,
    )
    from qsgt_plugin.report import check_output

    if args.size_kb <= 0:
        raise UsageError(f"--size-kb must be positive, got {args.size_kb:g}")
    if args.drift_weight < 0:
        raise UsageError(
            f"--drift-weight must be 0 or more (0: accuracy alone), got {args.drift_weight:g}"
        )
    (run,) = _runs(args)
    out = check_output(Path(args.out) if args.out else run.path / "mixed-precision.yaml")
    budget = round(args.size_kb * 1000)
    sized = SizedUnits.of(run)
    check_budget(sized, args.bits, budget)
    saved = run.path / "sensitivity" / "sensitivity.json"
    result = load_sensitivity(saved, sized, args.bits, args.layers)
    if result is None:
        result = write_sensitivity(
            run, saved.parent, args.bits, args.images, args.hessian_samples, layers=args.layers
        )
    else:
        print(f"using the sensitivity measured in {saved}")
    chosen, size, recipe = plan_mixed_precision(
        run,
        sized,
        result,
        budget,
        args.drift_weight,
        source=args.runs[0],
        epochs=args.epochs,
        name=out.stem if args.out else None,
    )
    write_recipe(recipe, out)
    for name, choice in chosen.items():
        print(f"{name:24s} {choice.bits:2d} bits  cost {choice.cost:.4f}  {choice.size:,} bytes")
    total = sum(c.cost for c in chosen.values())
    print(
        f"\nmodel size {size / 1000:.2f} kB (budget {args.size_kb:g} kB); summed cost {total:.4f}"
    )
    sizes = uniform_sizes(run, sized, list(args.bits))
    print(
        "uniform, for reference: "
        + ", ".join(f"W{b}A{b} {s / 1000:.2f} kB" for b, s in sizes.items())
    )
    print(f"recipe: {out}; fine-tune with `qsgt train {out}`")
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from qsgt_plugin.errors import DatasetNotFoundError
    from qsgt_plugin.quant import model_size_bytes, quantization_disabled
    from qsgt_plugin.quant.export import export_onnx
    from qsgt_plugin.report import check_output
    from qsgt_plugin.runs import load_run
    from qsgt_plugin.training.build import example_batch, make_loader

    run = load_run(args.checkpoint)
    out = check_output(Path(args.out) if args.out else run.path / "model.onnx")
    example = example_batch(run.recipe.data.dataset, 1)
    calibration = None
    if args.format == "qdq":  # 8-bit quantizers where the model has none: measured on images
        n = run.recipe.quant.calibration_images
        try:
            loader = make_loader(run.recipe, True, torch.device("cpu"), limit=n, calibration=True)
        except DatasetNotFoundError as exc:
            raise DatasetNotFoundError(
                f"{exc} The qdq format measures its 8-bit ranges on {n} training images; "
                "--format packed or qcdq needs no data."
            ) from None
        calibration = torch.cat([x for x, _ in loader])
    export_onnx(run.model, out, example, format=args.format, calibration_inputs=calibration)
    quantized = model_size_bytes(run.model)
    with quantization_disabled(run.model):
        fp32 = model_size_bytes(run.model)
    print(f"wrote {out} ({out.stat().st_size:,} bytes, format {args.format})")
    print(
        f"model size at its quantized bit widths: {quantized:,} bytes; as fp32: {fp32:,} bytes "
        f"({fp32 / quantized:.1f}x smaller)"
    )
    if args.format == "qdq":
        from qsgt_plugin.quant.export.qdq import integer_kernel_report
        from qsgt_plugin.quant.export.writer import agreement

        ops = integer_kernel_report(out)
        convs = ops.get("QLinearConv", 0)
        total = convs + ops.get("Conv", 0) + ops.get("FusedConv", 0)
        print(
            f"onnxruntime runs {convs} of {total} convolutions and {ops.get('QLinearAdd', 0)} "
            "residual sums on integer kernels"
        )
        check = agreement(run.evaluated_model(), out, calibration, channels_last=run.channels_last)
        print(f"on its calibration images: {check}")
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


def _recipes(_args: argparse.Namespace) -> int:
    from qsgt_plugin.recipe import load_recipe, packaged_recipes

    for name, path in packaged_recipes().items():
        r = load_recipe(path)
        length = f"{r.train.max_steps} steps" if r.train.max_steps else f"{r.train.epochs} epochs"
        start = " from a trained run" if r.model.init_from else ""
        print(f"{name:50s} {r.data.dataset:8s} {r.model.name} {r.label}, {length}{start}")
    return 0


def _models(_args: argparse.Namespace) -> int:
    from qsgt_plugin.plugins import get_registry

    for name in sorted(get_registry().models):
        print(name)
    return 0


COMMANDS = {
    "train": _train,
    "evaluate": _evaluate,
    "compare": _compare,
    "masking-curve": _masking_curve,
    "alpha-plot": _alpha_plot,
    "report": _report,
    "sensitivity": _sensitivity,
    "mixed-precision": _mixed_precision,
    "export": _export,
    "methods": _methods,
    "models": _models,
    "recipes": _recipes,
}


def _one_line(message: str) -> str:
    """A multi-line message (a recipe's list of problems) joined into one line."""
    lines = [line.strip().removeprefix("- ") for line in message.splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    head, rest = lines[0], lines[1:]
    return head + (" " if head.endswith(":") else "; ") + "; ".join(rest) if rest else head


def main(argv: Sequence[str] | None = None) -> int:
    from qsgt_plugin.training.launch import report_rank_error

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(COMMANDS)
    args, extra = parser.parse_known_args(argv)
    if extra:  # named with the subcommand, as argparse's own errors are
        command = getattr(args, "command", None)
        prog = f"qsgt {command}" if command else "qsgt"
        parser.exit(
            2, f"{prog}: error: unrecognized arguments: {' '.join(extra)}; see {prog} --help\n"
        )
    args.argv = argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    keep_freed_memory()  # evaluation batches reuse freed memory instead of re-faulting it
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
    except OSError as exc:
        if args.debug or exc.errno not in DISK_FULL:
            return _internal(args, exc)
        where = f" writing {exc.filename}" if exc.filename else ""
        print(
            f"qsgt {args.command}: error: no space left on the device{where}; free some space "
            "and rerun (every output is written whole or not at all)",
            file=sys.stderr,
        )
        return 2
    except Exception as exc:
        return _internal(args, exc)


def _internal(args: argparse.Namespace, exc: Exception) -> int:
    if args.debug:
        raise exc
    print(
        f"qsgt {args.command}: internal error ({type(exc).__name__}: "
        f"{_one_line(str(exc))}). This is a bug in qsgt; rerun with --debug for the "
        "traceback and report it.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
