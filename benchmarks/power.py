"""Seeds per group for the pre-registered replication (reports/preregistration.md).

    python benchmarks/power.py                    # the table the pre-registration quotes
    python benchmarks/power.py --simulations 2000 # faster, coarser (CI runs this)

The report's test is Welch's two-sided t-test over seeds, Holm-adjusted over a family of 18
tests per dataset (9 areas x 2 pairs). A difference that is to survive Holm in the worst case
must beat the first step, alpha / 18 = 0.0028, so that is the level of this analysis.

Assumed effect and spread come from the existing reports' seed-level values (three seeds per
group, two MNIST image subsets): the *smaller* of the two subsets' differences, shrunk by a
quarter because an effect picked for being large in three seeds overstates itself, and for
each group the *larger* of the two subsets' standard deviations. Power is the fraction of
simulated experiments (normal seeds with those means and deviations, ``scipy.stats.ttest_ind``
with ``equal_var=False``) whose p is below the level; the noncentral-t approximation is printed
beside it. The pre-registration takes the smallest n in [5, 10] with power >= 0.9 for both
W4A4 areas on MNIST; CIFAR-10 has 5 seeds by budget and this prints the power 5 gives there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
FAMILY = 18
ALPHA = 0.05 / FAMILY
SHRINK = 0.75
SENSITIVITY = (1.0, 0.5)  # other shrink factors, printed beside the chosen one
TARGET = 0.9
SEEDS = range(3, 13)
# The reports whose seed-level values the assumptions come from.
SOURCES = {
    "mnist": ["reports/mnist/metrics.json", "reports/mnist-heldout/metrics.json"],
    "cifar10": ["reports/cifar10/metrics.json"],
}
PAIR = "w4a4"  # the pair whose groups' names start with this (without SGT against with)
AREAS = ("masking_auc", "deletion_auc")


def observed(paths: list[str], area: str) -> list[dict]:
    """Per report: the W4A4 pair's difference and each group's seed standard deviation (x100)."""
    out = []
    for path in paths:
        numbers = json.loads((ROOT / path).read_text())
        (dataset,) = numbers["datasets"].values()
        for pair in dataset["pairs"]:
            if pair["metric"] == area and pair["a"].startswith(PAIR):
                groups = dataset["groups"]
                out.append(
                    {
                        "report": path,
                        "images": numbers["test_images"],
                        "difference": 100 * pair["difference"],
                        "sd_without": 100 * groups[pair["a"]][area]["std"],
                        "sd_with": 100 * groups[pair["b"]][area]["std"],
                        "p": pair["p"],
                        "p_holm": pair["p_holm"],
                    }
                )
    return out


def assumption(rows: list[dict], shrink: float = SHRINK) -> tuple[float, float, float]:
    """Effect (the smaller observed, shrunk), and the larger deviation of each group."""
    effect = shrink * min(abs(r["difference"]) for r in rows)
    return effect, max(r["sd_without"] for r in rows), max(r["sd_with"] for r in rows)


def power_simulated(effect: float, sd_a: float, sd_b: float, n: int, draws: int, seed: int):
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, sd_a, size=(draws, n))
    b = rng.normal(effect, sd_b, size=(draws, n))
    p = stats.ttest_ind(a, b, axis=1, equal_var=False).pvalue
    return float(np.mean(p < ALPHA))


def power_noncentral(effect: float, sd_a: float, sd_b: float, n: int) -> float:
    va, vb = sd_a**2 / n, sd_b**2 / n
    df = (va + vb) ** 2 / (va**2 / (n - 1) + vb**2 / (n - 1))
    shift = effect / np.sqrt(va + vb)
    critical = stats.t.ppf(1 - ALPHA / 2, df)
    value = stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift)
    return float(value)  # nan where scipy's nct fails far in the tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--simulations", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"level: 0.05 / {FAMILY} = {ALPHA:.5f} (Holm's first step); target power {TARGET}")
    chosen = {}
    for dataset, paths in SOURCES.items():
        needed = []
        for area in AREAS:
            rows = observed(paths, area)
            for r in rows:
                print(
                    f"{dataset} {area} {r['report']} images {r['images']}: difference "
                    f"{r['difference']:+.2f}, sd {r['sd_without']:.2f} / {r['sd_with']:.2f}, "
                    f"p {r['p']:.4f}, Holm {r['p_holm']:.4f}"
                )
            effect, sd_a, sd_b = assumption(rows)
            print(
                f"{dataset} {area}: assumed |difference| {effect:.2f} ({SHRINK} x the smaller "
                f"observed), sd {sd_a:.2f} (w4a4) / {sd_b:.2f} (w4a4+SGT)"
            )
            print("  n  power (simulated)  power (noncentral t)")
            first = None
            for n in SEEDS:
                sim = power_simulated(effect, sd_a, sd_b, n, args.simulations, args.seed + n)
                nct = power_noncentral(effect, sd_a, sd_b, n)
                print(f"  {n:2d}  {sim:.3f}  {nct:.3f}")
                if first is None and sim >= TARGET:
                    first = n
            needed.append(first if first is not None else max(SEEDS))
            for other in SENSITIVITY:
                effect, sd_a, sd_b = assumption(rows, other)
                powers = [
                    power_simulated(effect, sd_a, sd_b, n, args.simulations, args.seed + n)
                    for n in SEEDS
                ]
                shown = ", ".join(f"{n}: {p:.2f}" for n, p in zip(SEEDS, powers, strict=True))
                print(f"  sensitivity, {other} x the smaller observed difference: {shown}")
        chosen[dataset] = min(10, max(5, *needed))
        print(f"{dataset}: power >= {TARGET} for both areas from n = {max(needed)}")
    print(f"seeds per group: mnist {chosen['mnist']} (bounds 5..10); cifar10 5 (fixed by budget)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
