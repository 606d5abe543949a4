"""The report's ``report.md``, from the numbers ``build_report`` gathered."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from qsgt_plugin.report.seeds import sgt_kept
from qsgt_plugin.report.statistics import BOOTSTRAP_DRAWS

__all__ = ["markdown"]

# (name in the numbers, column title, scale): percentages are shown x100
FAITHFULNESS = [
    ("masking_auc", "masking AUC (acc.)", 100),
    ("masking_auc_random", "random", 100),
    ("deletion_auc", "deletion AUC", 100),
    ("deletion_auc_random", "random", 100),
    ("deletion_auc_normalised", "deletion AUC, normalised", 100),
    ("insertion_auc", "insertion AUC", 100),
    ("insertion_auc_random", "random", 100),
    ("road_morf_auc", "ROAD MoRF AUC", 100),
    ("road_lerf_auc", "ROAD LeRF AUC", 100),
    ("road_random_auc", "ROAD random", 100),
]
OTHERS = [
    ("mprt_last", "MPRT, all randomised", 1),
    ("mprt_mean", "MPRT, mean over depth", 1),
    ("random_logit", "random logit", 1),
    ("gini", "Gini", 1),
    ("entropy", "entropy", 1),
    ("tied_fraction", "tied saliencies", 1),
    ("sensitivity_max", "sensitivity_max", 1),
]


def _cell(summary: dict, scale: float) -> str:
    mean, std = scale * summary["mean"], scale * summary["std"]
    if summary["n"] < 2 or math.isnan(std):
        return f"{mean:.2f}"
    low, high = (scale * v for v in summary["ci95"])
    if scale == 100:  # percentages (accuracies, areas under curves in 0..1): bounded
        low, high = max(low, 0.0), min(high, 100.0)
    return f"{mean:.2f} ± {std:.2f} [{low:.2f}, {high:.2f}]"


def _table(groups: dict, columns: list[tuple[str, str, float]]) -> list[str]:
    lines = [
        "| group | seeds | " + " | ".join(title for _, title, _ in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for label, g in groups.items():
        cells = " | ".join(_cell(g[name], scale) for name, _, scale in columns)
        lines.append(f"| {label} | {len(g['seeds'])} | {cells} |")
    return lines


def markdown(numbers: dict[str, Any]) -> str:
    """``report.md`` from the report's numbers (figures named relative to the report)."""

    def rel(path: str) -> str:
        return Path(path).as_posix()

    lines = ["# qsgt report", "", "## Accuracy", ""]
    lines += _accuracy(numbers["accuracy"])
    for dataset, parts in numbers["datasets"].items():
        lines += _dataset(dataset, parts, numbers, rel)
    if numbers["alpha_figures"]:
        lines += ["", "## Clipping levels over training (PACT's Figures 1 and 2)", ""]
        for name, path in numbers["alpha_figures"].items():
            lines += [f"### {name}", "", f"![alpha]({rel(path)})", ""]
    lines += _timings(numbers["runs"])
    return "\n".join(lines) + "\n"


def _accuracy(rows: list[dict]) -> list[str]:
    lines = [
        "| run | model | dataset | bits | SGT | test accuracy | size (bytes) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['model']} | {r['dataset']} | {r['bits']} | "
            f"{'yes' if r['sgt'] else 'no'} | {100 * r['test_acc']:.2f}% "
            f"({r['test_images']} images) | {r['size_bytes']:,} |"
        )
    return [
        *lines,
        "",
        "Size counts quantized weights at their bit width. Float views are the quantized runs "
        "with quantization disabled (Brevitas' context: no retraining, no copy). With DoReFa "
        "weights the float view runs on the latent weights, which DoReFa rescales by tanh and "
        "max, so BatchNorm's statistics no longer fit and its accuracy says little; with "
        "int_per_channel weights the float view stays close.",
    ]


def _dataset(dataset: str, parts: dict, numbers: dict, rel) -> list[str]:
    comp, groups, figures = parts["comparison"], parts["groups"], parts["figures"]
    images = numbers["test_images"]["count"]
    offset = numbers["test_images"]["offset"]
    start = f", indices {offset}..{offset + images - 1}"
    lines = [
        "",
        f"## {dataset}: accuracy over seeds",
        "",
        "Mean ± standard deviation [95% t interval] over the seeds of each group.",
        "",
        *_table(groups, [("test_acc", "test accuracy (%)", 100)]),
        "",
        f"## {dataset}: faithfulness ({numbers['method']}, {images} test images{start})",
        "",
        "Areas under the curves of the figures below (x: fraction of pixels, 0..1; y in %). "
        "Lower is better for masking, deletion and ROAD MoRF; higher for insertion and ROAD "
        "LeRF. *Normalised* divides each image's curve by its clean probability, so models of "
        "different confidence compare.",
        "",
        *_table(groups, FAITHFULNESS[:5]),
        "",
        *_table(groups, FAITHFULNESS[5:]),
        "",
        f"![masking curve]({rel(figures['masking'])})",
        "",
        f"![deletion and insertion]({rel(figures['deletion_insertion'])})",
        "",
        f"![ROAD]({rel(figures['road'])})",
    ]
    lines += _pairs(parts["pairs"], numbers["test"])
    bits = {row["run"]: row["bits"] for row in numbers["accuracy"]}
    lines += _kept(sgt_kept(groups, parts["pairs"], bits))
    lines += [
        "",
        f"## {dataset}: randomisation, complexity, robustness",
        "",
        "MPRT and random logit: Spearman correlation of |maps| (lower: the maps depend on the "
        "weights / the class). Gini and entropy of |maps|; the fraction of positions whose "
        "saliency another position shares (ties, broken by a seeded random order).",
        "",
        *_table(groups, OTHERS),
        "",
        f"![MPRT]({rel(figures['mprt'])})",
        "",
        f"## {dataset}: attributions ({comp['method']}, {comp['images']} test images, "
        "first seed of each group)",
        "",
        f"![attributions]({rel(comp['figure'])})",
        "",
        "| map A | map B | Spearman | top-10% overlap |",
        "|---|---|---|---|",
    ]
    for p in comp["pairs"]:
        lines.append(f"| {p['a']} | {p['b']} | {p['spearman']:.3f} | {p['top10_overlap']:.3f} |")
    return lines


