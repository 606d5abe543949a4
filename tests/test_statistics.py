"""The report's statistics: Holm's correction, Hedges' g, Welch's interval and the hierarchical
bootstrap over seeds and images, against hand-computed values and simulated groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from qsgt_plugin.report.statistics import hedges_g, hierarchical_bootstrap, holm, welch


def test_holm_against_the_step_down_rule_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005 (x4), 0.01 (x3), 0.03 (x2), 0.04 (x1); running maximum, capped at 1
    expected = [0.03, 0.06, 0.06, 0.02]
    assert holm(p) == pytest.approx(expected)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([0.2]) == pytest.approx([0.2])  # a family of one is not corrected


def test_holm_equals_statsmodels_and_leaves_untested_rows_out_of_the_family():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.2, size=14).tolist()
    assert holm(p) == pytest.approx(multipletests(p, method="holm")[1].tolist())
    with_nan = [0.01, math.nan, 0.02]
    adjusted = holm(with_nan)
    assert math.isnan(adjusted[1])
    assert adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.02)


def test_the_mnist_report_s_headline_tests_do_not_survive_holm_over_fourteen():
    """The issue's arithmetic: 14 tests; W4A4 masking p = 0.013 and deletion p = 0.009 are
    above 0.05 once multiplied by their step-down factors (at least 0.009 x 12 > 0.05)."""
    others = [0.14, 0.17, 0.003, 0.017, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.002]
    adjusted = holm([0.013, 0.009, *others])
    assert adjusted[0] > 0.05 and adjusted[1] > 0.05


def test_hedges_g_by_hand():
    a, b = [1.0, 2.0, 3.0], [3.0, 4.0, 5.0]
    # pooled sd 1, d = 2, J = 1 - 3 / (4 * 6 - 9) = 0.8: g = 1.6
    result = hedges_g(a, b)
    assert result["g"] == pytest.approx(1.6)
    se = math.sqrt(6 / 9 + 1.6**2 / 12)
    assert result["ci95"] == pytest.approx([1.6 - 1.959964 * se, 1.6 + 1.959964 * se], rel=1e-5)
    assert hedges_g(b, a)["g"] == pytest.approx(-1.6)
    assert math.isnan(hedges_g([1.0], b)["g"])


def test_welch_interval_by_hand():
    a, b = [1.0, 2.0, 3.0], [3.0, 5.0, 7.0]
    result = welch(a, b)
    va, vb = 1 / 3, 4 / 3  # variances of the means
    dof = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    from scipy import stats

    half = stats.t.ppf(0.975, dof) * math.sqrt(va + vb)
    assert result["difference"] == pytest.approx(3.0)
    assert result["ci95"] == pytest.approx([3.0 - half, 3.0 + half])
    assert result["p"] == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue)


def _groups(rng, difference, seeds, images, seed_sd, image_sd):
    """Two groups of runs; each run's images scatter around the run's mean."""
    out = []
    for shift in (0.0, difference):
        runs = []
        for _ in range(seeds):
            mean = shift + rng.normal(0, seed_sd)
            runs.append((mean + rng.normal(0, image_sd, size=images)).tolist())
        out.append(runs)
    return out


def test_the_bootstrap_interval_covers_a_known_difference_at_about_the_nominal_rate():
    """200 simulated experiments (10 seeds per group, 100 images per run, seed and image noise
    both present): the 95% interval covers the true difference 0.3 in about 95% of them."""
    rng = np.random.default_rng(1)
    covered = 0
    trials = 200
    for trial in range(trials):
        a, b = _groups(rng, 0.3, seeds=10, images=100, seed_sd=0.2, image_sd=1.0)
        low, high = hierarchical_bootstrap(a, b, draws=1000, seed=trial)["ci95"]
        covered += low <= 0.3 <= high
    assert 0.89 <= covered / trials <= 0.99


def test_image_noise_alone_widens_the_bootstrap_interval():
    """Seeds that agree exactly still leave the images' uncertainty in the interval."""
    rng = np.random.default_rng(2)
    a, b = _groups(rng, 0.0, seeds=3, images=200, seed_sd=0.0, image_sd=1.0)
    low, high = hierarchical_bootstrap(a, b, draws=2000)["ci95"]
    # the difference of two means of 600 images each has sd sqrt(2 / 600) = 0.058
    assert 0.15 < high - low < 0.35
    same = [[0.5] * 200] * 3
    assert hierarchical_bootstrap(same, same)["ci95"] == [0.0, 0.0]


def test_the_bootstrap_is_seeded_and_its_difference_is_the_difference_of_means():
    a = [[0.0, 1.0, 2.0], [1.0, 2.0]]  # runs may have different numbers of images
    b = [[3.0, 3.0], [4.0, 5.0, 6.0]]
    first = hierarchical_bootstrap(a, b, draws=500, seed=3)
    assert first == hierarchical_bootstrap(a, b, draws=500, seed=3)
    assert first["difference"] == pytest.approx((3.0 + 5.0) / 2 - (1.0 + 1.5) / 2)
    with pytest.raises(ValueError, match="at least one image"):
        hierarchical_bootstrap([[]], b)
