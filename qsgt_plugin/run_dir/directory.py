"""The run directory on disk: its lock, its metrics log, its checkpoints and recipe."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from qsgt_plugin.errors import RunDirError, RunExistsError, RunLockedError
from qsgt_plugin.recipe import Recipe, save_recipe
from qsgt_plugin.run_dir.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["DERIVED_FILES", "LOCK_ENV", "RUN_FILES", "RunDir", "read_metrics"]

log = logging.getLogger(__name__)

LOCK_ENV = "QSGT_RUN_LOCK_HELD"
"""Set by ``qsgt train --nproc``, whose launcher holds the lock for its ranks."""


RUN_FILES = frozenset({"recipe.yaml", "metrics.jsonl", "last.pt", "best.pt"})
"""What ``qsgt train`` writes into a run directory (with its ``.lock``)."""

DERIVED_FILES = frozenset({"model.onnx", "alpha.png", "mixed-precision.yaml"})
"""What the other commands write into a run directory by default; stale once it is replaced."""

SENSITIVITY_FILES = ("sensitivity.json", "sensitivity.png", "sensitivity.md")
"""``qsgt sensitivity``'s default output folder ``RUN/sensitivity``."""


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (or of the run directory holding one).

    A line a kill cut short (the last one) is skipped; a line that is not JSON elsewhere, or
    not a record of the shape training writes (an object with a string ``kind``, an integer
    ``step``, numbers where numbers go), is skipped with a warning naming it; a missing log is
    an empty list.
    """
    path = Path(path)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number < len(lines) and line.strip():  # not the cut-short last line
                log.warning("%s: line %d is not a JSON record; skipped", path, number)
            continue
        problem = _shape_problem(record)
        if problem:
            log.warning("%s: line %d is not a metrics record (%s); skipped", path, number, problem)
            continue
        records.append(record)
    return records


_NUMBERS = ("epoch", "loss", "ce", "kl", "lr", "test_acc", "elapsed")


def _shape_problem(record: object) -> str | None:
    """What makes ``record`` not a line training writes, or None."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    if not isinstance(record.get("kind"), str):
        return "no string 'kind'"
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return "no step count"
    for key in _NUMBERS:
        value = record.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            return f"{key} is not a number"
    alphas = record.get("alphas")
    if alphas is not None and not (
        isinstance(alphas, dict)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in alphas.values())
    ):
        return "alphas are not numbers by layer"
    return None


