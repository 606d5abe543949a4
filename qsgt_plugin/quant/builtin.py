"""The built-in quantizers, registered as a plugin through the package's own entry point.

``BUILTINS`` also resolves their names without the plugin host, so ``convert(model,
method="pact")`` works whatever third-party plugins are installed.
"""

from __future__ import annotations

from collections.abc import Callable

from qsgt_plugin.markers import hookimpl
from qsgt_plugin.quant.method import Catalogue, QuantMethod, WeightQuantizer
from qsgt_plugin.quant.pact import PACTActPerTensorFloat, PACTLSQActPerTensorFloat
from qsgt_plugin.quant.weight import DoReFaWeightPerTensorFloat, IntWeightPerChannelFloat

__all__ = ["BUILTINS", "DOREFA", "INT_PER_CHANNEL", "PACT", "PACT_LSQ"]

PACT = QuantMethod(
    "pact",
    PACTActPerTensorFloat,
    weight_quant="dorefa",
    description="PACT, exact clipping-level gradient (Choi et al. 2018)",
)
PACT_LSQ = QuantMethod(
    "pact_lsq",
    PACTLSQActPerTensorFloat,
    weight_quant="dorefa",
    description="PACT forward, Brevitas' built-in learned scale (LSQ-like gradient)",
)
DOREFA = WeightQuantizer(
    "dorefa",
    DoReFaWeightPerTensorFloat,
    description="DoReFa k-bit weights in [-1, 1], per tensor (Zhou et al. 2016)",
)
INT_PER_CHANNEL = WeightQuantizer(
    "int_per_channel",
    IntWeightPerChannelFloat,
    description="symmetric narrow-range integer weights, max-abs scale per channel",
)
BUILTINS = Catalogue(
    {m.name: m for m in (PACT, PACT_LSQ)},
    {w.name: w for w in (DOREFA, INT_PER_CHANNEL)},
    hint=" (built-ins; qsgt_plugin.convert also finds plugins' methods)",
)


@hookimpl
def register_quant_methods(register: Callable[[QuantMethod], None]) -> None:
    for method in BUILTINS.methods.values():
        register(method)


@hookimpl
def register_weight_quantizers(register: Callable[[WeightQuantizer], None]) -> None:
    for quantizer in BUILTINS.weight_quantizers.values():
        register(quantizer)
