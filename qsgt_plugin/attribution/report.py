"""The experiment report: accuracy table, attribution grids, masking curves, alpha plots.

``build_report`` writes ``report.md`` (every figure embedded), the PNGs and ``metrics.json``
(every number) for a set of runs. The pieces are usable alone: ``compare_runs``,
``masking_curves`` and ``alpha_plot`` back the ``qsgt compare``, ``masking-curve`` and
``alpha-plot`` commands.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from qsgt_plugin.attribution.compare import compare_views
from qsgt_plugin.attribution.curves import masking_curve
from qsgt_plugin.attribution.figures import alpha_figure, attribution_grid, masking_curve_figure
from qsgt_plugin.attribution.runs import Run, load_run, model_views
from qsgt_plugin.engine import evaluate
from qsgt_plugin.quant import model_size_bytes, quantization_disabled

__all__ = ["accuracy_table", "alpha_plot", "build_report", "compare_runs", "masking_curves"]


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
    return alpha_figure(run.metrics(), out, title=f"{run.name}: PACT clipping levels")


def accuracy_table(runs: list[Run]) -> list[dict[str, Any]]:
    """Test accuracy on the whole test split, and model size at the quantized bit widths.

    A quantized run gets a second row: its own float version (quantization disabled).
    """
    rows = []
    for run in runs:
        loader = run.test_loader()
        quant = run.checkpoint["model_config"].get("quant")
        row = {
            "run": run.name,
            "model": run.recipe.model.name,
            "dataset": run.recipe.data.dataset,
            "bits": f"w{quant['weight_bits']}a{quant['act_bits']}" if quant else "fp32",
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
    """Write ``report.md``, its figures and ``metrics.json`` into ``out``; return the numbers."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(p, data_root=data_root) for p in paths]
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
            numbers["alpha_figures"][run.name] = str(alpha_plot(run, out / f"alpha-{run.name}.png"))
    (out / "metrics.json").write_text(json.dumps(numbers, indent=2))
    (out / "report.md").write_text(_markdown(numbers, out))
    return numbers


def _same_dataset(runs: list[Run]) -> None:
    datasets = {run.recipe.data.dataset for run in runs}
    if len(datasets) > 1:
        raise ValueError(
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
