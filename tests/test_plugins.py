"""The pluggy host: built-ins through entry points, third-party plugins, clashes."""

from __future__ import annotations

import copy
import os
import re
import sys
import textwrap
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from qsgt_plugin import hookimpl
from qsgt_plugin.datasets import Dataset
from qsgt_plugin.plugins import (
    BUILTIN_PLUGINS,
    Registry,
    list_methods,
    list_models,
    make_plugin_manager,
)
from qsgt_plugin.quant import (
    IntWeightPerChannelFloat,
    PACTActPerTensorFloat,
    QuantMethod,
    WeightQuantizer,
    alphas,
    convert,
)


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
    assert set(registry.datasets) == {"mnist", "cifar10"}
    assert registry.methods["pact"].act_quant is PACTActPerTensorFloat
    assert registry.datasets["cifar10"].shape == (3, 32, 32)


def test_module_level_listings():
    assert list_methods() == ["pact", "pact_lsq"]
    assert list_models() == ["resnet20", "resnet32", "resnet44", "resnet56"]


def test_cli_lists_methods_weight_quantizers_and_models(capsys):
    from qsgt_plugin.cli import main

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"^pact +PACT, exact clipping-level gradient .*\[weights: dorefa\]$", out, re.M
    )
    assert re.search(r"^pact_lsq +PACT forward, Brevitas' built-in learned scale", out, re.M)
    assert re.search(r"^int_per_channel +symmetric narrow-range integer weights", out, re.M)
    assert main(["models"]) == 0
    assert capsys.readouterr().out.split() == ["resnet20", "resnet32", "resnet44", "resnet56"]


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


def test_a_name_registered_twice_leaves_out_the_later_plugin_naming_both(caplog):
    class Again:
        @hookimpl
        def register_quant_methods(self, register):
            register(QuantMethod("pact_again", PACTActPerTensorFloat))
            register(QuantMethod("pact", PACTActPerTensorFloat))

    pm = make_plugin_manager()
    pm.register(Again(), name="again")
    registry = Registry(pm)
    assert "plugin 'again' failed to register: quantization method 'pact' is already " in (
        caplog.text
    )
    assert "registered by plugin 'builtin_quant'" in registry.failed_plugins["again"]
    assert "pact_again" not in registry.methods  # left out whole
    assert registry.methods["pact"].act_quant is not None  # the built-in still works
    with pytest.raises(ValueError, match=r"unknown quantization method 'pact_again'.*'again'"):
        registry.method("pact_again")


def test_one_plugin_registering_a_name_twice_is_told_so():
    class Twice:
        @hookimpl
        def register_datasets(self, register):
            register(squares())
            register(squares())

    registry = fresh_registry(Twice())
    (message,) = [m for p, m in registry.failed_plugins.items() if "squares" in m]
    assert "it registers the dataset 'squares' twice" in message


@contextmanager
def restored_timm_registry():
    """Models filed in timm's registry inside the block are gone when it ends."""
    from timm.models import _registry

    saved = {
        name: copy.copy(getattr(_registry, name))
        for name in dir(_registry)
        if name.startswith("_model") and isinstance(getattr(_registry, name), (dict, set))
    }
    try:
        yield
    finally:
        for name, value in saved.items():
            current = getattr(_registry, name)
            current.clear()
            current.update(value)


@pytest.fixture
def timm_registry_restored():
    with restored_timm_registry():
        yield


def test_a_model_plugin_files_its_model_in_timm(timm_registry_restored):
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


def test_a_test_model_leaves_timm_registry_when_the_test_ends():
    """The fixture above in isolation: a model filed inside the block is gone after it."""

    def qsgt_test_transient_net(pretrained=False, num_classes=10, **kwargs):
        return nn.Sequential(nn.Flatten(), nn.Linear(12, num_classes))

    class Models:
        @hookimpl
        def register_models(self, register):
            register(qsgt_test_transient_net)

    with restored_timm_registry():
        fresh_registry(Models())
        assert timm.is_model("qsgt_test_transient_net")
    assert not timm.is_model("qsgt_test_transient_net")
    assert timm.is_model("resnet20")  # what was there before stays


class Ternary:
    """A third-party weight quantizer: 2-bit integers per channel under its own name."""

    @hookimpl
    def register_weight_quantizers(self, register):
        register(WeightQuantizer("ternary", IntWeightPerChannelFloat.let(bit_width=2)))


def test_a_third_party_weight_quantizer_through_the_registry():
    registry = fresh_registry(Ternary())
    qmodel = convert(
        timm.create_model("resnet20"), bits=4, weight_quant="ternary", registry=registry
    )
    assert qmodel.qsgt_summary.weight_quant == "ternary"
    assert qmodel.qsgt_summary.quantized["layer1.0.conv1"] == "Conv2d w4 ternary"
    weight = qmodel.layer1[0].conv1.quant_weight().value
    for channel in weight:
        assert channel.unique().numel() <= 2**4 - 1  # narrow range: -7 .. 7


def test_a_model_clashing_with_timm_is_an_error():
    def resnet18(pretrained=False, **kwargs):
        return nn.Identity()

    class Clash:
        @hookimpl
        def register_models(self, register):
            register(resnet18)

    registry = fresh_registry(Clash())
    (message,) = registry.failed_plugins.values()
    assert re.search(r"'resnet18' clashes with a model .* in timm", message)
    assert timm.models.model_entrypoint("resnet18") is not resnet18


def test_registering_the_wrong_type_is_an_error():
    class Wrong:
        @hookimpl
        def register_quant_methods(self, register):
            register(object())

    (message,) = fresh_registry(Wrong()).failed_plugins.values()
    assert "registered a quantization method without a name" in message


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


