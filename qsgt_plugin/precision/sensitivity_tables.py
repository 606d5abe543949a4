"""Sensitivity results as a heat map, tables and a short markdown summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from qsgt_plugin.common.files import atomic_output

__all__ = ["sensitivity_figure", "sensitivity_tables"]


def _grid(result: dict, key: str) -> tuple[list[str], list[int], np.ndarray]:
    units = [u["weight"] for u in result["units"]]
    bits = result["bits"]
    grid = np.full((len(units), len(bits)), np.nan)
    for row in result["rows"]:
        grid[units.index(row["unit"]), bits.index(row["bits"])] = row[key]
    return units, bits, grid


def sensitivity_figure(result: dict, path: str | Path) -> Path:
    """Layers x bit widths, two panels: accuracy drop (points) and explanation drift."""
    units, bits, drop = _grid(result, "accuracy_drop")
    _, _, drift = _grid(result, "drift")
    fig = Figure(figsize=(7.5, 0.32 * len(units) + 1.8), dpi=100)
    axes = fig.subplots(1, 2, sharey=True)
    panels = (
        (100 * drop, "accuracy drop (points; < 0: a gain)", "RdBu_r", True),
        (drift, "explanation drift (1 - Spearman)", "Purples", False),
    )
    for ax, (values, title, cmap, signed) in zip(axes, panels, strict=True):
        top = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 0.0
        top = top or 1.0
        image = ax.imshow(values, aspect="auto", cmap=cmap, vmin=-top if signed else 0.0, vmax=top)
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                dark = abs(v) > 0.6 * top
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    color="white" if dark else "black",
                )
        ax.set_xticks(range(len(bits)), [f"{b} bits" for b in bits])
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    axes[0].set_yticks(range(len(units)), units, fontsize=7)
    fig.suptitle(
        f"One layer (weights + its activation) at a time; {result['images']} test images",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp)
    return path


def sensitivity_tables(result: dict) -> str:
    """Markdown: units sorted by drift, then by accuracy drop, at the lowest bit width; and
    how well the HAWQ-v2 score agrees with each."""
    low = min(result["bits"])
    rows = [r for r in result["rows"] if r["bits"] == low]
    header = (
        "| layer | bits | accuracy drop (points) | drift | top-10% overlap | "
        "deletion AUC change | HAWQ-v2 score |\n|---|---|---|---|---|---|---|\n"
    )
    out = []
    for key, title in (("drift", "explanation drift"), ("accuracy_drop", "accuracy drop")):
        out.append(f"Sorted by {title}, {low} bits:\n\n{header}")
        for r in sorted(rows, key=lambda r: -r[key]):
            out[-1] += (
                f"| {r['unit']} | {r['bits']} | {100 * r['accuracy_drop']:.2f} | "
                f"{r['drift']:.3f} | {r['top10_overlap']:.3f} | {r['deletion_auc_change']:+.4f} | "
                f"{r['hawq']:.3g} |\n"
            )
    agree = "\n".join(
        f"- {b} bits: Spearman(HAWQ, accuracy drop) = {_number(a['accuracy_drop'])}, "
        f"Spearman(HAWQ, drift) = {_number(a['drift'])}"
        for b, a in result["agreement"].items()
    )
    return "\n".join(out) + f"\nAgreement over layers:\n\n{agree}\n"


def _number(value: float) -> str:
    return "n/a (under 3 layers change)" if np.isnan(value) else f"{value:.2f}"
