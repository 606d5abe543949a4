"""User errors: every problem the user can fix, as one exception family.

``qsgt`` (the CLI) turns a :class:`QsgtError` into one line on stderr and exit status 2; any
other exception is a bug (exit status 1; the traceback with ``--debug``). Each class also
derives from the built-in exception a Python caller would expect (``ValueError`` for bad
values, ``FileNotFoundError`` for missing files, ...).
"""

from __future__ import annotations

import errno

__all__ = [
    "DISK_FULL",
    "CheckpointError",
    "DatasetNotFoundError",
    "ExportError",
    "MissingDependencyError",
    "PluginError",
    "QsgtError",
    "RecipeError",
    "RunDirError",
    "RunError",
    "RunExistsError",
    "RunLockedError",
    "TrainingDivergedError",
    "UsageError",
]


DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
"""``OSError.errno`` of a full device or an exceeded quota: the CLI says so in one line."""


class QsgtError(Exception):
    """A problem the user can fix; the message names it and the fix."""


class RecipeError(QsgtError, ValueError):
    """A recipe that cannot be read, does not validate, or does not fit its model or data."""


class DatasetNotFoundError(QsgtError, FileNotFoundError):
    """A dataset that is missing, unreadable, corrupted or not the official release."""


class CheckpointError(QsgtError, ValueError):
    """A checkpoint that is missing, corrupted, unsafe or not written by qsgt_plugin."""


class RunError(QsgtError, FileNotFoundError):
    """A path that is not a run directory or checkpoint written by ``qsgt train``."""


class RunDirError(QsgtError, OSError):
    """An output directory that cannot take this run (unwritable, under a file, ...)."""


class RunExistsError(RunDirError, FileExistsError):
    """The output directory already holds a run and neither resume nor overwrite was asked."""


class RunLockedError(RunDirError):
    """Another process is writing the run directory."""


class TrainingDivergedError(QsgtError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class PluginError(QsgtError, RuntimeError):
    """A plugin failed to load or registered something that clashes."""


class ExportError(QsgtError, RuntimeError):
    """A model or environment that cannot be exported, with the reason and the fix."""


class UsageError(QsgtError, ValueError):
    """A command option or argument that cannot work (``--images 0``, an unknown method, ...)."""


class MissingDependencyError(QsgtError, ImportError):
    """An optional package a feature needs is not installed; the message names the extra."""