def test_a_plugin_that_fails_to_import_is_named_and_breaks_nothing_else(
    tmp_path, monkeypatch, caplog
):
    write_distribution(tmp_path, "qsgt_ext_broken", "raise ImportError('missing dependency xyz')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry(make_plugin_manager())
    assert "failed to import: missing dependency xyz" in caplog.text
    assert registry.failed_plugins.keys() == {"qsgt_ext_broken"}
    qmodel = convert(timm.create_model("resnet20"), method="pact", registry=registry)
    assert len(alphas(qmodel)) == 19  # the built-ins still work
    with pytest.raises(
        ValueError, match=r"unknown quantization method 'demo'.*'qsgt_ext_broken'.*failed"
    ):
        registry.method("demo")


def test_every_hook_specification_has_a_test_here():
    """As datasette does: a hook nobody exercises here is a hook nobody knows works."""
    import inspect

    from qsgt_plugin import hookspecs

    source = inspect.getsource(sys.modules[__name__])
    hooks = [
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, "qsgt_plugin_spec")
    ]
    assert hooks == [
        "register_datasets",
        "register_models",
        "register_quant_methods",
        "register_weight_quantizers",
    ]
    for hook in hooks:
        assert f"def {hook}(self, register)" in source, f"no test plugin implements {hook}"


def test_hooks_are_called_through_pluggy_so_wrappers_see_them():
    """A hook wrapper sees the registration call (it never ran when the registry called each
    implementation itself)."""
    seen = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def register_quant_methods(self, register):
            seen.append("before")
            result = yield
            seen.append("after")
            return result

    registry = fresh_registry(Wrapper())
    assert seen == ["before", "after"]
    assert set(registry.methods) == {"pact", "pact_lsq"}


@dataclass(frozen=True)
class Squares(Dataset):
    """Three classes of 8 x 8 images; ``broken`` returns images of the wrong size."""

    broken: bool = False

    def load(self, train, root=None, verify=True):
        n = self.train_size if train else self.test_size
        labels = torch.arange(n) % self.num_classes
        side = 6 if self.broken else 8
        images = (labels[:, None, None, None] * 100).expand(n, 1, side, side)
        return images.to(torch.uint8).contiguous(), labels


def squares(broken: bool = False) -> Squares:
    kwargs = dict(mean=(0.5,), std=(0.5,), train_size=60, test_size=30, num_classes=3)
    return Squares("squares", shape=(1, 8, 8), broken=broken, **kwargs)


class SquaresPlugin:
    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    @hookimpl
    def register_datasets(self, register):
        register(self.dataset)


def test_a_dataset_plugin_feeds_the_loader_and_its_declaration_is_checked(install_plugins):
    from qsgt_plugin.errors import DatasetNotFoundError
    from qsgt_plugin.training.data import load_split

    registry = install_plugins(SquaresPlugin(squares()))
    assert set(registry.datasets) == {"mnist", "cifar10", "squares"}
    images, labels = load_split("squares", train=False)
    assert images.shape == (30, 1, 8, 8) and labels.tolist()[:4] == [0, 1, 2, 0]
    install_plugins(SquaresPlugin(squares(broken=True)))
    with pytest.raises(
        DatasetNotFoundError,
        match=r"squares's training split does not match its declaration: images are "
        r"torch.uint8 \(1, 6, 6\), not uint8 \(1, 8, 8\)",
    ):
        load_split("squares", train=True)


def test_an_unknown_dataset_names_the_registered_ones(install_plugins):
    from qsgt_plugin.errors import RecipeError
    from qsgt_plugin.recipe import Recipe
    from qsgt_plugin.training.build import check_recipe

    install_plugins(SquaresPlugin(squares()))
    recipe = Recipe.model_validate({"data": {"dataset": "squaress"}})
    with pytest.raises(
        RecipeError, match=r"unknown dataset 'squaress'; registered: cifar10, mnist, squares"
    ):
        check_recipe(recipe)


def test_a_dataset_of_the_wrong_type_or_twice_is_an_error():
    class NotADataset:
        name = "fake"

    class Wrong:
        @hookimpl
        def register_datasets(self, register):
            register(NotADataset())

    (message,) = fresh_registry(Wrong()).failed_plugins.values()
    assert re.search(r"registered .*NotADataset.* as a dataset, not a .*Dataset", message)
    registry = fresh_registry(SquaresPlugin(squares()), SquaresPlugin(squares()))
    (message,) = registry.failed_plugins.values()
    assert re.search(r"dataset 'squares' is already registered by plugin '\d+'", message)
    assert "squares" in registry.datasets  # the first one
    with pytest.raises(ValueError, match="one value per channel"):
        Squares("rgb", shape=(3, 8, 8), mean=(0.5,), std=(0.5,), train_size=1)


def test_qsgt_train_finds_a_dataset_from_an_installed_package(tmp_path):
    """Another process, the CLI, an entry point: as a user's own dataset package would."""
    import subprocess

    tests = Path(__file__).parent
    write_distribution(tmp_path, "qsgt_ext_data", "from synthetic_data import register_datasets\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "data: {dataset: synthetic, batch_size: 64, train_subset: 128, test_subset: 64}\n"
        "quant: {enabled: false}\n"
        f"train: {{epochs: 1}}\noutput: {{dir: {tmp_path / 'run'}}}\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(tests)])}
    done = subprocess.run(
        [sys.executable, "-m", "qsgt_plugin.cli", "train", str(recipe)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"test accuracy \d+\.\d\d% \(best .*\) after 2 steps", done.stdout)
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "qsgt_plugin.cli",
            "train",
            str(recipe),
            "--set",
            "data.dataset=synthetc",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tests)},  # the package not installed
    )
    assert bad.returncode == 2
    assert "unknown dataset 'synthetc'; registered: cifar10, mnist" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
