"""Hook specifications of the ``qsgt_plugin`` pluggy host.

A plugin is any module or object with functions marked ``@hookimpl`` whose names match the
specifications below. Third-party packages declare it under the entry-point group
``qsgt_plugin`` in their ``pyproject.toml``; nothing in this package has to change::

    [project.entry-points.qsgt_plugin]
    my_quant = "my_package.qsgt_hooks"

Each registration hook receives a ``register`` callback and calls it once per thing it adds,
as in llm's ``register_models(register)``. A name registered twice is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from qsgt_plugin.markers import PROJECT, hookimpl, hookspec

if TYPE_CHECKING:
    from torch import nn

    from qsgt_plugin.datasets import Dataset
    from qsgt_plugin.quant.method import QuantMethod, WeightQuantizer

__all__ = [
    "PROJECT",
    "hookimpl",
    "hookspec",
    "register_datasets",
    "register_models",
    "register_quant_methods",
    "register_weight_quantizers",
]


@hookspec
def register_quant_methods(register: Callable[[QuantMethod], None]) -> None:
    """Register activation quantization methods (``convert(method=NAME)``).

    Args:
        register: call it with a :class:`~qsgt_plugin.quant.method.QuantMethod` per method.
    """


@hookspec
def register_weight_quantizers(register: Callable[[WeightQuantizer], None]) -> None:
    """Register weight quantizers (``convert(weight_quant=NAME)``).

    Args:
        register: call it with a :class:`~qsgt_plugin.quant.method.WeightQuantizer` each.
    """


@hookspec
def register_models(register: Callable[[Callable[..., nn.Module]], None]) -> None:
    """Register model entry points in timm's registry (``timm.create_model(NAME)``).

    Args:
        register: call it with a timm-style entry-point function; the model is filed under
            the function's ``__name__``. A function already filed by ``@timm.models.register_model``
            is accepted; a different function under an existing name is an error.
    """


@hookspec
def register_datasets(register: Callable[[Dataset], None]) -> None:
    """Register datasets a recipe can name (``data.dataset: NAME``).

    Args:
        register: call it with a :class:`~qsgt_plugin.datasets.Dataset` each; its
            ``load`` returns a whole split as uint8 images and int64 labels.
    """
