"""A broken plugin is named and left out; everything else keeps working. A dataset plugin's
declaration is checked field by field when it is made, its load() when it is used."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qsgt_plugin import QuantMethod, WeightQuantizer, hookimpl
from qsgt_plugin.datasets import Dataset
from qsgt_plugin.errors import DatasetNotFoundError
from qsgt_plugin.training.data import load_split


class Tiny(Dataset):
    """Two classes of 1 x 4 x 4 images, or whatever ``make`` returns."""

    make = None

    def load(self, train, root=None, verify=True):
        n = self.train_size if train else self.test_size
        if self.make is not None:
            return type(self).make(n)
        labels = torch.arange(n) % 2
        return torch.zeros(n, 1, 4, 4, dtype=torch.uint8), labels


def tiny(**fields) -> dict:
    return {
        "name": "tiny",
        "shape": (1, 4, 4),
        "mean": (0.5,),
        "std": (0.5,),
        "train_size": 8,
        "test_size": 4,
        "num_classes": 2,
        **fields,
    }


@pytest.mark.parametrize(
    "field,value,need",
    [
        ("std", (0.0,), "std must be positive finite numbers"),
        ("std", (float("nan"),), "std must be positive finite numbers"),
        ("num_classes", 0, "num_classes must be an integer of at least 2"),
        ("padding", -1, "padding must be an integer of at least 0"),
        ("train_size", 0, "train_size must be a positive integer"),
        ("test_size", 0, "test_size must be a positive integer"),
        ("shape", (1, 0, 4), "shape must be (channels, height, width)"),
        ("name", "", "name must be a non-empty string"),
    ],
)
def test_a_dataset_declaration_is_refused_naming_the_field(field, value, need):
    with pytest.raises(
        ValueError,
        match=rf"dataset .*: {need}.*got {value!r}".replace("(", r"\(").replace(")", r"\)"),
    ):
        Tiny(**tiny(**{field: value}))


def test_a_method_or_weight_quantizer_that_is_not_an_injector_is_refused():
    with pytest.raises(TypeError, match=r"'mine': act_quant must be a Brevitas injector class"):
        QuantMethod("mine", torch.nn.ReLU)
    with pytest.raises(TypeError, match=r"'w': weight_quant must be a Brevitas injector class"):
        WeightQuantizer("w", "dorefa")


class Raising:
    @hookimpl
    def register_datasets(self, register):
        register(Tiny(**tiny(name="kept-out")))
        raise RuntimeError("the plugin's own bug")


def test_a_registration_hook_that_raises_leaves_out_its_plugin_only(install_plugins, caplog):
    registry = install_plugins(Raising())
    assert "failed to register: the plugin's own bug" in caplog.text
    assert "kept-out" not in registry.datasets  # nothing of it, not even what came first
    assert {"mnist", "cifar10"} <= set(registry.datasets)
    assert {"pact", "pact_lsq"} <= set(registry.methods)


def test_the_cli_works_beside_a_plugin_whose_hook_raises(install_plugins, capsys):
    from qsgt_plugin.cli import main

    install_plugins(Raising())
    assert main(["methods"]) == 0
    assert "pact" in capsys.readouterr().out


@pytest.mark.parametrize(
    "make,message",
    [
        (
            lambda n: (_ for _ in ()).throw(OSError("disk on fire")),
            r"failed to load its test "
            r"split: OSError: disk on fire\. Fix the plugin's load\(\)",
        ),
        (
            lambda n: (np.zeros((n, 1, 4, 4), np.uint8), np.arange(n) % 2),
            r"returned images as ndarray, not a torch tensor with data \(torch\.from_numpy",
        ),
        (
            lambda n: (torch.empty(n, 1, 4, 4, dtype=torch.uint8, device="meta"), torch.zeros(n)),
            r"returned images as meta tensors \(no data\)",
        ),
        (lambda n: None, r"load\(\) returned NoneType, not \(images, labels\)"),
    ],
    ids=["raises", "numpy", "meta", "nothing"],
)
def test_a_broken_load_is_a_dataset_error_naming_the_plugin(install_plugins, make, message):
    class Broken(Tiny):
        pass

    Broken.make = staticmethod(make)

    class Plugin:
        @hookimpl
        def register_datasets(self, register):
            register(Broken(**tiny(name="broken")))

    install_plugins(Plugin())
    with pytest.raises(DatasetNotFoundError, match=r"dataset 'broken' \(from plugin '\d+'\)"):
        load_split("broken", train=False)
    with pytest.raises(DatasetNotFoundError, match=message):
        load_split("broken", train=False)


def test_a_dataset_without_load_is_told(install_plugins):
    class Plugin:
        @hookimpl
        def register_datasets(self, register):
            register(Dataset(**tiny(name="bare")))

    install_plugins(Plugin())
    with pytest.raises(DatasetNotFoundError, match=r"dataset 'bare' .* has no load\(\)"):
        load_split("bare", train=True)


def test_a_model_whose_class_count_is_not_the_dataset_s_is_refused(install_plugins, tmp_path):
    """A plugin model that ignores num_classes would train the synthetic dataset's 4 classes
    on 3 outputs (or 5, silently); the recipe is refused before anything is written."""
    import synthetic_data
    from torch import nn

    from qsgt_plugin.errors import RecipeError
    from qsgt_plugin.recipe import Recipe
    from qsgt_plugin.training.loop import train

    def qsgt_test_three_outputs(pretrained=False, **kwargs):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(3))

    class Plugin:
        @hookimpl
        def register_models(self, register):
            register(qsgt_test_three_outputs)

    install_plugins(synthetic_data, Plugin())
    recipe = Recipe.model_validate(
        {
            "model": {"name": "qsgt_test_three_outputs"},
            "quant": {"enabled": False},
            "data": {"dataset": "synthetic"},
            "output": {"dir": str(tmp_path / "run")},
        }
    )
    with pytest.raises(RecipeError, match=r"outputs \(2, 3\) .* synthetic has 4 classes"):
        train(recipe)
    assert not (tmp_path / "run").exists()
