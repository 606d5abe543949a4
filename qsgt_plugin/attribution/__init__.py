"""Captum attribution comparisons, masking curves, alpha plots and the experiment report.

Works on any model (``compare_views``, ``masking_curve``, the metrics) and on runs written by
``qsgt train`` (``load_run``, ``build_report``).
"""

from qsgt_plugin.attribution.compare import Comparison, compare_views
from qsgt_plugin.attribution.curves import FRACTIONS, masking_curve
from qsgt_plugin.attribution.figures import alpha_figure, attribution_grid, masking_curve_figure
from qsgt_plugin.attribution.metrics import (
    gini,
    infidelity_score,
    sensitivity_score,
    spearman,
    top_overlap,
)
from qsgt_plugin.attribution.report import (
    accuracy_table,
    alpha_plot,
    build_report,
    compare_runs,
    masking_curves,
)
from qsgt_plugin.attribution.runs import ModelView, Run, RunError, load_run, model_views

__all__ = [
    "FRACTIONS",
    "Comparison",
    "ModelView",
    "Run",
    "RunError",
    "accuracy_table",
    "alpha_figure",
    "alpha_plot",
    "attribution_grid",
    "build_report",
    "compare_runs",
    "compare_views",
    "gini",
    "infidelity_score",
    "load_run",
    "masking_curve",
    "masking_curve_figure",
    "masking_curves",
    "model_views",
    "sensitivity_score",
    "spearman",
    "top_overlap",
]
