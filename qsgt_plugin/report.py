"""The experiment report: accuracy table, attribution grids, masking curves, alpha plots.

``build_report`` writes ``report.md`` (every figure embedded), the PNGs and ``metrics.json``
(every number) for a set of runs. The pieces are usable alone: ``compare_runs``,
``masking_curves`` and ``alpha_plot`` back the ``qsgt compare``, ``masking-curve`` and
``alpha-plot`` commands.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from qsgt_plugin.attribution import (
    ModelView,
    alpha_figure,
    attribution_grid,
    compare_views,
    masking_curve,
    masking_curve_figure,
)
from qsgt_plugin.errors import UsageError
from qsgt_plugin.evaluation import evaluate
from qsgt_plugin.quant import model_size_bytes, quantization_disabled
from qsgt_plugin.run_dir import Run, load_run
from qsgt_plugin.sgt import make_attribution

__all__ = [
    "accuracy_table",
    "alpha_plot",
    "build_report",
    "check_method",
    "check_output",
    "compare_runs",
    "load_runs",
    "masking_curves",
    "model_views",
    "write_json",
]


def load_runs(paths: list[str | Path], data_root: str | None = None) -> list[Run]:
    """Load runs, each with a unique name: the shortest path tail that tells them apart.

    ``runs/a/ref`` and ``runs/b/ref`` are named ``a/ref`` and ``b/ref``; the same run given
    twice is one run.
    """
    unique = list(dict.fromkeys(Path(p).resolve() for p in paths))
    runs = [load_run(path, data_root=data_root) for path in unique]
    dirs = [run.path.resolve() for run in runs]
    depth = 1
    while depth < max(len(d.parts) for d in dirs):
        names = ["/".join(d.parts[-depth:]) for d in dirs]
        if len(set(names)) == len(names):
            break
        depth += 1
    for run, directory, path in zip(runs, dirs, unique, strict=True):
        run.name = "/".join(directory.parts[-depth:])
        if path.is_file() and sum(d == directory for d in dirs) > 1:
            run.name += f" ({path.name})"  # two checkpoints of one run
    return runs


def check_output(path: Path) -> Path:
    """``path`` if its folder can be created and written; a :class:`UsageError` otherwise."""
    path = Path(path)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"cannot write {path}: {parent} is a file; choose another --out")
            if not os.access(parent, os.W_OK):
                raise UsageError(
                    f"cannot write {path}: {parent} is not writable; choose another --out"
                )
            break
    if path.is_dir() and path.suffix:
        raise UsageError(f"cannot write {path}: it is a folder; choose a file name for --out")
    return path


def check_method(method: str, runs: list[Run]) -> None:
    """A Captum method these runs can be explained with, before any work is done."""
    try:
        for run in runs:
            make_attribution(run.model, method)
    except ValueError as exc:
        raise UsageError(f"--method: {exc}") from None


def write_json(numbers: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(numbers, indent=2))
    return path


def model_views(runs: list[Run], float_views: bool = True) -> list[ModelView]:
    """One view per run, plus the float view of each quantized run (no second copy)."""
    views = []
    for run in runs:
        views.append(ModelView(f"{run.name} ({run.label})", run.model))
        if float_views and run.quantized:
            views.append(ModelView(f"{run.name} (float view)", run.model, float_view=True))
    return views


def compare_runs(
    runs: list[Run],
    out: Path,
    *,
    images: int = 16,
    method: str = "Saliency",
    float_views: bool = True,
    fidelity: bool = True,
) -> dict[str, Any]:
    """Attribution grid of all runs (and float views) on the first test images of their dataset."""
    _same_dataset(runs)
    check_method(method, runs)
    check_output(out)
    x, y = next(iter(runs[0].test_loader(limit=images)))
    mean, std = runs[0].normalisation
    result = compare_views(model_views(runs, float_views), x, y, method=method, fidelity=fidelity)
    figure = attribution_grid(
        x,
        result.maps,
        out,
        mean=mean,
        std=std,
        titles=[f"label {int(label)}" for label in y],
        method=method,
    )
    return {"figure": str(figure), "images": len(y), **result.numbers()}


def masking_curves(
    runs: list[Run],
    out: Path,
    *,
    images: int | None = 1000,
    method: str = "Saliency",
    fill_value: float = 0.0,
) -> dict[str, Any]:
    """Masking curves (salient first and random) of all runs on one figure."""
    _same_dataset(runs)
    check_method(method, runs)
    check_output(out)
    curves = {}
    for run in runs:
        loader = run.test_loader(limit=images)
        curves[f"{run.name} ({run.label})"] = masking_curve(
            run.model, loader, method=method, fill_value=fill_value
        )
    figure = masking_curve_figure(
        curves,
        out,
        title=f"{runs[0].recipe.data.dataset}: accuracy when the most salient pixels are replaced",
    )
    n = len(runs[0].test_loader(limit=images).labels)
    return {
        "figure": str(figure),
        "images": n,
        "method": method,
        "fill_value": fill_value,
        "curves": {
            name: {k: {str(t): a for t, a in c.items()} for k, c in curve.items()}
            for name, curve in curves.items()
        },
    }


def alpha_plot(run: Run, out: Path) -> Path:
    """Alpha per activation layer against epoch, from the run's metrics log."""
    if not run.quantized:
        raise UsageError(f"{run.name} is a float run: it has no clipping levels to plot")
    records = [r for r in run.metrics() if r.get("alphas")]
    if not records:
        raise UsageError(
            f"no clipping levels logged in {run.path / 'metrics.jsonl'}: alpha-plot needs the "
            "run directory that `qsgt train` wrote (with its metrics.jsonl)"
        )
    return alpha_figure(records, check_output(out), title=f"{run.name}: PACT clipping levels")


