"""Typed experiment recipes: YAML (``safe_load``) validated into pydantic models.

Precedence: the defaults below < the recipe file < ``--set key.path=value`` overrides. Unknown
keys and bad values fail with the key path, the bad value, the allowed values and, for a
misspelled key, the closest allowed one.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["Recipe", "RecipeError", "apply_overrides", "load_recipe", "parse_recipe", "save_recipe"]

Bits = Field(ge=2, le=8)


class RecipeError(ValueError):
    """A recipe that cannot be read or does not validate; the message lists every problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    name: str = "resnet20"
    """A timm model name; plugins' models included (``qsgt models``)."""
    kwargs: dict[str, Any] = {}
    """Passed to ``timm.create_model`` (``num_classes``, ``in_chans``, ``shortcut``, ...)."""


class QuantSection(_Section):
    enabled: bool = True
    method: str = "pact"
    weight_quant: str | None = None
    weight_bits: int = Field(4, ge=2, le=8)
    act_bits: int = Field(4, ge=2, le=8)
    first_last_bits: int | None = Field(8, ge=2, le=8)
    first_last_weight_quant: str | None = "int_per_channel"
    alpha_init: float = Field(10.0, gt=0)
    overrides: dict[str, dict[Literal["weight_bits", "act_bits"], int | None] | None] = {}


class SGTSection(_Section):
    enabled: bool = False
    mask_fraction: float = Field(0.5, ge=0, le=1)
    kl_weight: float = Field(1.0, ge=0)
    attribution: str = "Saliency"
    attribution_kwargs: dict[str, Any] = {}
    signed: bool = False
    fill: Literal["uniform", "mean", "constant"] = "uniform"
    fill_value: float = 0.0
    fused: bool = False


class DataSection(_Section):
    dataset: Literal["mnist", "cifar10"] = "mnist"
    root: str | None = None
    """Dataset folder in torchvision's layout; else $QSGT_DATA; else a download cache."""
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(1000, ge=1)
    augment: bool = True
    """CIFAR-10: pad-4 random crop and horizontal flip. MNIST is not augmented."""
    train_subset: int | None = Field(None, ge=1)
    test_subset: int | None = Field(None, ge=1)


class OptimSection(_Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(2e-4, ge=0)
    alpha_weight_decay: float | None = Field(None, ge=0)
    """L2 on the clipping levels; None uses weight_decay, as PACT does."""


class ScheduleSection(_Section):
    name: Literal["cosine", "onecycle", "step", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    milestones: list[float] = [0.5, 0.75]
    """For ``step``: fractions of the run at which the rate is multiplied by ``gamma``."""
    gamma: float = Field(0.1, gt=0)


class TrainSection(_Section):
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (the schedule spans them); wins over ``epochs``."""
    seed: int = 0
    device: str = "auto"
    log_every: int = Field(50, ge=1)
    checkpoint_every: int | None = Field(None, ge=1)
    fast_path: Literal["auto"] | bool = "auto"
    """Dataset on the device as uint8, augmentation there, channels-last; auto: on CUDA."""
    compile: Literal["auto"] | bool = "auto"
    """torch.compile the model (eager if that fails, with a log line); auto: on CUDA."""

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("device must be auto, cpu, cuda or cuda:N")


class OutputSection(_Section):
    dir: str = "runs/run"


class Recipe(_Section):
    """A whole experiment. Every field has a default; a recipe file states the differences."""

    name: str = "run"
    model: ModelSection = ModelSection()
    quant: QuantSection = QuantSection()
    sgt: SGTSection = SGTSection()
    data: DataSection = DataSection()
    optim: OptimSection = OptimSection()
    schedule: ScheduleSection = ScheduleSection()
    train: TrainSection = TrainSection()
    output: OutputSection = OutputSection()


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe, apply ``key.path=value`` overrides and validate."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecipeError(f"recipe file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    return parse_recipe(apply_overrides(data, overrides), source=str(path))


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """``["optim.lr=0.05", "train.epochs=2"]`` applied to a nested dict (values parsed as YAML)."""
    data = yaml.safe_load(yaml.safe_dump(data))  # a deep copy of plain data
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set expects key.path=value, got {item!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        *parents, leaf = key.split(".")
        node = data
        for depth, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parents[: depth + 1])
                raise RecipeError(f"--set {item!r}: {where} is a value, not a section")
            node = child
        node[leaf] = value
    return data


def parse_recipe(data: dict, source: str = "recipe") -> Recipe:
    """Validate a recipe dict; ``RecipeError`` lists each problem with its key path."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(error) for error in exc.errors()]
    lines = "\n".join(f"  - {p}" for p in problems)
    raise RecipeError(f"invalid recipe {source}:\n{lines}")


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the fully resolved recipe (every default spelled out)."""
    Path(path).write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))


def _describe(error: dict) -> str:
    loc = [str(part) for part in error["loc"] if part != "[key]"]
    path = ".".join(loc)
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = difflib.get_close_matches(loc[-1], allowed, n=1)
        suggestion = f"did you mean {hint[0]!r}? " if hint else ""
        return f"{path}: unknown key; {suggestion}allowed: {', '.join(allowed)}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{path}: {message} (got {error.get('input')!r})"


def _allowed_keys(loc: list[str]) -> list[str]:
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
