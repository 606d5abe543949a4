"""A run directory: ``recipe.yaml``, ``metrics.jsonl``, ``last.pt`` and ``best.pt``.

Only the main process of a distributed run writes; the others hold a read-only handle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from qsgt_plugin.checkpoint import load_checkpoint, save_checkpoint
from qsgt_plugin.recipe import Recipe, save_recipe

__all__ = ["RunDir", "RunDirError", "RunExistsError"]

RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "recipe.yaml")


class RunExistsError(FileExistsError):
    """The output directory already holds a run and neither resume nor overwrite was asked."""


class RunDirError(OSError):
    """The output directory cannot be created or written."""


class RunDir:
    def __init__(self, path: Path, writer: bool = True) -> None:
        self.path = path
        self.writer = writer
        self.metrics = path / "metrics.jsonl"

    @classmethod
    def prepare(cls, path: Path, resume: bool, overwrite: bool, writer: bool = True) -> RunDir:
        """Check the directory can take this run; create it; clear it for ``overwrite``."""
        if (path / "last.pt").exists() and not (resume or overwrite):
            raise RunExistsError(
                f"{path} already holds a run. Continue it with --resume, start over with "
                "--overwrite, or write elsewhere with --set output.dir=PATH"
            )
        run = cls(path, writer)
        if not writer:
            return run
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise RunDirError(
                f"cannot write the run to {path}: {exc.strerror or exc}. Choose a writable "
                "folder with --set output.dir=PATH"
            ) from None
        if overwrite and not resume:
            for name in RUN_FILES:
                (path / name).unlink(missing_ok=True)
        return run

    def checkpoint(self, resume: bool) -> dict[str, Any] | None:
        """The ``last.pt`` to resume from, if asked for and present."""
        last = self.path / "last.pt"
        return load_checkpoint(last) if resume and last.exists() else None

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
        """The metrics log; a line cut short by a kill is skipped."""
        if not self.metrics.exists():
            return []
        out = []
        for line in self.metrics.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

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