def accuracy_table(runs: list[Run]) -> list[dict[str, Any]]:
    """Test accuracy on the whole test split, and model size at the quantized bit widths.

    A quantized run gets a second row: its own float version (quantization disabled).
    """
    rows = []
    for run in runs:
        loader = run.test_loader()
        row = {
            "run": run.name,
            "model": run.recipe.model.name,
            "dataset": run.recipe.data.dataset,
            "bits": run.bits,
            "sgt": run.recipe.sgt.enabled,
            "test_acc": evaluate(run.model, loader)[0],
            "size_bytes": model_size_bytes(run.model),
            "test_images": len(loader.labels),
        }
        rows.append(row)
        if run.quantized:
            with quantization_disabled(run.model):
                rows.append(
                    {
                        **row,
                        "run": f"{run.name} (float view)",
                        "bits": "fp32 view",
                        "test_acc": evaluate(run.model, loader)[0],
                        "size_bytes": model_size_bytes(run.model),
                    }
                )
    return rows


def build_report(
    paths: list[str | Path],
    out: str | Path,
    *,
    images: int = 16,
    curve_images: int | None = 1000,
    method: str = "Saliency",
    data_root: str | None = None,
) -> dict[str, Any]:
    """Write ``report.md``, its figures and ``metrics.json`` into ``out``; return the numbers.

    The files are made in a temporary folder beside ``out`` and moved in at the end, so a
    report that fails leaves ``out`` as it was.
    """
    final = check_output(Path(out) / "report.md").parent
    runs = load_runs(paths, data_root=data_root)
    check_method(method, runs)
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{final.name}-", dir=final.parent) as tmp:
        numbers = _relocate(
            _write_report(runs, Path(tmp), images, curve_images, method), tmp, final
        )
        write_json(numbers, Path(tmp) / "metrics.json")
        final.mkdir(exist_ok=True)
        for file in Path(tmp).iterdir():
            os.replace(file, final / file.name)
    return numbers


def _relocate(numbers: Any, old: str | Path, new: Path) -> Any:
    """The report's numbers, as plain JSON, with the file paths under ``old`` moved to ``new``."""
    text = json.dumps(numbers).replace(json.dumps(str(old))[1:-1], json.dumps(str(new))[1:-1])
    return json.loads(text)


