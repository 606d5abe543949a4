"""The plugin host: a pluggy PluginManager fed from the ``qsgt_plugin`` entry-point group.

The built-in quantizers and models are plugins too (``pyproject.toml`` declares them), so a
third-party package stands on the same footing as this one. :class:`Registry` collects what the
plugins register; :func:`get_registry` holds the process-wide one.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any

import pluggy
import timm.models
from torch import nn

from qsgt_plugin import hookspecs
from qsgt_plugin.datasets import Dataset
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
    "builtin_datasets": "qsgt_plugin.datasets.mnist_cifar10",
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


# The registration hooks, in the order they are collected, with what each one registers.
HOOKS = (
    ("register_quant_methods", "quantization method"),
    ("register_weight_quantizers", "weight quantizer"),
    ("register_models", "model"),
    ("register_datasets", "dataset"),
)


class Registry(Catalogue):
    """Quantization methods, weight quantizers, models and datasets registered by a
    PluginManager's plugins.

    Each plugin's hook implementations are called, through pluggy (its wrappers and tracing
    apply), with a ``register`` callback bound to that plugin, so everything it registers is
    named with it. A plugin whose hook raises, or that
    registers something invalid or a name another plugin has, is left out whole (nothing of it
    is registered) with a warning, and recorded in ``failed_plugins`` as one that fails to
    import is: the other plugins, and every command that does not need it, still work.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.failed_plugins: dict[str, str] = dict(getattr(pm, "failed_plugins", {}))
        self.models: dict[str, Callable[..., nn.Module]] = {}
        self.datasets: dict[str, Dataset] = {}
        self._owner: dict[tuple[str, str], str] = {}
        super().__init__()
        for plugin, impls in _implementations(pm).items():
            try:
                staged = self._stage(plugin, impls)
            except Exception as exc:
                message = f"plugin {plugin!r} failed to register: {exc}. Fix or uninstall it."
                log.warning("%s It is left out.", message)
                self.failed_plugins[plugin] = message
                continue
            for kind, name, item in staged:
                self._commit(kind, name, item, plugin)
        hint = "".join(f"; {message}" for message in self.failed_plugins.values())
        self.hint = f" (a plugin that failed to load may provide it{hint})" * bool(hint)

    def owner(self, kind: str, name: str) -> str | None:
        """The plugin that registered ``kind`` ``name`` (``"dataset"``, ``"model"``, ...)."""
        return self._owner.get((kind, name))

    def _stage(self, plugin: str, impls: list[tuple[str, str, Callable]]) -> list[tuple]:
        """Everything ``plugin`` registers, checked, before any of it is kept."""
        staged: list[tuple[str, str, object]] = []
        for _, kind, call in impls:

            def register(item: object, kind: str = kind) -> None:
                name = _item_name(item, kind)
                if any((k, n) == (kind, name) for k, n, _ in staged):
                    raise PluginError(f"it registers the {kind} {name!r} twice")
                previous = self._owner.get((kind, name))
                if previous is not None:
                    raise PluginError(
                        f"{kind} {name!r} is already registered by plugin {previous!r}; rename "
                        "one of them"
                    )
                _check(kind, name, item)
                staged.append((kind, name, item))

            call(register=register)
        return staged

    def _commit(self, kind: str, name: str, item: Any, plugin: str) -> None:
        self._owner[(kind, name)] = plugin
        if kind == "quantization method":
            self.methods[name] = item
        elif kind == "weight quantizer":
            self.weight_quantizers[name] = item
        elif kind == "model":
            if not timm.models.is_model(name):
                timm.models.register_model(item)
            self.models[name] = item
        else:
            self.datasets[name] = item


def _implementations(pm: pluggy.PluginManager) -> dict[str, list[tuple[str, str, Callable]]]:
    """Each plugin's registration hook implementations: the built-in plugins first, then the
    others in the order they were registered (so a name clash leaves out the later plugin,
    never a built-in)."""
    plugins: dict[str, list[tuple[str, str, Callable]]] = {n: [] for n in BUILTIN_PLUGINS}
    for hook_name, kind in HOOKS:
        impls = getattr(pm.hook, hook_name).get_hookimpls()
        owners = [i.plugin_name for i in impls if not (i.hookwrapper or i.wrapper)]
        for name in dict.fromkeys(owners):
            # this plugin's implementation alone, with every wrapper around it
            others = [pm.get_plugin(o) for o in owners if o != name]
            call = pm.subset_hook_caller(hook_name, remove_plugins=others)
            plugins.setdefault(name, []).append((hook_name, kind, call))
    return {name: impls for name, impls in plugins.items() if impls}


_EXPECTED = {
    "quantization method": (QuantMethod, "a qsgt_plugin.QuantMethod"),
    "weight quantizer": (WeightQuantizer, "a qsgt_plugin.WeightQuantizer"),
    "dataset": (Dataset, "a qsgt_plugin.datasets.Dataset"),
}


def _check(kind: str, name: str, item: object) -> None:
    """``PluginError`` for an item that is not what ``kind`` registers."""
    if kind in _EXPECTED:
        cls, what = _EXPECTED[kind]
        if not isinstance(item, cls):
            raise PluginError(f"it registered {item!r} as a {kind}, not {what}")
        return
    if not callable(item):
        raise PluginError(f"it registered {item!r} as a model, not a function")
    if timm.models.is_model(name) and timm.models.model_entrypoint(name) is not item:
        raise PluginError(
            f"its model {name!r} clashes with a model of the same name already in timm's "
            "registry; rename it"
        )


def _item_name(item: object, kind: str) -> str:
    name = getattr(item, "name", None) if kind != "model" else getattr(item, "__name__", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f"it registered a {kind} without a name: {item!r}")
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
