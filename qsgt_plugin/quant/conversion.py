"""``convert()``: quantize any float CNN with a registered method (PACT by default)."""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from torch import Tensor, nn

from qsgt_plugin.quant.builtin import BUILTINS
from qsgt_plugin.quant.functional import FunctionalCallSites, FunctionalTrace
from qsgt_plugin.quant.layers import (
    ACTIVATIONS,
    WEIGHT_LAYERS,
    CallSiteActivation,
    QuantAct,
    is_quant_layer,
    quant_act,
    quant_weight_layer,
)
from qsgt_plugin.quant.method import QuantMethod, Resolver, WeightQuantizer
from qsgt_plugin.quant.pact import ALPHA_MIN
from qsgt_plugin.quant.trace import CallTrace, example_input, trace_calls

__all__ = ["MAX_BITS", "MIN_BITS", "ConversionSummary", "QuantizationWarning", "convert"]

MIN_BITS, MAX_BITS = 2, 8
OVERRIDE_KEYS = ("weight_bits", "act_bits")
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


class QuantizationWarning(UserWarning):
    """Some layers of a converted model stay in floating point."""


@dataclass
class ConversionSummary:
    """What ``convert`` did, layer by layer (``qmodel.qsgt_summary``).

    Attributes:
        method, weight_quant: names of the activation method and (inner layers') weight quantizer.
        quantized: layer name -> ``"Conv2d w4 dorefa"``, ``"ReLU a4"``,
            ``"ReLU a4 x2 call sites"``.
        kept_float: layers left float by the first/last policy or an override.
        unquantized: layers ``convert`` cannot quantize (GELU, SiLU, Conv2d subclasses, ...).
    """

    method: str
    weight_quant: str
    quantized: dict[str, str] = field(default_factory=dict)
    kept_float: dict[str, str] = field(default_factory=dict)
    unquantized: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"method={self.method} weight_quant={self.weight_quant}"]
        for title, table in (
            ("quantized", self.quantized),
            ("kept float", self.kept_float),
            ("not quantized", self.unquantized),
        ):
            lines += [f"{title} ({len(table)}):"] + [f"  {k}: {v}" for k, v in table.items()]
        return "\n".join(lines)


def convert(
    model: nn.Module,
    bits: int = 4,
    *,
    method: str | QuantMethod = "pact",
    weight_bits: int | None = None,
    act_bits: int | None = None,
    weight_quant: str | WeightQuantizer | None = None,
    first_last_bits: int | None = 8,
    first_last_weight_quant: str | WeightQuantizer | None = "int_per_channel",
    overrides: dict[str, dict[str, int | None] | None] | None = None,
    alpha_init: float = 10.0,
    example_inputs: Tensor | tuple | None = None,
    inplace: bool = False,
    registry: Resolver | None = None,
) -> nn.Module:
    """Quantize a float model: Conv/Linear weights and ReLU/ReLU6 activations.

    Each ReLU/ReLU6 call site gets its own activation quantizer (``alpha`` for PACT), even when
    the float model calls one module at several places. BatchNorm stays for training.

    Args:
        model: any ``nn.Module`` (timm, torchvision, your own).
        bits: default bit width of weights and activations, 2..8.
        method: a QuantMethod, or the name of one: built-in names resolve here; names that
            plugins registered through ``qsgt_plugin.convert`` (or ``registry``).
        weight_bits, act_bits: override ``bits`` for weights / activations.
        weight_quant: registered weight quantizer; the method's default when None.
        first_last_bits: weight bits of the first and last weight layers in execution order;
            None keeps them float (PACT Table 1).
        first_last_weight_quant: weight quantizer of those two layers; None uses
            ``weight_quant``. The default keeps the weights' scale: DoReFa maps every tensor to
            [-1, 1], harmless before BatchNorm but it inflates the classifier's logits.
        overrides: ``{pattern: {"weight_bits": k, "act_bits": k}}`` by module name
            (``fnmatch``; later patterns win); a value None, or ``{pattern: None}``, keeps float.
        alpha_init: initial clipping level of every activation.
        example_inputs: input for the dry run that finds call sites; guessed when None.
        inplace: modify ``model`` itself instead of a copy.
        registry: where names are resolved (``qsgt_plugin.get_registry()`` for plugins'); the
            built-ins when None.

    Returns:
        The converted model, with a :class:`ConversionSummary` as ``.qsgt_summary``.

    Raises:
        ValueError: bits outside 2..8, an unknown method or weight quantizer, a bad override or
            one that matches no layer, an already converted model.
    """
    plan = _plan(
        registry or BUILTINS, method, bits, weight_bits, act_bits, weight_quant, first_last_bits,
        first_last_weight_quant, overrides, alpha_init,
    )  # fmt: skip
    if any(is_quant_layer(m) for m in model.modules()):
        raise ValueError("model already contains Brevitas quant layers; convert a float model")
    if not inplace:
        model = copy.deepcopy(model)
    names = _names_by_module(model)
    inputs = example_input(model) if example_inputs is None else example_inputs
    trace = trace_calls(model, inputs, (*WEIGHT_LAYERS, *ACTIVATIONS))
    summary = ConversionSummary(plan.method.name, plan.wq.name)
    for module in _unique_modules(model):
        new = _quantized(module, names[id(module)], model, trace, plan, summary)
        if new is not None:
            model = _replace(model, names[id(module)], new)
    _convert_functional(model, trace.functional, names, plan, summary)
    unmatched = [p for p in plan.overrides if p not in plan.matched]
    if unmatched:
        sample = ", ".join(list(summary.quantized)[:6])
        raise ValueError(
            f"override pattern(s) {unmatched} match no Conv/Linear/ReLU layer; "
            f"layer names look like: {sample}"
        )
    if summary.unquantized:
        listed = ", ".join(f"{k} ({v})" for k, v in summary.unquantized.items())
        warnings.warn(
            f"convert(): {len(summary.unquantized)} layer(s) stay float: {listed}. "
            "See qmodel.qsgt_summary.",
            QuantizationWarning,
            stacklevel=2,
        )
    model.qsgt_summary = summary
    return model


