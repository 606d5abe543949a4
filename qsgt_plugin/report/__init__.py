"""Reports on trained runs: the analyses behind the ``qsgt`` commands and ``qsgt report``.

This package sits above :mod:`qsgt_plugin.attribution` (metrics and figures for any model) and
:mod:`qsgt_plugin.run_dir` (runs on disk).
"""

from qsgt_plugin.report.analyses import (
    accuracy_table,
    alpha_plot,
    check_method,
    check_output,
    compare_runs,
    load_runs,
    masking_curves,
    model_views,
    write_json,
)
from qsgt_plugin.report.document import build_report, run_suite
from qsgt_plugin.report.seeds import Group, group_runs, pair_groups

__all__ = [
    "Group",
    "accuracy_table",
    "alpha_plot",
    "build_report",
    "check_method",
    "check_output",
    "compare_runs",
    "group_runs",
    "load_runs",
    "masking_curves",
    "model_views",
    "pair_groups",
    "run_suite",
    "write_json",
]
