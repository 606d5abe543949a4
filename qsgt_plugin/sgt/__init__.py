"""Saliency-Guided Training (Ismail et al. 2021): masking functions, Captum saliency, loss, hook."""

from qsgt_plugin.sgt.guided_loss import SaliencyGuidedTraining
from qsgt_plugin.sgt.hook import SGTHandle, SGTNotAppliedWarning, register_sgt
from qsgt_plugin.sgt.masking import (
    apply_mask,
    fill_values,
    mask_count,
    rank_mask,
    ranking,
    reduce_saliency,
    tie_fraction,
)
from qsgt_plugin.sgt.saliency import attribute, make_attribution

__all__ = [
    "SGTHandle",
    "SGTNotAppliedWarning",
    "SaliencyGuidedTraining",
    "apply_mask",
    "attribute",
    "fill_values",
    "make_attribution",
    "mask_count",
    "rank_mask",
    "ranking",
    "reduce_saliency",
    "register_sgt",
    "tie_fraction",
]