def _write_report(
    runs: list[Run], out: Path, images: int, curve_images: int | None, method: str
) -> dict[str, Any]:
    numbers: dict[str, Any] = {
        "method": method,
        "accuracy": accuracy_table(runs),
        "datasets": {},
        "alpha_figures": {},
    }
    by_dataset: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_dataset[run.recipe.data.dataset].append(run)
    for dataset, group in by_dataset.items():
        numbers["datasets"][dataset] = {
            "comparison": compare_runs(
                group, out / f"attributions-{dataset}.png", images=images, method=method
            ),
            "masking": masking_curves(
                group, out / f"masking-curve-{dataset}.png", images=curve_images, method=method
            ),
        }
    for run in runs:
        if run.quantized and any(r.get("alphas") for r in run.metrics()):
            figure = out / f"alpha-{run.name.replace('/', '-')}.png"
            numbers["alpha_figures"][run.name] = str(alpha_plot(run, figure))
    (out / "report.md").write_text(_markdown(numbers, out))
    return numbers


def _same_dataset(runs: list[Run]) -> None:
    datasets = {run.recipe.data.dataset for run in runs}
    if len(datasets) > 1:
        raise UsageError(
            f"these runs use different datasets ({', '.join(sorted(datasets))}); "
            "compare runs of one dataset at a time"
        )


def _markdown(numbers: dict[str, Any], out: Path) -> str:
    def rel(path: str) -> str:
        return Path(path).relative_to(out).as_posix()

    lines = [
        "# qsgt report",
        "",
        "## Accuracy",
        "",
        "| run | model | dataset | bits | SGT | test accuracy | size (bytes) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in numbers["accuracy"]:
        lines.append(
            f"| {r['run']} | {r['model']} | {r['dataset']} | {r['bits']} | "
            f"{'yes' if r['sgt'] else 'no'} | {100 * r['test_acc']:.2f}% "
            f"({r['test_images']} images) | {r['size_bytes']:,} |"
        )
    lines += [
        "",
        "Size counts quantized weights at their bit width. Float views are the quantized runs "
        "with quantization disabled (Brevitas' context: no retraining, no copy). With DoReFa "
        "weights the float view runs on the latent weights, which DoReFa rescales by tanh and "
        "max, so BatchNorm's statistics no longer fit and its accuracy says little; with "
        "int_per_channel weights the float view stays close.",
    ]
    for dataset, parts in numbers["datasets"].items():
        comp, mask = parts["comparison"], parts["masking"]
        lines += [
            "",
            f"## {dataset}: attributions ({comp['method']}, {comp['images']} test images)",
            "",
            f"![attributions]({rel(comp['figure'])})",
            "",
            "| view | Gini (sparseness) | infidelity | sensitivity_max |",
            "|---|---|---|---|",
        ]
        for view, v in comp["views"].items():
            lines.append(
                f"| {view} | {v['gini']:.3f} | {v.get('infidelity', float('nan')):.3g} "
                f"| {v.get('sensitivity_max', float('nan')):.3f} |"
            )
        lines += ["", "| map A | map B | Spearman | top-10% overlap |", "|---|---|---|---|"]
        for p in comp["pairs"]:
            lines.append(
                f"| {p['a']} | {p['b']} | {p['spearman']:.3f} | {p['top10_overlap']:.3f} |"
            )
        lines += [
            "",
            f"## {dataset}: masking curve ({mask['images']} test images)",
            "",
            f"![masking curve]({rel(mask['figure'])})",
            "",
            "| run | ranking | " + " | ".join(f"{i * 10}%" for i in range(10)) + " |",
            "|---|---|" + "---|" * 10,
        ]
        for name, curve in mask["curves"].items():
            for kind, points in curve.items():
                values = " | ".join(f"{100 * a:.1f}" for a in points.values())
                lines.append(f"| {name} | {kind} | {values} |")
    if numbers["alpha_figures"]:
        lines += ["", "## Clipping levels over training", ""]
        for name, path in numbers["alpha_figures"].items():
            lines += [f"### {name}", "", f"![alpha]({rel(path)})", ""]
    return "\n".join(lines) + "\n"
