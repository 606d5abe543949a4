"""The plugin host: a pluggy PluginManager fed from the ``qsgt_plugin`` entry-point group.

The built-in quantizers and models are plugins too (``pyproject.toml`` declares them), so a
third-party package stands on the same footing as this one. :class:`Registry` collects what the
plugins register; :func:`get_registry` holds the process-wide one.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any

import pluggy
import timm.models
from torch import nn

from qsgt_plugin import hookspecs
from qsgt_plugin.common.datasets import Dataset
from qsgt_plugin.errors import PluginError
from qsgt_plugin.quant import convert as convert_with
from qsgt_plugin.quant.method import Catalogue, QuantMethod, WeightQuantizer

__all__ = [
    "BUILTIN_PLUGINS",
    "PluginError",
    "Registry",
    "convert",
    "get_registry",
    "list_methods",
    "list_models",
    "make_plugin_manager",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = hookspecs.PROJECT
# Entry-point name -> module, as declared in pyproject.toml.
BUILTIN_PLUGINS = {
    "builtin_datasets": "qsgt_plugin.common.datasets",
    "builtin_quant": "qsgt_plugin.quant.builtin",
    "resnet_cifar": "qsgt_plugin.models.resnet_cifar",
}


def make_plugin_manager(*, load_entry_points: bool = True) -> pluggy.PluginManager:
    """A new PluginManager with the hook specifications and, by default, every installed plugin.

    A plugin that fails to import is left out with a warning and recorded in the manager's
    ``failed_plugins`` (name -> message): one broken package does not stop the others, and an
    unknown name names the plugins that might have provided it.

    Args:
        load_entry_points: load the ``qsgt_plugin`` entry-point group. When this package is
            used from a source tree without being installed its own entry points do not exist;
            the built-in plugins are then registered directly, with a warning.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.failed_plugins = {}
    if load_entry_points:
        _load_entry_points(pm, entry_points(group=ENTRY_POINT_GROUP))
        missing = [name for name in BUILTIN_PLUGINS if not pm.has_plugin(name)]
        if missing:
            log.warning(
                "qsgt-plugin's entry points are not installed (missing %s); registering the "
                "built-in plugins directly. Run `pip install -e .` in the source tree.",
                ", ".join(missing),
            )
            for name in missing:
                pm.register(importlib.import_module(BUILTIN_PLUGINS[name]), name=name)
    return pm


def _load_entry_points(pm: pluggy.PluginManager, eps: Iterable) -> None:
    # One pluggy call per entry point, so that a plugin that fails to import can be named.
    for ep in eps:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=ep.name)
        except Exception as exc:
            dist = ep.dist.name if ep.dist is not None else "an unknown distribution"
            message = (
                f"plugin {ep.name!r} ({ep.value}, from {dist}) failed to import: {exc}. "
                f"Fix or uninstall {dist}."
            )
            log.warning("%s It is left out.", message)
            pm.failed_plugins[ep.name] = message


class Registry(Catalogue):
    """Quantization methods, weight quantizers, models and datasets registered by a
    PluginManager's plugins.

    Each registration hook is called once per plugin, so a clash names both plugins.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        failed = getattr(pm, "failed_plugins", {})
        hint = "".join(f"; {message}" for message in failed.values())
        super().__init__(hint=f" (a plugin that failed to load may provide it{hint})" * bool(hint))
        self.pm = pm
        self.failed_plugins: dict[str, str] = dict(failed)
        self.models: dict[str, Callable[..., nn.Module]] = {}
        self.datasets: dict[str, Dataset] = {}
        self._owner: dict[tuple[str, str], str] = {}
        self._collect("register_quant_methods", "quantization method", self._add_method)
        self._collect("register_weight_quantizers", "weight quantizer", self._add_weight_quantizer)
        self._collect("register_models", "model", self._add_model)
        self._collect("register_datasets", "dataset", self._add_dataset)

    def _collect(self, hook_name: str, kind: str, add: Callable[[str, object, str], None]) -> None:
        """Call the hook through pluggy (its order, wrappers and tracing apply); ``register``
        tells which plugin's implementation is calling it from the call stack."""
        caller = getattr(self.pm.hook, hook_name)
        owners = {_code(impl.function): impl.plugin_name for impl in caller.get_hookimpls()}

        def register(item: object) -> None:
            plugin = _calling_plugin(owners)
            name = _item_name(item, kind)
            previous = self._owner.get((kind, name))
            if previous is not None:
                raise PluginError(
                    f"{kind} {name!r} is registered twice: by plugin {previous!r} and by "
                    f"plugin {plugin!r}. Rename one of them."
                )
            add(name, item, plugin)
            self._owner[(kind, name)] = plugin

        caller(register=register)

    def _add_method(self, name: str, method: object, plugin: str) -> None:
        if not isinstance(method, QuantMethod):
            raise PluginError(f"plugin {plugin!r} registered {method!r}, not a QuantMethod")
        self.methods[name] = method

    def _add_weight_quantizer(self, name: str, quantizer: object, plugin: str) -> None:
        if not isinstance(quantizer, WeightQuantizer):
            raise PluginError(f"plugin {plugin!r} registered {quantizer!r}, not a WeightQuantizer")
        self.weight_quantizers[name] = quantizer

    def _add_model(self, name: str, fn: object, plugin: str) -> None:
        if not callable(fn):
            raise PluginError(f"plugin {plugin!r} registered {fn!r} as a model, not a function")
        if timm.models.is_model(name):
            if timm.models.model_entrypoint(name) is not fn:
                raise PluginError(
                    f"model {name!r} from plugin {plugin!r} clashes with a model of the same name "
                    "already in timm's registry. Rename it."
                )
        else:
            timm.models.register_model(fn)
        self.models[name] = fn

    def _add_dataset(self, name: str, dataset: object, plugin: str) -> None:
        if not isinstance(dataset, Dataset):
            raise PluginError(
                f"plugin {plugin!r} registered {dataset!r}, not a qsgt_plugin.common.datasets."
                "Dataset"
            )
        self.datasets[name] = dataset


def _code(function: Callable) -> object:
    return getattr(function, "__code__", None) or function.__call__.__code__


def _calling_plugin(owners: dict[object, str]) -> str:
    """The plugin whose hook implementation is on the call stack (the nearest one)."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code in owners:
            return owners[frame.f_code]
        frame = frame.f_back
    return "an unknown plugin"


def _item_name(item: object, kind: str) -> str:
    name = getattr(item, "name", None) if kind != "model" else getattr(item, "__name__", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f"a plugin registered a {kind} without a name: {item!r}")
    return name


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built from the installed plugins on first use."""
    global _registry
    if _registry is None:
        _registry = Registry(make_plugin_manager())
    return _registry


@functools.wraps(convert_with)
def convert(model: nn.Module, bits: int = 4, **options: Any) -> nn.Module:
    # qsgt_plugin.convert: method and weight-quantizer names resolve through the installed
    # plugins (the built-ins among them) unless a registry is given.
    options.setdefault("registry", get_registry())
    return convert_with(model, bits, **options)


def list_methods() -> list[str]:
    """Names of every registered quantization method."""
    return sorted(get_registry().methods)


def list_models() -> list[str]:
    """Names of every model registered by a plugin (all are also in timm's registry)."""
    return sorted(get_registry().models)