@dataclass
class _Plan:
    """convert()'s arguments, checked and resolved."""

    method: QuantMethod
    wq: WeightQuantizer
    wq_ends: WeightQuantizer
    weight_bits: int
    act_bits: int
    first_last_bits: int | None
    overrides: dict
    alpha_init: float
    matched: set[str] = field(default_factory=set)  # override patterns that matched a layer
    ends: set[int] = field(default_factory=set)  # ids of the first and last weight layers

    def act_quant(self, bits: int):
        return self.method.act_quant.let(bit_width=bits, alpha_init=float(self.alpha_init))


def _plan(
    registry: Resolver,
    method: str | QuantMethod,
    bits: int,
    weight_bits: int | None,
    act_bits: int | None,
    weight_quant: str | WeightQuantizer | None,
    first_last_bits: int | None,
    first_last_weight_quant: str | WeightQuantizer | None,
    overrides: Any,
    alpha_init: float,
) -> _Plan:
    weight_bits = _check_bits("weight_bits", bits if weight_bits is None else weight_bits)
    act_bits = _check_bits("act_bits", bits if act_bits is None else act_bits)
    first_last_bits = _check_bits("first_last_bits", first_last_bits, allow_none=True)
    overrides = _check_overrides(overrides)
    if not isinstance(method, QuantMethod):
        method = registry.method(method)
    wq = _weight_quantizer(registry, weight_quant or method.weight_quant)
    wq_ends = _weight_quantizer(registry, first_last_weight_quant or wq)
    if alpha_init == "calibrate":
        raise ValueError(
            "alpha_init='calibrate' is a recipe setting; from Python, convert with a number and "
            "then call qsgt_plugin.quant.calibrate_alphas(qmodel, batches)"
        )
    if isinstance(alpha_init, bool) or not isinstance(alpha_init, (int, float)):
        raise ValueError(f"alpha_init must be a number, got {alpha_init!r}")
    if not (alpha_init > ALPHA_MIN and math.isfinite(alpha_init)):
        raise ValueError(
            f"alpha_init must be a finite number greater than {ALPHA_MIN}, got {alpha_init}"
        )
    return _Plan(method, wq, wq_ends, weight_bits, act_bits, first_last_bits, overrides, alpha_init)


def _quantized(
    module: nn.Module,
    names: list[str],
    model: nn.Module,
    trace: CallTrace,
    plan: _Plan,
    summary: ConversionSummary,
) -> nn.Module | None:
    """The quantized replacement of ``module``, or None where it stays (recorded in summary)."""
    label, kind = names[0] or "<root>", type(module).__name__
    if type(module) in WEIGHT_LAYERS:
        if not plan.ends:  # the first and last weight layers in execution order
            executed = [m for m in trace.order if type(m) in WEIGHT_LAYERS]
            plan.ends = {id(executed[0]), id(executed[-1])} if executed else {-1}
        end = id(module) in plan.ends
        default = plan.first_last_bits if end else plan.weight_bits
        wbits = _resolve(plan.overrides, names, "weight_bits", default, plan.matched)
        if wbits is None:
            summary.kept_float[label] = kind
            return None
        quantizer = plan.wq_ends if end else plan.wq
        summary.quantized[label] = f"{kind} w{wbits} {quantizer.name}"
        return quant_weight_layer(module, quantizer.weight_quant.let(bit_width=wbits))
    if type(module) in ACTIVATIONS:
        abits = _resolve(plan.overrides, names, "act_bits", plan.act_bits, plan.matched)
        if abits is None:
            summary.kept_float[label] = kind
            return None
        n_sites = trace.calls[id(module)]
        summary.quantized[label] = f"{kind} a{abits}" + (
            f" x{n_sites} call sites" if n_sites > 1 else ""
        )
        if n_sites == 1:
            return quant_act(module, plan.act_quant(abits))
        new = CallSiteActivation(quant_act(module, plan.act_quant(abits)) for _ in range(n_sites))
        _owner(model, names).register_forward_pre_hook(new.reset_call_sites)
        return new
    reason = _unsupported(module)
    if reason:
        summary.unquantized[label] = reason
    return None


