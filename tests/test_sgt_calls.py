"""The SGT hook on the calls and outputs real models have: images by keyword, dataclass and
HF-style outputs, segmentation outputs, targets that are not class indices. SGT applies with
the same KL as a plain call, or says why it cannot; never silence."""

from __future__ import annotations

import dataclasses
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import Tensor, nn

from qsgt_plugin import SaliencyGuidedTraining, register_sgt
from qsgt_plugin.sgt import SGTNotAppliedWarning


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))


@dataclasses.dataclass
class Output:
    logits: Tensor
    hidden: Tensor | None = None


class HFOutput(OrderedDict):
    """As transformers' ModelOutput: a mapping whose fields are also attributes."""


class Shaped(nn.Module):
    """``net`` called by keyword, returning its logits in the form ``kind`` names."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.net, self.kind = net(), kind

    def forward(self, pixel_values: Tensor, scale: float = 1.0):
        logits = self.net(pixel_values) * scale
        if self.kind == "dataclass":
            return Output(logits, pixel_values.mean())
        if self.kind == "hf":
            return HFOutput(logits=logits)
        if self.kind == "segmentation":
            return logits[:, :, None, None].expand(-1, -1, 4, 4)
        if self.kind == "object":
            return type("Result", (), {"scores": logits})()
        return logits


def kl_of(model, call, select=lambda out: out, fused=False) -> float:
    criterion = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(3)
    handle = register_sgt(model, criterion, mask_fraction=0.5, fused=fused, generator=gen)
    x, y = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(1)), torch.arange(6) % 5
    with warnings.catch_warnings():
        warnings.simplefilter("error", SGTNotAppliedWarning)
        loss = criterion(select(call(model, x)), y)
    handle.remove()
    assert set(handle.sgt.last) == {"ce", "kl"}
    assert loss.item() == pytest.approx((handle.sgt.last["ce"] + handle.sgt.last["kl"]).item())
    return handle.sgt.last["kl"].item()


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize(
    "kind,call,select",
    [
        ("plain", lambda m, x: m(pixel_values=x), lambda o: o),
        ("plain", lambda m, x: m(x, scale=1.0), lambda o: o),
        ("plain", lambda m, x: m(scale=1.0, pixel_values=x), lambda o: o),
        ("dataclass", lambda m, x: m(x), lambda o: o.logits),
        ("dataclass", lambda m, x: m(pixel_values=x), lambda o: o.logits / 2.0),
        ("hf", lambda m, x: m(pixel_values=x), lambda o: o["logits"]),
    ],
)
def test_sgt_applies_to_keyword_calls_and_dataclass_outputs_with_the_plain_kl(
    kind, call, select, fused
):
    reference = kl_of(net(), lambda m, x: m(x), fused=fused)
    assert reference > 0
    got = kl_of(Shaped(kind), call, select, fused=fused)
    # the KL compares the model's own outputs, whatever the loop did to them on the way
    assert got == pytest.approx(reference, rel=1e-5)


@pytest.mark.parametrize(
    "kind,call,message",
    [
        ("segmentation", lambda m, x: m(x).mean((2, 3)), r"only tensors shaped \[\(6, 5, 4, 4\)\]"),
        ("object", lambda m, x: m(x).scores, r"returned a Result, not a tensor"),
    ],
)
def test_an_output_sgt_cannot_follow_is_told(kind, call, message):
    model, criterion = Shaped(kind), nn.CrossEntropyLoss()
    handle = register_sgt(model, criterion, mask_fraction=0.5)
    x, y = torch.randn(6, 3, 4, 4), torch.arange(6) % 5
    with pytest.warns(SGTNotAppliedWarning, match=message):
        criterion(call(model, x), y)
    assert handle.sgt.last == {}
    handle.remove()


def test_a_call_without_one_image_batch_is_told():
    class TwoImages(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net()

        def forward(self, left, right):
            return self.net(left) + self.net(right)

    model, criterion = TwoImages(), nn.CrossEntropyLoss()
    handle = register_sgt(model, criterion, mask_fraction=0.5)
    x, y = torch.randn(6, 3, 4, 4), torch.arange(6) % 5
    with pytest.warns(SGTNotAppliedWarning, match=r"called as model\(left=6x3x4x4 float32, right="):
        criterion(model(left=x, right=x), y)
    handle.remove()


@pytest.mark.parametrize(
    "criterion,target,message",
    [
        (nn.BCEWithLogitsLoss(), lambda: torch.rand(6, 5).round(), r"got \(6, 5\) torch\.float32"),
        (nn.MSELoss(), lambda: torch.randn(6, 5), r"got \(6, 5\) torch\.float32"),
        (nn.CrossEntropyLoss(), lambda: torch.softmax(torch.randn(6, 5), 1), r"\(6, 5\)"),
        (
            nn.CrossEntropyLoss(ignore_index=-100),
            lambda: torch.tensor([0, 1, -100, 3, 4, 1]),
            r"got -100\.\.4 \(a label the criterion ignores, ignore_index",
        ),
    ],
)
def test_targets_that_are_not_class_indices_are_a_value_error_naming_them(
    criterion, target, message
):
    model = net()
    handle = register_sgt(model, criterion, mask_fraction=0.5)
    with pytest.raises(ValueError, match=message):
        criterion(model(torch.randn(6, 3, 4, 4)), target())
    handle.remove()
    sgt = SaliencyGuidedTraining(model, mask_fraction=0.5)
    with pytest.raises(ValueError, match=r"(labels|targets)"):
        sgt.loss(torch.randn(6, 3, 4, 4), target(), criterion)


def test_the_loss_form_on_a_dict_output_model_points_to_the_hook():
    sgt = SaliencyGuidedTraining(Shaped("hf"), mask_fraction=0.5)
    with pytest.raises(TypeError, match=r"returns a HFOutput\. Use register_sgt"):
        sgt.loss(torch.randn(6, 3, 4, 4), torch.arange(6) % 5, nn.CrossEntropyLoss())
