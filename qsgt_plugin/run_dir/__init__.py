"""The run directory, the one place that writes and reads it.

A run directory holds ``recipe.yaml`` (the resolved recipe), ``metrics.jsonl`` (one JSON record
per log interval, evaluation and resume), ``last.pt`` and ``best.pt`` (checkpoints), and, while
a job writes it, ``.lock``. Shipped results hold ``model.pt`` (model weights only) beside their
recipe and metrics log. Only the main process of a distributed run writes.
"""

from qsgt_plugin.run_dir.directory import LOCK_ENV, RunDir, read_metrics
from qsgt_plugin.run_dir.payload import (
    load_weights,
    model_config,
    restore_training,
    training_payload,
)
from qsgt_plugin.run_dir.runs import (
    CHECKPOINTS,
    Run,
    find_checkpoint,
    init_weights,
    load_run,
    model_from_checkpoint,
)

__all__ = [
    "CHECKPOINTS",
    "LOCK_ENV",
    "Run",
    "RunDir",
    "find_checkpoint",
    "init_weights",
    "load_run",
    "load_weights",
    "model_config",
    "model_from_checkpoint",
    "read_metrics",
    "restore_training",
    "training_payload",
]
