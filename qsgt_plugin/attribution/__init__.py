"""Attribution comparisons, masking curves, numbers and figures for any model.

The functions take models and tensors: a float model, a converted one, or a converted model's
float view (:class:`ModelView`). Run directories are read above this package
(:mod:`qsgt_plugin.report`).
"""

from qsgt_plugin.attribution.compare import Comparison, ModelView, compare_views
from qsgt_plugin.attribution.curves import FRACTIONS, masking_curve
from qsgt_plugin.attribution.figures import alpha_figure, attribution_grid, masking_curve_figure
from qsgt_plugin.attribution.metrics import (
    gini,
    infidelity_score,
    sensitivity_score,
    spearman,
    top_overlap,
)

__all__ = [
    "FRACTIONS",
    "Comparison",
    "ModelView",
    "alpha_figure",
    "attribution_grid",
    "compare_views",
    "gini",
    "infidelity_score",
    "masking_curve",
    "masking_curve_figure",
    "sensitivity_score",
    "spearman",
    "top_overlap",
]
