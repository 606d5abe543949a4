"""A small editable view of an ONNX graph: constants as arrays, producers, consumers.

The exporters rewrite the graph that ``torch.onnx.export`` writes (fold BatchNorm into the
convolution before it, insert quantize / dequantize pairs); this class keeps the bookkeeping of
names in one place. ``onnx`` is imported by the callers, who have checked the export extra.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["Graph"]


class Graph:
    """Wraps a ``ModelProto``; ``Constant`` nodes become initializers on construction."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self._ids = itertools.count()
        self.uint4: set[str] = set()
        """Names of uint8 constants (values below 16) to store as ONNX UINT4."""
        self.consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in self.graph.initializer
        }
        for node in list(self.graph.node):
            if node.op_type == "Constant" and node.attribute[0].name == "value":
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
                self.graph.node.remove(node)
        # torch's exporter writes equal constants once and hands out copies through Identity
        # nodes (two layers whose folded weights are all zero, as in a fresh timm ResNet whose
        # last BatchNorm of each block starts at zero); each layer gets its own name here, so
        # that rewriting one layer's weights leaves the other's alone.
        for node in list(self.graph.node):
            if node.op_type == "Identity" and node.input[0] in self.consts:
                self.consts[node.output[0]] = self.consts[node.input[0]].copy()
                self.graph.node.remove(node)

    # -- reading -------------------------------------------------------------------------------
    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return list(self.graph.node)

    def producer(self, name: str) -> onnx.NodeProto | None:
        return next((n for n in self.graph.node if name in n.output), None)

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        outputs = {o.name for o in self.graph.output}
        users = [n for n in self.graph.node if name in n.input]
        return users + ([None] if name in outputs else [])  # type: ignore[list-item]

    def weight_inputs(self, weights: list) -> list[tuple[onnx.NodeProto, object, np.ndarray]]:
        """``(node, weight, m)``: each Conv / Gemm whose float weights are one of ``weights``
        (objects with ``values()``, a float tensor) times ``m``, one factor per output
        channel. torch's exporter folds an eval-mode BatchNorm into the convolution before it
        (``m = gamma / sqrt(var + eps)``); the integers are the same, their scale is not."""
        free = [(weight, weight.values().numpy()) for weight in weights]
        found = []
        for node in self.graph.node:
            if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2:
                continue
            w = self.const(node.input[1])
            if w is None or w.dtype != np.float32:
                continue
            if node.op_type == "Gemm" and self.attr(node, "transB", 0) == 0:
                w = w.T
            for i, (weight, values) in enumerate(free):
                m = _channel_factor(w, values)
                if m is not None:
                    found.append((node, weight, m))
                    del free[i]
                    break
        return found

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name)

    def is_input(self, name: str) -> bool:
        return any(i.name == name for i in self.graph.input)

    def attr(self, node: onnx.NodeProto, name: str, default=None):
        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    # -- writing -------------------------------------------------------------------------------
    def name(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids)}"

    def add_const(self, prefix: str, array: np.ndarray) -> str:
        name = self.name(prefix)
        self.consts[name] = np.asarray(array)
        return name

    def add_node(self, op: str, inputs: list[str], **attrs) -> onnx.NodeProto:
        """A new node with one fresh output (the nodes are sorted by :meth:`finish`)."""
        self.graph.node.append(helper.make_node(op, inputs, [self.name(op)], **attrs))
        return self.graph.node[-1]

    def rename_input(self, node: onnx.NodeProto, old: str, new: str) -> None:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new

    def qdq(self, value: str, scale: float, zero_point: int, dtype) -> str:
        """Add ``QuantizeLinear -> DequantizeLinear`` on ``value``; returns the new name."""
        s = self.add_const("scale", np.array(scale, dtype=np.float32))
        z = self.add_const("zero_point", np.array(zero_point, dtype=dtype))
        q = self.add_node("QuantizeLinear", [value, s, z])
        return self.add_node("DequantizeLinear", [q.output[0], s, z]).output[0]

    def snapshot(self) -> onnx.ModelProto:
        """A finished copy of the graph as it is now (this view stays editable)."""
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        return Graph._finish(model, self.consts, self.uint4)

    def finish(self, short_names: bool = False) -> onnx.ModelProto:
        """The model with the used constants as initializers and the nodes sorted;
        ``short_names`` renames every node and inner tensor (the exporter's path-like names
        take more room than a small model's weights)."""
        model = Graph._finish(self.model, self.consts, self.uint4)
        if short_names:
            _shorten(model.graph)
        return model

    @staticmethod
    def _finish(model: onnx.ModelProto, consts: dict, uint4: set[str]) -> onnx.ModelProto:
        graph = model.graph
        _share_constants(graph, consts, uint4)
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        del graph.initializer[:]
        for name, array in consts.items():
            if name in uint4 and name in used:
                flat = np.append(array.reshape(-1), 0)[: array.size + array.size % 2]
                packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)  # low nibble first
                tensor = helper.make_tensor(
                    name, onnx.TensorProto.UINT4, array.shape, packed.tobytes(), raw=True
                )
                graph.initializer.append(tensor)
            elif name in used:
                graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
        Graph._toposort(graph, set(consts))
        return model

    @staticmethod
    def _toposort(graph, consts: set[str]) -> None:
        known = consts | {i.name for i in graph.input} | {""}
        pending, ordered = list(graph.node), []
        while pending:
            ready = [n for n in pending if all(i in known for i in n.input)]
            if not ready:
                raise RuntimeError("the rewritten graph has a cycle or a missing input")
            for node in ready:
                ordered.append(node)
                known.update(node.output)
            pending = [n for n in pending if n not in ready]
        copies = [onnx.NodeProto() for _ in ordered]
        for copy, node in zip(copies, ordered, strict=True):
            copy.CopyFrom(node)
        del graph.node[:]
        graph.node.extend(copies)


def _share_constants(graph, consts: dict, uint4: set[str]) -> None:
    """Point every use of a small constant at one copy of its value (the decoders of the
    packed format repeat the same shifts, shapes and steps in every layer)."""
    first: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    for name, array in consts.items():
        if array.size <= 64:
            key = (str(array.dtype), array.shape, array.tobytes(), name in uint4)
            alias[name] = first.setdefault(key, name)
    for node in graph.node:
        node.input[:] = [alias.get(n, n) for n in node.input]


def _shorten(graph) -> None:
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    del graph.value_info[:]


def _channel_factor(w: np.ndarray, v: np.ndarray) -> np.ndarray | None:
    """``m`` with ``w == m * v`` per output channel (to float32 rounding), else None."""
    if w.shape != v.shape:
        return None
    w2, v2 = w.reshape(len(w), -1).astype(np.float64), v.reshape(len(v), -1).astype(np.float64)
    norm = (v2 * v2).sum(axis=1)
    m = np.where(norm > 0, (w2 * v2).sum(axis=1) / np.where(norm > 0, norm, 1), 0.0)
    error = np.abs(w2 - m[:, None] * v2).max(axis=1)
    if np.all(error <= 1e-5 * np.abs(w2).max(axis=1) + 1e-12):
        return m
    return None
