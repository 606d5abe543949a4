"""Attribution comparisons, masking curves, numbers and figures for any model.

The functions take models and tensors: a float model, a converted one, or a converted model's
float view (:class:`ModelView`). Run directories are read above this package
(:mod:`qsgt_plugin.report`).
"""

from qsgt_plugin.attribution.curves import FRACTIONS, masking_curve
from qsgt_plugin.attribution.faithfulness import DeletionInsertion, deletion_insertion, substrate
from qsgt_plugin.attribution.figures import (
    alpha_figure,
    attribution_grid,
    band_figure,
    masking_curve_figure,
    mprt_figure,
)
from qsgt_plugin.attribution.metrics import (
    entropy,
    gini,
    infidelity_score,
    sensitivity_score,
    spearman,
    top_overlap,
)
from qsgt_plugin.attribution.randomisation import mprt, random_logit, weight_layers
from qsgt_plugin.attribution.results import SuiteResult
from qsgt_plugin.attribution.road_imputation import Road, linear_imputation, road
from qsgt_plugin.attribution.suite import explanation_suite
from qsgt_plugin.attribution.views import Comparison, ModelView, compare_views

__all__ = [
    "FRACTIONS",
    "Comparison",
    "DeletionInsertion",
    "ModelView",
    "Road",
    "SuiteResult",
    "alpha_figure",
    "attribution_grid",
    "band_figure",
    "compare_views",
    "deletion_insertion",
    "entropy",
    "explanation_suite",
    "gini",
    "infidelity_score",
    "linear_imputation",
    "masking_curve",
    "masking_curve_figure",
    "mprt",
    "mprt_figure",
    "random_logit",
    "road",
    "sensitivity_score",
    "spearman",
    "substrate",
    "top_overlap",
    "weight_layers",
]
