"""The ``qdq`` format: QDQ that onnxruntime fuses into ``QLinearConv`` / ``QLinearAdd``.

onnxruntime runs a convolution on integers when it sees ``DequantizeLinear`` on its input and
weights and ``QuantizeLinear`` on its output. The graph written here gives it that, keeping the
PyTorch model's numbers wherever the runtime allows:

* activations: PACT's ``clip(round(x / s), 0, 2^k - 1) * s`` is ``QuantizeLinear`` to uint8
  (zero point 0: negative inputs saturate at 0, which is the ReLU) -> ``Clip(0, 2^k - 1)`` on
  the uint8 tensor -> ``DequantizeLinear``. The clip acts on integers between two integer
  kernels, so it stops no fusion; for 8 bits the saturation itself is the clip;
* weights: int8 with a scale per output channel. DoReFa's ``(2i - n) / n`` levels are the odd
  integers of ``-n .. n`` times ``1 / n``, exact up to 7 bits, and spread over the int8 range
  (times ``127 // n``) so that the runtime's int32 bias is finer. BatchNorm, which torch's
  exporter folds into the weights, goes into the scale (its sign into the integers). Wider
  weights (8-bit DoReFa: 255 odd levels) are re-quantized to int8 per channel;
* where the PyTorch model has no quantizer but the runtime needs one - a convolution's output
  that goes on in float into a residual sum, a convolution's input that is not quantized - a
  uint8 quantize / dequantize pair is inserted, its range the minimum and maximum measured on
  calibration inputs. This is the main approximation, and it cannot be removed within
  onnxruntime's integer operators: ``QLinearConv`` writes 8-bit outputs and ``QLinearAdd``
  reads 8-bit inputs, while the PyTorch model adds the convolution's float output to the
  shortcut before its 4-bit quantizer; at 4 bits a few activations in a hundred after a
  residual sum land on the neighbouring level (RESULTS.md "Deployment" measures how many
  images change class). A smaller one: onnxruntime rounds each convolution's bias to int32
  in steps of its input scale times its weight scale, which moves about one activation in
  1,500 by a level at 4 bits (shifting the integers left to refine that step cost a quarter
  of the speed, measured, and did not change how many images keep their class).
  Value-selecting paths (a strided slice and zero padding, the option-A shortcut, max
  pooling) reuse the grid they come from, exactly.

Convolutions fed by the graph's input (the first layer) and the classifier after global
pooling stay float: their inputs are on no quantization grid, and they are a small share of
the work. After a float convolution the quantized integers go to channels-last and back
(:func:`_enter_channels_last`), so that onnxruntime runs the integer kernels after it
channels-last without a transpose between them. :func:`check_integer_kernels` reads back what
the runtime fused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from qsgt_plugin.quant.export.graph import Graph
from qsgt_plugin.quant.export.prepare import IntegerWeight

__all__ = ["QDQStats", "check_integer_kernels", "integer_kernel_report", "rewrite"]

_COMPUTE = {"Conv"}
_MOVES = {
    "Slice", "Pad", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity",
    "MaxPool", "GlobalMaxPool",
}  # fmt: skip
"""Ops whose outputs are values of their input (Pad only with its default constant zero; a
max pool picks one of its inputs, its padding never wins), so they stay on its grid."""


@dataclass
class QDQStats:
    """What the rewrite did, for the exporter's summary and the tests."""

    integer_convs: list[str] = field(default_factory=list)
    float_convs: list[str] = field(default_factory=list)
    requantized_weights: list[str] = field(default_factory=list)
    calibrated: list[str] = field(default_factory=list)


