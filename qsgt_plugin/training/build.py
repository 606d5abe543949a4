"""Objects a recipe describes: model, data loaders, SGT objective, optimizer, schedule, device.

Everything here checks the recipe against what it builds, so that a recipe that cannot run is
a :class:`~qsgt_plugin.errors.RecipeError` before any run directory is touched.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

import timm
import torch
from torch import Tensor, nn

from qsgt_plugin.common.modes import eval_mode
from qsgt_plugin.errors import RecipeError, UsageError
from qsgt_plugin.plugins import convert, get_registry
from qsgt_plugin.quant import alphas, calibrate_alphas
from qsgt_plugin.recipe import (
    DataSection,
    OptimSection,
    QuantSection,
    Recipe,
    ScheduleSection,
    SGTSection,
    parse_recipe,
)
from qsgt_plugin.sgt import SaliencyGuidedTraining
from qsgt_plugin.training.data import Loader, get_dataset, load_split

__all__ = [
    "CALIBRATION_KEYS",
    "build_model",
    "calibrate",
    "check_buildable",
    "check_offset",
    "check_recipe",
    "lr_factor",
    "make_criterion",
    "make_loader",
    "make_optimizer",
    "make_scheduler",
    "make_sgt",
    "resolve_device",
]

CALIBRATION_KEYS = frozenset({"calibration_images", "alpha_percentile"})
"""Keys of the quant section that feed :func:`calibrate`, not ``convert()``."""
# Model options a recipe may not set: they make timm read files or download.
_REFUSED_KWARGS = frozenset({"pretrained", "pretrained_cfg", "pretrained_cfg_overlay"})


def check_recipe(recipe: Recipe) -> Recipe:
    """Check what only the registries and the dataset can tell; fill in the dataset's shape.

    Returns the recipe with ``model.kwargs`` completed by the dataset's ``num_classes`` and
    ``in_chans`` where the recipe leaves them out.

    Raises:
        RecipeError: an unknown model, method, weight quantizer or dataset; model options that
            do not fit the dataset.
    """
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
    data = recipe.data
    try:
        info = get_dataset(data.dataset)
    except RecipeError as exc:
        info = None
        problems.append(str(exc))
    if data.train_subset is not None and data.train_subset < data.batch_size:
        problems.append(
            f"data.train_subset: {data.train_subset} images make less than one batch of "
            f"{data.batch_size}: every step would be an epoch with a full evaluation; use a "
            "train_subset of at least data.batch_size"
        )
    kwargs = dict(recipe.model.kwargs)
    fits = () if info is None else (("num_classes", info.num_classes), ("in_chans", info.shape[0]))
    for key, value in fits:
        if kwargs.setdefault(key, value) != value:
            problems.append(
                f"model.kwargs.{key}: {kwargs[key]!r} does not fit {recipe.data.dataset} "
                f"({value}); leave it out or set {value}"
            )
    refused = sorted(_REFUSED_KWARGS & set(kwargs))
    if refused:
        problems.append(f"model.kwargs: {', '.join(refused)} cannot be set (nothing downloads)")
    if problems:
        raise RecipeError("invalid recipe:\n" + "\n".join(f"  - {p}" for p in problems))
    return recipe.model_copy(update={"model": recipe.model.model_copy(update={"kwargs": kwargs})})


def check_buildable(recipe: Recipe) -> None:
    """Build the recipe's model, quantization and SGT objective once, on the CPU, and drop them.

    What only building tells (override patterns that match no layer, a clipping level below
    the quantizer's floor, an unknown attribution method) is then reported before anything
    about the output directory, and before any data is read.

    Raises:
        RecipeError: what :func:`build_model` or :func:`make_sgt` refuses.
    """
    example = example_batch(recipe.data.dataset)
    model = build_model(recipe.model.name, recipe.model.kwargs, recipe.quant, example)
    classes = get_dataset(recipe.data.dataset).num_classes
    with torch.no_grad(), eval_mode(model):
        output = model(example)
    if not isinstance(output, Tensor) or output.dim() != 2 or output.shape[1] != classes:
        got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise RecipeError(
            f"model: {recipe.model.name} outputs {got} for a batch of {len(example)}, but "
            f"{recipe.data.dataset} has {classes} classes: the model must output (N, {classes}) "
            "logits (its own num_classes option, in model.kwargs)"
        )
    sgt = make_sgt(model, recipe.sgt)
    if sgt is not None and sgt.active:
        # One saliency pass on the example: attribution_kwargs the method refuses (an unknown
        # name, IntegratedGradients' n_steps=-3) stop here, before the run directory exists.
        try:
            sgt.saliency(example, torch.zeros(len(example), dtype=torch.long))
        except Exception as exc:
            raise RecipeError(
                f"sgt.attribution_kwargs: {recipe.sgt.attribution} with "
                f"{recipe.sgt.attribution_kwargs} fails on a trial batch: "
                f"{type(exc).__name__}: {_first_line(exc)}"
            ) from None


def example_batch(dataset: str, n: int = 2) -> Tensor:
    """A random batch shaped like ``dataset``'s images (dry runs of a model)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, *get_dataset(dataset).shape, generator=generator)


def build_model(
    name: str,
    kwargs: dict[str, Any],
    quant: QuantSection | dict[str, Any] | None,
    example: Tensor | None = None,
) -> nn.Module:
    """``timm.create_model(name, **kwargs)``, converted when ``quant`` is enabled.

    ``example`` (a batch of the data's shape) is run through the model once, to find the
    activation call sites and to check that the model accepts the data.

    Raises:
        RecipeError: a model that timm cannot build with these options, that fails on
            ``example``, or a quantization setting ``convert()`` refuses.
    """
    get_registry()  # plugins' models are filed in timm's registry when the registry loads
    try:
        model = timm.create_model(name, **kwargs)
    except Exception as exc:  # timm raises TypeError, RuntimeError, ValueError, AssertionError
        raise RecipeError(
            f"model: timm cannot build {name!r} with {kwargs}: {_first_line(exc)}"
        ) from None
    if isinstance(quant, dict):  # a checkpoint's settings: validated like a recipe's
        quant = parse_recipe({"quant": quant}, source="the quantization settings").quant
    if example is not None:
        _dry_run(model, name, example)
    if quant is None or not quant.enabled:
        return model
    # The section's keys are convert()'s keyword arguments, but for calibration's.
    options = quant.model_dump(exclude={"enabled", *CALIBRATION_KEYS})
    if options["alpha_init"] == "calibrate":
        options["alpha_init"] = 10.0  # replaced by calibrate() before training starts
    try:
        return convert(model, **options, example_inputs=example, inplace=True)
    except ValueError as exc:
        raise RecipeError(f"quant: {exc}") from None


def _dry_run(model: nn.Module, name: str, example: Tensor) -> None:
    try:
        with torch.no_grad(), eval_mode(model):
            model(example)
    except Exception as exc:
        shape = "x".join(str(s) for s in example.shape[1:])
        raise RecipeError(
            f"model.name: {name} cannot run on {shape} images: {_first_line(exc)}. Choose a "
            "model for this image size (`qsgt models` lists the CIFAR ResNets)"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def calibrate(model: nn.Module, recipe: Recipe, device: torch.device) -> dict[str, float]:
    """Clipping levels from the first ``quant.calibration_images`` training images.

    The images are taken in order, unaugmented, so calibration draws no random numbers and
    every process of a distributed run computes the same alphas.
    """
    n = recipe.quant.calibration_images
    loader = make_loader(recipe, True, device, limit=n, calibration=True)
    return calibrate_alphas(model, loader, recipe.quant.alpha_percentile)


def make_sgt(model: nn.Module, sgt: SGTSection) -> SaliencyGuidedTraining | None:
    if not sgt.enabled:
        return None
    # The section's keys are SaliencyGuidedTraining's keyword arguments.
    try:
        return SaliencyGuidedTraining(model, **sgt.model_dump(exclude={"enabled"}))
    except ValueError as exc:
        raise RecipeError(f"sgt: {exc}") from None


def make_criterion(label_smoothing: float) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


def make_optimizer(model: nn.Module, optim: OptimSection) -> torch.optim.Optimizer:
    """One parameter group for the weights, one for the clipping levels (PACT's L2 on alpha)."""
    clip_levels = list(alphas(model).values())
    ids = {id(p) for p in clip_levels}
    weights = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    groups = [{"params": weights, "weight_decay": optim.weight_decay}]
    if clip_levels:
        groups.append({"params": clip_levels, "weight_decay": optim.alpha_decay})
    # foreach: one kernel per update step for all tensors instead of one per tensor (torch
    # turns it on for CUDA only; on the CPU it saves about 3 ms of a ResNet-20 step).
    if optim.name == "sgd":
        return torch.optim.SGD(
            groups, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov, foreach=True
        )
    cls = torch.optim.Adam if optim.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=optim.lr, foreach=True)


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
    calibration: bool = False,
    channels_last: bool = False,
    offset: int = 0,
) -> Loader:
    """The recipe's train or test split; ``limit`` keeps its first images (after the subset).

    ``shard`` is this process's ``(rank, world)`` in a distributed run (training split only);
    ``fast`` keeps the split on the device; ``channels_last`` produces channels-last batches;
    ``calibration`` gives the training images in order, unaugmented, in evaluation batches;
    ``offset`` drops the split's first images (before ``limit``).

    Raises:
        UsageError: an ``offset`` that leaves no image.
    """
    data = recipe.data
    info = get_dataset(data.dataset)
    check_offset(recipe, offset, train)
    images, labels = load_split(data.dataset, train, data.root, verify=data.verify)
    subset = data.train_subset if train else data.test_subset
    keep = min(n for n in (subset, len(labels)) if n is not None)
    end = keep if limit is None else min(keep, offset + limit)
    images, labels = images[offset:end], labels[offset:end]
    layout = dict(device=device, resident=fast, channels_last=channels_last)
    if not train or calibration:
        return Loader(images, labels, data.eval_batch_size, info.mean, info.std, **layout)
    padding, flip = _augmentation(data)
    return Loader(
        images,
        labels,
        data.batch_size,
        info.mean,
        info.std,
        shuffle=True,
        padding=padding,
        flip=flip,
        generator=torch.Generator().manual_seed(recipe.train.seed),
        shard=shard,
        **layout,
    )


def check_offset(recipe: Recipe, offset: int, train: bool = False) -> None:
    """``UsageError`` for an ``offset`` that leaves no image of the split (reads no data)."""
    data, info = recipe.data, get_dataset(recipe.data.dataset)
    subset = data.train_subset if train else data.test_subset
    whole = info.train_size if train else info.test_size
    size = whole if subset is None else min(subset, whole)
    if offset >= size:
        raise UsageError(
            f"--offset {offset}: the {data.dataset} {'training' if train else 'test'} split has "
            f"{size} images; use an offset below {size}"
        )


def _augmentation(data: DataSection) -> tuple[int, str]:
    """``(crop padding, flip mode)`` of the training images: the recipe's, else the dataset's."""
    if not data.augment:
        return 0, "none"
    info = get_dataset(data.dataset)
    padding = info.padding if data.crop_padding is None else data.crop_padding
    return padding, data.flip or info.flip


def resolve_device(device: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as a device; anything else is refused."""
    if not (device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", device)):
        raise RecipeError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RecipeError(f"train.device: {device!r} requested but CUDA is not available; use auto")
    return torch.device(device)
