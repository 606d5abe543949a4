"""CIFAR ResNets in timm's registry: invariants across all of them, exact sizes."""

from __future__ import annotations

import pytest
import timm
import torch

import qsgt_plugin  # noqa: F401  (registers the models)
from qsgt_plugin.models import CifarResNet

NAMES = ["resnet20", "resnet32", "resnet44", "resnet56"]


@pytest.mark.parametrize("name", NAMES)
def test_shape_finite_and_every_parameter_gets_a_gradient(name):
    model = timm.create_model(name, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    y = model(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    y.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize(("name", "blocks"), list(zip(NAMES, [3, 5, 7, 9], strict=True)))
def test_depth_is_6n_plus_2(name, blocks):
    model = timm.create_model(name)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) + len(linears) == 6 * blocks + 2


def test_resnet20_parameter_counts():
    # stem 432 + 32, stages 14,016 + 51,072 + 203,520, classifier 650
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(timm.create_model("resnet20", num_classes=10)) == 269_722
    assert count(timm.create_model("resnet20", num_classes=10, in_chans=1)) == 269_722 - 288
    # option B adds 1x1 projections with BatchNorm: 16*32 + 64 and 32*64 + 128
    assert count(timm.create_model("resnet20", shortcut="B")) == 269_722 + 576 + 2176
    # n = 9: stem 464, stages 42,048 + 162,432 + 647,424, classifier 6,500
    assert count(timm.create_model("resnet56", num_classes=100)) == 858_868


def test_num_classes_and_in_chans_are_honoured():
    model = timm.create_model("resnet32", num_classes=100, in_chans=1)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 100)


def test_option_a_shortcut_pads_zero_channels_on_every_second_pixel():
    block = timm.create_model("resnet20").layer2[0]
    x = torch.randn(1, 16, 8, 8)
    s = block.shortcut(x)
    assert s.shape == (1, 32, 4, 4)
    assert torch.equal(s[:, 8:24], x[:, :, ::2, ::2])
    assert s[:, :8].abs().sum() == 0 and s[:, 24:].abs().sum() == 0


def test_timm_model_face():
    model = timm.create_model("resnet20", num_classes=10)
    assert isinstance(model, CifarResNet)
    feats = model.forward_features(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, 64, 8, 8)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 64)
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["mean"] == (0.4914, 0.4822, 0.4465)


def test_no_pretrained_weights_is_a_clear_error():
    with pytest.raises(RuntimeError, match="No pretrained weights exist for resnet20"):
        timm.create_model("resnet20", pretrained=True)


def test_bad_shortcut_option():
    with pytest.raises(ValueError, match="'A' or 'B'"):
        timm.create_model("resnet20", shortcut="C")
