"""``qsgt sensitivity`` and ``qsgt mixed-precision``: files in, files out."""

from __future__ import annotations

import json
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

from qsgt_plugin.common.files import atomic_output
from qsgt_plugin.errors import UsageError
from qsgt_plugin.precision.layer_sensitivity import print_progress, sensitivity
from qsgt_plugin.precision.mixed import (
    Choice,
    ceil_bytes,
    choose_bits,
    mixed_precision_recipe,
    unit_costs,
)
from qsgt_plugin.precision.sensitivity_tables import sensitivity_figure, sensitivity_tables
from qsgt_plugin.precision.units import FLOAT_BITS, Unit, layer_units, unit_overrides, variant
from qsgt_plugin.quant import model_size_bytes
from qsgt_plugin.runs import Run

__all__ = ["plan_mixed_precision", "write_sensitivity"]


def write_sensitivity(
    run: Run,
    out: Path,
    bits: tuple[int, ...],
    images: int,
    hessian_samples: int,
    progress: bool = True,
    layers: list[str] | None = None,
) -> dict:
    """Measure, then write ``sensitivity.json``, ``sensitivity.png`` and ``sensitivity.md``."""
    try:
        result = sensitivity(
            run,
            bits,
            images,
            hessian_samples,
            progress=print_progress if progress else None,
            layers=layers,
        )
    except ValueError as exc:
        names = ", ".join(u.weight for u in layer_units(run))
        raise UsageError(f"--layers: {exc}; the layers are {names}") from None
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / "sensitivity.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    result["figure"] = str(sensitivity_figure(result, out / "sensitivity.png"))
    with atomic_output(out / "sensitivity.md") as tmp:
        tmp.write_text(sensitivity_tables(result))
    return result


@dataclass(frozen=True)
class SizedUnits:
    """A run's units and the bytes of everything else in its model, each counted once."""

    units: list[Unit]
    fixed_bytes: int  # BatchNorm, biases, alphas, ...: all but the units' weights

    @classmethod
    def of(cls, run: Run) -> SizedUnits:
        units = layer_units(run)
        trained = model_bytes(run, units, {u.weight: u.bits for u in units})
        return cls(units, trained - sum(ceil_bytes(u.size_bits(u.bits)) for u in units))


def load_sensitivity(
    path: Path, sized: SizedUnits, bits: tuple[int, ...], layers: list[str] | None = None
) -> dict | None:
    """A saved result for this run covering ``bits`` and ``layers`` (all when None), or None."""
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    names = [u.weight for u in sized.units]
    wanted = {n for n in names if not layers or any(fnmatchcase(n, p) for p in layers)}
    measured = {u["weight"] for u in result.get("units", [])}
    covered = set(bits) <= set(result.get("bits", [])) and wanted <= measured
    return result if covered else None


def model_bytes(run: Run, units: list[Unit], bits: dict[str, int]) -> int:
    """Bytes of the run's model with ``bits`` per unit (others as trained), counted on the
    rebuilt model by :func:`~qsgt_plugin.quant.model_size_bytes`."""
    overrides: dict[str, Any] = {}
    for unit in units:
        b = bits.get(unit.weight, unit.bits)
        if b < FLOAT_BITS:
            overrides.update(unit_overrides(unit, b))
    return model_size_bytes(variant(run, overrides, calibrate_new=False))


def check_budget(sized: SizedUnits, bits: tuple[int, ...], budget_bytes: int) -> None:
    """Refuse, before anything is measured, a budget that no choice of ``bits`` can meet.

    Raises:
        UsageError: even every layer at its smallest option exceeds the budget.
    """
    smallest = sized.fixed_bytes + sum(
        min(ceil_bytes(u.size_bits(b)) for b in (*bits, u.bits)) for u in sized.units
    )
    if smallest > budget_bytes:
        raise UsageError(
            f"no choice of {list(bits)} bits per layer fits {budget_bytes / 1000:g} kB; the "
            f"smallest is {smallest / 1000:.1f} kB. Raise --size-kb or add lower bit widths "
            "to --bits"
        )


def plan_mixed_precision(
    run: Run,
    sized: SizedUnits,
    result: dict,
    budget_bytes: int,
    drift_weight: float = 1.0,
    source: str | None = None,
    epochs: int = 2,
    name: str | None = None,
) -> tuple[dict[str, Choice], int, dict[str, Any]]:
    """The chosen bits per unit, the real model size, and the recipe that fine-tunes from
    ``source`` (the run's path as the user gave it; the run's path when None), written as an
    absolute path so that the recipe trains from any folder.

    Raises:
        UsageError: no assignment of the measured bit widths fits the budget.
    """
    units, fixed = sized.units, sized.fixed_bytes
    options = unit_costs(result, units, drift_weight)
    allowance = budget_bytes - fixed
    for _ in range(4):  # re-solve if counting on the real model finds the rounding off
        chosen = choose_bits(options, allowance)
        if chosen is None:
            smallest = fixed + sum(min(c.size for c in o) for o in options.values())
            raise UsageError(
                f"no choice of the measured bits per layer fits {budget_bytes / 1000:g} kB; "
                f"the smallest is {smallest / 1000:.1f} kB. Raise --size-kb or measure more "
                "layers (--layers) or lower bit widths (--bits)"
            )
        size = model_bytes(run, units, {k: c.bits for k, c in chosen.items()})
        if size <= budget_bytes:
            break
        allowance -= size - budget_bytes
    recipe = mixed_precision_recipe(
        run.recipe.model_dump(),
        units,
        chosen,
        str(Path(source or run.path).resolve()),
        epochs,
        name,
    )
    return chosen, size, recipe


def uniform_sizes(run: Run, sized: SizedUnits, bits: list[int]) -> dict[int, int]:
    """Bytes of the run's model with every unit at its recipe's default width set to k bits
    (first and last layers as trained): what uniform WkAk costs."""
    default = run.recipe.quant.weight_bits if run.recipe.quant.enabled else FLOAT_BITS
    return {
        b: model_bytes(run, sized.units, {u.weight: b for u in sized.units if u.bits == default})
        for b in bits
    }


def write_recipe(recipe: dict[str, Any], path: Path) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path
