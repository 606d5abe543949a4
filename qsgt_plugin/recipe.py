"""Typed experiment recipes: YAML (``safe_load``) validated into pydantic models.

Precedence: the defaults below < the recipe file < ``--set key.path=value`` overrides. Unknown
keys and bad values fail with the key path, the bad value, the allowed values and, for a
misspelled key, the closest allowed one.
"""

from __future__ import annotations

import difflib
import importlib.resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qsgt_plugin.common.files import atomic_output
from qsgt_plugin.errors import RecipeError

__all__ = [
    "Recipe",
    "RecipeError",
    "apply_overrides",
    "find_recipe",
    "load_recipe",
    "packaged_recipes",
    "parse_recipe",
    "parse_run_recipe",
    "save_recipe",
]


class _Section(BaseModel):
    # inf and nan are never a setting: an infinite rate or clipping level trains to NaN
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSection(_Section):
    name: str = "resnet20"
    """A timm model name; plugins' models included (``qsgt models``)."""
    kwargs: dict[str, Any] = {}
    """Passed to ``timm.create_model`` (``num_classes``, ``in_chans``, ``shortcut``, ...)."""
    init_from: str | None = None
    """A run directory or checkpoint whose weights start this run (e.g. a float run)."""


class QuantSection(_Section):
    enabled: bool = True
    method: str = "pact"
    weight_quant: str | None = None
    weight_bits: int = Field(4, ge=2, le=8)
    act_bits: int = Field(4, ge=2, le=8)
    first_last_bits: int | None = Field(8, ge=2, le=8)
    first_last_weight_quant: str | None = "int_per_channel"
    alpha_init: Literal["calibrate"] | float = 10.0
    """Initial clipping level, or ``calibrate``: a percentile of each activation on the first
    ``calibration_images`` training images (``qsgt_plugin.quant.calibrate_alphas``)."""
    calibration_images: int = Field(512, ge=1)
    alpha_percentile: float = Field(99.9, gt=0, le=100)
    overrides: dict[str, dict[Literal["weight_bits", "act_bits"], int | None] | None] = {}

    @property
    def label(self) -> str:
        """``w4a4`` (weight and activation bits), ``fp32`` when quantization is off, ``mixed``
        when an override sets a width other than ``weight_bits``, ``act_bits`` and
        ``first_last_bits`` (per-layer bit widths, e.g. from ``qsgt mixed-precision``)."""
        if not self.enabled:
            return "fp32"
        usual = {self.weight_bits, self.act_bits, self.first_last_bits, None}
        widths = {b for setting in self.overrides.values() if setting for b in setting.values()}
        return "mixed" if widths - usual else f"w{self.weight_bits}a{self.act_bits}"


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
    dataset: str = "mnist"
    """A registered dataset: ``mnist``, ``cifar10`` or one a plugin adds (checked on build)."""
    root: str | None = None
    """Dataset folder in torchvision's layout; else $QSGT_DATA; else a download cache."""
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(1000, ge=1)
    augment: bool = True
    """Random crop and flips of the training images; false turns both off."""
    crop_padding: int | None = Field(None, ge=0)
    """Random-crop padding; None: the dataset's (CIFAR-10 4, MNIST 0: no crop)."""
    flip: Literal["none", "random", "alternate"] | None = None
    """Horizontal flips; None: the dataset's (CIFAR-10 random, MNIST none)."""
    train_subset: int | None = Field(None, ge=1)
    test_subset: int | None = Field(None, ge=1)
    verify: bool = True
    """Check the files against the official release's md5s and the labels' range."""


