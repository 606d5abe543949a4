"""Runs that differ only in their seed, grouped; their numbers as mean, spread and interval.

A group is the set of runs whose resolved recipes are equal once ``train.seed``, ``name``,
``output.dir`` and ``data.root`` are set aside. Two groups form a *pair* when their recipes
differ in ``sgt.enabled`` only (fp32 vs fp32 + SGT, W4A4 vs W4A4 + SGT): for each faithfulness
area the report says whether the SGT group's differs beyond seed noise
(:data:`~qsgt_plugin.attribution.stats.TEST`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from qsgt_plugin.attribution.faithfulness import auc
from qsgt_plugin.attribution.stats import compare, summarise
from qsgt_plugin.run_dir import Run

__all__ = ["PAIRED", "Group", "group_runs", "pair_groups", "scalars"]

# The faithfulness areas compared between a group and its SGT twin, and which way is better.
PAIRED = {
    "masking_auc": "lower",
    "deletion_auc": "lower",
    "deletion_auc_normalised": "lower",
    "insertion_auc": "higher",
    "insertion_auc_normalised": "higher",
    "road_morf_auc": "lower",
    "road_lerf_auc": "higher",
}


@dataclass
class Group:
    """Runs of one recipe over seeds."""

    label: str
    key: str
    runs: list[Run] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return [run.recipe.train.seed for run in self.runs]


def _key(run: Run, ignore_sgt: bool = False) -> str:
    recipe = run.recipe.model_dump(mode="json")
    recipe.pop("name")
    recipe["train"].pop("seed")
    recipe["output"].pop("dir")
    recipe["data"].pop("root")
    if ignore_sgt:
        recipe["sgt"] = {}
    return json.dumps(recipe, sort_keys=True)


def group_runs(runs: list[Run]) -> list[Group]:
    """Groups in the order their first run comes; labels are the runs' (``w4a4+SGT``)."""
    groups: dict[str, Group] = {}
    for run in runs:
        key = _key(run)
        if key not in groups:
            label = run.label
            taken = sum(g.label.split(" #")[0] == label for g in groups.values())
            groups[key] = Group(label if not taken else f"{label} #{taken + 1}", key)
        groups[key].runs.append(run)
    return list(groups.values())


def pair_groups(groups: list[Group]) -> list[tuple[Group, Group]]:
    """``(without SGT, with SGT)`` pairs of groups whose recipes differ in SGT only."""
    pairs = []
    for plain in groups:
        if plain.runs[0].recipe.sgt.enabled:
            continue
        for sgt in groups:
            same = _key(sgt.runs[0], ignore_sgt=True) == _key(plain.runs[0], ignore_sgt=True)
            if sgt.runs[0].recipe.sgt.enabled and same:
                pairs.append((plain, sgt))
    return pairs


def scalars(suite: dict) -> dict[str, float]:
    """The suite's numbers that are aggregated over seeds, by name."""
    di, road, mprt = suite["deletion_insertion"], suite["road"], suite["mprt"]
    masking = di["accuracy"]
    out = {
        "masking_auc": auc(masking["saliency"], di["fractions"]),
        "masking_auc_random": auc(masking["random"], di["fractions"]),
    }
    for curve in ("deletion", "insertion"):
        out[f"{curve}_auc"] = di["auc"][curve]["saliency"]
        out[f"{curve}_auc_random"] = di["auc"][curve]["random"]
        out[f"{curve}_auc_normalised"] = di["auc_normalised"][curve]["saliency"]
    for curve in ("morf", "lerf", "random"):
        out[f"road_{curve}_auc"] = road["auc"][curve]
        out[f"road_{curve}_auc_normalised"] = road["auc_normalised"][curve]
    out["mprt_last"] = mprt["similarity"][-1]
    out["mprt_mean"] = sum(mprt["similarity"]) / len(mprt["similarity"])
    for name in ("random_logit", "gini", "entropy", "tied_fraction", "sensitivity_max"):
        out[name] = suite[name]
    return out


def aggregate(groups: list[Group], per_run: dict[str, dict]) -> dict:
    """Per group: each scalar (and the accuracy) as :func:`summarise` over its seeds."""
    out = {}
    for group in groups:
        rows = [per_run[run.name] for run in group.runs]
        names = ["test_acc", *rows[0]["scalars"]]
        values = {
            n: [r["test_acc"] if n == "test_acc" else r["scalars"][n] for r in rows] for n in names
        }
        out[group.label] = {
            "runs": [run.name for run in group.runs],
            "seeds": group.seeds,
            **{n: summarise(v) for n, v in values.items()},
        }
    return out


def pair_tests(pairs: list[tuple[Group, Group]], per_run: dict[str, dict]) -> list[dict]:
    """For each pair and paired area: the difference, its p-value, and whether SGT is better."""
    out = []
    for plain, sgt in pairs:
        for name, better in PAIRED.items():
            a = [per_run[r.name]["scalars"][name] for r in plain.runs]
            b = [per_run[r.name]["scalars"][name] for r in sgt.runs]
            result = compare(a, b)
            improves = result["difference"] < 0 if better == "lower" else result["difference"] > 0
            out.append(
                {"a": plain.label, "b": sgt.label, "metric": name, "better": better, **result,
                 "sgt_better": bool(result["beyond_noise"] and improves)}
            )  # fmt: skip
    return out
