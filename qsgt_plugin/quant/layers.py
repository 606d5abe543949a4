"""Quantized layers that ``convert`` puts in place of float ones."""

from __future__ import annotations

from collections.abc import Iterable

from brevitas.nn import QuantConv1d, QuantConv2d, QuantLinear
from brevitas.nn.quant_layer import QuantNonLinearActLayer, QuantWeightBiasInputOutputLayer
from torch import Tensor, nn

from qsgt_plugin.quant.pact import PACTReLU, PACTReLU6

__all__ = [
    "ACTIVATIONS",
    "WEIGHT_LAYERS",
    "CallSiteActivation",
    "QuantAct",
    "is_quant_layer",
    "quant_act",
    "quant_weight_layer",
]

# Exact float types -> Brevitas replacement. Subclasses (timm's Conv2dSame, StdConv2d, ...)
# change the forward, so they are reported instead of converted.
WEIGHT_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.Linear: QuantLinear,
}
# Float activation -> the same function with PACT's boundary subgradients).
ACTIVATIONS: dict[type[nn.Module], type[nn.Module]] = {nn.ReLU: PACTReLU, nn.ReLU6: PACTReLU6}


class QuantAct(QuantNonLinearActLayer):
    """A float activation followed by a Brevitas activation quantizer.

    With quantization disabled it computes the float activation alone, so a converted model
    with quantization off reproduces the float model.
    """

    def __init__(self, act_impl: type[nn.Module], act_quant) -> None:
        super().__init__(
            act_impl=act_impl,
            passthrough_act=True,
            input_quant=None,
            act_quant=act_quant,
            return_quant_tensor=False,
        )


class CallSiteActivation(nn.ModuleList):
    """One quantized activation per call site of a module that the float model calls N times.

    torchvision's ResNet blocks call one ``relu`` twice; PACT wants a clipping level per
    activation, so each call gets its own quantizer, picked by the order of calls. The counter
    restarts whenever the module that owns the calls starts a forward pass (a hook that
    ``convert`` installs) and wraps around, so repeated forward passes stay aligned.
    """

    def __init__(self, sites: Iterable[nn.Module]) -> None:
        super().__init__(sites)
        self._next_site = 0

    def reset_call_sites(self, *_) -> None:
        self._next_site = 0

    def forward(self, x: Tensor) -> Tensor:
        site = self[self._next_site % len(self)]
        self._next_site += 1
        return site(x)


def is_quant_layer(module: nn.Module) -> bool:
    """True for Brevitas quant layers (already converted)."""
    return isinstance(module, (QuantWeightBiasInputOutputLayer, QuantNonLinearActLayer))


def quant_weight_layer(module: nn.Module, weight_quant) -> nn.Module:
    """The Brevitas twin of a Conv1d / Conv2d / Linear, sharing its parameters."""
    common = dict(
        bias=module.bias is not None,
        weight_quant=weight_quant,
        bias_quant=None,
        input_quant=None,
        output_quant=None,
        return_quant_tensor=False,
        device=module.weight.device,
        dtype=module.weight.dtype,
    )
    if isinstance(module, nn.Linear):
        quant = QuantLinear(module.in_features, module.out_features, **common)
    else:
        quant = WEIGHT_LAYERS[type(module)](
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            padding_mode=module.padding_mode,
            **common,
        )
    quant.weight = module.weight
    if module.bias is not None:
        quant.bias = module.bias
    quant.weight_quant.init_tensor_quant()
    return quant.train(module.training)


def quant_act(module: nn.Module, act_quant) -> QuantAct:
    """The quantized form of a ReLU / ReLU6 module."""
    return QuantAct(ACTIVATIONS[type(module)], act_quant).train(module.training)