def _convert_functional(
    model: nn.Module,
    functional: FunctionalTrace,
    names: dict[int, list[str]],
    plan: _Plan,
    summary: ConversionSummary,
) -> None:
    """Quantize the activations the model calls as functions; list the ones without a form."""
    for key, kinds in functional.quantizable.items():
        owner = functional.owners[key]
        owner_names = names.get(id(owner), [""])
        label = f"{owner_names[0]}.qsgt_functional".lstrip(".")
        calls = ", ".join(f"F.{k.__name__.lower()}" for k in kinds)
        abits = _resolve(plan.overrides, owner_names, "act_bits", plan.act_bits, plan.matched)
        if abits is None:
            summary.kept_float[label] = f"{calls} (functional)"
            continue
        act_quant = plan.act_quant(abits)
        sites = FunctionalCallSites(owner, [QuantAct(ACTIVATIONS[k], act_quant) for k in kinds])
        owner.add_module("qsgt_functional", sites.train(owner.training))
        owner.register_forward_pre_hook(sites.enter)
        owner.register_forward_hook(sites.exit, always_call=True)
        summary.quantized[label] = f"{calls} a{abits} (functional, {len(kinds)} call sites)"
    for key, kinds in functional.other.items():
        owner_name = names.get(id(functional.owners[key]), ["<root>"])[0] or "<root>"
        for kind in sorted(set(kinds)):
            summary.unquantized[f"{owner_name}: F.{kind}"] = "no quantized form of this activation"
    for name in sorted(set(functional.unowned)):
        summary.unquantized[f"{name} outside any module"] = "a call site convert() cannot reach"


def _weight_quantizer(registry: Resolver, quantizer: str | WeightQuantizer) -> WeightQuantizer:
    if isinstance(quantizer, WeightQuantizer):
        return quantizer
    return registry.weight_quantizer(quantizer)


def _check_bits(name: str, value: Any, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_BITS <= value <= MAX_BITS:
        allowed = f"an integer {MIN_BITS}..{MAX_BITS}" + (" or None (float)" if allow_none else "")
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def _check_overrides(overrides: Any) -> dict[str, dict[str, int | None] | None]:
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise ValueError(f"overrides must be a dict of pattern -> settings, got {overrides!r}")
    for pattern, setting in overrides.items():
        if setting is None:
            continue
        if not isinstance(setting, dict):
            raise ValueError(
                f"overrides[{pattern!r}] must be a dict with keys {OVERRIDE_KEYS} or None, "
                f"got {setting!r}"
            )
        for key, value in setting.items():
            if key not in OVERRIDE_KEYS:
                raise ValueError(
                    f"overrides[{pattern!r}] has unknown key {key!r}; allowed: {OVERRIDE_KEYS}"
                )
            _check_bits(f"overrides[{pattern!r}][{key!r}]", value, allow_none=True)
    return overrides


def _resolve(overrides: dict, names: list[str], key: str, default: int | None, matched: set):
    value = default
    for pattern, setting in overrides.items():
        if any(fnmatchcase(n, pattern) for n in names):
            matched.add(pattern)
            if setting is None:
                value = None
            elif key in setting:
                value = setting[key]
    return value


def _names_by_module(model: nn.Module) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    return names


def _unique_modules(model: nn.Module) -> list[nn.Module]:
    """Modules to visit, without descending into ones that will be replaced."""
    out, stack, seen = [], [model], set()
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        out.append(module)
        if type(module) not in WEIGHT_LAYERS and type(module) not in ACTIVATIONS:
            stack.extend(reversed(list(module.children())))
    return out


def _owner(model: nn.Module, names: list[str]) -> nn.Module:
    """The innermost module whose forward encloses every call of a module with these names."""
    parents = [n.split(".")[:-1] for n in names]
    common = []
    for parts in zip(*parents, strict=False):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    return model.get_submodule(".".join(common))


def _replace(model: nn.Module, names: list[str], new: nn.Module) -> nn.Module:
    """``new`` in place of the module at every one of ``names`` (the root when a name is "")."""
    for name in names:
        if not name:
            return new
        model.set_submodule(name, new)
    return model


def _unsupported(module: nn.Module) -> str | None:
    """Why a module that looks quantizable stays float; None for containers, norms, pools."""
    kind = type(module).__name__
    if isinstance(module, tuple(WEIGHT_LAYERS)):
        return f"{kind}: subclass of {type(module).__mro__[1].__name__} with its own forward"
    origin = type(module).__module__
    if origin == "torch.nn.modules.activation" or origin.startswith("timm.layers.activations"):
        return f"{kind}: no quantized form of this activation"
    own_params = any(True for _ in module.parameters(recurse=False))
    if own_params and not isinstance(module, _NORMS):
        return f"{kind}: layer type not supported"
    return None
