"""The ``packed`` format: weights stored at their bit width, the file as small as the model.

Each quantized weight tensor is stored as its unsigned integer levels ``u`` (``0 .. 2^k - 1``)
and decoded in the graph to ``(u - zero_point) * step`` per output channel:

* 4 bits: an ONNX ``UINT4`` initializer (two levels per byte), ``Cast`` to float;
* 8 bits: a ``UINT8`` initializer;
* any other width: a bit stream in a ``UINT8`` initializer (``k`` bits per level, least
  significant first), unpacked with ``BitShift`` / ``BitwiseAnd`` and weighed by ``2^b``.

The decoder reads initializers only, so onnxruntime evaluates it once when it loads the model
(constant folding) and then runs float kernels. BatchNorm folds into the per-channel step.
"""

from __future__ import annotations

import numpy as np
import onnx

from qsgt_plugin.quant.export.graph import Graph
from qsgt_plugin.quant.export.prepare import IntegerWeight

__all__ = ["OPSET", "pack_bits", "rewrite"]

OPSET = 21
"""UINT4 initializers and ``Cast`` from them need opset 21 (torch traces at 17; the ops it
writes mean the same at 21)."""


def pack_bits(u: np.ndarray, bits: int) -> np.ndarray:
    """``u`` (non-negative integers below ``2^bits``) as a little-endian bit stream in bytes.

    Example::

        >>> pack_bits(np.array([1, 2, 3]), 2)   # 01 10 11 -> 0b00111001
        array([57], dtype=uint8)
    """
    flat = u.reshape(-1).astype(np.uint16)
    stream = ((flat[:, None] >> np.arange(bits, dtype=np.uint16)) & 1).astype(np.uint8)
    return np.packbits(stream.reshape(-1), bitorder="little")


def _decoder(g: Graph, node, spec: IntegerWeight, m: np.ndarray) -> None:
    """Replace the float weights of ``node`` by ``spec``'s levels and their decoder."""
    u = spec.u.numpy().astype(np.int64)
    if spec.bits in (4, 8):  # 4-bit levels are stored as UINT4 by rewrite()
        levels = g.add_node("Cast", [g.add_const("levels", u.astype(np.uint8))], to=1)
    else:
        stream = g.add_const("levels", pack_bits(u, spec.bits).reshape(-1, 1))
        shifts = g.add_const("shifts", np.arange(8, dtype=np.uint8))
        bits = g.add_node("BitShift", [stream, shifts], direction="RIGHT")
        one = g.add_const("one", np.array(1, dtype=np.uint8))
        bits = g.add_node("BitwiseAnd", [bits.output[0], one])
        flat = g.add_const("shape", np.array([-1], dtype=np.int64))
        bits = g.add_node("Reshape", [bits.output[0], flat])
        start = g.add_const("start", np.array([0], dtype=np.int64))
        end = g.add_const("end", np.array([u.size * spec.bits], dtype=np.int64))
        bits = g.add_node("Slice", [bits.output[0], start, end])
        rows = g.add_const("shape", np.array([u.size, spec.bits], dtype=np.int64))
        bits = g.add_node("Reshape", [bits.output[0], rows])
        bits = g.add_node("Cast", [bits.output[0]], to=1)
        powers = g.add_const("powers", (2.0 ** np.arange(spec.bits)).astype(np.float32))
        levels = g.add_node("MatMul", [bits.output[0], powers])
    shape = g.add_const("shape", np.array(u.shape, dtype=np.int64))
    levels = g.add_node("Reshape", [levels.output[0], shape])
    channel = (-1,) + (1,) * (u.ndim - 1)
    zero = spec.zero_point.numpy().astype(np.float32)
    zero = zero[:1].reshape(()) if np.all(zero == zero[0]) else zero.reshape(channel)
    zero = g.add_const("zero_point", zero)
    centred = g.add_node("Sub", [levels.output[0], zero])
    step = (spec.scale.numpy().astype(np.float64) * m).astype(np.float32).reshape(channel)
    step = g.add_const("weight_step", step)  # with the folded BatchNorm's factor m
    weight = g.add_node("Mul", [centred.output[0], step])
    if node.op_type == "Gemm" and g.attr(node, "transB", 0) == 0:
        weight = g.add_node("Transpose", [weight.output[0]], perm=[1, 0])
    node.input[1] = weight.output[0]


def rewrite(model: onnx.ModelProto, weights: list[IntegerWeight]) -> onnx.ModelProto:
    """Store ``weights`` at their bit width, fold BatchNorm into their steps."""
    g = Graph(model)
    for node, spec, m in g.weight_inputs(weights):
        _decoder(g, node, spec, m)
    for name, array in g.consts.items():
        users = g.consumers(name)
        if (
            array.dtype == np.uint8
            and array.size
            and int(array.max()) < 16
            and users
            and all(u is not None and u.op_type == "Cast" for u in users)
        ):
            g.uint4.add(name)  # the same values, half the bytes
    model = g.finish(short_names=True)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, OPSET)
    return model
