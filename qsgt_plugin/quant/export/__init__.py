"""ONNX export of converted models, in three formats.

* ``qdq`` (the default): the graph onnxruntime runs on integer kernels (``QLinearConv``,
  ``QLinearAdd``), int8 weights, uint8 activations on PACT's grid; see :mod:`.qdq`.
* ``packed``: the size-true file; weights stored at their bit width (ONNX's 4-bit and 8-bit
  types, a packed bit stream for other widths), decoded to float at load; see :mod:`.packed`.
* ``qcdq``: Brevitas' QuantizeLinear / Clip / DequantizeLinear graph for FINN and other
  Brevitas tool chains; onnxruntime runs it in float; see :mod:`.qcdq`.

Example::

    >>> import timm, torch, qsgt_plugin
    >>> from qsgt_plugin.quant.export import export_onnx
    >>> qmodel = qsgt_plugin.convert(timm.create_model("resnet20"), bits=4).eval()
    >>> images = torch.rand(64, 3, 32, 32)
    >>> path = export_onnx(qmodel, "/tmp/resnet20-w4a4.onnx", images)   # doctest: +SKIP

``onnx`` and ``onnxruntime`` come with the ``export`` extra and are imported only when a model
is exported.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from qsgt_plugin.errors import ExportError
from qsgt_plugin.quant.export.qcdq import export_qcdq, export_ready
from qsgt_plugin.quant.export.writer import ExportWarning

__all__ = ["FORMATS", "ExportError", "ExportWarning", "export_onnx", "export_qcdq", "export_ready"]

FORMATS = {
    "qdq": "integer kernels in onnxruntime (QLinearConv, QLinearAdd); int8 weights (default)",
    "packed": "weights stored at their bit width, decoded to float at load (the smallest file)",
    "qcdq": "Brevitas' QuantizeLinear / Clip / DequantizeLinear graph (FINN, Brevitas tools)",
}


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example_inputs: Tensor,
    format: str = "qdq",
    calibration_inputs: Tensor | None = None,
) -> Path:
    """Write a converted ``model`` as an ONNX file in ``format`` (see :data:`FORMATS`).

    Args:
        model: a model returned by ``qsgt_plugin.convert`` (float layers pass through).
        path: the file to write (written completely or not at all).
        example_inputs: a batch of inputs (its shape and dtype define the graph's input; the
            batch dimension is dynamic).
        format: ``"qdq"``, ``"packed"`` or ``"qcdq"``.
        calibration_inputs: real inputs for the ``qdq`` format's 8-bit quantizers at places
            the model does not quantize (a convolution's output that goes on in float into a
            residual sum); default ``example_inputs``, which then must be real data, and an
            ``ExportWarning`` says how many quantizers were calibrated on them alone.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; allowed: {', '.join(FORMATS)}")
    if format == "qcdq":
        return export_qcdq(model, path, example_inputs)
    from qsgt_plugin.quant.export.writer import export_integer

    return export_integer(model, Path(path), example_inputs, format, calibration_inputs)
