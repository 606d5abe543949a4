"""What a checkpoint holds to continue a run exactly, and restoring it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qsgt_plugin.errors import CheckpointError
from qsgt_plugin.recipe import Recipe

__all__ = ["load_weights", "model_config", "restore_training", "training_payload"]


def training_payload(
    recipe: Recipe,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader_rng: torch.Tensor,
    progress: dict[str, Any],
    evaluated: nn.Module | None = None,
) -> dict[str, Any]:
    """Everything a run needs to continue exactly, and what ``load_run`` reads.

    ``loader_rng`` is the training loader's generator state (its shuffles and augmentation).
    ``model`` holds the weights the evaluation used: ``evaluated`` (the weight average) when
    given, with the trained weights beside it as ``train_model``.
    """
    rng = {"torch": torch.get_rng_state(), "loader": loader_rng}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    payload = {
        "model": (evaluated or model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": progress,
        "step": progress["step"],
        "rng": rng,
        "recipe": recipe.model_dump(mode="json"),
        "model_config": model_config(recipe),
    }
    if evaluated is not None:
        payload["train_model"] = model.state_dict()
    return payload


def load_weights(payload: dict[str, Any], model: nn.Module) -> None:
    """The trained weights of a :func:`training_payload` (not their average), into ``model``."""
    if "progress" not in payload:
        raise CheckpointError(
            "this checkpoint was written by an earlier version of qsgt and cannot be resumed; "
            "start over with --overwrite"
        )
    model.load_state_dict(payload.get("train_model", payload["model"]))


def restore_training(
    payload: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader_generator: torch.Generator,
) -> dict[str, Any]:
    """Load the rest of what :func:`training_payload` saved (the training loader's generator
    state into ``loader_generator``); returns the saved progress."""
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    rng = payload["rng"]
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    loader_generator.set_state(rng["loader"])
    return payload["progress"]


def model_config(recipe: Recipe) -> dict[str, Any]:
    """What rebuilds the model without the rest of the recipe."""
    return {
        "name": recipe.model.name,
        "kwargs": recipe.model.kwargs,
        "quant": recipe.quant.model_dump(mode="json") if recipe.quant.enabled else None,
    }
