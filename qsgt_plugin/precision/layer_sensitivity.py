"""Which layers can go to fewer bits: accuracy drop and explanation drift, one unit at a time.

For each unit (a weight layer and the activation after it, see :mod:`.units`) and each bit width,
the run is rebuilt with only that unit changed and measured on a fixed set of test images
against the unmodified model: accuracy drop; explanation drift (1 - Spearman of the |saliency|
maps, top-10% overlap); and the change in deletion AUC. Every map and curve follows the class the
unmodified model predicts, and ties in rankings are broken by the same seeded permutation for
every variant, so a variant identical to the run gives exactly zero. No retraining.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor, nn

from qsgt_plugin.attribution.faithfulness import auc, class_probability, substrate, top_mask
from qsgt_plugin.attribution.metrics import spearman, top_overlap
from qsgt_plugin.precision.hessian import (
    effective_weight,
    effective_weights,
    hawq_score,
    hessian_traces,
)
from qsgt_plugin.precision.units import (
    Unit,
    check_bits,
    describe,
    layer_units,
    unit_overrides,
    variant,
)
from qsgt_plugin.runs import Run
from qsgt_plugin.sgt.masking import ranking, reduce_saliency
from qsgt_plugin.sgt.saliency import attribute

__all__ = ["DELETION_FRACTIONS", "Probe", "sensitivity"]

DELETION_FRACTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
CHUNK = 250  # images per forward pass


@dataclass
class Probe:
    """The fixed test images and what the unmodified model does on them."""

    x: Tensor
    y: Tensor
    target: Tensor  # the unmodified model's predicted classes
    maps: Tensor  # its (N, H, W) |saliency| of those classes
    accuracy: float
    deletion_auc: float
    seed: int = 0

    @classmethod
    def of(cls, model: nn.Module, x: Tensor, y: Tensor, seed: int = 0) -> Probe:
        with torch.no_grad():
            target = _logits(model, x).argmax(1)
        probe = cls(x, y, target, torch.empty(0), 0.0, 0.0, seed)
        probe.accuracy, probe.maps, probe.deletion_auc = probe.measure(model)
        return probe

    def measure(self, model: nn.Module) -> tuple[float, Tensor, float]:
        """Accuracy, |saliency| maps of ``target`` and the deletion AUC of ``model``."""
        with torch.no_grad():
            logits = _logits(model, self.x)
        accuracy = (logits.argmax(1) == self.y).float().mean().item()
        maps = torch.cat(
            [
                reduce_saliency(attribute(model, xs, ts))
                for xs, ts in zip(self.x.split(CHUNK), self.target.split(CHUNK), strict=True)
            ]
        )
        return accuracy, maps, self._deletion_auc(model, logits, maps)

    @torch.no_grad()
    def _deletion_auc(self, model: nn.Module, logits: Tensor, maps: Tensor) -> float:
        """Mean probability of ``target`` as the most salient positions go to the dataset mean."""
        generator = torch.Generator().manual_seed(self.seed)
        order = ranking(maps.flatten(1), generator=generator)
        base = substrate(self.x)
        points = []
        for t in DELETION_FRACTIONS:
            if t == 0.0:
                step_logits = logits
            else:
                images = torch.where(top_mask(order, t, maps.shape)[:, None], base, self.x)
                step_logits = _logits(model, images)
            points.append(class_probability(step_logits, self.target).mean().item())
        return auc(points, list(DELETION_FRACTIONS))


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    return torch.cat([model(chunk) for chunk in x.split(CHUNK)])


def sensitivity(
    run: Run,
    bits: tuple[int, ...] | list[int] = (2, 3, 4),
    images: int = 500,
    hessian_samples: int = 16,
    hessian_images: int = 200,
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
    layers: list[str] | None = None,
) -> dict:
    """Accuracy drop and explanation drift of the run with one unit at a time at each bit width.

    Args:
        run: a trained run (float or quantized), from :func:`qsgt_plugin.run_dir.load_run`.
        bits: bit widths to try, each 2..8.
        images: the first ``images`` test images are the fixed probe set.
        hessian_samples, hessian_images: Hutchinson vectors and images of the HAWQ-v2 score.
        seed: tie-breaking of the rankings, and the Hutchinson vectors.
        progress: called as ``progress(done, total, what)`` after each variant.
        layers: ``fnmatch`` patterns of the weight layers to try; all when None.

    Returns:
        JSON-ready: ``rows`` (one per unit and bit width: ``accuracy_drop``, ``drift``,
        ``spearman``, ``top10_overlap``, ``deletion_auc_change``, ``hawq``), ``units``, ``base``,
        ``hessian``, ``agreement`` (Spearman over the units that change of the HAWQ score
        against accuracy drop and against drift, per bit width; NaN under 3 units) and
        ``seconds``.
    """
    bits = check_bits(bits)
    start = time.perf_counter()
    units = layer_units(run)
    if layers:
        units = [u for u in units if any(fnmatchcase(u.weight, p) for p in layers)]
        if not units:
            raise ValueError(f"no weight layer matches {layers}")
    x, y = _probe_images(run, images)
    model = run.model.cpu().eval()
    probe = Probe.of(model, x, y, seed)
    rows = []
    total = len(units) * len(bits)
    for unit in units:
        for b in bits:
            rows.append(_measure(run, probe, unit, b))
            if progress is not None:
                progress(len(rows), total, f"{unit.weight} @ {b} bits")
    measured = time.perf_counter() - start
    traces = _traces(run, units, x[:hessian_images], y[:hessian_images], hessian_samples, seed)
    for row in rows:
        row["hawq"] = traces[row["unit"]]["trace"] * row.pop("perturbation")
    return {
        "run": str(run.path),
        "images": len(x),
        "bits": list(bits),
        "units": describe(units),
        "base": {"accuracy": probe.accuracy, "deletion_auc": probe.deletion_auc},
        "rows": rows,
        "hessian": traces,
        "agreement": _agreement(rows, bits, {u.weight: u.bits for u in units}),
        "seconds": {
            "variants": measured,
            "hessian": time.perf_counter() - start - measured,
            "total": time.perf_counter() - start,
        },
    }


def _probe_images(run: Run, images: int) -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    for x, y in run.test_loader(limit=images):
        xs.append(x.cpu())
        ys.append(y.cpu())
    return torch.cat(xs), torch.cat(ys)


def _measure(run: Run, probe: Probe, unit: Unit, bits: int) -> dict:
    model = variant(run, unit_overrides(unit, bits))
    accuracy, maps, deletion = probe.measure(model)
    base = effective_weight(run.model.get_submodule(unit.weight))
    changed = effective_weight(model.get_submodule(unit.weight))
    rho = spearman(probe.maps, maps).mean().item()
    return {
        "unit": unit.weight,
        "act": unit.act,
        "bits": bits,
        "accuracy": accuracy,
        "accuracy_drop": probe.accuracy - accuracy,
        "spearman": rho,
        "drift": 1.0 - rho,
        "top10_overlap": top_overlap(probe.maps, maps).mean().item(),
        "deletion_auc": deletion,
        "deletion_auc_change": deletion - probe.deletion_auc,
        "perturbation": hawq_score(1.0, base, changed),  # ||dW||^2 / n; times Tr(H) later
    }


def _traces(
    run: Run, units: list[Unit], x: Tensor, y: Tensor, samples: int, seed: int
) -> dict[str, dict[str, float]]:
    """Traces with respect to the effective weights of the network as trained."""
    model = run.model.eval()
    batches = list(zip(x.split(100), y.split(100), strict=True))
    with effective_weights(model, [u.weight for u in units]) as params:
        return hessian_traces(model, batches, params, samples=samples, seed=seed)


def _agreement(
    rows: list[dict], bits: tuple[int, ...], trained: dict[str, int]
) -> dict[str, dict[str, float]]:
    out = {}
    for b in bits:  # units at their trained width are zero on both sides by construction
        at = [r for r in rows if r["bits"] == b and r["bits"] != trained[r["unit"]]]
        hawq = [r["hawq"] for r in at]
        out[str(b)] = {
            key: _rank_correlation(hawq, [r[key] for r in at]) for key in ("accuracy_drop", "drift")
        }
    return out


def _rank_correlation(a: list[float], b: list[float]) -> float:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def print_progress(done: int, total: int, what: str) -> None:
    """A one-line progress bar on standard error."""
    width = 30
    filled = round(width * done / total)
    end = "\n" if done == total or not sys.stderr.isatty() else ""
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {what:40s}{end}")
    sys.stderr.flush()
