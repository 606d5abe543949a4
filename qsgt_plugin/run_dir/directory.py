"""The run directory on disk: its lock, its metrics log, its checkpoints and recipe."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qsgt_plugin.errors import RunDirError, RunExistsError, RunLockedError
from qsgt_plugin.recipe import Recipe, save_recipe
from qsgt_plugin.run_dir.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["LOCK_ENV", "RunDir", "read_metrics"]

log = logging.getLogger(__name__)

LOCK_ENV = "QSGT_RUN_LOCK_HELD"
"""Set by ``qsgt train --nproc``, whose launcher holds the lock for its ranks."""


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (or of the run directory holding one).

    A line a kill cut short (the last one) is skipped; a line that is not JSON elsewhere is
    skipped with a warning naming it; a missing log is an empty list.
    """
    path = Path(path)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.is_file():
        return []
    records = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines) and line.strip():  # not the cut-short last line
                log.warning("%s: line %d is not a JSON record; skipped", path, number)
    return records


class RunDir:
    """A run directory being written by ``qsgt train`` (read-only on ranks other than 0)."""

    def __init__(self, path: Path, writer: bool = True) -> None:
        self.path = Path(path)
        self.writer = writer
        self.metrics = self.path / "metrics.jsonl"

    @staticmethod
    def check(path: Path, resume: bool, overwrite: bool) -> None:
        """Whether ``path`` can take this run, without touching the disk."""
        if resume and overwrite:
            raise RunDirError("--resume and --overwrite contradict each other; choose one")
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
        for parent in (path, *path.parents):
            if parent.exists():
                if not parent.is_dir():
                    raise RunDirError(
                        f"cannot write the run to {path}: {parent} is a file. Choose another "
                        "folder with --set output.dir=PATH"
                    )
                break

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
        """Remove everything of the previous run (checkpoints, logs, exports, figures)."""
        for entry in self.path.iterdir():
            if entry.name == ".lock":
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

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


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
