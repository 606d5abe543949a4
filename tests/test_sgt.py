"""Saliency-guided training: masks, saliency pass hygiene, loss by hand, hook form."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from qsgt_plugin import SaliencyGuidedTraining, convert, register_sgt
from qsgt_plugin.sgt import fill_values, mask_count, rank_mask, reduce_saliency
from qsgt_plugin.sgt.saliency import attribute


def linear_model(c: int = 2, h: int = 4, w: int = 5, classes: int = 3) -> nn.Module:
    """logits = W flatten(x): the input gradient of logit y is W[y], known by hand."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, classes, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(classes, c * h * w))
    return model


def small_cnn(classes: int = 4) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, classes),
    )


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize(("h", "w"), [(4, 5), (28, 28), (32, 32)])
def test_rank_mask_covers_exactly_round_fraction_hw(fraction, h, w):
    saliency = torch.rand(6, h, w)
    for lowest in (True, False):
        mask = rank_mask(saliency, fraction, lowest=lowest)
        assert mask.shape == (6, h, w)
        assert (mask.sum(dim=(1, 2)) == round(fraction * h * w)).all()
    assert mask_count(fraction, h, w) == round(fraction * h * w)


def test_rank_mask_picks_the_extremes():
    saliency = torch.rand(3, 6, 6)
    low = rank_mask(saliency, 0.25)
    high = rank_mask(saliency, 0.25, lowest=False)
    for s, lo, hi in zip(saliency, low, high, strict=True):
        assert s[lo].max() < s[~lo].min()
        assert s[hi].min() > s[~hi].max()


@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_masked_positions_are_the_lowest_by_a_hand_computed_gradient(fraction):
    model = linear_model()
    x, y = torch.randn(5, 2, 4, 5), torch.tensor([0, 1, 2, 1, 0])
    sgt = SaliencyGuidedTraining(model, mask_fraction=fraction, fill="constant", fill_value=1e6)
    # Input gradient of logit y is W[y]; saliency = channel mean of |W[y]|.
    by_hand = model[1].weight[y].reshape(5, 2, 4, 5).abs().mean(1).detach()
    k = round(fraction * 20)
    masked = sgt.masked_input(x, y)
    for i in range(5):
        replaced = masked[i] == 1e6
        assert replaced.all(0).sum() == k and (replaced.any(0) == replaced.all(0)).all()
        lowest = by_hand[i].flatten().argsort()[:k]
        expected = torch.zeros(20, dtype=torch.bool)
        expected[lowest] = True
        assert torch.equal(replaced[0].flatten(), expected)
    torch.testing.assert_close(sgt.saliency(x, y), by_hand)


def test_signed_ranking_option():
    model = linear_model()
    x, y = torch.randn(2, 2, 4, 5), torch.tensor([1, 2])
    signed = SaliencyGuidedTraining(model, signed=True).saliency(x, y)
    by_hand = model[1].weight[y].reshape(2, 2, 4, 5).mean(1).detach()
    torch.testing.assert_close(signed, by_hand)


def test_fill_options_per_image_and_channel():
    x = torch.randn(3, 2, 6, 6)
    uniform = fill_values(x, "uniform")
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    assert ((uniform >= lo) & (uniform <= hi)).all()
    assert uniform.std() > 0
    torch.testing.assert_close(fill_values(x, "mean"), x.mean((2, 3), keepdim=True).expand_as(x))
    assert (fill_values(x, "constant", 0.5) == 0.5).all()
    with pytest.raises(ValueError, match="unknown fill 'zero'; allowed: uniform, mean, constant"):
        fill_values(x, "zero")


@pytest.mark.parametrize(
    "method", ["Saliency", "InputXGradient", "IntegratedGradients", "SmoothGrad"]
)
def test_saliency_pass_keeps_mode_and_parameter_gradients(method):
    model = small_cnn().train()
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    model(x).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model[3].eval()  # a mixed state must come back as it was
    kwargs = {"n_steps": 4} if method == "IntegratedGradients" else {}
    maps = attribute(model, x, y, method, **kwargs)
    assert maps.shape == x.shape and torch.isfinite(maps).all() and maps.abs().sum() > 0
    assert model.training and not model[3].training
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n]), n
        assert p.requires_grad, n


