"""The pluggy host: built-ins through entry points, third-party plugins, clashes."""

from __future__ import annotations

import textwrap

import pytest
import timm
import torch
from torch import nn

from qsgt_plugin import hookimpl
from qsgt_plugin.plugins import (
    BUILTIN_PLUGINS,
    PluginError,
    Registry,
    get_registry,
    list_methods,
    list_models,
    make_plugin_manager,
)
from qsgt_plugin.quant import PACTActPerTensorFloat, QuantMethod, alphas, convert


def fresh_registry(*plugins: object) -> Registry:
    pm = make_plugin_manager()
    for plugin in plugins:
        pm.register(plugin)
    return Registry(pm)


def test_builtins_are_registered_through_the_package_entry_points():
    pm = make_plugin_manager()
    for name, module in BUILTIN_PLUGINS.items():
        assert pm.get_plugin(name).__name__ == module
    # They came from the installed distribution's metadata, not the fallback.
    dists = {plugin.__name__: dist.project_name for plugin, dist in pm.list_plugin_distinfo()}
    assert dists == {m: "qsgt-plugin" for m in BUILTIN_PLUGINS.values()}


def test_every_hook_of_the_builtins_registers_something():
    registry = fresh_registry()
    assert set(registry.methods) == {"pact", "pact_lsq"}
    assert set(registry.weight_quantizers) == {"dorefa", "int_per_channel"}
    assert set(registry.models) == {"resnet20", "resnet32", "resnet44", "resnet56"}
    assert registry.methods["pact"].act_quant is PACTActPerTensorFloat


def test_module_level_listings():
    assert list_methods() == sorted(get_registry().methods)
    assert "resnet20" in list_models()


class ShiftedPACT:
    """A third-party method: PACT with a different default weight quantizer."""

    @hookimpl
    def register_quant_methods(self, register):
        register(QuantMethod("pact_pc", PACTActPerTensorFloat, weight_quant="int_per_channel"))


def test_convert_resolves_a_plugin_method_through_the_registry():
    registry = fresh_registry(ShiftedPACT())
    assert "pact_pc" in registry.methods
    qmodel = convert(timm.create_model("resnet20"), bits=4, method="pact_pc", registry=registry)
    assert qmodel.qsgt_summary.weight_quant == "int_per_channel"
    assert len(alphas(qmodel)) == 19


def test_a_name_registered_twice_names_both_plugins():
    class Again:
        @hookimpl
        def register_quant_methods(self, register):
            register(QuantMethod("pact", PACTActPerTensorFloat))

    pm = make_plugin_manager()
    pm.register(Again(), name="again")
    with pytest.raises(PluginError, match=r"'pact' is registered twice: by plugin .* and by"):
        Registry(pm)


def test_a_model_plugin_files_its_model_in_timm():
    def qsgt_test_tiny_net(pretrained=False, num_classes=10, **kwargs):
        return nn.Sequential(nn.Flatten(), nn.Linear(12, num_classes))

    class Models:
        @hookimpl
        def register_models(self, register):
            register(qsgt_test_tiny_net)

    registry = fresh_registry(Models())
    assert registry.models["qsgt_test_tiny_net"] is qsgt_test_tiny_net
    model = timm.create_model("qsgt_test_tiny_net", num_classes=3)
    assert model(torch.randn(2, 3, 2, 2)).shape == (2, 3)


def test_a_model_clashing_with_timm_is_an_error():
    def resnet18(pretrained=False, **kwargs):
        return nn.Identity()

    class Clash:
        @hookimpl
        def register_models(self, register):
            register(resnet18)

    with pytest.raises(PluginError, match=r"'resnet18' .* clashes with a model .* in timm"):
        fresh_registry(Clash())
    assert timm.models.model_entrypoint("resnet18") is not resnet18


def test_registering_the_wrong_type_is_an_error():
    class Wrong:
        @hookimpl
        def register_quant_methods(self, register):
            register(object())

    with pytest.raises(PluginError, match="without a name"):
        fresh_registry(Wrong())


def write_distribution(root, module_name: str, source: str) -> None:
    """A minimal installed distribution: a module plus dist-info with one entry point."""
    (root / f"{module_name}.py").write_text(textwrap.dedent(source))
    info = root / f"{module_name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module_name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[qsgt_plugin]\n{module_name} = {module_name}\n")


def test_a_third_party_package_adds_a_method_with_an_entry_point_only(tmp_path, monkeypatch):
    write_distribution(
        tmp_path,
        "qsgt_ext_demo",
        """
        from qsgt_plugin import QuantMethod, hookimpl
        from qsgt_plugin.quant import PACTLSQActPerTensorFloat

        @hookimpl
        def register_quant_methods(register):
            register(QuantMethod("demo_lsq", PACTLSQActPerTensorFloat))
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry(make_plugin_manager())
    assert "demo_lsq" in registry.methods
    qmodel = convert(timm.create_model("resnet20"), method="demo_lsq", registry=registry)
    assert qmodel.qsgt_summary.method == "demo_lsq"


def test_a_plugin_that_fails_to_import_is_named(tmp_path, monkeypatch):
    write_distribution(tmp_path, "qsgt_ext_broken", "raise ImportError('missing dependency xyz')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        PluginError, match=r"'qsgt_ext_broken'.*failed to import: missing dependency"
    ):
        make_plugin_manager()
