"""Trained runs read back: a run directory or checkpoint, its recipe and its rebuilt model.

Above training (it rebuilds a model as training builds it) and below the analyses that read
runs (``report/``, ``precision/``, the CLI); ``run_dir/`` is the storage it reads.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qsgt_plugin.errors import CheckpointError, RecipeError
from qsgt_plugin.plugins import get_registry
from qsgt_plugin.recipe import Recipe, apply_overrides, parse_run_recipe
from qsgt_plugin.run_dir import find_checkpoint, load_checkpoint, read_metrics
from qsgt_plugin.training.build import build_model, example_batch, make_loader
from qsgt_plugin.training.data import Loader, get_dataset

__all__ = ["Run", "load_run", "model_from_checkpoint"]


def model_from_checkpoint(payload: dict[str, Any]) -> nn.Module:
    """Rebuild the model a checkpoint was trained as and load its weights.

    A checkpoint is untrusted input: its model settings pass the recipe's validation, and
    options that make timm read files or the network (``pretrained``, ``pretrained_cfg*``,
    ``checkpoint_path``) are refused.
    """
    config = payload["model_config"]
    kwargs = config.get("kwargs") or {}
    unsafe = sorted(k for k in kwargs if k in _UNSAFE_KWARGS or k.startswith("pretrained"))
    if unsafe:
        raise CheckpointError(
            f"the checkpoint's model options {unsafe} would make timm load files or download; "
            "refused. Only load checkpoints written by qsgt"
        )
    dataset = payload["recipe"].get("data", {}).get("dataset", "mnist")
    example = example_batch(dataset) if dataset in get_registry().datasets else None
    try:
        model = build_model(config["name"], kwargs, config.get("quant"), example)
    except RecipeError as exc:
        raise CheckpointError(
            f"the checkpoint describes a model that cannot be built: {exc}"
        ) from None
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint weights do not fit the model it describes: {exc}"
        ) from None
    return model


_UNSAFE_KWARGS = frozenset({"checkpoint_path", "pretrained", "cache_dir"})


@dataclass
class Run:
    """A trained run: its recipe, checkpoint and rebuilt model (in eval mode)."""

    path: Path
    recipe: Recipe
    checkpoint: dict
    model: nn.Module
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or self.path.name

    @property
    def quantized(self) -> bool:
        return self.checkpoint["model_config"].get("quant") is not None

    @property
    def bits(self) -> str:
        """``w4a4`` for a quantized run, ``fp32`` otherwise."""
        return self.recipe.quant.label

    @property
    def label(self) -> str:
        """Short description: ``w4a4``, ``fp32``, with ``+SGT``."""
        return self.recipe.label

    def metrics(self) -> list[dict]:
        return read_metrics(self.path)

    def test_loader(
        self,
        limit: int | None = None,
        device: str | torch.device = "cpu",
        offset: int = 0,
        channels_last: bool = False,
        whole_split: bool = False,
    ) -> Loader:
        """The run's test split (``limit`` images from index ``offset``), normalised as in
        training, in channels-last batches if asked. ``whole_split`` ignores the recipe's
        ``data.test_subset`` (how many images training evaluated), so that runs trained with
        different subsets are analysed on the same images."""
        layout = dict(offset=offset, channels_last=channels_last)
        recipe = self.recipe
        if whole_split:
            data = recipe.data.model_copy(update={"test_subset": None})
            recipe = recipe.model_copy(update={"data": data})
        return make_loader(recipe, False, torch.device(device), limit, **layout)

    @property
    def channels_last(self) -> bool:
        """Whether training evaluated this run in channels-last memory format: its recorded
        recipe says ``train.channels_last: true`` (training writes the resolved value; recipes
        from before that setting existed, ``auto`` here, trained contiguous)."""
        return self.recipe.train.channels_last is True

    def evaluation(self, device: str | torch.device = "cpu") -> tuple[nn.Module, Loader]:
        """The model and its test split laid out as training evaluated them, so that
        :func:`~qsgt_plugin.common.evaluation.evaluate` gives the accuracy training recorded,
        to the image. The memory format matters: a convolution sums in another order in each
        layout, and a quantizer turns a last-bit difference at a level boundary into a whole
        level (a CIFAR-10 W4A4 run re-evaluated contiguous on another processor moved 4 of
        10,000 images; channels-last, as trained, none). A channels-last model is a copy:
        ``self.model`` keeps its layout for the analyses that read it."""
        device = torch.device(device)
        return self.evaluated_model(device), self.test_loader(
            device=device, channels_last=self.channels_last
        )

    def evaluated_model(self, device: str | torch.device = "cpu") -> nn.Module:
        """The model in the memory layout training evaluated it in (a channels-last copy
        where it trained channels-last): what :meth:`evaluation` returns, for a caller that
        brings its own inputs (the exports' agreement with PyTorch)."""
        model = self.model.to(torch.device(device))
        if self.channels_last:
            model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        return model

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        info = get_dataset(self.recipe.data.dataset)
        return info.mean, info.std


def load_run(path: str | Path, data_root: str | None = None) -> Run:
    """Load a run directory (its ``best.pt``, else ``last.pt``, else ``model.pt``) or a checkpoint.

    Raises:
        RunError: the path is missing or holds no checkpoint.
        CheckpointError: the checkpoint is corrupted, unsafe or foreign.
    """
    file = find_checkpoint(path)
    payload = load_checkpoint(file)
    extra = [f"data.root={data_root}"] if data_root else []
    try:
        recipe = parse_run_recipe(apply_overrides(payload["recipe"], extra), source=str(file))
    except RecipeError as exc:
        raise CheckpointError(f"{file} holds a recipe this version cannot read: {exc}") from None
    model = model_from_checkpoint(payload).eval()
    return Run(file.parent, recipe, payload, model)