class OptimSection(_Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(2e-4, ge=0)
    alpha_weight_decay: float | None = Field(None, ge=0)
    """L2 on the clipping levels; None uses weight_decay, as PACT does."""

    @property
    def alpha_decay(self) -> float:
        """The L2 coefficient on the clipping levels that applies."""
        return self.weight_decay if self.alpha_weight_decay is None else self.alpha_weight_decay


class ScheduleSection(_Section):
    name: Literal["cosine", "onecycle", "step", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    milestones: list[float] = [0.5, 0.75]
    """For ``step``: fractions of the run at which the rate is multiplied by ``gamma``."""
    gamma: float = Field(0.1, gt=0)

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, value: list[float]) -> list[float]:
        if not all(0 < m < 1 for m in value):
            raise ValueError("milestones are fractions of the run, each strictly between 0 and 1")
        return value


class TrainSection(_Section):
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (the schedule spans them); wins over ``epochs``."""
    seed: int = Field(0, ge=0, le=2**63 - 1)
    """The run's random seed (torch's generators take 0 .. 2**63 - 1 here)."""
    device: str = "auto"
    log_every: int = Field(50, ge=1)
    checkpoint_every: int | None = Field(None, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    """Label smoothing of the cross-entropy (SGT's KL term is unchanged)."""
    ema: float | None = Field(None, gt=0, lt=1)
    """Decay of an exponential moving average of the weights, alphas and BatchNorm statistics
    included (timm's ModelEmaV3, with warm-up); the average is what is evaluated and saved as
    the checkpoints' model. None: off."""
    fast_path: Literal["auto"] | bool = "auto"
    """Dataset on the device as uint8, augmentation there in batches; auto: on."""
    precision: Literal["fp32", "bf16", "auto"] = "auto"
    """Forward passes of training (SGT's included) under bf16 autocast, or float32; auto: bf16
    where the device has it natively (CPUs with AVX512-BF16 or AMX, CUDA from compute capability
    8.0). Evaluation, export and the attribution metrics stay float32. The run's recipe.yaml
    records what auto resolved to."""
    channels_last: Literal["auto"] | bool = "auto"
    """Model and batches in channels-last memory; auto: on (CPU and CUDA, where it measured
    faster). The run's recipe.yaml records what auto resolved to."""
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

    @property
    def label(self) -> str:
        """Short description: ``w4a4``, ``fp32``, ``mixed``, with ``+SGT``."""
        return self.quant.label + ("+SGT" if self.sgt.enabled else "")


def packaged_recipes() -> dict[str, Path]:
    """The study's recipes shipped with the package, by name (``quickstart``,
    ``finetune/cifar10-resnet20-w4a4-sgt-finetune``): what ``qsgt recipes`` lists."""
    root = Path(str(importlib.resources.files("qsgt_plugin") / "recipes"))
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.rglob("*.yaml"))}


def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe file: ``name_or_path`` itself where it is a file, else the packaged recipe of
    that name (``quickstart``, ``quickstart.yaml`` and the source tree's
    ``qsgt_plugin/recipes/quickstart.yaml`` alike), so a recipe is found outside a clone.

    Raises:
        RecipeError: neither a file nor a packaged recipe's name.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    key = path.as_posix().removesuffix(".yaml").removesuffix(".yml")
    for prefix in ("qsgt_plugin/recipes/", "recipes/"):
        key = key.removeprefix(prefix)
    packaged = packaged_recipes()
    if key in packaged:
        return packaged[key]
    close = difflib.get_close_matches(key, packaged, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise RecipeError(
        f"recipe file not found: {name_or_path}, and no packaged recipe has that name; "
        f"{hint}`qsgt recipes` lists them"
    )


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe (and the recipes it builds on), apply overrides and validate.

    ``path`` is a file, or the name of a packaged recipe (:func:`packaged_recipes`).

    A recipe may name another as ``base: other.yaml`` (relative to its own folder) and state
    only its differences: sections merge key by key, the recipe's own values win, and a
    setting's value (a list, or a mapping such as ``model.kwargs``) replaces the base's whole,
    so ``quant: {overrides: {}}`` clears the base's overrides. Bases may have bases; the run's
    ``recipe.yaml`` is the resolved whole.
    """
    path = find_recipe(path)
    data = _read_with_bases(path, ())
    data = apply_overrides(data, overrides)
    if not data:  # nothing in the file nor on the command line: not a run of every default
        raise RecipeError(
            f"{path} is empty (or only comments): a recipe states at least what it trains, e.g. "
            "data: {dataset: mnist}; see `qsgt recipes` (quickstart)"
        )
    return parse_recipe(data, source=str(path))


MAX_BASES = 8
"""How deep ``base:`` chains may go."""


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> dict:
    data = _read(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise RecipeError(f"{path}: base must be the path of another recipe, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in chain or base_path == path.resolve():
        loop = " -> ".join(str(p) for p in (*chain, path.resolve(), base_path))
        raise RecipeError(f"{path}: the bases form a loop ({loop}); remove one base:")
    if len(chain) >= MAX_BASES:
        raise RecipeError(f"{path}: more than {MAX_BASES} bases deep; flatten the chain")
    if not base_path.is_file():
        raise RecipeError(
            f"{path}: its base {base} is not a file (looked for {base_path}); base: is "
            "relative to the recipe's own folder"
        )
    return _merge(_read_with_bases(base_path, (*chain, path.resolve())), data)


def _merge(base: dict, changes: dict, schema: type[BaseModel] | None = Recipe) -> dict:
    """``base`` with ``changes`` on top (plain data, new objects).

    Sections (``quant:``, ``train:``) merge key by key. A setting's value replaces the base's
    whole, whatever its type: a list, and a mapping setting too (``model.kwargs``,
    ``quant.overrides``, ``sgt.attribution_kwargs``), so ``overrides: {}`` clears the base's.
    """
    out = dict(base)
    for key, value in changes.items():
        section = _section_type(schema, key)
        if isinstance(value, dict) and isinstance(out.get(key), dict) and section is not None:
            out[key] = _merge(out[key], value, section)
        else:
            out[key] = value
    return out


def _section_type(schema: type[BaseModel] | None, key: str) -> type[BaseModel] | None:
    """The section model ``key`` names in ``schema``, None for a setting (or an unknown key,
    which validation then refuses)."""
    field = schema.model_fields.get(key) if schema is not None else None
    kind = field.annotation if field is not None else None
    return kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None


def _read(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecipeError(f"recipe file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
        _refuse_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader), str(path))
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    _check_size(data, str(path))
    return data


def _refuse_duplicate_keys(root: yaml.Node | None, source: str, prefix: str = "") -> None:
    """YAML keeps the last of two equal keys and drops the first silently; refuse instead,
    naming the key's path and both lines."""
    stack: list[tuple[yaml.Node, str]] = [(root, prefix)] if root is not None else []
    seen: set[int] = set()  # an alias is the same node: walked once
    while stack:
        node, where = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(node.value))
        if not isinstance(node, yaml.MappingNode):
            continue
        lines: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else repr(key.value)
            path = f"{where}.{name}" if where else name
            line = key.start_mark.line + 1
            if name in lines and name != "<<":
                raise RecipeError(
                    f"{source}: {_printable(path)} is given twice (lines {lines[name]} and "
                    f"{line}); YAML would keep only the last. Remove one"
                )
            lines[name] = line
            stack.append((value, path))


