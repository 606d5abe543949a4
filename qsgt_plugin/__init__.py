"""qsgt_plugin: PACT quantization-aware training and saliency-guided training for CNNs.

>>> import timm, qsgt_plugin
>>> model = timm.create_model("resnet20", num_classes=10)   # registered on import
>>> qmodel = qsgt_plugin.convert(model, bits=4)              # PACT activations, 4-bit weights
"""

import logging as _logging

# Brevitas imports torch.utils.cpp_extension, which warns "No CUDA runtime is found" at every
# CPU-only import; it concerns C++ extension builds, which nothing here does.
_cpp_log = _logging.getLogger("torch.utils.cpp_extension")
if _cpp_log.level == _logging.NOTSET:
    _cpp_log.setLevel(_logging.ERROR)

from qsgt_plugin import models  # noqa: F401  (files the CIFAR ResNets in timm's registry)
from qsgt_plugin.common.memory import keep_freed_memory
from qsgt_plugin.markers import hookimpl
from qsgt_plugin.plugins import PluginError, convert, get_registry, list_methods, list_models
from qsgt_plugin.quant import (
    ConversionSummary,
    QuantizationWarning,
    QuantMethod,
    WeightQuantizer,
    alphas,
    calibrate_alphas,
    quantization_disabled,
)
from qsgt_plugin.sgt import SaliencyGuidedTraining, SGTHandle, register_sgt

__version__ = "0.1.0"

__all__ = [
    "ConversionSummary",
    "PluginError",
    "QuantMethod",
    "QuantizationWarning",
    "SGTHandle",
    "SaliencyGuidedTraining",
    "WeightQuantizer",
    "__version__",
    "alphas",
    "calibrate_alphas",
    "convert",
    "get_registry",
    "hookimpl",
    "keep_freed_memory",
    "list_methods",
    "list_models",
    "quantization_disabled",
    "register_sgt",
]
