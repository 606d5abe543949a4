"""Per-layer Hessian traces by Hutchinson's estimator, and HAWQ-v2's sensitivity from them.

HAWQ-v2 (Dong et al. 2020, arXiv 1911.03852) scores a layer quantized to k bits by
``Omega = Tr(H) / n * ||Q_k(W) - W||^2``: the average Hessian eigenvalue of the loss with
respect to the layer's n weights, times the squared norm of the weight perturbation. Here H is
taken for the network as trained (a quantized run with its quantizers on) with respect to each
layer's *effective* weights (the quantized ones it computes with), and the perturbation is the
change of those effective weights when the layer goes from its trained bit width to k bits.
Hutchinson: ``Tr(H) = E[v^T H v]`` for v with independent +-1 entries; one Hessian-vector
product with a random v over all layers at once gives every layer's ``v_i^T (Hv)_i``, whose
expectation is ``Tr(H_ii)`` because the cross terms have mean zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer
from torch import Tensor, nn

__all__ = ["effective_weight", "effective_weights", "hawq_score", "hessian_traces"]


def hessian_traces(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    params: dict[str, Tensor],
    samples: int = 32,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Hutchinson estimates of the trace of the cross-entropy's Hessian block of each tensor.

    Args:
        model: run as it is (call it in eval mode for a deterministic loss).
        batches: ``(images, labels)``; the loss is their mean cross-entropy.
        params: name -> parameter of ``model`` whose Hessian block is wanted.
        samples: random vectors; the standard error shrinks as ``1 / sqrt(samples)``.

    Returns:
        name -> ``{"trace", "stderr"}`` (the standard error of the mean over the samples).
    """
    batches = list(batches)
    names, tensors = list(params), list(params.values())
    generator = torch.Generator().manual_seed(seed)
    draws: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(samples):
        vs = [(torch.randint(0, 2, t.shape, generator=generator) * 2 - 1).to(t) for t in tensors]
        totals = [0.0] * len(names)
        for x, y in batches:
            loss = nn.functional.cross_entropy(model(x), y) * len(x)
            grads = torch.autograd.grad(loss, tensors, create_graph=True)
            hvs = torch.autograd.grad(grads, tensors, grad_outputs=vs)
            for i, (v, hv) in enumerate(zip(vs, hvs, strict=True)):
                totals[i] += float((v * hv).sum())
        images = sum(len(x) for x, _ in batches)
        for name, total in zip(names, totals, strict=True):
            draws[name].append(total / images)
    out = {}
    for name, values in draws.items():
        v = torch.tensor(values, dtype=torch.float64)
        stderr = float(v.std() / len(v) ** 0.5) if len(v) > 1 else float("nan")
        out[name] = {"trace": float(v.mean()), "stderr": stderr}
    return out


def effective_weight(layer: nn.Module) -> Tensor:
    """The weight a layer computes with: quantized if its weight quantizer is on."""
    if isinstance(layer, QuantWeightBiasInputOutputLayer) and layer.weight_quant.is_quant_enabled:
        return layer.quant_weight().value.detach()
    return layer.weight.detach()


@contextmanager
def effective_weights(model: nn.Module, names: list[str]) -> Iterator[dict[str, Tensor]]:
    """The named Conv/Linear layers compute with leaf copies of their effective weights.

    Inside the block, gradients (and Hessian-vector products) with respect to the yielded
    tensors are those of the network as it runs: quantized weights held fixed, activation
    quantizers on. The layers' own forwards come back afterwards.
    """
    leaves = {}
    try:
        for name in names:
            layer = model.get_submodule(name)
            w = leaves[name] = effective_weight(layer).clone().requires_grad_()
            layer.forward = _fixed_forward(layer, w)
        yield leaves
    finally:
        for name in leaves:
            vars(model.get_submodule(name)).pop("forward", None)


def _fixed_forward(layer: nn.Module, weight: Tensor):
    if isinstance(layer, nn.Linear):
        return lambda x: F.linear(x, weight, layer.bias)
    base = next(c for c in type(layer).__mro__ if c in (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    return lambda x: base._conv_forward(layer, x, weight, layer.bias)


def hawq_score(trace: float, weight: Tensor, quantized: Tensor) -> float:
    """``Tr(H) / n * ||quantized - weight||^2`` (HAWQ-v2's Omega)."""
    return trace / weight.numel() * float((quantized - weight).pow(2).sum())
