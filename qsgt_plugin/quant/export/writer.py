"""Writing the ``qdq`` and ``packed`` formats: trace the export copy, rewrite, check, save."""

from __future__ import annotations

import importlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from qsgt_plugin.common.files import atomic_output
from qsgt_plugin.errors import ExportError
from qsgt_plugin.quant.export.prepare import IntegerActivation, export_copy

__all__ = [
    "Agreement",
    "ExportWarning",
    "agreement",
    "export_integer",
    "ort_session",
    "require_export_extra",
]


class ExportWarning(UserWarning):
    """An export that is correct but does not run as the format promises."""


QDQ_OPSET = 17
"""The opset torch traces at (its TorchScript exporter writes up to 20)."""


def require_export_extra(*names: str) -> list:
    """Import the named packages of the ``export`` extra, or say how to install it."""
    try:
        return [importlib.import_module(name) for name in names]
    except ImportError as exc:
        raise ExportError(
            f"ONNX export needs the export extra ({exc.name} is missing): "
            "pip install 'qsgt-plugin[export]'"
        ) from None


def _imports():
    return require_export_extra("onnx", "onnxruntime")


def ort_session(model, threads: int = 1, level: str = "all"):
    """An onnxruntime CPU session on ``model`` (a path or a ``ModelProto``)."""
    _, ort = _imports()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    }[level]
    source = model if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(
        str(source) if isinstance(source, Path) else source,
        options,
        providers=["CPUExecutionProvider"],
    )


def _trace(copy: nn.Module, example: Tensor, opset: int):
    onnx, _ = _imports()
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # Strided slices (the option-A shortcut) are not folded: that is expected.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            copy,
            (example,),
            buffer,
            dynamo=False,  # autograd functions' symbolic() write the quantized pieces
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


def _calibrator(inputs: Tensor):
    onnx, _ = _imports()

    def ranges(model, names: list[str]) -> dict[str, tuple[float, float]]:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        known = {o.name for o in probe.graph.output}
        for name in names:
            if name not in known:
                probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        session = ort_session(probe, threads=torch.get_num_threads(), level="basic")
        low = {n: np.inf for n in names}
        high = {n: -np.inf for n in names}
        for batch in inputs.split(64):
            values = session.run(names, {"input": batch.float().cpu().numpy()})
            for name, value in zip(names, values, strict=True):
                low[name] = min(low[name], float(value.min()))
                high[name] = max(high[name], float(value.max()))
        return {n: (low[n], high[n]) for n in names}

    return ranges


def export_integer(
    model: nn.Module,
    path: Path,
    example_inputs: Tensor,
    format: str,
    calibration_inputs: Tensor | None = None,
) -> Path:
    """Write the ``qdq`` or ``packed`` format (see :mod:`qsgt_plugin.quant.export`)."""
    onnx, _ = _imports()
    from qsgt_plugin.quant.export import packed, qdq

    copy, weights = export_copy(model)
    for module in copy.modules():
        if isinstance(module, IntegerActivation):
            # The packed format runs float kernels: a quantize / dequantize pair next to its
            # float weights would make onnxruntime re-quantize those weights to 8 bits.
            module.integer = format == "qdq"
    example = example_inputs[:1].detach().float().cpu()
    graph = _trace(copy.to("cpu"), example, QDQ_OPSET)
    if format == "qdq":
        calibration = example_inputs if calibration_inputs is None else calibration_inputs
        calibration = calibration.detach().float().cpu()
        graph, stats = qdq.rewrite(graph, weights, _calibrator(calibration))
        if calibration_inputs is None and stats.calibrated:
            warnings.warn(
                f"export_onnx: the qdq graph needs {len(stats.calibrated)} 8-bit quantizer(s) "
                "the model does not have (a residual sum's inputs, a float layer's output); they "
                f"were calibrated on example_inputs alone ({len(calibration)} input(s)). Pass "
                "calibration_inputs= (a few hundred training images) and check the agreement "
                "(qsgt_plugin.quant.export.agreement), or export format='packed'",
                ExportWarning,
                stacklevel=3,
            )
    else:
        graph = packed.rewrite(graph, weights)
    onnx.checker.check_model(graph)
    with atomic_output(Path(path)) as tmp:
        onnx.save(graph, str(tmp))
        if format == "qdq":
            try:
                qdq.check_integer_kernels(tmp, stats)
            except ExportError as exc:  # the file is right, only slower than it should be
                warnings.warn(str(exc), ExportWarning, stacklevel=3)
    return Path(path)


@dataclass(frozen=True)
class Agreement:
    """How an exported graph's outputs compare with the PyTorch model's on some inputs."""

    images: int
    same_prediction: float
    """Fraction of inputs whose top-1 class is the same."""
    mean_abs_diff: float
    max_abs_diff: float

    def __str__(self) -> str:
        return (
            f"same top-1 class as PyTorch on {100 * self.same_prediction:.2f}% of "
            f"{self.images} images; |logit difference| mean {self.mean_abs_diff:.3g}, "
            f"max {self.max_abs_diff:.3g}"
        )


def agreement(
    model: nn.Module,
    path: str | Path,
    inputs: Tensor,
    batch: int = 500,
    channels_last: bool = False,
) -> Agreement:
    """Run ``inputs`` through the PyTorch ``model`` and through the ONNX file at ``path``.

    ``channels_last``: the PyTorch model gets its batches in channels-last memory format, as
    training evaluated a run that trained so (``Run.evaluated_model()`` and
    ``Run.channels_last``); a quantizer turns the other layout's last-bit differences into
    whole levels. onnxruntime always gets contiguous arrays.
    """
    session = ort_session(Path(path), threads=torch.get_num_threads())
    model = model.eval()
    device = next(model.parameters()).device
    layout = torch.channels_last if channels_last else torch.contiguous_format
    got, expected = [], []
    with torch.no_grad():
        for x in inputs.split(batch):
            x = x.float().cpu().contiguous()
            got.append(session.run(None, {"input": x.numpy()})[0])
            ours = x.to(device).contiguous(memory_format=layout)
            expected.append(model(ours).float().cpu().numpy())
    a, b = np.concatenate(got), np.concatenate(expected)
    diff = np.abs(a - b)
    return Agreement(
        len(a), float((a.argmax(1) == b.argmax(1)).mean()), float(diff.mean()), float(diff.max())
    )
