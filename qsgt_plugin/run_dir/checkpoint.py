"""Checkpoints: written atomically, read with ``weights_only=True`` (no code runs on load)."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from qsgt_plugin.errors import DISK_FULL, CheckpointError, RunDirError

__all__ = ["FORMAT", "CheckpointError", "load_checkpoint", "save_checkpoint"]

FORMAT = "qsgt-checkpoint/1"
_REQUIRED = ("format", "model", "model_config", "recipe", "step")


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``payload`` to ``path`` through a temporary file, fsync and rename.

    A reader (or a crash) never sees a half-written checkpoint: ``path`` holds either the
    previous complete file or the new one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        # torch's archive writer reports a full disk as "[enforce fail at inline_container.cc]
        # ... file write failed", a RuntimeError
        full = isinstance(exc, OSError) and exc.errno in DISK_FULL
        if full or (isinstance(exc, RuntimeError) and "write failed" in str(exc)):
            raise RunDirError(
                f"cannot write {path}: no space left on the device; free some space, then "
                "continue with --resume (the last complete checkpoint is kept)"
            ) from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a qsgt checkpoint on the CPU with ``weights_only=True``.

    Raises:
        CheckpointError: a missing file, a corrupted or truncated one, a pickle that would run
            code, or a file that is not a qsgt checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _unpickler_detail(exc)
        if "global" in detail.lower():
            raise CheckpointError(
                f"{path} was refused by the safe loader (weights_only=True): it would import or "
                f"run code ({detail}). Only load checkpoints written by qsgt."
            ) from None
        raise CheckpointError(
            f"{path} is corrupted or not a PyTorch checkpoint ({detail})"
        ) from None
    except Exception as exc:
        raise CheckpointError(f"{path} is corrupted or not a PyTorch checkpoint: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a qsgt checkpoint (format {FORMAT!r} expected)")
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; it is incomplete")
    return payload


def _unpickler_detail(exc: Exception) -> str:
    """The specific line of torch's weights-only error, without its advice to retry unsafely."""
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    lines = [line.strip() for line in str(exc).splitlines()]
    kept = [line for line in lines if line and not line.startswith(boilerplate)]
    return " ".join(kept).removeprefix("WeightsUnpickler error:").strip()
