"""Runs that differ only in their seed, grouped; their numbers as mean, spread and interval.

A group is the set of runs whose resolved recipes are equal once the seed, the name and the
settings that do not change the trained model (:data:`NOT_THE_MODEL`: where the run was
written and logged, its device, compilation) are set aside, and a fine-tuning's source
(``model.init_from``) counts as the recipe it was trained from, so that fine-tunings of seeds
0, 1, 2, each from its own seed's parent, are one group; two runs of one group with the
same seed (a copied run directory) are refused, since they would count one model twice. Two
groups form a
*pair* when their recipes differ in ``sgt.enabled`` only (fp32 vs fp32 + SGT, W4A4 vs W4A4 +
SGT): for each area of :data:`PAIRED` the report tests the difference over seeds, corrects the
p-values over the dataset's family of tests, and bootstraps it over seeds and images
(:mod:`qsgt_plugin.report.statistics`); for a quantized pair beside a float one it says how much
of the float model's SGT gain the quantized SGT model keeps (:func:`sgt_kept`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from qsgt_plugin.attribution.faithfulness import auc
from qsgt_plugin.attribution.results import SuiteResult
from qsgt_plugin.errors import QsgtError, UsageError
from qsgt_plugin.recipe import Recipe, parse_run_recipe
from qsgt_plugin.report.statistics import (
    ALPHA,
    hedges_g,
    hierarchical_bootstrap,
    holm,
    summarise,
    welch,
)
from qsgt_plugin.run_dir import find_checkpoint
from qsgt_plugin.run_dir.checkpoint import load_checkpoint
from qsgt_plugin.runs import Run

__all__ = ["NOT_THE_MODEL", "PAIRED", "Group", "group_runs", "pair_groups", "scalars", "sgt_kept"]

# The faithfulness areas compared between a group and its SGT twin, and which way is better.
PAIRED = {
    "masking_auc": "lower",
    "deletion_auc": "lower",
    "deletion_auc_normalised": "lower",
    "insertion_auc": "higher",
    "insertion_auc_normalised": "higher",
    "road_morf_auc": "lower",
    "road_lerf_auc": "higher",
    "mprt_mean": "lower",  # maps that depend on the weights change when they are randomised
    "random_logit": "lower",  # maps that depend on the class change with it
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


# Settings that do not change the trained model: where and how a run was watched, saved and
# placed (the ones ``--resume`` may change without touching the weights' meaning).
NOT_THE_MODEL = {
    "data": ("root", "eval_batch_size"),
    "train": ("seed", "log_every", "checkpoint_every", "device", "compile", "fast_path"),
    "output": ("dir",),
}


def _key(run: Run) -> str:
    """What determines the trained model, seed aside: runs with equal keys are one group."""
    return _recipe_key(run.recipe)


def _recipe_key(recipe: Recipe, depth: int = 0) -> str:
    data = recipe.model_dump(mode="json")
    data.pop("name")
    for section, keys in NOT_THE_MODEL.items():
        for key in keys:
            data[section].pop(key)
    # the settings of a switched-off feature do not change the model (a float recipe that
    # inherits quant.alpha_init from a quantized one trains the same float model)
    for section in ("quant", "sgt"):
        if not data[section]["enabled"]:
            data[section] = {"enabled": False}
    if recipe.model.init_from:
        data["model"]["init_from"] = _source_key(recipe, depth)
    return json.dumps(data, sort_keys=True)


def _source_key(recipe: Recipe, depth: int) -> str:
    """What a fine-tuning started from, seed aside: the source run's own key.

    Fine-tunings over seeds start each from its own seed's parent (``.../parent-s0``,
    ``.../parent-s1``): the paths differ, the recipe they were trained from does not. A
    source that cannot be read (moved, or the report runs elsewhere) is named by its path with
    this run's seed (as ``-sN``, ``_sN``, ``seedN`` or ``seed-N``) written as ``{seed}``, the
    convention ``benchmarks/reproduce.py`` fills in.
    """
    parent = _source_recipe(recipe) if depth < 8 else None  # deeper: a loop of copied runs
    if parent is not None:
        return "run:" + _recipe_key(parent, depth=depth + 1)
    seed = str(recipe.train.seed)
    pattern = rf"((?:^|[-_/])s(?:eed)?[-_]?){seed}(?![0-9])"
    return "path:" + re.sub(pattern, r"\1{seed}", str(recipe.model.init_from))


def _source_recipe(recipe: Recipe) -> Recipe | None:
    """The recipe of the run ``model.init_from`` names, or None where it cannot be read."""
    try:
        payload = load_checkpoint(find_checkpoint(recipe.model.init_from))
        return parse_run_recipe(payload["recipe"], source=str(recipe.model.init_from))
    except (QsgtError, KeyError, TypeError):
        return None


def _label(run: Run) -> str:
    """``w4a4+SGT``; a fine-tuning names what it started from: ``w4a4+SGT from fp32``."""
    if not run.recipe.model.init_from:
        return run.label
    parent = _source_recipe(run.recipe)
    if parent is None:
        return f"{run.label} fine-tuned"
    return f"{run.label} from {parent.label}"


def group_runs(runs: list[Run]) -> list[Group]:
    """Groups in the order their first run comes, labelled by what they are (``w4a4+SGT``,
    ``w4a4+SGT from fp32`` for a fine-tuning), with the settings that tell apart two groups of
    one label."""
    groups: dict[str, Group] = {}
    for run in runs:
        key = _key(run)
        if key not in groups:
            groups[key] = Group(_distinct_label(_label(run), key, groups), key)
        twin = next(
            (r for r in groups[key].runs if r.recipe.train.seed == run.recipe.train.seed), None
        )
        if twin is not None:
            raise UsageError(
                f"{twin.path} and {run.path} are the same recipe with the same seed "
                f"({run.recipe.train.seed}): one model counted twice would fake a seed. Give "
                "each seed once"
            )
        groups[key].runs.append(run)
    return list(groups.values())


def _distinct_label(label: str, key: str, groups: dict[str, Group]) -> str:
    """``label``, or where a group already has it, ``label`` with the settings that tell the
    two apart (``w4a4+SGT (train.precision=bf16)``); ``#2`` only where that is not enough."""
    first = next((g for g in groups.values() if g.label == label), None)
    if first is None:
        return label
    before, now = _leaves(json.loads(first.key)), _leaves(json.loads(key))
    settings = [
        f"{path}={now[path]}" if len(str(now.get(path))) <= 24 else path
        for path in sorted(set(before) | set(now))
        if before.get(path) != now.get(path) and path in now
    ]
    taken = {g.label for g in groups.values()}
    if settings:
        candidate = f"{label} ({', '.join(settings[:2])}{', ...' if len(settings) > 2 else ''})"
        if candidate not in taken:
            return candidate
    number = 2
    while f"{label} #{number}" in taken:
        number += 1
    return f"{label} #{number}"


