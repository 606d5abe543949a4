"""Objects a recipe describes: model, data loaders, SGT objective, optimizer, schedule, device."""

from __future__ import annotations

import difflib
import math
from typing import Any

import timm
import torch
from torch import nn

from qsgt_plugin.data import DATASETS, Loader, load_split
from qsgt_plugin.plugins import get_registry
from qsgt_plugin.quant import alphas, convert
from qsgt_plugin.recipe import (
    OptimSection,
    QuantSection,
    Recipe,
    RecipeError,
    ScheduleSection,
    SGTSection,
)
from qsgt_plugin.sgt import SaliencyGuidedTraining

__all__ = [
    "build_model",
    "check_names",
    "lr_factor",
    "make_loader",
    "make_optimizer",
    "make_scheduler",
    "make_sgt",
    "resolve_device",
]


def check_names(recipe: Recipe) -> None:
    """Names that only the registries can check: model, quantization method, weight quantizer."""
    registry = get_registry()
    problems = []
    if not timm.is_model(recipe.model.name):
        hint = difflib.get_close_matches(recipe.model.name, timm.list_models(), n=3)
        problems.append(
            f"model.name: unknown model {recipe.model.name!r}"
            + (f"; did you mean {', '.join(hint)}?" if hint else "; see `qsgt models`")
        )
    if recipe.quant.enabled:
        if recipe.quant.method not in registry.methods:
            known = ", ".join(sorted(registry.methods))
            problems.append(f"quant.method: unknown method {recipe.quant.method!r}; known: {known}")
        for key in ("weight_quant", "first_last_weight_quant"):
            wq = getattr(recipe.quant, key)
            if wq is not None and wq not in registry.weight_quantizers:
                known = ", ".join(sorted(registry.weight_quantizers))
                problems.append(f"quant.{key}: unknown weight quantizer {wq!r}; known: {known}")
    if problems:
        raise RecipeError("invalid recipe:\n" + "\n".join(f"  - {p}" for p in problems))


def build_model(
    name: str, kwargs: dict[str, Any], quant: QuantSection | dict[str, Any] | None
) -> nn.Module:
    """``timm.create_model(name, **kwargs)``, converted when ``quant`` is enabled."""
    get_registry()  # plugins' models are filed in timm's registry when the registry loads
    model = timm.create_model(name, **kwargs)
    if isinstance(quant, dict):
        quant = QuantSection.model_validate(quant)
    if quant is None or not quant.enabled:
        return model
    # The section's keys are convert()'s keyword arguments.
    return convert(model, **quant.model_dump(exclude={"enabled"}), inplace=True)


def make_sgt(model: nn.Module, sgt: SGTSection) -> SaliencyGuidedTraining | None:
    if not sgt.enabled:
        return None
    # The section's keys are SaliencyGuidedTraining's keyword arguments.
    return SaliencyGuidedTraining(model, **sgt.model_dump(exclude={"enabled"}))


def make_optimizer(model: nn.Module, optim: OptimSection) -> torch.optim.Optimizer:
    """One parameter group for the weights, one for the clipping levels (PACT's L2 on alpha)."""
    clip_levels = list(alphas(model).values())
    ids = {id(p) for p in clip_levels}
    weights = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    alpha_decay = (
        optim.weight_decay if optim.alpha_weight_decay is None else optim.alpha_weight_decay
    )
    groups = [{"params": weights, "weight_decay": optim.weight_decay}]
    if clip_levels:
        groups.append({"params": clip_levels, "weight_decay": alpha_decay})
    if optim.name == "sgd":
        return torch.optim.SGD(
            groups, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov
        )
    cls = torch.optim.Adam if optim.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=optim.lr)


def lr_factor(step: int, total: int, schedule: ScheduleSection) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total``.

    ``cosine``: linear warm-up then cosine to 0. ``onecycle``: up from lr/25 over the first 30%
    (or the warm-up), then cosine down to 0. ``step``: times ``gamma`` at each milestone
    fraction. ``constant``: warm-up then 1.
    """
    warmup = schedule.warmup_steps
    if schedule.name == "onecycle":
        warmup = max(warmup, int(0.3 * total))
        if step < warmup:
            return 0.04 + 0.96 * step / warmup
    elif step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule.name in ("cosine", "onecycle"):
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule.name == "step":
        return schedule.gamma ** sum(step >= m * total for m in schedule.milestones)
    return 1.0


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: ScheduleSection, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule (a plain LambdaLR, so its state loads with ``weights_only=True``)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, schedule)
    )


def make_loader(
    recipe: Recipe,
    train: bool,
    device: torch.device,
    limit: int | None = None,
    shard: tuple[int, int] = (0, 1),
    fast: bool = False,
) -> Loader:
    """The recipe's train or test split; ``limit`` keeps its first images (after the subset).

    ``shard`` is this process's ``(rank, world)`` in a distributed run (training split only);
    ``fast`` keeps the split on the device and produces channels-last batches.
    """
    data = recipe.data
    info = DATASETS[data.dataset]
    images, labels = load_split(data.dataset, train, data.root)
    subset = data.train_subset if train else data.test_subset
    keep = min(n for n in (subset, limit, len(labels)) if n is not None)
    images, labels = images[:keep], labels[:keep]
    layout = dict(device=device, resident=fast, channels_last=fast)
    if not train:
        return Loader(images, labels, data.eval_batch_size, info.mean, info.std, **layout)
    return Loader(
        images,
        labels,
        data.batch_size,
        info.mean,
        info.std,
        shuffle=True,
        augment=data.augment and data.dataset == "cifar10",
        generator=torch.Generator().manual_seed(recipe.train.seed),
        shard=shard,
        **layout,
    )


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RecipeError(f"train.device: {device!r} requested but CUDA is not available; use auto")
    return torch.device(device)
