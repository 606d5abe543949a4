"""Activations a model calls as functions (``F.relu(x)``, ``x.relu()``), found and quantized.

torchvision's GoogLeNet applies ``F.relu`` after every convolution and DenseNet applies it
before the classifier: no ``nn.ReLU`` module stands there for ``convert()`` to replace. The dry
run records, under a ``TorchFunctionMode``, every such call and the module whose method made it
(its *owner*). ``convert()`` then gives each owner one quantized activation per call of one
forward (:class:`FunctionalCallSites`), and while the owner's forward runs a mode routes its
calls to them, in order. The owner's code is not changed: its ``training`` branches, dropout
and the rest behave as before.

Activation functions without a quantized form (``F.gelu``, ``F.silu``, ...) are recorded too,
so that ``convert()`` lists them instead of reporting a float activation as quantized.
"""

from __future__ import annotations

import sys
import threading
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from qsgt_plugin.quant.layers import ACTIVATIONS, CallSiteActivation, QuantAct

__all__ = ["QUANTIZABLE", "FunctionalCallSites", "FunctionalTrace", "record_functional"]

# function -> the float activation whose quantized form replaces it
QUANTIZABLE: dict[object, type[nn.Module]] = {
    **dict.fromkeys((F.relu, F.relu_, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_), nn.ReLU),
    F.relu6: nn.ReLU6,
}
_OTHER = {
    F.gelu: "gelu", F.silu: "silu", F.hardswish: "hardswish", F.mish: "mish", F.elu: "elu",
    F.leaky_relu: "leaky_relu", F.hardsigmoid: "hardsigmoid", torch.sigmoid: "sigmoid",
    Tensor.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh", Tensor.tanh: "tanh",
}  # fmt: skip
_state = threading.local()  # .busy: a call is being handled (its inner calls pass through)


def _owner() -> nn.Module | None:
    """The module whose method made the current call: the nearest frame with a module ``self``."""
    frame = sys._getframe(2)
    while frame is not None:
        candidate = frame.f_locals.get("self") if "self" in frame.f_code.co_varnames else None
        if isinstance(candidate, nn.Module) and frame.f_code.co_filename != __file__:
            return candidate
        frame = frame.f_back
    return None


def _is_activation_module(module: nn.Module) -> bool:
    """Calls made inside activation modules belong to those modules (converted elsewhere)."""
    origin = type(module).__module__
    return (
        type(module) in ACTIVATIONS
        or isinstance(module, QuantAct)
        or origin == "torch.nn.modules.activation"
        or origin.startswith(("brevitas.", "timm.layers.activations"))
    )


@dataclass
class FunctionalTrace:
    """Functional activation calls of one forward pass, by the module that made them."""

    quantizable: dict[int, list[type[nn.Module]]] = field(default_factory=lambda: defaultdict(list))
    other: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    owners: dict[int, nn.Module] = field(default_factory=dict)
    unowned: list[str] = field(default_factory=list)


class _Recorder(TorchFunctionMode):
    def __init__(self, trace: FunctionalTrace) -> None:
        super().__init__()
        self.trace = trace

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func in QUANTIZABLE or func in _OTHER) and not getattr(_state, "busy", False):
            owner = _owner()
            if owner is None:
                self.trace.unowned.append(getattr(func, "__name__", str(func)))
            elif not _is_activation_module(owner):
                self.trace.owners[id(owner)] = owner
                if func in QUANTIZABLE:
                    self.trace.quantizable[id(owner)].append(QUANTIZABLE[func])
                else:
                    self.trace.other[id(owner)].append(_OTHER[func])
            _state.busy = True  # F.relu calls torch.relu: one call, not two
            try:
                return func(*args, **kwargs)
            finally:
                _state.busy = False
        return func(*args, **kwargs)


def record_functional(trace: FunctionalTrace) -> TorchFunctionMode:
    """A context manager recording functional activation calls into ``trace``."""
    return _Recorder(trace)


class _Router(TorchFunctionMode):
    """Sends the owner's own activation calls to its quantized call sites."""

    def __init__(self, sites: FunctionalCallSites) -> None:
        super().__init__()
        self.sites = sites

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        mine = func in QUANTIZABLE and not getattr(_state, "busy", False)
        if mine and _owner() is self.sites.owner:
            _state.busy = True
            try:
                return self.sites(args[0] if args else kwargs["input"])
            finally:
                _state.busy = False
        return func(*args, **kwargs)


class FunctionalCallSites(CallSiteActivation):
    """The quantized activations of one module's functional calls, in call order.

    Registered on the owner as ``qsgt_functional``; its ``enter`` and ``exit`` are the owner's
    forward hooks. Both are bound methods, so a deep copy of the model (an EMA, ``convert``'s
    own copy) routes the copy's calls to the copy's quantizers.
    """

    def __init__(self, owner: nn.Module, sites: list[QuantAct]) -> None:
        super().__init__(sites)
        self.__dict__["owner"] = owner  # a reference, not a submodule (no cycle in the tree)
        self._modes: list[_Router] = []

    def enter(self, *_) -> None:
        self.reset_call_sites()
        mode = _Router(self)
        mode.__enter__()
        self._modes.append(mode)

    def exit(self, *_) -> None:
        if self._modes:
            self._modes.pop().__exit__(None, None, None)
