"""The run directory, the one place that writes and reads it: storage, nothing of training.

A run directory holds ``recipe.yaml`` (the resolved recipe), ``metrics.jsonl`` (one JSON record
per log interval, evaluation and resume), ``last.pt`` and ``best.pt`` (checkpoints), and, while
a job writes it, ``.lock``. Shipped results hold ``model.pt`` (model weights only) beside their
recipe and metrics log. Only the main process of a distributed run writes. The run object that
rebuilds a model from a checkpoint (:mod:`qsgt_plugin.runs`) sits above training.
"""

from qsgt_plugin.run_dir.checkpoint import load_checkpoint, save_checkpoint
from qsgt_plugin.run_dir.directory import LOCK_ENV, RunDir, read_metrics
from qsgt_plugin.run_dir.payload import (
    load_weights,
    model_config,
    restore_training,
    training_payload,
)
from qsgt_plugin.run_dir.weights import CHECKPOINTS, find_checkpoint, init_weights

__all__ = [
    "CHECKPOINTS",
    "LOCK_ENV",
    "RunDir",
    "find_checkpoint",
    "init_weights",
    "load_checkpoint",
    "load_weights",
    "model_config",
    "read_metrics",
    "restore_training",
    "save_checkpoint",
    "training_payload",
]
