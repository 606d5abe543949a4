"""The analyses behind ``qsgt compare``, ``masking-curve``, ``alpha-plot`` and the report.

They read runs through :mod:`qsgt_plugin.run_dir` and compute with :mod:`qsgt_plugin.attribution`;
every option is checked before any work is done.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from qsgt_plugin.attribution import (
    ModelView,
    alpha_figure,
    attribution_grid,
    compare_views,
    masking_curve,
    masking_curve_figure,
)
from qsgt_plugin.common.evaluation import evaluate
from qsgt_plugin.common.files import atomic_output
from qsgt_plugin.errors import UsageError
from qsgt_plugin.quant import model_size_bytes, quantization_disabled
from qsgt_plugin.runs import Run, load_run
from qsgt_plugin.sgt import make_attribution

__all__ = [
    "accuracy_table",
    "alpha_plot",
    "check_figure",
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


FIGURE_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
"""Figure files the commands write (matplotlib's formats); a name without one gets ``.png``."""


def check_figure(path: Path) -> Path:
    """``path`` as a figure file: ``.png`` added to a name without a suffix, others refused."""
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    elif path.suffix.lower() not in FIGURE_FORMATS:
        raise UsageError(
            f"cannot write the figure {path}: {path.suffix} is not a figure format; use "
            f"{', '.join(FIGURE_FORMATS[:3])} (or no suffix for .png)"
        )
    return check_output(path)


def check_output(path: Path, folder: bool = False) -> Path:
    """``path`` if it can be written; a :class:`UsageError` otherwise, before any work.

    A file is written as a temporary file beside it, then renamed (``atomic_output``); that
    is tried here, in the folder it will be written to, so that a read-only or virtual
    filesystem, a name too long, a missing permission or a file in the way of a folder is one
    line naming the reason. Folders this creates for the probe are removed again.

    ``folder``: the output is a folder (it may exist); else a file, which an existing folder
    cannot be.
    """
    path = Path(path)
    try:
        _probe(path, folder)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UsageError(
            f"cannot write {path}: {reason}; choose a writable folder with --out"
        ) from None
    return path


def _probe(path: Path, folder: bool) -> None:
    """Write and remove a temporary file where ``path`` will be written (``OSError`` if not)."""
    if path.is_dir() and not folder:
        raise UsageError(
            f"cannot write {path}: it is a folder; give --out a file name (e.g. "
            f"{path / ('out' + (path.suffix or '.png'))})"
        )
    target = path if folder else path.parent
    for parent in (target, *target.parents):
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"cannot write {path}: {parent} is a file; choose another --out")
            break
    created = [p for p in (target, *target.parents) if not p.exists()]
    try:
        target.mkdir(parents=True, exist_ok=True)
        name = Path("probe" if folder else path.name)
        fd, probe = tempfile.mkstemp(prefix=f".{name.stem}-", suffix=name.suffix, dir=target)
        os.close(fd)
        os.unlink(probe)
    finally:
        # the writer makes its folders when it writes: a command refused after this check
        # (a seed given twice, a run with no clipping levels) leaves nothing behind
        for made in created:  # innermost first
            with contextlib.suppress(OSError):
                made.rmdir()


def check_method(method: str, runs: list[Run]) -> None:
    """A Captum method these runs can be explained with, before any work is done."""
    try:
        for run in runs:
            make_attribution(run.model, method)
    except ValueError as exc:
        raise UsageError(f"--method: {exc}") from None


def write_json(numbers: dict[str, Any], path: Path) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(numbers, indent=2))
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
    out = check_figure(out)
    # all of them: eval batches may be small
    batches = list(runs[0].test_loader(limit=images, whole_split=True))
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
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
    out = check_figure(out)
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
    return alpha_figure(records, check_figure(out), title=f"{run.name}: PACT clipping levels")


def accuracy_table(runs: list[Run]) -> list[dict[str, Any]]:
    """Test accuracy on the whole test split, and model size at the quantized bit widths.

    A quantized run gets a second row: its own float version (quantization disabled).
    """
    rows = []
    for run in runs:
        model, loader = run.evaluation()  # as training evaluated it: RESULTS.md's accuracy
        row = {
            "run": run.name,
            "model": run.recipe.model.name,
            "dataset": run.recipe.data.dataset,
            "bits": run.bits,
            "sgt": run.recipe.sgt.enabled,
            "test_acc": evaluate(model, loader)[0],
            "size_bytes": model_size_bytes(model),
            "test_images": len(loader.labels),
        }
        rows.append(row)
        if run.quantized:
            with quantization_disabled(model):
                rows.append(
                    {
                        **row,
                        "run": f"{run.name} (float view)",
                        "bits": "fp32 view",
                        "test_acc": evaluate(model, loader)[0],
                        # of the model whose quantizers are off: a channels-last run
                        # evaluates a copy, and run.model stays quantized
                        "size_bytes": model_size_bytes(model),
                    }
                )
    return rows


def _same_dataset(runs: list[Run]) -> None:
    datasets = {run.recipe.data.dataset for run in runs}
    if len(datasets) > 1:
        raise UsageError(
            f"these runs use different datasets ({', '.join(sorted(datasets))}); "
            "compare runs of one dataset at a time"
        )
