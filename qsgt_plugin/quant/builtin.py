"""The built-in quantizers, registered as a plugin through the package's own entry point."""

from __future__ import annotations

from collections.abc import Callable

from qsgt_plugin.hookspecs import hookimpl
from qsgt_plugin.quant.method import QuantMethod, WeightQuantizer
from qsgt_plugin.quant.pact import PACTActPerTensorFloat, PACTLSQActPerTensorFloat
from qsgt_plugin.quant.weight import DoReFaWeightPerTensorFloat, IntWeightPerChannelFloat


@hookimpl
def register_quant_methods(register: Callable[[QuantMethod], None]) -> None:
    register(
        QuantMethod(
            "pact",
            PACTActPerTensorFloat,
            weight_quant="dorefa",
            description="PACT, exact clipping-level gradient (Choi et al. 2018)",
        )
    )
    register(
        QuantMethod(
            "pact_lsq",
            PACTLSQActPerTensorFloat,
            weight_quant="dorefa",
            description="PACT forward, Brevitas' built-in learned scale (LSQ-like gradient)",
        )
    )


@hookimpl
def register_weight_quantizers(register: Callable[[WeightQuantizer], None]) -> None:
    register(
        WeightQuantizer(
            "dorefa",
            DoReFaWeightPerTensorFloat,
            description="DoReFa k-bit weights in [-1, 1], per tensor (Zhou et al. 2016)",
        )
    )
    register(
        WeightQuantizer(
            "int_per_channel",
            IntWeightPerChannelFloat,
            description="symmetric narrow-range integer weights, max-abs scale per channel",
        )
    )
