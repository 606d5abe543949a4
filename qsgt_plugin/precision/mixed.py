"""Bit widths per unit under a model-size budget, from the measured sensitivity.

The cost of setting a unit to k bits is ``accuracy_drop + drift_weight * drift`` as measured
with that unit alone at k bits (its trained bit width costs 0); costs are assumed to add up over
units, as HAWQ-v2's and AIMET's searches assume. The assignment of least total cost whose model
fits the budget is a multiple-choice knapsack, solved exactly by dynamic programming over the
size in bytes (each unit's size rounded up to whole bytes, so the real size never exceeds the
rounded sum). Ties in cost go to the smaller model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qsgt_plugin.precision.units import FLOAT_BITS, Unit

__all__ = ["Choice", "choose_bits", "mixed_precision_recipe", "unit_costs"]


@dataclass(frozen=True)
class Choice:
    """An option of one unit: its bit width, cost and weight bytes."""

    bits: int
    cost: float
    size: int  # bytes


FREE_BIT_COST = 1e-9
"""The least cost of a bit removed from a layer (measured costs at or below zero get it)."""


def unit_costs(
    result: dict, units: list[Unit], drift_weight: float = 1.0
) -> dict[str, list[Choice]]:
    """The options of every unit from a :func:`~.sensitivity.sensitivity` result."""
    options: dict[str, list[Choice]] = {}
    for unit in units:
        trained = unit.bits
        choices = {trained: Choice(trained, 0.0, ceil_bytes(unit.size_bits(trained)))}
        for row in result["rows"]:
            if row["unit"] == unit.weight and row["bits"] != trained:
                # A measured gain (a few images more right at fewer bits) is noise, not a
                # reason to lower a layer: a cost is at least a hair per bit removed, so a
                # lower width is chosen only where the budget needs it.
                measured = row["accuracy_drop"] + drift_weight * row["drift"]
                cost = max(0.0, measured) + FREE_BIT_COST * max(0, trained - row["bits"])
                choices[row["bits"]] = Choice(
                    row["bits"], cost, ceil_bytes(unit.size_bits(row["bits"]))
                )
        options[unit.weight] = sorted(choices.values(), key=lambda c: c.bits)
    return options


def _or_float(bits: int | None) -> int | None:
    return None if bits is None or bits >= FLOAT_BITS else bits


def ceil_bytes(bits: int) -> int:
    """Whole bytes that hold ``bits`` bits."""
    return -(-bits // 8)


def choose_bits(options: dict[str, list[Choice]], budget: int) -> dict[str, Choice] | None:
    """The least-cost choice per unit within ``budget`` bytes in all; None if none fits.

    Exact: a dynamic programme over the bytes spent, ``O(units x options x budget)``.
    """
    if budget < 0:
        return None
    names = list(options)
    cost = np.zeros(budget + 1)  # least cost of the units so far within each number of bytes
    picks = []
    for name in names:
        new = np.full(budget + 1, np.inf)
        pick = np.full(budget + 1, -1)
        for i, choice in enumerate(options[name]):
            if choice.size > budget:
                continue
            shifted = np.full(budget + 1, np.inf)
            shifted[choice.size :] = cost[: budget + 1 - choice.size] + choice.cost
            better = shifted < new
            new[better], pick[better] = shifted[better], i
        cost = new
        picks.append(pick)
    if not np.isfinite(cost[budget]):
        return None
    best = float(cost[budget])
    spent = int(np.flatnonzero(cost <= best + 1e-12)[0])  # the smallest size at that cost
    out: dict[str, Choice] = {}
    for name, pick in zip(reversed(names), reversed(picks), strict=True):
        choice = options[name][int(pick[spent])]
        out[name] = choice
        spent -= choice.size
    return dict(reversed(list(out.items())))


FINE_TUNE_LR = 0.1
"""The written recipe's learning rate over the run's: it starts from trained weights."""


def mixed_precision_recipe(
    recipe: dict[str, Any],
    units: list[Unit],
    chosen: dict[str, Choice],
    run_path: str,
    epochs: int = 2,
    name: str | None = None,
) -> dict[str, Any]:
    """``recipe`` (a run's, as a dict) with ``quant.overrides`` set to the choice, fine-tuning
    from ``run_path`` for ``epochs`` at :data:`FINE_TUNE_LR` times the run's learning rate;
    named ``name`` (the run's name + ``-mixed`` when None), written to ``runs/NAME``."""
    out = {**recipe, "quant": dict(recipe["quant"]), "model": dict(recipe["model"])}
    out["optim"] = {**recipe["optim"], "lr": round(recipe["optim"]["lr"] * FINE_TUNE_LR, 12)}
    out["train"] = {**recipe["train"], "epochs": epochs, "max_steps": None}
    if not out["quant"].get("enabled", True):  # a float run: only the chosen units quantized
        out["quant"] = {"enabled": True, "alpha_init": "calibrate"}
        overrides: dict[str, Any] = {"*": None}
    else:
        overrides = dict(out["quant"].get("overrides") or {})
    for unit in units:
        bits = chosen[unit.weight].bits
        act_bits = unit.act_bits if bits == unit.bits else bits  # as trained, or both changed
        for key in (unit.weight, unit.act):
            overrides.pop(key, None)
        overrides[unit.weight] = {"weight_bits": _or_float(bits)}
        if unit.act is not None:
            overrides[unit.act] = {"act_bits": _or_float(act_bits)}
    out["quant"]["overrides"] = overrides
    out["model"]["init_from"] = run_path
    name = name or f"{recipe.get('name', 'run')}-mixed"
    out["name"] = name
    out["output"] = {**recipe.get("output", {}), "dir": f"runs/{name}"}
    return out
