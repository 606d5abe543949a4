"""Quantization: PACT activation and DoReFa / integer weight injectors, and ``convert()``."""

from qsgt_plugin.quant.calibrate import calibrate_alphas
from qsgt_plugin.quant.conversion import ConversionSummary, QuantizationWarning, convert
from qsgt_plugin.quant.method import QuantMethod, WeightQuantizer
from qsgt_plugin.quant.pact import PACTActPerTensorFloat, PACTLSQActPerTensorFloat, pact_quantize
from qsgt_plugin.quant.state import alphas, model_size_bytes, quantization_disabled
from qsgt_plugin.quant.weight import DoReFaWeightPerTensorFloat, IntWeightPerChannelFloat, dorefa

__all__ = [
    "ConversionSummary",
    "DoReFaWeightPerTensorFloat",
    "IntWeightPerChannelFloat",
    "PACTActPerTensorFloat",
    "PACTLSQActPerTensorFloat",
    "QuantMethod",
    "QuantizationWarning",
    "WeightQuantizer",
    "alphas",
    "calibrate_alphas",
    "convert",
    "dorefa",
    "model_size_bytes",
    "pact_quantize",
    "quantization_disabled",
]
