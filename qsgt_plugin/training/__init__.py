"""The training layer: what a recipe builds, the loop that trains it, and how it is launched.

* :mod:`.build` - the model, optimizer, schedule and loaders a recipe describes;
* :mod:`.data` - the registered datasets as uint8 tensors, batched and augmented on the device;
* :mod:`.step` - one optimizer step (precision, channels-last, SGT, compilation);
* :mod:`.loop` - ``train(recipe)``: the loop, evaluation, checkpoints, resuming;
* :mod:`.progress`, :mod:`.resume` - its progress line and the changes a resumed run may make;
* :mod:`.launch`, :mod:`.distributed` - ``torchrun`` processes and their process group.

Run directories (checkpoints, the metrics log) belong to :mod:`qsgt_plugin.run_dir`.
"""

from __future__ import annotations

__all__ = ["train"]


def train(*args, **kwargs):
    """:func:`qsgt_plugin.training.loop.train` (imported on first use)."""
    from qsgt_plugin.training.loop import train as _train

    return _train(*args, **kwargs)
