"""Attributions of several models on the same images, with the numbers that compare them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from torch import Tensor, nn
from tqdm import tqdm

from qsgt_plugin.attribution.metrics import (
    gini,
    infidelity_score,
    sensitivity_score,
    spearman,
    top_overlap,
)
from qsgt_plugin.quant.state import quantization_disabled
from qsgt_plugin.sgt.saliency import attribute, make_attribution

__all__ = ["Comparison", "ModelView", "compare_views"]


@dataclass(frozen=True)
class ModelView:
    """A model to explain; ``float_view`` runs a converted model with quantization disabled."""

    name: str
    model: nn.Module
    float_view: bool = False

    @contextmanager
    def active(self) -> Iterator[nn.Module]:
        with quantization_disabled(self.model) if self.float_view else nullcontext():
            yield self.model


@dataclass
class Comparison:
    """Maps by view name; per pair and per view numbers (means over the images)."""

    method: str
    maps: dict[str, Tensor] = field(default_factory=dict)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    views: dict[str, dict[str, float]] = field(default_factory=dict)

    def numbers(self) -> dict[str, Any]:
        return {"method": self.method, "pairs": self.pairs, "views": self.views}


def compare_views(
    views: list[ModelView],
    x: Tensor,
    y: Tensor,
    *,
    method: str = "Saliency",
    fidelity: bool = True,
    progress: bool = True,
    **attribution_kwargs: Any,
) -> Comparison:
    """Attribute each view's ``y`` logits to ``x`` and compare.

    Per pair: Spearman rank correlation and top-10% overlap of the maps. Per view: Gini
    sparseness and, with ``fidelity``, Captum's infidelity and sensitivity_max, every view
    perturbed by the same seeded noise (so two views of one model get the same numbers).

    Raises:
        ValueError: a method that cannot explain these models (GuidedBackprop, DeepLift on a
            quantized model), before any work is done.
    """
    for view in views:
        make_attribution(view.model, method)
    result = Comparison(method)
    for view in tqdm(views, desc="attributions", leave=False, disable=None if progress else True):
        with view.active() as model:
            maps = attribute(model, x, y, method, **attribution_kwargs)
            numbers = {"gini": gini(maps).mean().item()}
            if fidelity:
                numbers["infidelity"] = infidelity_score(model, x, y, maps).mean().item()
                numbers["sensitivity_max"] = (
                    sensitivity_score(model, x, y, method, **attribution_kwargs).mean().item()
                )
        result.maps[view.name] = maps
        result.views[view.name] = numbers
    for a, b in combinations(result.maps, 2):
        result.pairs.append(
            {
                "a": a,
                "b": b,
                "spearman": spearman(result.maps[a], result.maps[b]).mean().item(),
                "top10_overlap": top_overlap(result.maps[a], result.maps[b], 0.1).mean().item(),
            }
        )
    return result
