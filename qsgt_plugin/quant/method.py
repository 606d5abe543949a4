"""What a quantization plugin registers: named Brevitas injectors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from brevitas.inject import ExtendedInjector

__all__ = ["Catalogue", "QuantMethod", "Resolver", "WeightQuantizer", "lookup"]


@dataclass(frozen=True)
class QuantMethod:
    """An activation quantization method.

    Attributes:
        name: the name ``convert(method=...)`` and recipes use.
        act_quant: a Brevitas activation injector; ``convert`` specialises it with
            ``.let(bit_width=k, alpha_init=a)``, so it must read both.
        weight_quant: name of the weight quantizer used when ``convert`` is given none.
        description: one line for ``list_methods`` and ``qsgt methods``.
    """

    name: str
    act_quant: type[ExtendedInjector]
    weight_quant: str = "dorefa"
    description: str = ""

    def __post_init__(self) -> None:
        _check_injector(self.name, "act_quant", self.act_quant)


@dataclass(frozen=True)
class WeightQuantizer:
    """A weight quantizer.

    Attributes:
        name: the name ``convert(weight_quant=...)`` and recipes use.
        weight_quant: a Brevitas weight injector, specialised with ``.let(bit_width=k)``.
        description: one line for listings.
    """

    name: str
    weight_quant: type[ExtendedInjector]
    description: str = ""

    def __post_init__(self) -> None:
        _check_injector(self.name, "weight_quant", self.weight_quant)


def _check_injector(name: object, field: str, value: object) -> None:
    """``TypeError`` naming the field unless ``value`` is a Brevitas injector class."""
    if not isinstance(value, type) or not issubclass(value, ExtendedInjector):
        raise TypeError(
            f"{name!r}: {field} must be a Brevitas injector class (a subclass of "
            f"brevitas.inject.ExtendedInjector, e.g. PACTActPerTensorFloat), got {value!r}"
        )


class Resolver(Protocol):
    """Turns names into methods and weight quantizers: a :class:`Catalogue`, or the plugin
    host's registry (``qsgt_plugin.plugins.Registry``)."""

    def method(self, name: str) -> QuantMethod: ...

    def weight_quantizer(self, name: str) -> WeightQuantizer: ...


@dataclass
class Catalogue:
    """Methods and weight quantizers by name (the built-ins, or what plugins registered)."""

    methods: dict[str, QuantMethod] = field(default_factory=dict)
    weight_quantizers: dict[str, WeightQuantizer] = field(default_factory=dict)
    hint: str = ""
    """Appended to an unknown-name error (e.g. which plugins failed to load)."""

    def method(self, name: str) -> QuantMethod:
        """The method ``name``; ``ValueError`` listing the known ones otherwise."""
        return lookup(self.methods, name, "quantization method", self.hint)

    def weight_quantizer(self, name: str) -> WeightQuantizer:
        """The weight quantizer ``name``; ``ValueError`` listing the known ones otherwise."""
        return lookup(self.weight_quantizers, name, "weight quantizer", self.hint)


def lookup(table: dict, name: str, kind: str, hint: str = ""):
    try:
        return table[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(table)) or "none"
        raise ValueError(f"unknown {kind} {name!r}; known: {known}{hint}") from None