def test_saliency_is_computed_in_eval_mode_per_sample():
    model = small_cnn().train()
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    together = attribute(model, x, y)
    alone = torch.cat([attribute(model, x[i : i + 1], y[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone)


@pytest.mark.parametrize("option", [{"kl_weight": 0.0}, {"mask_fraction": 0.0}])
def test_zero_weight_or_zero_fraction_is_plain_cross_entropy(option):
    model = small_cnn().eval()  # deterministic forward for the comparison
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    sgt = SaliencyGuidedTraining(model, **option)
    assert sgt.loss(x, y, nn.CrossEntropyLoss()) == F.cross_entropy(model(x), y)


@pytest.mark.parametrize("kl_weight", [0.5, 1.0, 3.0])
def test_loss_equals_ce_plus_weighted_kl_recomputed_by_hand(kl_weight):
    model = small_cnn().train()
    hand = copy.deepcopy(model)
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    sgt = SaliencyGuidedTraining(model, mask_fraction=0.3, kl_weight=kl_weight, fill="mean")
    torch.manual_seed(7)
    loss = sgt.loss(x, y, nn.CrossEntropyLoss())

    torch.manual_seed(7)
    logits = hand(x)  # clean forward (train mode: dropout, batch statistics)
    ce = F.cross_entropy(logits, y)
    hand.eval()
    xg = x.clone().requires_grad_()
    hand(xg).gather(1, y[:, None]).sum().backward()
    saliency = xg.grad.abs().mean(1).flatten(1)
    k = round(0.3 * 64)
    masked = x.clone().flatten(2)
    means = x.mean((2, 3))
    for i in range(6):
        for pos in saliency[i].argsort()[:k]:
            masked[i, :, pos] = means[i]
    hand.train()
    masked_logits = hand(masked.reshape_as(x))
    p, log_p, log_q = logits.softmax(1), logits.log_softmax(1), masked_logits.log_softmax(1)
    kl = (p * (log_p - log_q)).sum(1).mean()
    torch.testing.assert_close(loss, ce + kl_weight * kl)
    torch.testing.assert_close(sgt.last["kl"], kl.detach())


def test_gradient_flows_through_both_branches():
    model = linear_model()
    x, y = torch.randn(4, 2, 4, 5), torch.tensor([0, 1, 2, 0])
    sgt = SaliencyGuidedTraining(model, mask_fraction=0.5, fill="mean")
    masked = sgt.masked_input(x, y)
    logits, masked_logits = model(x), model(masked)
    kl = F.kl_div(
        masked_logits.log_softmax(1), logits.log_softmax(1), log_target=True, reduction="batchmean"
    )
    g_both = torch.autograd.grad(kl, model[1].weight, retain_graph=True)[0]
    g_detached = torch.autograd.grad(
        F.kl_div(
            masked_logits.log_softmax(1),
            logits.detach().log_softmax(1),
            log_target=True,
            reduction="batchmean",
        ),
        model[1].weight,
    )[0]
    model.zero_grad()
    (sgt.loss(x, y, nn.CrossEntropyLoss()) - F.cross_entropy(model(x), y)).backward()
    torch.testing.assert_close(model[1].weight.grad, g_both)
    assert not torch.allclose(g_both, g_detached)


@pytest.mark.parametrize("fused", [False, True])
def test_hook_form_equals_explicit_form_and_remove_restores(fused):
    model = small_cnn().train()
    hooked = copy.deepcopy(model)
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    criterion = nn.CrossEntropyLoss()
    options = dict(mask_fraction=0.4, kl_weight=0.7, fused=fused)

    torch.manual_seed(3)
    explicit = SaliencyGuidedTraining(model, **options).loss(x, y, criterion)
    explicit.backward()

    handle = register_sgt(hooked, criterion, **options)
    torch.manual_seed(3)
    loss = criterion(hooked(x), y)  # the user's loop, unchanged
    loss.backward()
    torch.testing.assert_close(loss, explicit)
    for (n, p), q in zip(model.named_parameters(), hooked.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=n)
    assert handle.sgt.last["kl"] > 0

    with torch.no_grad():  # no-grad forwards (evaluation) are untouched
        out = hooked(x)
        assert criterion(out, y) == F.cross_entropy(out, y)
    handle.remove()
    torch.manual_seed(3)
    plain = criterion(hooked(x), y)
    torch.manual_seed(3)
    assert plain == F.cross_entropy(hooked(x), y)


def test_hook_leaves_eval_mode_alone():
    model = small_cnn().eval()
    criterion = nn.CrossEntropyLoss()
    handle = register_sgt(model, criterion)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    out = model(x)
    assert criterion(out, y) == F.cross_entropy(out, y)
    handle.remove()


def test_fused_path_uses_the_train_mode_input_gradient():
    model = linear_model()
    x, y = torch.randn(3, 2, 4, 5), torch.tensor([2, 0, 1])
    sgt = SaliencyGuidedTraining(model, mask_fraction=0.5, fused=True, fill="mean")
    loss = sgt.loss(x, y, nn.CrossEntropyLoss())
    explicit = SaliencyGuidedTraining(model, mask_fraction=0.5, fill="mean").loss(
        x, y, nn.CrossEntropyLoss()
    )
    # A linear model has no mode-dependent layers, so both saliencies coincide.
    torch.testing.assert_close(loss, explicit)


def test_works_on_a_converted_model():
    qmodel = convert(timm.create_model("resnet20", in_chans=1), bits=4).train()
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    sgt = SaliencyGuidedTraining(qmodel, mask_fraction=0.5)
    loss = sgt.loss(x, y, nn.CrossEntropyLoss())
    loss.backward()
    assert torch.isfinite(loss) and sgt.last["kl"] >= 0
    assert all(p.grad is not None for p in qmodel.parameters())
    assert reduce_saliency(attribute(qmodel, x, y)).shape == (4, 28, 28)


def test_bad_options_are_clear_errors():
    model = small_cnn()
    with pytest.raises(ValueError, match=r"mask fraction must be in \[0, 1\], got 1.5"):
        SaliencyGuidedTraining(model, mask_fraction=1.5)
    with pytest.raises(ValueError, match="kl_weight must be >= 0"):
        SaliencyGuidedTraining(model, kl_weight=-1)
    with pytest.raises(ValueError, match="unknown attribution method 'Salience'"):
        SaliencyGuidedTraining(model, attribution="Salience")
    with pytest.raises(ValueError, match="fused path computes Saliency or InputXGradient only"):
        SaliencyGuidedTraining(model, attribution="SmoothGrad", fused=True)
    with pytest.raises(TypeError, match="needs a criterion module"):
        register_sgt(model, F.cross_entropy)


def test_module_hook_methods_are_refused_on_quantized_models():
    qmodel = convert(timm.create_model("resnet20"), bits=4)
    for method in ("GuidedBackprop", "DeepLift"):
        with pytest.raises(ValueError, match=f"{method} rewrites the gradients of nn.ReLU"):
            SaliencyGuidedTraining(qmodel, attribution=method)
    SaliencyGuidedTraining(timm.create_model("resnet20"), attribution="GuidedBackprop")
