"""Numbers over seeds: mean, standard deviation, 95% interval, and a test between two groups.

With three seeds a t interval is wide; it is the honest width. Two groups (say W4A4 and
W4A4 + SGT) differ beyond seed noise when Welch's t-test (unequal variances) gives p < 0.05.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from scipy import stats

__all__ = ["ALPHA", "TEST", "compare", "summarise"]

ALPHA = 0.05
TEST = "Welch's t-test (two-sided, unequal variances)"


def summarise(values: Sequence[float]) -> dict:
    """``{"n", "mean", "std", "ci95": [low, high]}`` of per-seed values (t interval).

    One value has no spread: its std and interval are NaN.

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


def compare(a: Sequence[float], b: Sequence[float]) -> dict:
    """Whether ``b`` differs from ``a`` beyond seed noise: ``{"difference", "p", "beyond_noise"}``.

    ``difference`` is mean(b) - mean(a); with fewer than two values on a side there is no test
    (p is NaN, not beyond noise).
    """
    difference = statistics.fmean(b) - statistics.fmean(a)
    if min(len(a), len(b)) < 2:
        return {"difference": difference, "p": math.nan, "beyond_noise": False, "test": TEST}
    p = float(stats.ttest_ind(b, a, equal_var=False).pvalue)
    if math.isnan(p):  # no variance on either side: equal means are no difference
        p = 1.0 if difference == 0 else 0.0
    return {"difference": difference, "p": p, "beyond_noise": p < ALPHA, "test": TEST}
