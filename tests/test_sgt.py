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
    """With BatchNorm the train-mode and eval-mode input gradients differ; the fused loss is
    the one built from the train-mode gradient of the clean forward, computed here by hand."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 4),
    ).train()
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))
    sgt = SaliencyGuidedTraining(model, mask_fraction=0.5, fused=True, fill="mean")
    loss = sgt.loss(x, y, nn.CrossEntropyLoss())
    leaf = x.clone().requires_grad_()
    logits = model(leaf)
    (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), leaf)
    train_saliency = grad.abs().mean(1)
    masked = sgt.masked_input(x, y, train_saliency)
    kl = F.kl_div(
        F.log_softmax(model(masked), 1), F.log_softmax(logits, 1), log_target=True,
        reduction="batchmean",
    )  # fmt: skip
    torch.testing.assert_close(loss, F.cross_entropy(logits, y) + kl)
    # the eval-mode (Captum) saliency picks other positions: the check above can tell them apart
    assert not torch.equal(sgt.mask(x, y, train_saliency), sgt.mask(x, y))


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


class _Wrapped(nn.Module):
    """A model whose output is a tuple or a dict holding the logits."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.net, self.kind = small_cnn(), kind

    def forward(self, x):
        logits = self.net(x)
        return (logits, logits.detach().sum()) if self.kind == "tuple" else {"logits": logits}


def _reference_kl(model, sgt, x, y, select=lambda out: out, reduction="mean"):
    """KL(p(x) || p(x_masked)) recomputed from the model's raw outputs with SGT's mask."""
    torch.manual_seed(1)
    clean = select(model(x))
    saliency = sgt.saliency(x, y, select)
    masked = select(model(sgt.masked_input(x, y, saliency)))
    per_sample = F.kl_div(
        F.log_softmax(masked, 1), F.log_softmax(clean, 1), log_target=True, reduction="none"
    ).sum(1)
    return {"mean": per_sample.mean(), "sum": per_sample.sum(), "none": per_sample}[reduction]


@pytest.mark.parametrize("case", ["tuple", "dict", "temperature", "keyword", "two_forwards"])
def test_the_hook_applies_sgt_wherever_the_output_reaches_the_criterion(case):
    """The loop picks, transforms or delays the logits; the hook still adds SGT's KL term,
    computed from the model's own outputs on the clean and the masked batch."""
    torch.manual_seed(0)
    kind = case if case in ("tuple", "dict") else "plain"
    model = _Wrapped(kind) if kind != "plain" else small_cnn()
    select = {"tuple": lambda o: o[0], "dict": lambda o: o["logits"]}.get(kind, lambda o: o)
    criterion = nn.CrossEntropyLoss()
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))
    handle = register_sgt(model, criterion, mask_fraction=0.5)
    model.eval()  # BatchNorm fixed: the reference recomputes the same forwards
    model.train = lambda mode=True: model  # keep eval statistics, but hooks see training mode
    for m in model.modules():
        m.training = True
        if isinstance(m, (nn.BatchNorm2d, nn.Dropout)):
            m.eval()
    second = torch.randn(6, 3, 8, 8)
    torch.manual_seed(1)
    out = model(x)
    if case == "two_forwards":
        assert model(second) is not None  # a second forward before the criterion
    logits = select(out) / (2.0 if case == "temperature" else 1.0)
    loss = criterion(input=logits, target=y) if case == "keyword" else criterion(logits, y)
    assert set(handle.sgt.last) == {"ce", "kl"}
    assert loss.item() == pytest.approx((handle.sgt.last["ce"] + handle.sgt.last["kl"]).item())
    handle.remove()
    expected = _reference_kl(model, handle.sgt, x, y, select)
    assert handle.sgt.last["kl"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert handle.sgt.last["kl"].item() > 0


def test_the_hook_warns_once_where_sgt_cannot_apply():
    from qsgt_plugin.sgt import SGTNotAppliedWarning

    model, criterion = small_cnn(), nn.CrossEntropyLoss()
    handle = register_sgt(model, criterion, mask_fraction=0.5)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))
    model(x)  # a training-mode forward whose output never reaches the criterion
    with pytest.warns(SGTNotAppliedWarning, match="not an output of the hooked model"):
        criterion(torch.randn(4, 4, requires_grad=True), y)
    assert handle.sgt.last == {}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time: no warning (once per handle)
        model(x)
        criterion(torch.randn(4, 4, requires_grad=True), y)
    handle.remove()


def test_a_second_registration_on_one_model_is_refused_until_the_first_is_removed():
    model, criterion = small_cnn(), nn.CrossEntropyLoss()
    first = register_sgt(model, criterion)
    with pytest.raises(ValueError, match="already registered on this model"):
        register_sgt(model, nn.CrossEntropyLoss())
    first.remove()
    register_sgt(model, criterion).remove()


@pytest.mark.parametrize("fused", [False, True])
def test_both_paths_keep_the_gradient_to_what_made_the_batch(fused):
    """``loss(x * w, y)``: the loss reaches ``w`` and a leaf ``x`` on both paths."""
    model = small_cnn()
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    w = torch.tensor(1.5, requires_grad=True)
    y = torch.randint(0, 4, (4,))
    sgt = SaliencyGuidedTraining(model, 0.5, fused=fused)
    sgt.loss(x * w, y, nn.CrossEntropyLoss()).backward()
    assert w.grad is not None and w.grad.abs() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("form", ["loss", "hook"])
def test_the_kl_term_follows_the_criterion_s_reduction(reduction, form):
    model = linear_model(c=3, h=4, w=4, classes=4)
    criterion = nn.CrossEntropyLoss(reduction=reduction)
    x, y = torch.randn(5, 3, 4, 4), torch.randint(0, 4, (5,))
    sgt = SaliencyGuidedTraining(model, 0.5)
    torch.manual_seed(1)
    if form == "loss":
        loss = sgt.loss(x, y, criterion)
    else:
        handle = register_sgt(model, criterion, mask_fraction=0.5)
        loss = criterion(model(x), y)
        sgt = handle.sgt
        handle.remove()
    expected = _reference_kl(model, sgt, x, y, reduction=reduction)
    assert loss.shape == expected.shape
    torch.testing.assert_close(sgt.last["kl"], expected)
    ce = F.cross_entropy(model(x), y, reduction=reduction)
    torch.testing.assert_close(loss, ce + expected)
    with pytest.raises(ValueError, match="follows mean, sum or none"):
        SaliencyGuidedTraining(model, 0.5).loss(x, y, nn.KLDivLoss(reduction="batchmean"))
