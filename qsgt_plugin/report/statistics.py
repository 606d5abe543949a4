"""Tests between groups of runs that a reviewer accepts: corrected, with effect sizes, over
seeds *and* images.

A group is a recipe trained over several seeds; each run is measured on the same test images.
Two sources of variance make a difference between groups uncertain: which seeds were drawn,
and which images were evaluated. Three numbers per difference answer for them:

* Welch's t-test over the per-seed values (seeds only), with the p-value adjusted by Holm's
  step-down method over its *family* (every test of one table), as statsmodels computes it;
* Hedges' g, the difference in units of the pooled seed standard deviation with the small-sample
  correction J = 1 - 3 / (4 (n_a + n_b) - 9), and its approximate 95% interval
  (Hedges and Olkin 1985: SE^2 = (n_a + n_b) / (n_a n_b) + g^2 / (2 (n_a + n_b)));
* a hierarchical bootstrap of the difference of group means: seeds are resampled with
  replacement within each group, then images with replacement within each drawn run, and the
  95% percentile interval of the difference is read off (Saravanan et al. 2020, "Application
  of the hierarchical bootstrap to multi-level data in neuroscience").

A difference is a *finding* when the Holm-adjusted p is below 0.05 *and* the bootstrap interval
excludes zero: it holds over seeds and over images.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

__all__ = [
    "ALPHA",
    "BOOTSTRAP_DRAWS",
    "TEST",
    "hedges_g",
    "hierarchical_bootstrap",
    "holm",
    "summarise",
    "welch",
]

ALPHA = 0.05
TEST = "Welch's t-test (two-sided, unequal variances)"
BOOTSTRAP_DRAWS = 4000


def summarise(values: Sequence[float]) -> dict:
    """``{"n", "mean", "std", "ci95": [low, high]}`` of per-seed values (t interval).

    With three seeds a t interval is wide; it is the honest width. One value has no spread:
    its std and interval are NaN.

    Example::

        >>> summarise([1.0, 2.0, 3.0])["ci95"]
        [-0.4841..., 4.4841...]
    """
    n = len(values)
    if n == 0:
        raise ValueError("summarise() needs at least one value")
    mean = statistics.fmean(values)
    if n == 1:
        return {"n": 1, "mean": mean, "std": math.nan, "ci95": [math.nan, math.nan]}
    std = statistics.stdev(values)
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values of one family of tests (NaN p-values stay NaN, outside the family).

    Example::

        >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03])]
        [0.03, 0.06, 0.06]
    """
    values = np.asarray(pvalues, dtype=float)
    out = np.full_like(values, np.nan)
    tested = ~np.isnan(values)
    if tested.any():
        out[tested] = multipletests(values[tested], alpha=ALPHA, method="holm")[1]
    return out.tolist()


def welch(a: Sequence[float], b: Sequence[float]) -> dict:
    """``mean(b) - mean(a)``, Welch's two-sided p (``scipy.stats.ttest_ind`` with unequal
    variances) and the difference's 95% t interval.

    With fewer than two values on a side there is no test: p and the interval are NaN. With no
    spread on either side, equal means have p 1 and different ones p 0.

    Example::

        >>> r = welch([0.50, 0.51, 0.49], [0.30, 0.31, 0.29])
        >>> round(r["difference"], 2), r["p"] < 0.001
        (-0.2, True)
    """
    difference = statistics.fmean(b) - statistics.fmean(a)
    if min(len(a), len(b)) < 2:
        return {"difference": difference, "p": math.nan, "ci95": [math.nan, math.nan]}
    p = float(stats.ttest_ind(b, a, equal_var=False).pvalue)
    if math.isnan(p):  # no variance on either side: equal means are no difference
        p = 1.0 if difference == 0 else 0.0
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:  # no spread on either side: the difference is exact
        return {"difference": difference, "p": p, "ci95": [difference, difference]}
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(1 - ALPHA / 2, dof)) * math.sqrt(va + vb)
    return {"difference": difference, "p": p, "ci95": [difference - half, difference + half]}


def hedges_g(a: Sequence[float], b: Sequence[float]) -> dict:
    """Hedges' g of ``b`` against ``a`` and its approximate 95% interval.

    Example::

        >>> round(hedges_g([1.0, 2.0, 3.0], [3.0, 4.0, 5.0])["g"], 4)
        1.6
    """
    na, nb = len(a), len(b)
    if min(na, nb) < 2:
        return {"g": math.nan, "ci95": [math.nan, math.nan]}
    pooled = math.sqrt(
        ((na - 1) * statistics.variance(a) + (nb - 1) * statistics.variance(b)) / (na + nb - 2)
    )
    difference = statistics.fmean(b) - statistics.fmean(a)
    if pooled == 0:
        g = 0.0 if difference == 0 else math.copysign(math.inf, difference)
        return {"g": g, "ci95": [g, g]}
    g = difference / pooled * (1 - 3 / (4 * (na + nb) - 9))
    se = math.sqrt((na + nb) / (na * nb) + g**2 / (2 * (na + nb)))
    z = float(stats.norm.ppf(1 - ALPHA / 2))
    return {"g": g, "ci95": [g - z * se, g + z * se]}


def hierarchical_bootstrap(
    a: Sequence[Sequence[float]],
    b: Sequence[Sequence[float]],
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
) -> dict:
    """95% interval of ``mean(b) - mean(a)`` resampling seeds, then images within each run.

    Args:
        a, b: per group, one sequence of per-image values per run (seed); runs of a group may
            hold different numbers of images.
        draws: bootstrap resamples.
        seed: of the resampling.

    Returns:
        ``{"difference", "ci95": [low, high], "draws"}``; ``difference`` is the plain
        difference of the group means (each run weighted equally).
    """
    rng = np.random.default_rng(seed)
    means = [_resampled_group_means(group, draws, rng) for group in (a, b)]
    difference = float(np.mean([np.mean(r) for r in b]) - np.mean([np.mean(r) for r in a]))
    low, high = np.quantile(means[1] - means[0], [ALPHA / 2, 1 - ALPHA / 2])
    return {"difference": difference, "ci95": [float(low), float(high)], "draws": draws}


def _resampled_group_means(
    runs: Sequence[Sequence[float]], draws: int, rng: np.random.Generator
) -> np.ndarray:
    """``draws`` group means, each over resampled runs of resampled images."""
    if not runs or any(len(r) == 0 for r in runs):
        raise ValueError("every group needs at least one run with at least one image")
    arrays = [np.asarray(r, dtype=float) for r in runs]
    picked = rng.integers(0, len(arrays), size=(draws, len(arrays)))
    totals = np.zeros(draws)
    for index, values in enumerate(arrays):
        # every draw resamples this run's images once; the draws that picked the run k times
        # count that mean k times (resampling the same run twice gives two independent means)
        times = (picked == index).sum(axis=1)
        for k in range(1, int(times.max(initial=0)) + 1):
            rows = np.flatnonzero(times >= k)
            samples = rng.integers(0, len(values), size=(len(rows), len(values)))
            totals[rows] += values[samples].mean(axis=1)
    return totals / len(arrays)