MAX_VALUES = 10_000
"""Values a recipe may hold once YAML aliases are expanded (a real one holds about 60)."""


def _check_size(data: Any, source: str) -> None:
    """Refuse a document whose aliases expand it beyond :data:`MAX_VALUES` (an alias bomb).

    ``safe_load`` shares aliased objects, so the document is small in memory; anything that
    walks it (validation, an error message) would expand it.
    """
    count, stack = 0, [data]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise RecipeError(
                f"{source} expands to more than {MAX_VALUES:,} values (YAML aliases?); a recipe "
                "is a few dozen keys. Refused"
            )
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """``["optim.lr=0.05", "train.epochs=2"]`` applied to a nested dict (values parsed as YAML)."""
    data = yaml.safe_load(yaml.safe_dump(data))  # a deep copy of plain data
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set expects key.path=value, got {item!r}")
        try:
            value = yaml.safe_load(raw)
            _refuse_duplicate_keys(yaml.compose(raw, Loader=yaml.SafeLoader), "--set", key)
        except yaml.YAMLError:
            value = raw
        _check_size(value, f"--set {key}")
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
    _check_size(data, source)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(error) for error in exc.errors()]
    lines = "\n".join(f"  - {p}" for p in problems)
    raise RecipeError(f"invalid recipe {source}:\n{lines}")


LEGACY_TRAIN = {"precision": "fp32", "channels_last": False}
"""What a run trained before these keys existed (2026-12-02) did: float32, contiguous memory.
A saved recipe without them means that, not today's ``auto``."""


def parse_run_recipe(data: dict, source: str = "the checkpoint") -> Recipe:
    """Validate the recipe a run saved, reading a key it predates as what that run did."""
    if isinstance(data, dict) and isinstance(data.get("train", {}), dict):
        data = {**data, "train": {**LEGACY_TRAIN, **data.get("train", {})}}
    return parse_recipe(data, source=source)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the fully resolved recipe (every default spelled out)."""
    with atomic_output(path) as tmp:
        tmp.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))


def _describe(error: dict) -> str:
    # A key that would break the message's lines (a newline, a control character) is quoted.
    loc = [_printable(str(part)) for part in error["loc"] if part != "[key]"]
    path = ".".join(loc)
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = difflib.get_close_matches(loc[-1], allowed, n=1)
        suggestion = f"did you mean {hint[0]!r}? " if hint else ""
        return f"{path}: unknown key; {suggestion}allowed: {', '.join(allowed)}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{path}: {message} (got {error.get('input')!r})"


def _printable(key: str) -> str:
    return key if key.isprintable() else repr(key)


def _allowed_keys(loc: list[str]) -> list[str]:
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
