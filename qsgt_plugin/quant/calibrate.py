"""Clipping levels from data: each alpha set to a percentile of its activation.

PACT initialises every ``alpha`` at 10. In a short schedule few activations ever reach 10, so
PACT's gradient on ``alpha`` (non-zero only where ``x >= alpha``) rarely acts and most of the
``2^k`` levels stay unused. Calibration instead runs a few batches through the converted model
with activation quantization off (weights stay quantized, so the statistics are those the
activation quantizers will see) and sets each call site's ``alpha`` to a high percentile of its
activation, the usual initialisation of learned-clipping quantizers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import torch
from brevitas.nn.quant_layer import QuantNonLinearActLayer
from torch import Tensor, nn

from qsgt_plugin.common.modes import training_mode
from qsgt_plugin.quant.state import alphas

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="fast_hadamard_transform")
    from brevitas.graph.calibrate import quantization_status_manager

__all__ = ["calibrate_alphas", "percentile"]


def percentile(values: Tensor, q: float) -> Tensor:
    """The ``q``-th percentile (0..100) of all of ``values``: the ``ceil(q/100 * n)``-th smallest.

    Example::

        >>> percentile(torch.arange(1.0, 101.0), 99.0)
        tensor(99.)
    """
    flat = values.detach().flatten().float()
    # rounded first: 99.9 / 100 * 1000 is 999.0000000000001 in floating point
    k = min(flat.numel(), max(1, math.ceil(round(q / 100 * flat.numel(), 6))))
    return flat.kthvalue(k).values


@torch.no_grad()
def calibrate_alphas(
    model: nn.Module,
    batches: Iterable[Tensor | tuple[Tensor, ...]],
    percentile_q: float = 99.9,
    floor: float = 1e-2,
) -> dict[str, float]:
    """Set every clipping level of a converted model to a percentile of its activation.

    The model runs in training mode (BatchNorm normalises with batch statistics, as it will
    when training starts) with activation quantization disabled; every buffer (BatchNorm's
    running statistics) is restored afterwards, so only the alphas change. Per call site the
    percentile is taken per batch and averaged over the batches.

    Args:
        model: a model from :func:`~qsgt_plugin.quant.conversion`.
        batches: inputs, or ``(inputs, labels)`` tuples, e.g. a few training batches.
        percentile_q: the percentile of each activation's values (zeros included), 0..100.
        floor: the smallest alpha set, for call sites whose activation is almost all zero.

    Returns:
        The new alpha of every activation layer, by name.

    Raises:
        ValueError: a model without clipping levels, ``percentile_q`` outside (0, 100], or no
            batches.
    """
    if not 0 < percentile_q <= 100:
        raise ValueError(f"percentile_q must be in (0, 100], got {percentile_q}")
    levels = alphas(model)
    if not levels:
        raise ValueError("the model has no clipping levels to calibrate; convert() it first")
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}

    def observe(name: str):
        def hook(_module: nn.Module, _args: tuple, output: Tensor) -> None:
            value = percentile(output, percentile_q)
            sums[name] = sums.get(name, 0) + value
            counts[name] = counts.get(name, 0) + 1

        return hook

    sites = {n: m for n, m in model.named_modules() if isinstance(m, QuantNonLinearActLayer)}
    handles = [sites[name].register_forward_hook(observe(name)) for name in levels]
    saved = {name: buffer.clone() for name, buffer in model.named_buffers()}
    seen = 0
    try:
        with training_mode(model, True), quantization_status_manager(model, disable_act_quant=True):
            for batch in batches:
                model(batch[0] if isinstance(batch, (tuple, list)) else batch)
                seen += 1
    finally:
        for handle in handles:
            handle.remove()
        for name, buffer in model.named_buffers():
            buffer.copy_(saved[name])
    if not seen:
        raise ValueError("calibrate_alphas needs at least one batch")
    result = {}
    for name, alpha in levels.items():
        if name in sums:  # call sites the batches never reached keep their alpha
            alpha.fill_(max(float(sums[name] / counts[name]), floor))
        result[name] = alpha.item()
    return result