def _leaves(data: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for name, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def _sgt_aside(key: str) -> str:
    """A group's key without its own SGT settings (a fine-tuning's source keeps its own)."""
    return json.dumps({**json.loads(key), "sgt": {}}, sort_keys=True)


def pair_groups(groups: list[Group]) -> list[tuple[Group, Group]]:
    """``(without SGT, with SGT)`` pairs of groups whose recipes differ in SGT only."""
    pairs = []
    for plain in groups:
        if plain.runs[0].recipe.sgt.enabled:
            continue
        for sgt in groups:
            same = _sgt_aside(sgt.key) == _sgt_aside(plain.key)
            if sgt.runs[0].recipe.sgt.enabled and same:
                pairs.append((plain, sgt))
    return pairs


def scalars(suite: SuiteResult) -> dict[str, float]:
    """The suite's numbers that are aggregated over seeds, by name."""
    di, road, mprt = suite.deletion_insertion, suite.road, suite.mprt
    out = {
        "masking_auc": auc(di.accuracy.saliency, di.fractions),
        "masking_auc_random": auc(di.accuracy.random, di.fractions),
    }
    for curve in ("deletion", "insertion"):
        out[f"{curve}_auc"] = getattr(di.auc, curve).saliency
        out[f"{curve}_auc_random"] = getattr(di.auc, curve).random
        out[f"{curve}_auc_normalised"] = getattr(di.auc_normalised, curve).saliency
    for curve in ("morf", "lerf", "random"):
        out[f"road_{curve}_auc"] = getattr(road.auc, curve)
        out[f"road_{curve}_auc_normalised"] = getattr(road.auc_normalised, curve)
    out["mprt_last"] = mprt.similarity[-1]
    out["mprt_mean"] = sum(mprt.similarity) / len(mprt.similarity)
    for name in ("random_logit", "gini", "entropy", "tied_fraction", "sensitivity_max"):
        out[name] = getattr(suite, name)
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


def _improves(difference: float, better: str) -> bool:
    """Whether ``difference`` (SGT minus without) goes the ``better`` way ("lower" / "higher")."""
    return difference < 0 if better == "lower" else difference > 0


def pair_tests(pairs: list[tuple[Group, Group]], per_run: dict[str, dict]) -> list[dict]:
    """Every paired area of every pair, tested; the p-values Holm-adjusted over all of them.

    Each row: the difference of means (SGT minus without) with its Welch interval, Welch's p
    and its Holm-adjusted value over the family (every row returned: one dataset's pairs x
    :data:`PAIRED`), Hedges' g with its interval, the hierarchical bootstrap interval over seeds
    and images, and the verdicts: ``beyond_noise`` (adjusted p < 0.05), ``holds_over_images``
    (the bootstrap interval excludes 0), ``finding`` (both), ``sgt_better`` / ``sgt_worse``.
    """
    out = []
    for plain, sgt in pairs:
        for name, better in PAIRED.items():
            a = [per_run[r.name]["scalars"][name] for r in plain.runs]
            b = [per_run[r.name]["scalars"][name] for r in sgt.runs]
            images = [[per_run[r.name]["suite"].per_image[name] for r in g.runs]
                      for g in (plain, sgt)]  # fmt: skip
            welch_result = welch(a, b)
            effect = hedges_g(a, b)
            boot = hierarchical_bootstrap(*images)
            out.append(
                {"a": plain.label, "b": sgt.label, "metric": name, "better": better,
                 "difference": welch_result["difference"], "ci95": welch_result["ci95"],
                 "p": welch_result["p"], "g": effect["g"], "g_ci95": effect["ci95"],
                 "bootstrap_ci95": boot["ci95"], "seeds": [len(a), len(b)],
                 "images": [len(images[0][0]), len(images[1][0])]}
            )  # fmt: skip
    for row, adjusted in zip(out, holm([row["p"] for row in out]), strict=True):
        low, high = row["bootstrap_ci95"]
        improves = _improves(row["difference"], row["better"])
        row["p_holm"] = adjusted
        row["beyond_noise"] = bool(adjusted < ALPHA)  # NaN (one seed) compares False
        row["holds_over_images"] = bool(low > 0 or high < 0)
        row["finding"] = row["beyond_noise"] and row["holds_over_images"]
        row["sgt_better"] = row["finding"] and improves
        row["sgt_worse"] = row["finding"] and not improves
    return out


def sgt_kept(groups: dict, pairs: list[dict], bits: dict[str, str]) -> list[dict]:
    """How much of the float SGT gain each quantized SGT group keeps, per paired area.

    ``groups`` and ``pairs`` are the report's (:func:`aggregate`, :func:`pair_tests`); ``bits``
    gives each run's bit label (``"fp32"`` for float). With float means ``F`` (no SGT) and
    ``FS`` (SGT), quantized ``Q`` and ``QS``, for each area:

    - ``own``: ``(QS - Q) / (FS - F)``, the quantized SGT gain over its own baseline as a
      fraction of the float SGT gain;
    - ``vs_float``: ``(QS - F) / (FS - F)``, the quantized SGT model measured from the float
      baseline (1: as good as the float SGT model, 0: no better than the float one without SGT).

    A fraction is NaN where SGT does not improve the area in float (no gain to keep); where the
    float gain is not a finding (``float_gain_beyond_noise`` False: not beyond noise after the
    correction, or not over images) the fraction divides by
    a difference the seeds do not establish, and says little.

    Example: masking AUCs F 30, FS 20, Q 32, QS 24 give own 0.8 and vs_float 0.6.
    """
    both = list(dict.fromkeys((p["a"], p["b"]) for p in pairs))  # each pair once, in order
    float_pairs = [pair for pair in both if bits[groups[pair[0]]["runs"][0]] == "fp32"]
    quant_pairs = [pair for pair in both if pair not in float_pairs]
    if len(float_pairs) != 1:  # no float pair, or several: nothing unambiguous to measure from
        return []
    (f, fs), out = float_pairs[0], []
    noise = {p["metric"]: p.get("finding") for p in pairs if (p["a"], p["b"]) == (f, fs)}
    for q, qs in quant_pairs:
        for name, better in PAIRED.items():
            mean = {label: groups[label][name]["mean"] for label in (f, fs, q, qs)}
            gain = mean[fs] - mean[f]
            improves = _improves(gain, better)
            out.append(
                {"float": f, "float_sgt": fs, "quant": q, "quant_sgt": qs, "metric": name,
                 "better": better, **{k: mean[v] for k, v in
                                      (("F", f), ("FS", fs), ("Q", q), ("QS", qs))},
                 "float_gain_beyond_noise": noise.get(name),
                 "own": (mean[qs] - mean[q]) / gain if improves else math.nan,
                 "vs_float": (mean[qs] - mean[f]) / gain if improves else math.nan}
            )  # fmt: skip
    return out
