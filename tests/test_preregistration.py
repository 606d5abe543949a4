"""The pre-registration's seed counts come from its shipped power analysis, and the runs it
names are the ones benchmarks/reproduce.py trains, in the settings the earlier seeds ran."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREREGISTRATION = ROOT / "reports" / "preregistration.md"


def test_the_power_analysis_gives_the_registered_seed_counts():
    done = subprocess.run(
        [sys.executable, "benchmarks/power.py"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "seeds per group: mnist 9 (bounds 5..10); cifar10 5" in done.stdout
    # the output quoted in the pre-registration is what the script prints today
    assert done.stdout.strip() in PREREGISTRATION.read_text()


def test_the_registered_runs_pin_what_seeds_0_to_2_ran():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import reproduce
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from qsgt_plugin.recipe import load_recipe

    jobs = reproduce.PREREGISTERED
    assert {s for n, s in jobs if n.startswith("mnist")} == set(range(3, 9))
    assert {s for n, s in jobs if n.startswith("cifar10")} == {3, 4}
    assert len(jobs) == 4 * 6 + 5 * 2 == len(set(jobs))
    # a fine-tuning comes after its own seed's parent
    for name, seed in jobs:
        if name.endswith("-ft"):
            assert jobs.index(("cifar10-fp32-cpu", seed)) < jobs.index((name, seed))
    shipped = {"mnist": "mnist-w4a4-sgt-s0", "cifar10": "cifar10-w4a4-sgt-ft-s0"}
    for name in ("mnist-w4a4-sgt", "cifar10-w4a4-sgt-ft"):
        path, overrides = reproduce.EXPERIMENTS[name]
        overrides = [o.format(seed=0) for o in overrides]
        recipe = load_recipe(ROOT / path, overrides)
        dataset = recipe.data.dataset
        old = load_recipe(
            ROOT / "results" / dataset.replace("-", "") / shipped[dataset] / "recipe.yaml"
        )
        want = (
            ("fp32", False)
            if dataset == "mnist"
            else (old.train.precision, old.train.channels_last)
        )
        assert (recipe.train.precision, recipe.train.channels_last) == want
