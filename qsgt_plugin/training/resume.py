"""What ``--resume`` may change in a recipe, and applying those changes to a restored run.

The weights define what may not change: the model, its quantization, the SGT objective, the
data a step sees (dataset, batch size, subsets, augmentation), the seed and the optimizer type.
The learning rate, weight decay, momentum, schedule and length may change (lowering the rate
after a divergence, extending a run), as may where and how it runs.
"""

from __future__ import annotations

from typing import Any

import torch

from qsgt_plugin.errors import RecipeError
from qsgt_plugin.recipe import Recipe
from qsgt_plugin.training.build import check_recipe

__all__ = ["RESUMABLE", "apply_resume_changes", "resume_changes"]

RESUMABLE = (
    "name",
    "optim.lr",
    "optim.momentum",
    "optim.nesterov",
    "optim.weight_decay",
    "optim.alpha_weight_decay",
    "schedule.",
    "train.epochs",
    "train.max_steps",
    "train.log_every",
    "train.checkpoint_every",
    "train.device",
    "train.fast_path",
    "train.precision",
    "train.channels_last",
    "train.compile",
    "data.root",
    "data.eval_batch_size",
    "output.dir",
)
"""Keys (and, ending in a dot, sections) that ``--resume`` may change."""


def resume_changes(saved: Recipe, recipe: Recipe) -> dict[str, list]:
    """``{key: [saved value, new value]}`` of every key that differs from the saved recipe
    (as :func:`~qsgt_plugin.recipe.parse_run_recipe` reads a checkpoint's).

    Raises:
        RecipeError: a key that may not change on resume, named with both values.
    """
    before = _flat(check_recipe(saved).model_dump())
    after = _flat(recipe.model_dump())
    changed = {k: [before.get(k), after.get(k)] for k in sorted(before.keys() | after.keys())}
    changed = {k: v for k, v in changed.items() if v[0] != v[1]}
    refused = [k for k in changed if not k.startswith(RESUMABLE)]
    if refused:
        detail = "; ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in refused)
        raise RecipeError(
            f"--resume cannot change {', '.join(refused)} ({detail}): the saved weights were "
            "trained with the old values. Restore them, or start a new run with --overwrite or "
            "--set output.dir=PATH"
        )
    return changed


def apply_resume_changes(
    changes: dict[str, list],
    recipe: Recipe,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
) -> None:
    """Put the recipe's optimizer settings into a restored optimizer and schedule.

    The restored state holds the old base rate and hyper-parameters; the schedule's shape and
    length already come from the new recipe (its function is not saved).
    """
    if not changes:
        return
    optim = recipe.optim
    scheduler.base_lrs = [optim.lr for _ in optimizer.param_groups]
    for i, group in enumerate(optimizer.param_groups):
        group["initial_lr"] = optim.lr
        group["weight_decay"] = optim.weight_decay if i == 0 else optim.alpha_decay
        if "momentum" in group:
            group["momentum"], group["nesterov"] = optim.momentum, optim.nesterov
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in optimizer.param_groups:
        group["lr"] = optim.lr * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _flat(recipe: dict[str, Any]) -> dict[str, Any]:
    """``{"optim.lr": 0.1, ...}``: one entry per key of each section."""
    out = {}
    for section, value in recipe.items():
        if isinstance(value, dict):
            out.update({f"{section}.{key}": v for key, v in value.items()})
        else:
            out[section] = value
    return out