def _pairs(pairs: list[dict], test: str) -> list[str]:
    if not pairs:
        return []
    seeds = sorted({n for p in pairs for n in p["seeds"]})
    images = sorted({n for p in pairs for n in p["images"]})
    lines = [
        "",
        f"SGT against no SGT, per area: {len(pairs)} tests, one family. Difference of the "
        f"means (SGT minus without, x100 for areas in %) with its 95% Welch interval; Hedges' g "
        f"with its approximate 95% interval; p from {test} over seeds "
        f"({'/'.join(map(str, seeds))} per group), then Holm-adjusted over the family; the "
        "95% interval of a hierarchical bootstrap that resamples seeds and then images "
        f"({'/'.join(map(str, images))} per run; {BOOTSTRAP_DRAWS} draws). *Beyond noise*: "
        "adjusted p < 0.05. "
        "*Finding*: beyond noise and a bootstrap interval that excludes 0, so the difference "
        "holds over seeds and images; it is then in SGT's favour (better) or against it (worse).",
        "",
        "| without | with SGT | area | better | difference [95%] | Hedges' g [95%] | p | "
        "p, Holm | bootstrap [95%] | finding |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in pairs:
        scale = 1 if p["metric"] in UNSCALED else 100
        verdict = "SGT better" if p["sgt_better"] else "SGT worse" if p["sgt_worse"] else "no"
        if math.isnan(p["p"]):
            verdict = "n/a (one seed)"
        lines.append(
            f"| {p['a']} | {p['b']} | {p['metric']} | {p['better']} | "
            f"{_interval(p['difference'], p['ci95'], scale)} | "
            f"{_interval(p['g'], p['g_ci95'], 1)} | {_p(p['p'])} | {_p(p['p_holm'])} | "
            f"{_interval(None, p['bootstrap_ci95'], scale)} | {verdict} |"
        )
    return lines


UNSCALED = {name for name, _, scale in OTHERS if scale == 1}  # similarities, not percentages


def _interval(value: float | None, ci: list[float], scale: float) -> str:
    bounds = "n/a" if any(math.isnan(v) for v in ci) else (
        f"[{scale * ci[0]:+.2f}, {scale * ci[1]:+.2f}]"
    )  # fmt: skip
    return bounds if value is None else f"{scale * value:+.2f} {bounds}"


def _p(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3g}"


def _kept(rows: list[dict]) -> list[str]:
    if not rows:
        return []

    def share(value: float) -> str:
        return "n/a (no float gain)" if math.isnan(value) else f"{100 * value:.0f}%"

    lines = [
        "",
        f"How much of the float SGT gain ({rows[0]['float_sgt']} against {rows[0]['float']}) "
        "each quantized SGT group keeps, from the means over seeds (F, FS: float without and "
        "with SGT; Q, QS: quantized). *Own*: (QS - Q) / (FS - F), the gain over its own "
        "baseline; *from float*: (QS - F) / (FS - F), 100% = as good as the float SGT model. "
        "Where the float gain is not a finding, a share divides by a difference the seeds do "
        "not establish: read the means, not the share.",
        "",
        "| QS (Q) | area | better | F | FS | float gain a finding | Q | QS | kept, own "
        "| kept, from float |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        beyond = {True: "yes", False: "no", None: "untested"}[r["float_gain_beyond_noise"]]
        lines.append(
            f"| {r['quant_sgt']} ({r['quant']}) | {r['metric']} | {r['better']} | "
            f"{100 * r['F']:.2f} | {100 * r['FS']:.2f} | {beyond} | {100 * r['Q']:.2f} | "
            f"{100 * r['QS']:.2f} | {share(r['own'])} | {share(r['vs_float'])} |"
        )
    return lines


def _timings(runs: dict[str, dict]) -> list[str]:
    names = list(next(iter(runs.values()))["suite"].seconds)
    lines = [
        "",
        "## Cost",
        "",
        "Seconds each metric took per run (on the machine that made this report).",
        "",
        "| run | " + " | ".join(names) + " | total |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for name, run in runs.items():
        seconds = run["suite"].seconds
        cells = " | ".join(f"{seconds[n]:.1f}" for n in names)
        lines.append(f"| {name} | {cells} | {sum(seconds.values()):.1f} |")
    return lines
