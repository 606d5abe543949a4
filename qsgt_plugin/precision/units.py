"""Layers of a run as units of bit-width choice, and the run rebuilt with some units changed.

A *unit* is a Conv/Linear layer together with the activation that consumes its output: the
first ReLU / ReLU6 module called after it and before the next weight layer (ResNet-20: every
convolution and its ReLU; the classifier has none). Setting a unit to k bits sets the layer's
weights and that activation to k bits, through ``quant.overrides`` by exact module name, so a
variant is built the way ``qsgt train`` builds a recipe and loads the run's weights unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from brevitas.nn.quant_layer import QuantNonLinearActLayer, QuantWeightBiasInputOutputLayer
from torch import nn

from qsgt_plugin.quant import alphas
from qsgt_plugin.quant.conversion import MAX_BITS, MIN_BITS
from qsgt_plugin.quant.layers import ACTIVATIONS, WEIGHT_LAYERS
from qsgt_plugin.quant.trace import trace_calls
from qsgt_plugin.recipe import QuantSection
from qsgt_plugin.runs import Run
from qsgt_plugin.training.build import build_model, calibrate, example_batch

__all__ = ["FLOAT_BITS", "Unit", "check_bits", "layer_units", "unit_overrides", "variant"]

FLOAT_BITS = 32
"""The bit width a unit of a float run is said to have."""


@dataclass(frozen=True)
class Unit:
    """A weight layer, the activation after it (None if none), and what its weights cost.

    Attributes:
        weight, act: module names in the run's model.
        params: weights of the layer (biases are not quantized and not counted here).
        scales: scale factors a quantized copy stores (one per output channel, or one).
        bits: the bit width of the layer's weights as trained (32 for float).
        act_bits: the activation's bit width as trained (32 for float; None without one).
    """

    weight: str
    act: str | None
    params: int
    scales: int
    bits: int
    act_bits: int | None

    def size_bits(self, bits: int) -> int:
        """Bits to store this layer's weights at ``bits`` (at 32: as float, no scales)."""
        if bits >= FLOAT_BITS:
            return self.params * FLOAT_BITS
        return self.params * bits + FLOAT_BITS * self.scales


def check_bits(bits: list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """Sorted distinct bit widths, each in 2..8."""
    if not bits:
        raise ValueError("give at least one bit width")
    wrong = [b for b in bits if isinstance(b, bool) or not MIN_BITS <= b <= MAX_BITS]
    if wrong:
        raise ValueError(f"bit widths must be {MIN_BITS}..{MAX_BITS}, got {wrong}")
    return tuple(sorted(set(bits)))


def layer_units(run: Run) -> list[Unit]:
    """The run's units in execution order (see the module docstring)."""
    float_model = build_model(run.recipe.model.name, run.recipe.model.kwargs, None)
    trace = trace_calls(
        float_model,
        example_batch(run.recipe.data.dataset),
        (*WEIGHT_LAYERS, *ACTIVATIONS),
    )
    names = {id(m): n for n, m in float_model.named_modules()}
    trained = dict(run.model.named_modules())
    units, pending = [], None
    for module in [*trace.order, None]:
        if module is None or type(module) in WEIGHT_LAYERS:
            if pending is not None:
                units.append(_unit(pending, None, trained))
            pending = None if module is None else names[id(module)]
        elif pending is not None:  # the first activation after a weight layer
            units.append(_unit(pending, names[id(module)], trained))
            pending = None
    return units


def _unit(weight: str, act: str | None, trained: dict[str, nn.Module]) -> Unit:
    layer = trained[weight]
    params = layer.weight.numel()
    if isinstance(layer, QuantWeightBiasInputOutputLayer) and layer.weight_quant.is_quant_enabled:
        bits, scales = int(layer.weight_quant.bit_width()), layer.weight_quant.scale().numel()
    else:
        bits, scales = FLOAT_BITS, 1
    act_bits = None
    if act is not None:
        module = trained[act]
        sites = list(module) if isinstance(module, nn.ModuleList) else [module]
        if isinstance(sites[0], QuantNonLinearActLayer) and sites[0].act_quant.is_quant_enabled:
            act_bits = int(sites[0].act_quant.bit_width())
        else:
            act_bits = FLOAT_BITS
    return Unit(weight, act, params, scales, bits, act_bits)


def unit_overrides(unit: Unit, bits: int) -> dict[str, dict[str, int]]:
    """``quant.overrides`` entries that set ``unit`` to ``bits``."""
    out = {unit.weight: {"weight_bits": bits}}
    if unit.act is not None:
        out[unit.act] = {"act_bits": bits}
    return out


def variant(
    run: Run, overrides: dict[str, dict[str, int]], calibrate_new: bool = True
) -> nn.Module:
    """The run's model rebuilt with ``overrides`` after the recipe's own, its weights loaded.

    A quantized run keeps every other setting and every trained tensor (alphas included). A
    float run stays float except where ``overrides`` set bits, with per-channel integer weights
    (DoReFa's rescaling would not match BatchNorm's running statistics); the alphas of
    activations it newly quantizes are calibrated on training images.
    Returned in eval mode, on the CPU.
    """
    recipe = run.recipe
    if recipe.quant.enabled:
        quant = recipe.quant.model_dump()
        merged = {k: v for k, v in quant["overrides"].items() if k not in overrides}
    else:  # per-channel integer weights keep the scale that BatchNorm's statistics expect
        quant = QuantSection(weight_quant="int_per_channel").model_dump()
        merged = {"*": None}  # float everywhere, but where ``overrides`` say otherwise
    quant["overrides"] = {**merged, **overrides}
    quant["alpha_init"] = 10.0
    model = build_model(
        recipe.model.name, recipe.model.kwargs, quant, example_batch(recipe.data.dataset)
    )
    state = run.model.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    new_alphas = {f"{name}." for name in alphas(model)}
    stray = [k for k in missing if not any(k.startswith(a) for a in new_alphas)]
    if stray or unexpected:
        raise RuntimeError(
            f"the rebuilt model does not fit the run's weights: {stray or unexpected}"
        )
    if missing and calibrate_new:
        calibrate(model, recipe, torch.device("cpu"))  # changes the alphas only
    return model.eval()


def describe(units: list[Unit]) -> list[dict[str, Any]]:
    """The units as JSON-ready rows."""
    return [
        {
            "weight": u.weight,
            "act": u.act,
            "params": u.params,
            "bits": u.bits,
            "act_bits": u.act_bits,
        }
        for u in units
    ]
