"""Every explanation metric of one model on one set of images, in one pass, each one timed.

One metric never suffices (Quantus' guidelines), so the suite takes one per family, each with a
random-ranking control where it ranks pixels:

* faithfulness: deletion and insertion (RISE; their accuracy read-out is the masking curve),
  ROAD with noisy linear imputation;
* randomisation: cascading model-parameter randomisation (MPRT), random logit;
* complexity: Gini index and entropy of ``|a|``, and the fraction of tied saliencies;
* robustness: Captum's ``sensitivity_max``.

Every metric explains the class the model predicts, so one saliency pass serves them all.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from qsgt_plugin.attribution.faithfulness import DeletionInsertion
from qsgt_plugin.attribution.metrics import entropy, gini, sensitivity_score
from qsgt_plugin.attribution.randomisation import mprt, random_logit
from qsgt_plugin.attribution.results import (
    DeletionInsertionResult,
    MprtResult,
    RoadResult,
    SuiteResult,
)
from qsgt_plugin.attribution.road_imputation import Road
from qsgt_plugin.common.modes import eval_mode
from qsgt_plugin.sgt.masking import reduce_saliency, tie_fraction
from qsgt_plugin.sgt.saliency import attribute

__all__ = ["SuiteResult", "explanation_suite"]


def explanation_suite(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    num_classes: int,
    method: str = "Saliency",
    steps: int = 10,
    road_fractions: tuple[float, ...] = tuple(i / 10 for i in range(10)),
    noise: float = 0.01,
    mprt_images: int | None = None,
    sensitivity_samples: int = 4,
    seed: int = 0,
    **attribution_kwargs,
) -> SuiteResult:
    """All the metrics of the module docstring for ``model`` on ``batches``.

    Args:
        model: any classifier (float, converted, or a converted model's float view).
        batches: ``(images, labels)`` on any device.
        num_classes: classes of the model's output (for random logits).
        method: the Captum attribution method under evaluation.
        steps: deletion / insertion curves have ``steps + 1`` points from 0 to 1.
        road_fractions: ROAD's removal levels.
        noise: ROAD's imputation noise (input units).
        mprt_images: MPRT runs on this many of the first images (all when None).
        sensitivity_samples: perturbations of ``sensitivity_max``.
        seed: seeds every ranking's tie-breaking, the random rankings and the noise (ROAD's
            imputation and sensitivity_max's perturbations, batch ``i`` with ``seed + i``).

    Returns:
        The numbers by metric, and ``seconds``: the time each metric took.
    """
    seconds: dict[str, float] = defaultdict(float)
    curves = DeletionInsertion(steps, seed=seed)
    road = Road(road_fractions, noise, seed)
    per_image: dict[str, list[Tensor]] = defaultdict(list)
    kept: list[tuple[Tensor, Tensor]] = []
    kwargs = dict(method=method, **attribution_kwargs)
    with eval_mode(model):
        for number, (x, y) in enumerate(batches):
            with _timer(seconds, "saliency"):
                with torch.no_grad():
                    predicted = model(x).argmax(1)
                maps = attribute(model, x, predicted, **kwargs)
                saliency = reduce_saliency(maps)
            with _timer(seconds, "complexity"):
                per_image["gini"].append(gini(maps).float().cpu())
                per_image["entropy"].append(entropy(maps).float().cpu())
                per_image["tied"].append(tie_fraction(saliency.flatten(1)).cpu())
            with _timer(seconds, "deletion_insertion"):
                curves.add(model, x, y, predicted, saliency)
            with _timer(seconds, "road"):
                road.add(model, x, y, saliency)
            with _timer(seconds, "random_logit"):
                rl = random_logit(
                    model, x, predicted, num_classes=num_classes, seed=seed, maps=maps, **kwargs
                )
                per_image["random_logit"].append(torch.tensor(rl["per_image"]))
            with _timer(seconds, "sensitivity_max"):
                score = sensitivity_score(
                    model,
                    x,
                    predicted,
                    n_perturb_samples=sensitivity_samples,
                    seed=seed + number,
                    **kwargs,
                )
                per_image["sensitivity_max"].append(score.float().cpu())
            kept.append((x, predicted))
    with _timer(seconds, "mprt"):
        x_m, y_m = _first(kept, mprt_images)
        randomisation = mprt(model, x_m, y_m, seed=seed + 42, **kwargs)
    means = {k: torch.cat(v).mean().item() for k, v in per_image.items()}
    di, road_result = curves.result(), road.result()
    per_image_values = _per_image(di, road_result, randomisation, per_image)  # pops them
    return SuiteResult(
        method=method,
        images=curves.images,
        deletion_insertion=DeletionInsertionResult.from_json(di, "deletion_insertion"),
        road=RoadResult.from_json(road_result, "road"),
        mprt=MprtResult.from_json(randomisation, "mprt"),
        per_image=per_image_values,
        random_logit=means["random_logit"],
        gini=means["gini"],
        entropy=means["entropy"],
        tied_fraction=means["tied"],
        sensitivity_max=means["sensitivity_max"],
        seconds=dict(seconds),
    )


PER_IMAGE_DIGITS = 5
"""Significant digits of the per-image values the suite keeps (their statistics need no more)."""


def _per_image(di: dict, road: dict, randomisation: dict, other: dict) -> dict[str, list[float]]:
    """Each summary number of the suite image by image (the report's bootstrap over images).

    The lists move out of the metrics' own results (MPRT's per-layer, per-image similarities
    become their mean over depth and the last layer's), rounded to :data:`PER_IMAGE_DIGITS`.
    """
    areas = di.pop("per_image_auc")
    road_areas = road.pop("per_image_auc")
    by_layer = torch.tensor(randomisation.pop("per_image"))  # (layers, images)
    values = {
        "masking_auc": areas["masking"],
        "deletion_auc": areas["deletion"],
        "deletion_auc_normalised": areas["deletion_normalised"],
        "insertion_auc": areas["insertion"],
        "insertion_auc_normalised": areas["insertion_normalised"],
        "road_morf_auc": road_areas["morf"],
        "road_lerf_auc": road_areas["lerf"],
        "mprt_mean": by_layer.mean(0).tolist(),
        "mprt_last": by_layer[-1].tolist(),
        **{
            name: torch.cat(other[key]).tolist()
            for name, key in (
                ("random_logit", "random_logit"),
                ("gini", "gini"),
                ("entropy", "entropy"),
                ("tied_fraction", "tied"),
                ("sensitivity_max", "sensitivity_max"),
            )
        },
    }
    return {k: [float(f"{v:.{PER_IMAGE_DIGITS}g}") for v in vs] for k, vs in values.items()}


@contextmanager
def _timer(seconds: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] += time.perf_counter() - start


def _first(batches: list[tuple[Tensor, Tensor]], n: int | None) -> tuple[Tensor, Tensor]:
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    return (x, y) if n is None else (x[:n], y[:n])
