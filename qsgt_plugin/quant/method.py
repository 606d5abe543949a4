"""What a quantization plugin registers: named Brevitas injectors."""

from __future__ import annotations

from dataclasses import dataclass

from brevitas.inject import ExtendedInjector

__all__ = ["QuantMethod", "WeightQuantizer"]


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
