"""Clipping levels calibrated from data (``quant.alpha_init: calibrate``)."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import qsgt_plugin
from qsgt_plugin.quant import alphas, calibrate_alphas
from qsgt_plugin.quant.calibrate import percentile


class Doubler(nn.Module):
    """x -> relu(2x) -> relu(second linear): two call sites of known activations."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 4, bias=False)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(4, 4, bias=False)
        self.act2 = nn.ReLU()
        with torch.no_grad():
            self.fc1.weight.copy_(2 * torch.eye(4))
            self.fc2.weight.copy_(-torch.eye(4))

    def forward(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))


def test_percentile_is_the_kth_smallest_value():
    values = torch.randperm(1000).float()
    assert percentile(values, 99.9).item() == 998.0  # ceil(0.999 * 1000) = 999th smallest
    assert percentile(values, 100).item() == 999.0
    assert percentile(values, 0.05).item() == 0.0


def test_each_alpha_becomes_the_percentile_of_its_activation():
    # Full-precision (8-bit integer) weights are exact for 2*I and -I; first/last at 8 bits.
    model = qsgt_plugin.convert(Doubler(), bits=8, weight_quant="int_per_channel")
    x = torch.rand(64, 4) * 3  # act1 sees 2x in [0, 6); act2 sees relu(-2x) = 0
    expected = percentile(torch.relu(2 * x), 99.0)
    result = calibrate_alphas(model, [x], percentile_q=99.0, floor=0.05)
    assert result["act1"] == pytest.approx(expected.item(), rel=1e-4)
    assert result["act2"] == pytest.approx(0.05)  # all zeros: the floor
    assert {k: v.item() for k, v in alphas(model).items()} == pytest.approx(result)


def test_batches_are_averaged_and_only_the_alphas_change():
    torch.manual_seed(0)
    model = qsgt_plugin.convert(timm.create_model("resnet20", in_chans=1), bits=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    batches = [torch.randn(8, 1, 28, 28) for _ in range(2)]
    result = calibrate_alphas(model, batches)
    assert not model.training  # the mode is restored
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.endswith("clip_level_impl.alpha") for k in changed)
    assert len(result) == 19 and all(0.01 <= a < 50 for a in result.values())
    assert len(set(result.values())) > 10  # per layer, not one value for all


def test_bad_calibration_inputs():
    model = qsgt_plugin.convert(timm.create_model("resnet20", in_chans=1), bits=4)
    with pytest.raises(ValueError, match=r"percentile_q must be in \(0, 100\]"):
        calibrate_alphas(model, [torch.randn(2, 1, 28, 28)], percentile_q=0)
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate_alphas(model, [])
    with pytest.raises(ValueError, match="no clipping levels"):
        calibrate_alphas(timm.create_model("resnet20"), [torch.randn(2, 3, 32, 32)])