def _int8_storage(g: Graph, node, weight: IntegerWeight, m: np.ndarray) -> None:
    """int8 integers behind a ``DequantizeLinear`` where they fit, else float (re-quantized
    by :func:`_int8_weights` if the layer runs on integers). A folded BatchNorm's factor
    ``m`` goes into the scale, its sign into the integers."""
    j, t = weight.symmetric()
    if int(j.abs().max()) > 127 or node.op_type != "Conv":
        return
    j, t = j.numpy().astype(np.int64), t.numpy().astype(np.float64)
    # Spread each channel's integers over int8 (DoReFa's 4-bit levels are the odd integers of
    # -15..15: times 8). The values stay the same; the runtime's int32 bias, whose step is the
    # input scale times this scale, becomes that much finer, and so do its rounding errors.
    peak = np.abs(j.reshape(len(j), -1)).max(axis=1)
    spread = np.maximum(127 // np.maximum(peak, 1), 1)
    channel = (-1,) + (1,) * (j.ndim - 1)
    sign = np.where(m < 0, -1, 1)
    ints = g.add_const("weight", (j * (spread * sign).reshape(channel)).astype(np.int8))
    scale = g.add_const("weight_scale", (t * np.abs(m) / spread).astype(np.float32))
    node.input[1] = g.add_node("DequantizeLinear", [ints, scale], axis=0).output[0]


def rewrite(
    model: onnx.ModelProto, weights: list[IntegerWeight], calibrate
) -> tuple[onnx.ModelProto, QDQStats]:
    """Fold BatchNorm, place the quantize pairs the runtime needs (see the module docstring).

    ``calibrate(model, names)`` runs ``model`` on calibration inputs and returns each named
    tensor's ``(min, max)``.
    """
    g = Graph(model)
    stats = QDQStats()
    for node, weight, m in g.weight_inputs(weights):
        _int8_storage(g, node, weight, m)
    convs = [n for n in g.nodes if n.op_type in _COMPUTE]
    plan: list[tuple[str, object]] = []  # (tensor, consumer) pairs that need a calibrated Q
    floats = []
    for conv in convs:
        source = conv.input[0]
        if g.is_input(source) or _from_float_pool(g, source):
            _float_weights(g, conv)
            floats.append(conv)
            stats.float_convs.append(conv.name or conv.output[0])
            continue
        stats.integer_convs.append(conv.name or conv.output[0])
        if _int8_weights(g, conv):
            stats.requantized_weights.append(conv.name or conv.output[0])
        if not _is_dequantized(g, source) and not _copy_grid(g, conv, source):
            plan.append((source, conv))
        out = conv.output[0]
        if not all(c is not None and c.op_type == "QuantizeLinear" for c in g.consumers(out)):
            plan.append((out, None))
    for add in [n for n in g.nodes if n.op_type == "Add"]:
        users = g.consumers(add.output[0])
        if all(u is not None and u.op_type == "QuantizeLinear" for u in users):
            outputs = {value for value, consumer in plan if consumer is None}
            for value in add.input:
                if value in outputs:  # the producing convolution's output gets its pair
                    continue
                if not _is_dequantized(g, value) and not _copy_grid(g, add, value):
                    plan.append((value, add))
    for conv in floats:
        _enter_channels_last(g, conv)
    ranges = calibrate(g.snapshot(), sorted({value for value, _ in plan})) if plan else {}
    for value, consumer in plan:
        low, high = ranges[value]
        stats.calibrated.append(value)
        if consumer is None:  # the producer's output: every consumer reads the dequantized copy
            users = [
                u for u in g.consumers(value) if u is not None and u.op_type != "QuantizeLinear"
            ]
            new = _calibrated_qdq(g, value, low, high)
            for user in users:
                g.rename_input(user, value, new)
        else:
            new = _calibrated_qdq(g, value, low, high)
            g.rename_input(consumer, value, new)
    return g.finish(), stats


_INTEGER_CHAIN = ("QuantizeLinear", "Clip")


def _enter_channels_last(g: Graph, conv) -> None:
    """Let the integer kernels after a float convolution run channels-last without layout
    changes between them.

    onnxruntime runs ``QLinearConv`` channels-last and wraps each in transposes that its layout
    optimiser then cancels along the graph; it cancels none that meet a float convolution's
    output (measured: 18 transposes in a ResNet-20, one pair around every residual sum, 10 to
    25% of the run time). A transpose to channels-last and back on the quantized integers, kept
    apart by a ``Reshape`` that changes nothing, gives the optimiser one it cannot cancel
    there: it pushes the way back through every integer kernel after it (2 transposes left).
    """
    weight = g.const(conv.input[1])
    if weight is None or weight.ndim != 4:
        return
    node, last = conv, None
    while True:
        users = g.consumers(node.output[0])
        if len(users) != 1 or users[0] is None or users[0].op_type not in _INTEGER_CHAIN:
            break
        node = last = users[0]
    if last is None:
        return
    value = last.output[0]
    users = [u for u in g.consumers(value) if u is not None]
    if not users or any(u.op_type != "DequantizeLinear" for u in users):
        return
    nhwc = g.add_node("Transpose", [value], perm=[0, 2, 3, 1])
    same = g.add_const("shape", np.array([0, 0, 0, -1], dtype=np.int64))
    kept = g.add_node("Reshape", [nhwc.output[0], same])
    back = g.add_node("Transpose", [kept.output[0]], perm=[0, 3, 1, 2])
    for user in users:
        g.rename_input(user, value, back.output[0])


def _calibrated_qdq(g: Graph, value: str, low: float, high: float) -> str:
    """uint8 on ``[low, high]`` (zero exactly representable, as ONNX requires)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-8) / 255
    return g.qdq(value, scale, int(np.clip(round(-low / scale), 0, 255)), np.uint8)


def _is_dequantized(g: Graph, value: str) -> bool:
    node = g.producer(value)
    return node is not None and node.op_type == "DequantizeLinear"


def _from_float_pool(g: Graph, value: str) -> bool:
    node = g.producer(value)
    while node is not None and node.op_type in _MOVES:
        node = g.producer(node.input[0])
    return node is not None and node.op_type in ("GlobalAveragePool", "ReduceMean")


def _copy_grid(g: Graph, consumer, value: str) -> bool:
    """Quantize ``value`` with the grid of the dequantized tensor it only moves, if it does."""
    node, path = g.producer(value), []
    while node is not None and node.op_type in _MOVES:
        if node.op_type == "Pad" and (len(node.input) > 2 and node.input[2]):
            pad_value = g.const(node.input[2])
            if pad_value is None or np.any(pad_value != 0):
                return False
        if node.op_type == "Pad" and g.attr(node, "mode", b"constant") != b"constant":
            return False
        path.append(node)
        node = g.producer(node.input[0])
    if node is None or node.op_type != "DequantizeLinear" or not path:
        return False
    zero = g.const(node.input[2]) if len(node.input) > 2 else None
    if zero is not None and np.any(zero != 0):  # zero padding must be the zero point
        return False
    scale = g.const(node.input[1])
    dtype = zero.dtype if zero is not None else np.uint8
    new = g.qdq(value, float(scale), 0, dtype)
    g.rename_input(consumer, value, new)
    return True


def _weight_producer(g: Graph, conv) -> tuple[object | None, np.ndarray | None]:
    node = g.producer(conv.input[1])
    if node is not None and node.op_type == "DequantizeLinear":
        return node, g.const(node.input[0])
    return None, g.const(conv.input[1])


def _dequantized(g: Graph, node) -> np.ndarray:
    j = g.const(node.input[0]).astype(np.float64)
    t = g.const(node.input[1]).astype(np.float64)
    return (j * t.reshape((-1,) + (1,) * (j.ndim - 1))).astype(np.float32)


def _float_weights(g: Graph, conv) -> None:
    """A float convolution reads float weights (no dequantization at every run)."""
    node, _ = _weight_producer(g, conv)
    if node is not None:
        conv.input[1] = g.add_const("weight", _dequantized(g, node))


def _int8_weights(g: Graph, conv) -> bool:
    """Give an integer convolution int8 weights; True when they had to be re-quantized."""
    node, w = _weight_producer(g, conv)
    if node is not None:
        return False
    if w is None:
        raise ValueError(f"{conv.name}: weights are not constants")
    scale = np.abs(w.reshape(w.shape[0], -1)).max(axis=1).astype(np.float32) / 127
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    j = np.round(w / scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.int8)
    t = g.add_const("weight_scale", scale)
    dq = g.add_node("DequantizeLinear", [g.add_const("weight", j), t], axis=0)
    conv.input[1] = dq.output[0]
    return True


def integer_kernel_report(path: str, threads: int = 1, level: str = "extended") -> dict[str, int]:
    """The op types of the graph onnxruntime runs after its optimisations, with their counts.

    ``level="extended"``: the QDQ fusions (``QLinearConv``, ``QLinearAdd``), the same on every
    CPU; ``"all"`` adds the layout changes for this CPU (channels-last integer kernels, the
    transposes between them).
    """
    import tempfile

    import onnxruntime as ort

    levels = {
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[level]
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.optimized_model_filepath = f"{tmp}/optimized.onnx"
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(f"{tmp}/optimized.onnx")
    counts: dict[str, int] = {}
    for node in optimized.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def check_integer_kernels(path, stats: QDQStats) -> dict[str, int]:
    """The optimised graph's op counts; raises if a convolution meant for integer kernels
    was left in float (something between its quantize and dequantize nodes broke the fusion).
    """
    from qsgt_plugin.errors import ExportError

    ops = integer_kernel_report(path)
    fused = ops.get("QLinearConv", 0)
    if fused < len(stats.integer_convs):
        raise ExportError(
            f"onnxruntime runs {fused} of the {len(stats.integer_convs)} convolutions meant for "
            "integer kernels on them; the others run in float (a node between a quantize and "
            "its dequantize stops the fusion)"
        )
    return ops
