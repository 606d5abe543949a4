"""Reading and toggling the quantization state of a converted model."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from brevitas.nn.quant_layer import QuantNonLinearActLayer, QuantWeightBiasInputOutputLayer
from torch import nn

with warnings.catch_warnings():
    # brevitas.graph warns at import about an optional CUDA kernel package it does not need here.
    warnings.filterwarnings("ignore", message="fast_hadamard_transform")
    from brevitas.graph.calibrate import quantization_status_manager

__all__ = ["alphas", "clip_level", "model_size_bytes", "quantization_disabled"]


def alphas(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every activation clipping level ``alpha`` of a converted model, by activation layer name.

    Works for any registered method whose activation quantizer learns one scalar (PACT's
    ``alpha``, Brevitas' learned scale). Use it for the optimizer's weight-decay group
    (PACT's L2 on ``alpha``) and for logging.

    Example::

        >>> import timm, torch, qsgt_plugin
        >>> qmodel = qsgt_plugin.convert(timm.create_model("resnet20"), bits=4)
        >>> levels = alphas(qmodel)
        >>> len(levels), levels["layer1.0.act1"].item()
        (19, 10.0)
        >>> others = [p for p in qmodel.parameters() if all(p is not a for a in levels.values())]
        >>> opt = torch.optim.SGD(
        ...     [{"params": others}, {"params": list(levels.values()), "weight_decay": 5e-4}],
        ...     lr=0.1,
        ... )
    """
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantNonLinearActLayer):
            alpha = clip_level(module)
            if alpha is not None:
                out[name] = alpha
    return out


def clip_level(layer: QuantNonLinearActLayer) -> nn.Parameter | None:
    """The learned clipping level of an activation layer: its quantizer's one scalar parameter.

    None for quantizers without exactly one (statistics-based scales, per-channel scales).
    """
    scalars = [p for p in layer.act_quant.parameters() if p.dim() == 0]
    return scalars[0] if len(scalars) == 1 else None


@contextmanager
def quantization_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run a converted model as its float version, without a copy (Brevitas' status manager).

    Weights, activations and biases are not quantized inside the block; the float activation
    functions still apply, so the outputs equal those of the model before ``convert``.
    """
    with quantization_status_manager(
        model, disable_act_quant=True, disable_weight_quant=True, disable_bias_quant=True
    ):
        yield model


def model_size_bytes(model: nn.Module) -> int:
    """Bytes to store the model for inference at its quantized bit widths.

    Weights of enabled weight quantizers count at their bit width plus one 32-bit scale per
    scale element; every other tensor of the state dict (float layers, BatchNorm, biases,
    clipping levels) at its own precision. BatchNorm's batch counters are not counted.
    """
    quantized: dict[int, int] = {}
    for module in model.modules():
        if (
            isinstance(module, QuantWeightBiasInputOutputLayer)
            and module.weight_quant.is_quant_enabled
        ):
            bits = int(module.weight_quant.bit_width())
            scales = module.weight_quant.scale().numel()
            quantized[id(module.weight)] = module.weight.numel() * bits + 32 * scales
    total_bits = 0
    seen: set[int] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if name.endswith("num_batches_tracked") or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total_bits += quantized.get(id(tensor), tensor.numel() * tensor.element_size() * 8)
    return -(-total_bits // 8)
