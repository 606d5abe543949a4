"""The ``qcdq`` format: converted models through Brevitas' QCDQ exporter.

Brevitas exports its own quantizers. Before export, a copy of the model is rewritten with
forward-identical stock ones:

* exact PACT activations become Brevitas' learned-scale activations holding the same alpha
  (``Uint8ActPerTensorFloatMaxInit``; the two agree bit for bit). Brevitas' exporter writes
  only the quantizer (its range [0, alpha] stands for ReLU), so a ReLU6 site is exported as an
  explicit ``Clip(0, 6)`` before it: with alpha > 6 the quantizer alone would pass values up to
  alpha;
* k-bit DoReFa weights are baked: the layer holds its quantized values, exported as
  (k+1)-bit symmetric integers, whose odd values are exactly DoReFa's 2^k levels;
* integer weights and float layers are exported as they are.

``onnx`` and ``onnxoptimizer`` come with the ``export`` extra and are imported only here.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from brevitas.nn.quant_layer import QuantNonLinearActLayer, QuantWeightBiasInputOutputLayer
from brevitas.proxy import ActQuantProxyFromInjector
from brevitas.quant import Int8WeightPerTensorFloat, Uint8ActPerTensorFloatMaxInit
from torch import Tensor, nn

from qsgt_plugin.common.files import atomic_output
from qsgt_plugin.errors import ExportError
from qsgt_plugin.quant.export.writer import require_export_extra
from qsgt_plugin.quant.layers import QuantAct
from qsgt_plugin.quant.pact import ALPHA_MIN, PACTReLU, PACTReLU6, StableActQuantProxy
from qsgt_plugin.quant.state import clip_level
from qsgt_plugin.quant.weight import DoReFaWeightQuant

__all__ = ["export_qcdq", "export_ready"]

_FLOAT_ACT = {PACTReLU: nn.ReLU, PACTReLU6: nn.ReLU6}


def export_ready(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode whose quantizers Brevitas' exporters know."""
    model = copy.deepcopy(model).eval()
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantNonLinearActLayer) and isinstance(
            module.act_quant, StableActQuantProxy
        ):
            model.set_submodule(name, _stock_activation(name, module))
        elif isinstance(module, QuantWeightBiasInputOutputLayer) and isinstance(
            module.weight_quant.tensor_quant, DoReFaWeightQuant
        ):
            _bake_dorefa(name, module)
    return model


def export_qcdq(
    model: nn.Module, path: str | Path, example_inputs: Tensor, opset_version: int = 17
) -> Path:
    """Write ``model`` as a QCDQ ONNX graph (QuantizeLinear / Clip / DequantizeLinear)."""
    require_export_extra("onnx", "onnxoptimizer")
    from brevitas.export import export_onnx_qcdq

    path = Path(path)
    ready = export_ready(model).to(example_inputs.device)
    with torch.no_grad(), atomic_output(path) as tmp:
        export_onnx_qcdq(
            ready,
            args=example_inputs,
            export_path=str(tmp),
            dynamo=False,  # torch.export cannot trace Brevitas' proxies yet
            opset_version=opset_version,
            input_names=["input"],
            output_names=["logits"],
            keep_initializers_as_inputs=False,  # weights are constants, not graph inputs
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def _stock_activation(name: str, module: QuantNonLinearActLayer) -> nn.Module:
    proxy = module.act_quant
    level = clip_level(module)
    if level is None or proxy.is_signed:
        raise ExportError(f"{name}: only unsigned activations with one clipping level export")
    act_impl = type(proxy.fused_activation_quant_proxy.activation_impl)
    bits = int(proxy.bit_width())
    alpha = level.detach().abs().clamp(min=ALPHA_MIN).item()
    stock = QuantAct(
        _FLOAT_ACT.get(act_impl, act_impl),
        Uint8ActPerTensorFloatMaxInit.let(bit_width=bits, max_val=alpha),
    ).eval()
    if type(stock.act_quant) is not ActQuantProxyFromInjector:
        raise ExportError(f"{name}: unexpected activation proxy {type(stock.act_quant).__name__}")
    if act_impl is PACTReLU6:  # the quantizer's own clip stops at alpha, not at 6
        stock = nn.Sequential(nn.Hardtanh(0.0, 6.0), stock)
    return stock.to(level.device)


def _bake_dorefa(name: str, layer: QuantWeightBiasInputOutputLayer) -> None:
    bits = int(layer.weight_quant.bit_width())
    if bits + 1 > 8:
        raise ExportError(
            f"{name}: {bits}-bit DoReFa weights need {bits + 1}-bit integers, more than ONNX's "
            "8-bit QuantizeLinear; convert with weight_quant='int_per_channel' for this layer"
        )
    with torch.no_grad():
        baked = layer.quant_weight().value.detach().clone()
        layer.weight.data.copy_(baked)
    injector = Int8WeightPerTensorFloat.let(bit_width=bits + 1)
    layer.weight_quant = injector.proxy_class(layer, injector)
    layer.weight_quant.train(layer.training)