class RunDir:
    """A run directory being written by ``qsgt train`` (read-only on ranks other than 0)."""

    def __init__(self, path: Path, writer: bool = True) -> None:
        self.path = Path(path)
        self.writer = writer
        self.metrics = self.path / "metrics.jsonl"

    @staticmethod
    def check(path: Path, resume: bool, overwrite: bool) -> None:
        """Whether ``path`` can take this run, without touching the disk.

        ``overwrite`` replaces a run, never anything else: a folder that holds no run but holds
        other files is refused, and a file with a run file's name that no run wrote (a user's
        own ``recipe.yaml``) is never written over.
        """
        if resume and overwrite:
            raise RunDirError("--resume and --overwrite contradict each other; choose one")
        try:
            RunDir._check(path, resume, overwrite)
        except RunDirError:
            raise
        except OSError as exc:  # a name too long, a folder that cannot be read, ...
            raise RunDirError(
                f"cannot write the run to {path}: {exc.strerror or exc}. Choose a writable "
                "folder with --set output.dir=PATH"
            ) from None

    @staticmethod
    def _check(path: Path, resume: bool, overwrite: bool) -> None:
        for parent in (path, *path.parents):
            if parent.exists():
                if not parent.is_dir():
                    raise RunDirError(
                        f"cannot write the run to {path}: {parent} is a file. Choose another "
                        "folder with --set output.dir=PATH"
                    )
                break
        holds_run = (path / "last.pt").exists()
        if resume and not holds_run:
            raise RunDirError(
                f"nothing to resume: {path} holds no run (no last.pt). Start it without --resume"
            )
        if holds_run and not (resume or overwrite):
            raise RunExistsError(
                f"{path} already holds a run. Continue it with --resume, start over with "
                "--overwrite, or write elsewhere with --set output.dir=PATH"
            )
        if holds_run or not path.is_dir():
            return
        if _is_run_recipe(path / "recipe.yaml"):  # a run stopped before its first checkpoint
            if not overwrite:
                raise RunExistsError(
                    f"{path} holds the start of a run (recipe.yaml, no checkpoint yet). Start "
                    "over with --overwrite, or write elsewhere with --set output.dir=PATH"
                )
            return
        others = sorted(e.name for e in path.iterdir() if e.name != ".lock")
        clashing = [name for name in others if name in RUN_FILES]
        if clashing:
            raise RunDirError(
                f"{path} holds {', '.join(clashing)}, which no run wrote; a run would write over "
                "it. Write the run elsewhere with --set output.dir=PATH"
            )
        if overwrite and others:
            more = f" and {len(others) - 5} more" if len(others) > 5 else ""
            shown = ", ".join(others[:5]) + more
            raise RunDirError(
                f"--overwrite replaces a run, but {path} holds no run and holds {shown}; nothing "
                "was removed. Write the run to an empty folder with --set output.dir=PATH"
            )

    @contextmanager
    def open(self, resume: bool, overwrite: bool) -> Iterator[RunDir]:
        """Create the directory, hold its lock while the block runs, clear it for ``overwrite``.

        Raises:
            RunLockedError: another process holds the lock; the message names it.
            RunDirError: the directory cannot be created or written.
        """
        if not self.writer:
            yield self
            return
        self.check(self.path, resume, overwrite)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise RunDirError(
                f"cannot write the run to {self.path}: {exc.strerror or exc}. Choose a writable "
                "folder with --set output.dir=PATH"
            ) from None
        with self.lock():
            if overwrite:
                self._clear()
            yield self

    @contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock on the directory (released by the kernel if the process dies)."""
        if os.environ.get(LOCK_ENV) == str(self.path.resolve()):
            yield  # the launcher of this distributed job holds it
            return
        lock_file = self.path / ".lock"
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # The holder removes the file when it is done: a lock taken on a file that was
                # removed meanwhile guards nothing.
                if os.fstat(fd).st_ino != os.stat(lock_file).st_ino:
                    raise BlockingIOError
            except (BlockingIOError, FileNotFoundError):
                holder = _read(lock_file) or "another process"
                raise RunLockedError(
                    f"{self.path} is being written by {holder}; wait for that job to finish or "
                    "stop it, or write elsewhere with --set output.dir=PATH"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"process {os.getpid()} on {socket.gethostname()}".encode())
            try:
                yield
            finally:
                lock_file.unlink(missing_ok=True)
        finally:
            os.close(fd)

    def _clear(self) -> None:
        """Remove the previous run: its own files and the outputs made from it at their default
        names (they describe the old model). Anything else in the folder stays, and is named."""
        for name in RUN_FILES | DERIVED_FILES:
            (self.path / name).unlink(missing_ok=True)
        for stale in self.path.glob(".*.pt.*.tmp"):  # a checkpoint write a kill cut short
            stale.unlink()
        sensitivity = self.path / "sensitivity"
        if sensitivity.is_dir() and not sensitivity.is_symlink():
            for name in SENSITIVITY_FILES:
                (sensitivity / name).unlink(missing_ok=True)
            if not any(sensitivity.iterdir()):
                sensitivity.rmdir()
        kept = sorted(e.name for e in self.path.iterdir() if e.name != ".lock")
        if kept:
            log.warning("%s: --overwrite kept what no run wrote: %s", self.path, ", ".join(kept))

    def resume_payload(self) -> dict[str, Any]:
        return load_checkpoint(self.path / "last.pt")

    def start_log(self, resumed_step: int | None) -> None:
        """Keep the records up to the resumed step (none duplicated), or start afresh."""
        if not self.writer:
            return
        if resumed_step is None:
            self.metrics.unlink(missing_ok=True)
        elif self.metrics.exists():
            kept = [r for r in self.records() if r["step"] <= resumed_step]
            self.metrics.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def records(self) -> list[dict]:
        return read_metrics(self.metrics)

    def log(self, record: dict) -> None:
        if self.writer:
            with self.metrics.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def save_recipe(self, recipe: Recipe) -> None:
        if self.writer:
            save_recipe(recipe, self.path / "recipe.yaml")

    def save(self, name: str, payload: dict[str, Any]) -> None:
        if self.writer:
            save_checkpoint(payload, self.path / name)


def _is_run_recipe(path: Path) -> bool:
    """Whether ``path`` is a resolved recipe as ``qsgt train`` saves it (not a user's own)."""
    if not path.is_file():
        return False
    try:
        data = yaml.safe_load(path.read_text())
        Recipe.model_validate(data)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError):
        return False
    # A saved recipe spells out every section; a user's recipe states only its differences.
    return isinstance(data, dict) and set(Recipe.model_fields) <= set(data)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
