"""Runs written by ``qsgt train``, and the models to explain (a quantized model's float view).

The core functions of this package take plain models and tensors; this module is the glue that
turns run directories into them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qsgt_plugin.build import make_loader
from qsgt_plugin.checkpoint import load_checkpoint, model_from_checkpoint
from qsgt_plugin.data import DATASETS, Loader
from qsgt_plugin.quant import quantization_disabled
from qsgt_plugin.recipe import Recipe, apply_overrides, parse_recipe

__all__ = ["ModelView", "Run", "RunError", "load_run", "model_views"]


class RunError(FileNotFoundError):
    """A path that is not a run directory or checkpoint written by ``qsgt train``."""


@dataclass
class Run:
    """A trained run: its recipe, checkpoint and rebuilt model."""

    path: Path
    recipe: Recipe
    checkpoint: dict
    model: nn.Module

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def quantized(self) -> bool:
        return self.checkpoint["model_config"].get("quant") is not None

    @property
    def label(self) -> str:
        """Short description: ``w4a4``, ``fp32``, with ``+SGT``."""
        quant = self.checkpoint["model_config"].get("quant")
        bits = f"w{quant['weight_bits']}a{quant['act_bits']}" if quant else "fp32"
        return bits + ("+SGT" if self.recipe.sgt.enabled else "")

    def metrics(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def test_loader(self, limit: int | None = None, device: str | torch.device = "cpu") -> Loader:
        """The run's test split (its first ``limit`` images), normalised as in training."""
        return make_loader(self.recipe, False, torch.device(device), limit)

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        info = DATASETS[self.recipe.data.dataset]
        return info.mean, info.std


def load_run(path: str | Path, checkpoint: str = "best.pt", data_root: str | None = None) -> Run:
    """Load a run directory (its ``best.pt``, else ``last.pt``) or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / checkpoint, path / "last.pt"]
        file = next((c for c in candidates if c.is_file()), None)
        if file is None:
            raise RunError(
                f"{path} is not a run directory: it has no {checkpoint} or last.pt. "
                "Train one with `qsgt train RECIPE`."
            )
        run_dir = path
    elif path.is_file():
        file, run_dir = path, path.parent
    else:
        raise RunError(f"{path} does not exist")
    payload = load_checkpoint(file)
    extra = [f"data.root={data_root}"] if data_root else []
    recipe = parse_recipe(apply_overrides(payload["recipe"], extra), source=str(file))
    model = model_from_checkpoint(payload).eval()
    return Run(run_dir, recipe, payload, model)


@dataclass(frozen=True)
class ModelView:
    """A model to explain; ``float_view`` runs a converted model with quantization disabled."""

    name: str
    model: nn.Module
    float_view: bool = False

    @contextmanager
    def active(self) -> Iterator[nn.Module]:
        with quantization_disabled(self.model) if self.float_view else nullcontext():
            yield self.model


def model_views(runs: list[Run], float_views: bool = True) -> list[ModelView]:
    """One view per run, plus the float view of each quantized run (no second copy)."""
    views = []
    for run in runs:
        views.append(ModelView(f"{run.name} ({run.label})", run.model))
        if float_views and run.quantized:
            views.append(ModelView(f"{run.name} (float view)", run.model, float_view=True))
    return views
