"""``qsgt report``: every number and figure for a set of runs, with statistics over seeds.

``build_report`` writes ``report.md`` (every figure embedded), the PNGs and ``metrics.json``
(every number, per run and per group of seeds). The files are made in a temporary folder
beside ``out`` and moved in at the end, so a report that fails leaves ``out`` as it was.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from qsgt_plugin.attribution import SuiteResult, band_figure, explanation_suite, mprt_figure
from qsgt_plugin.errors import UsageError
from qsgt_plugin.report.analyses import (
    accuracy_table,
    alpha_plot,
    check_method,
    check_output,
    compare_runs,
    load_runs,
    write_json,
)
from qsgt_plugin.report.markdown import markdown
from qsgt_plugin.report.seeds import aggregate, group_runs, pair_groups, pair_tests, scalars
from qsgt_plugin.report.statistics import TEST
from qsgt_plugin.runs import Run
from qsgt_plugin.training.data import get_dataset

__all__ = ["build_report", "run_suite"]

log = logging.getLogger(__name__)


def build_report(
    paths: list[str | Path],
    out: str | Path,
    *,
    images: int = 16,
    curve_images: int | None = 1000,
    offset: int = 0,
    method: str = "Saliency",
    mprt_images: int | None = None,
    data_root: str | None = None,
) -> dict[str, Any]:
    """Write ``report.md``, its figures and ``metrics.json`` into ``out``; return the numbers.

    Args:
        paths: run directories (or checkpoints); runs that differ only in ``train.seed`` are
            summarised together.
        images: test images in the attribution grid.
        curve_images: test images of every metric (None: the rest of the test split).
        offset: index of the first of them in the test split (a held-out subset: 0..999 and
            1000..1999 are disjoint).
        method: the Captum attribution under evaluation.
        mprt_images: images of the randomisation test (None: ``curve_images``).
    """
    final = check_output(Path(out) / "report.md").parent
    runs = load_runs(paths, data_root=data_root)
    check_method(method, runs)
    for dataset in {run.recipe.data.dataset for run in runs}:  # a seed given twice: refused now
        group_runs([run for run in runs if run.recipe.data.dataset == dataset])
    count = image_count(runs, offset, curve_images)  # before any work
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{final.name}-", dir=final.parent) as tmp:
        subset = (offset, count)
        numbers = _write(runs, Path(tmp), images, subset, method, mprt_images)
        numbers = json.loads(json.dumps(numbers, default=_to_json))  # what metrics.json holds
        numbers["files"] = sorted([p.name for p in Path(tmp).iterdir()] + ["metrics.json"])
        write_json(numbers, Path(tmp) / "metrics.json")
        final.mkdir(exist_ok=True)
        earlier = owned_files(final)
        for file in Path(tmp).iterdir():
            os.replace(file, final / file.name)
        for name in earlier - set(numbers["files"]):  # an earlier report's, not rewritten
            (final / name).unlink(missing_ok=True)
    return numbers


def image_count(runs: list[Run], offset: int, images: int | None) -> int:
    """How many test images every run is analysed on: ``images`` from index ``offset`` of each
    dataset's whole test split (a run's ``data.test_subset`` only said how many images its
    training evaluated). One set for all runs, or a ``UsageError``."""
    counts = {}
    for run in runs:
        size = get_dataset(run.recipe.data.dataset).test_size
        if offset >= size:
            raise UsageError(
                f"--offset {offset}: the {run.recipe.data.dataset} test split has {size} images; "
                f"use an offset below {size}"
            )
        left = size - offset
        counts[run.recipe.data.dataset] = left if images is None else min(images, left)
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"{n} of {d}" for d, n in counts.items())
        raise UsageError(
            f"from --offset {offset} the test splits give {shown} images; every run is analysed "
            f"on the same number: choose --curve-images {min(counts.values())} or fewer"
        )
    return next(iter(counts.values()))


def owned_files(folder: Path) -> set[str]:
    """The files an earlier report wrote into ``folder`` (none if it holds no report).

    Its ``metrics.json`` lists them; a report written before that list existed owns
    ``report.md``, ``metrics.json`` and the figures its ``report.md`` embeds. Only plain names
    in ``folder`` itself count: nothing else there is touched.
    """
    names: set[str] = set()
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no list, or not one
        names.update(json.loads((folder / "metrics.json").read_text()).get("files", []))
    try:
        text = (folder / "report.md").read_text()
    except OSError:
        return {n for n in names if _plain(n)}
    names |= {"report.md", "metrics.json", *re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)}
    return {n for n in names if _plain(n)}


def _to_json(value: Any) -> Any:
    if hasattr(value, "to_json"):
        return value.to_json()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _plain(name: str) -> bool:
    return isinstance(name, str) and name == Path(name).name and not name.startswith(".")


def run_suite(
    run: Run, images: int | None, method: str, mprt_images: int | None, offset: int = 0
) -> SuiteResult:
    """The explanation suite of one run on ``images`` test images from index ``offset``."""
    info = get_dataset(run.recipe.data.dataset)
    return explanation_suite(
        run.model,
        run.test_loader(limit=images, offset=offset, whole_split=True),
        num_classes=info.num_classes,
        method=method,
        mprt_images=mprt_images,
    )


def _write(
    runs: list[Run],
    out: Path,
    images: int,
    subset: tuple[int, int | None],
    method: str,
    mprt_images: int | None,
) -> dict[str, Any]:
    accuracy = accuracy_table(runs)
    offset, curve_images = subset
    per_run: dict[str, dict] = {}
    for i, run in enumerate(runs, start=1):
        started = time.perf_counter()
        suite = run_suite(run, curve_images, method, mprt_images, offset)
        row = next(r for r in accuracy if r["run"] == run.name)
        per_run[run.name] = {
            "seed": run.recipe.train.seed,
            "test_acc": row["test_acc"],
            "suite": suite,
            "scalars": scalars(suite),
        }
        log.info(
            "report: %s (%d/%d) in %.0f s", run.name, i, len(runs), time.perf_counter() - started
        )
    numbers: dict[str, Any] = {
        "method": method,
        "test": TEST,
        "test_images": {"offset": offset, "count": curve_images},
        "accuracy": accuracy,
        "runs": per_run,
        "datasets": {},
        "alpha_figures": {},
    }
    by_dataset: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_dataset[run.recipe.data.dataset].append(run)
    for dataset, members in by_dataset.items():
        numbers["datasets"][dataset] = _dataset(dataset, members, per_run, out, images, method)
    for dataset, members in by_dataset.items():
        for group in group_runs(members):
            first = group.runs[0]
            if first.quantized and any(r.get("alphas") for r in first.metrics()):
                # one file per dataset and group: the same variant on two datasets is two plots
                label = re.sub(r"[^A-Za-z0-9._-]+", "-", group.label)
                figure = out / f"alpha-{dataset}-{label}.png"
                numbers["alpha_figures"][f"{dataset}, {group.label} ({first.name})"] = _name(
                    alpha_plot(first, figure)
                )
    (out / "report.md").write_text(markdown(numbers))
    return numbers


def _dataset(
    dataset: str, runs: list[Run], per_run: dict, out: Path, images: int, method: str
) -> dict:
    groups = group_runs(runs)
    representatives = [group.runs[0] for group in groups]
    comparison = compare_runs(
        representatives, out / f"attributions-{dataset}.png", images=images, method=method
    )
    comparison["figure"] = _name(comparison["figure"])
    figures = _figures(dataset, groups, per_run, out)
    return {
        "comparison": comparison,
        "groups": aggregate(groups, per_run),
        "pairs": pair_tests(pair_groups(groups), per_run),
        "figures": figures,
    }


def _figures(dataset: str, groups: list, per_run: dict, out: Path) -> dict[str, str]:
    def seeds(group, pick):
        return [pick(per_run[run.name]["suite"]) for run in group.runs]

    first: SuiteResult = next(iter(per_run.values()))["suite"]
    di, road = first.deletion_insertion, first.road
    styles = {"salient first": "-", "random": "--", "MoRF": "-", "LeRF": ":"}
    masking = {
        g.label: {
            "salient first": seeds(g, lambda s: s.deletion_insertion.accuracy.saliency),
            "random": seeds(g, lambda s: s.deletion_insertion.accuracy.random),
        }
        for g in groups
    }
    curves = {
        curve: {
            g.label: {
                "salient first": seeds(
                    g, lambda s, c=curve: getattr(s.deletion_insertion, c).saliency
                ),
                "random": seeds(g, lambda s, c=curve: getattr(s.deletion_insertion, c).random),
            }
            for g in groups
        }
        for curve in ("deletion", "insertion")
    }
    road_panels = {
        order: {
            g.label: {
                name: seeds(g, lambda s, k=key: getattr(s.road, k))
                for name, key in ((order, order.lower()), ("random", "random"))
            }
            for g in groups
        }
        for order in ("MoRF", "LeRF")
    }
    mprt = {g.label: seeds(g, lambda s: s.mprt.similarity) for g in groups}
    layers = first.mprt.layers
    return {
        "masking": _name(band_figure(
            {"accuracy as pixels are replaced by the mean": masking}, di.fractions,
            out / f"masking-curve-{dataset}.png", ylabel="test accuracy (%)", styles=styles,
            title=f"{dataset}: masking curve (SGT's Figure 3), mean +- std over seeds",
        )),
        "deletion_insertion": _name(band_figure(
            curves, di.fractions, out / f"deletion-insertion-{dataset}.png",
            ylabel="probability of the predicted class (%)", styles=styles,
            title=f"{dataset}: deletion and insertion (RISE), mean substrate",
            xlabels={"insertion": "pixels restored onto the substrate (%)"},
        )),
        "road": _name(band_figure(
            road_panels, road.fractions, out / f"road-{dataset}.png",
            ylabel="test accuracy (%)", styles=styles,
            title=f"{dataset}: ROAD, noisy linear imputation",
        )),
        "mprt": _name(mprt_figure(
            mprt, layers, out / f"mprt-{dataset}.png",
            title=f"{dataset}: cascading randomisation of conv / linear weights (alphas, BN kept)",
        )),
    }  # fmt: skip


def _name(path: str | Path) -> str:
    """A figure's path as the report files hold it: relative to the report's folder."""
    return Path(path).name
