"""Figures: attribution grids (Captum's visualisation), masking curves, alpha trajectories.

Every function draws on a fresh ``matplotlib.figure.Figure`` (no pyplot state, no display
needed) and writes a PNG.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from captum.attr import visualization as viz
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import Tensor

from qsgt_plugin.common.files import atomic_output

__all__ = [
    "alpha_figure",
    "attribution_grid",
    "band_figure",
    "masking_curve_figure",
    "mprt_figure",
]


def _hwc(t: Tensor) -> np.ndarray:
    return t.detach().cpu().permute(1, 2, 0).numpy()


def _column_title(name: str, width: int = 20) -> str:
    """A column's caption in lines of at most ``width`` characters, broken after hyphens, so
    that long run names (``cifar10-mixed-113kb-from-w4a4-s0``) do not run into the next
    column's; the ``(group)`` part on its own line.

    >>> print(_column_title("cifar10-mixed-113kb-from-w4a4-s0 (mixed+SGT)"))
    cifar10-mixed-113kb-
    from-w4a4-s0
    (mixed+SGT)
    """
    run, paren, rest = name.partition(" (")
    lines = textwrap.wrap(run, width, break_on_hyphens=True, break_long_words=True) or [run]
    return "\n".join(lines + ([paren.strip() + rest] if paren else []))


def attribution_grid(
    images: Tensor,
    maps: dict[str, Tensor],
    path: str | Path,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    titles: Sequence[str] | None = None,
    method: str = "Saliency",
) -> Path:
    """One row per image: the image, then each model's ``|attribution|`` heat map.

    Args:
        images: ``(N, C, H, W)`` normalised images.
        maps: model name -> ``(N, C, H, W)`` attributions of those images.
        mean, std: the normalisation, undone for display.
        titles: a caption per image (e.g. its label).
    """
    n, cols = images.shape[0], len(maps) + 1
    height = 1.6 * n + 0.8
    fig = Figure(figsize=(1.7 * cols, height), dpi=80)
    axes = fig.subplots(n, cols, squeeze=False)
    std_, mean_ = (torch.tensor(v).view(1, -1, 1, 1) for v in (std, mean))
    shown = (images.cpu() * std_ + mean_).clamp(0, 1)
    for row in range(n):
        image = _hwc(shown[row])
        ax = axes[row, 0]
        gray = image.shape[-1] == 1
        ax.imshow(image[..., 0] if gray else image, cmap="gray" if gray else None)
        ax.set_xticks([])
        ax.set_yticks([])
        if titles:
            ax.set_ylabel(titles[row], fontsize=8)
        for col, (name, attr) in enumerate(maps.items(), start=1):
            viz.visualize_image_attr(
                _hwc(attr[row]),
                image,
                method="heat_map",
                sign="absolute_value",
                plt_fig_axis=(fig, axes[row, col]),
                use_pyplot=False,
                title=_column_title(name) if row == 0 else None,
            )
    axes[0, 0].set_title("image", fontsize=9)
    for ax in axes[0, 1:]:
        ax.title.set_fontsize(7)
    fig.suptitle(f"|{method}| attributions", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / height))  # the title above the column names
    return _save(fig, path)


def masking_curve_figure(
    curves: dict[str, dict[str, dict[float, float]]], path: str | Path, *, title: str = ""
) -> Path:
    """Accuracy against the fraction of pixels masked: solid by saliency, dashed at random."""
    fig = Figure(figsize=(9, 4), dpi=90)
    ax = fig.subplots()
    colours = colormaps["tab10"]
    for i, (name, curve) in enumerate(curves.items()):
        for kind, style in (("saliency", "-"), ("random", "--")):
            points = sorted(curve[kind].items())
            xs = [100 * t for t, _ in points]
            ys = [100 * acc for _, acc in points]
            label = f"{name} ({'salient first' if kind == 'saliency' else 'random'})"
            ax.plot(xs, ys, style, color=colours(i % 10), marker="o", markersize=3, label=label)
    ax.set_xlabel("pixels replaced (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "accuracy when the most salient pixels are replaced")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return _save(fig, path)


def band_figure(
    panels: dict[str, dict[str, dict[str, list[list[float]]]]],
    fractions: list[float],
    path: str | Path,
    *,
    title: str = "",
    ylabel: str = "",
    styles: dict[str, str] | None = None,
    xlabels: dict[str, str] | None = None,
) -> Path:
    """Curves over seeds: the mean as a line, mean +- one standard deviation as a band.

    Args:
        panels: panel title -> group label -> curve name -> one list of values per seed.
        fractions: the x values (fractions of pixels), shown in %.
        styles: curve name -> line style (``"-"`` for the saliency ranking, ``"--"`` random).
        xlabels: panel title -> x-axis label (default "pixels removed (%)").
    """
    styles = styles or {}
    fig = Figure(figsize=(5 * len(panels) + 2.5, 4), dpi=90)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colours = colormaps["tab10"]
    xs = [100 * t for t in fractions]
    for ax, (panel, groups) in zip(axes, panels.items(), strict=True):
        for i, (group, curves) in enumerate(groups.items()):
            for name, runs in curves.items():
                values = np.asarray(runs, dtype=float) * 100
                mean, std = (
                    values.mean(0),
                    values.std(0, ddof=1) if len(values) > 1 else 0 * values[0],
                )
                label = f"{group}, {name} (n={len(values)})"
                ax.plot(xs, mean, styles.get(name, "-"), color=colours(i % 10), label=label)
                # the curves are percentages: a band never leaves 0..100
                low, high = np.clip(mean - std, 0, 100), np.clip(mean + std, 0, 100)
                ax.fill_between(xs, low, high, color=colours(i % 10), alpha=0.15)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel((xlabels or {}).get(panel, "pixels removed (%)"))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def mprt_figure(
    groups: dict[str, list[list[float]]], layers: list[str], path: str | Path, *, title: str = ""
) -> Path:
    """MPRT: similarity to the trained model's maps as layers are randomised from the top.

    Args:
        groups: group label -> one similarity-per-depth list per seed.
        layers: the layer randomised at each depth (output layer first).
    """
    fig = Figure(figsize=(9, 4), dpi=90)
    ax = fig.subplots()
    colours = colormaps["tab10"]
    depth = np.arange(1, len(layers) + 1)
    for i, (group, runs) in enumerate(groups.items()):
        values = np.asarray(runs, dtype=float)
        mean = values.mean(0)
        std = values.std(0, ddof=1) if len(values) > 1 else np.zeros_like(mean)
        ax.plot(
            depth,
            mean,
            "-o",
            markersize=3,
            color=colours(i % 10),
            label=f"{group} (n={len(values)})",
        )
        ax.fill_between(depth, mean - std, mean + std, color=colours(i % 10), alpha=0.15)
    ax.set_xticks(depth)
    ax.set_xticklabels(layers, rotation=90, fontsize=6)
    ax.set_xlabel("layers randomised, cumulatively from the output")
    ax.set_ylabel("Spearman of |maps| with the trained model")
    ax.set_title(title or "cascading model-parameter randomisation (MPRT)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def alpha_figure(records: list[dict], path: str | Path, *, title: str = "") -> Path:
    """Each activation's clipping level against epoch, coloured by depth.

    Args:
        records: a run's ``metrics.jsonl`` records (those with ``alphas``).
    """
    rows = [r for r in records if r.get("alphas")]
    if not rows:
        raise ValueError("no alpha values in these records: is the run quantized?")
    rows.sort(key=lambda r: (r["step"], r["kind"] != "train"))
    layers = list(rows[-1]["alphas"])
    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(6.5, 4), dpi=90)
    ax = fig.subplots()
    cmap = colormaps["viridis"]
    norm = Normalize(1, max(len(layers), 2))
    for depth, layer in enumerate(layers, start=1):
        values = [r["alphas"].get(layer, np.nan) for r in rows]
        ax.plot(epochs, values, color=cmap(norm(depth)), linewidth=1.2)
    colorbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax)
    colorbar.set_label(f"activation layer, 1 = {layers[0]} ... {len(layers)} = {layers[-1]}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("clipping level alpha")
    ax.set_title(title or "PACT clipping levels over training")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp)
    return path
