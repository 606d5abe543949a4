"""The run directory, the one place that writes and reads it.

A run directory holds ``recipe.yaml`` (the resolved recipe), ``metrics.jsonl`` (one JSON record
per log interval, evaluation and resume), ``last.pt`` and ``best.pt`` (checkpoints), and, while
a job writes it, ``.lock``. Shipped results hold ``model.pt`` (model weights only) beside their
recipe and metrics log. Only the main process of a distributed run writes.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qsgt_plugin.build import build_model, example_batch, make_loader
from qsgt_plugin.checkpoint import load_checkpoint, save_checkpoint
from qsgt_plugin.data import DATASETS, Loader
from qsgt_plugin.errors import (
    CheckpointError,
    RecipeError,
    RunDirError,
    RunError,
    RunExistsError,
    RunLockedError,
)
from qsgt_plugin.recipe import Recipe, apply_overrides, parse_recipe, save_recipe

__all__ = [
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

LOCK_ENV = "QSGT_RUN_LOCK_HELD"
"""Set by ``qsgt train --nproc``, whose launcher holds the lock for its ranks."""
CHECKPOINTS = ("best.pt", "last.pt", "model.pt")  # the order ``load_run`` looks for them


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (or of the run directory holding one).

    A line a kill cut short (the last one) is skipped; a missing log is an empty list.
    """
    path = Path(path)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
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


def training_payload(
    recipe: Recipe,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: Loader,
    progress: dict[str, Any],
    evaluated: nn.Module | None = None,
) -> dict[str, Any]:
    """Everything a run needs to continue exactly, and what ``load_run`` reads.

    ``model`` holds the weights the evaluation used: ``evaluated`` (the weight average) when
    given, with the trained weights beside it as ``train_model``.
    """
    rng = {"torch": torch.get_rng_state(), "loader": loader.generator.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    payload = {
        "model": (evaluated or model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": progress,
        "step": progress["step"],
        "rng": rng,
        "recipe": recipe.model_dump(mode="json"),
        "model_config": model_config(recipe),
    }
    if evaluated is not None:
        payload["train_model"] = model.state_dict()
    return payload


def load_weights(payload: dict[str, Any], model: nn.Module) -> None:
    """The trained weights of a :func:`training_payload` (not their average), into ``model``."""
    if "progress" not in payload:
        raise CheckpointError(
            "this checkpoint was written by an earlier version of qsgt and cannot be resumed; "
            "start over with --overwrite"
        )
    model.load_state_dict(payload.get("train_model", payload["model"]))


def restore_training(
    payload: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: Loader,
) -> dict[str, Any]:
    """Load the rest of what :func:`training_payload` saved; returns the saved progress."""
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    rng = payload["rng"]
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    loader.generator.set_state(rng["loader"])
    return payload["progress"]


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint a path names: a file, or a run directory's best, last or shipped one."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        file = next((path / c for c in CHECKPOINTS if (path / c).is_file()), None)
        if file is None:
            raise RunError(
                f"{path} is not a run directory: it has no {', '.join(CHECKPOINTS)}. "
                "Train one with `qsgt train RECIPE`."
            )
        return file
    if path.exists():
        raise RunError(f"{path} is neither a run directory nor a checkpoint file")
    raise RunError(f"{path} does not exist")


def init_weights(model: nn.Module, source: str | Path) -> bool:
    """Start ``model`` from the weights of another run (``model.init_from``).

    Every float weight and BatchNorm statistic must be there with its shape; quantizer state
    (clipping levels) is taken where both models have it. Returns whether the source held
    clipping levels for this model.

    Raises:
        RecipeError: the source is missing, unreadable, or holds a different architecture.
    """
    try:
        state = load_checkpoint(find_checkpoint(source))["model"]
    except (RunError, CheckpointError) as exc:
        raise RecipeError(f"model.init_from: {exc}") from None
    target = model.state_dict()
    missing = [k for k in target if k not in state and not _is_quantizer_key(k)]
    wrong = [k for k in target if k in state and state[k].shape != target[k].shape]
    if missing or wrong:
        sample = ", ".join((missing + wrong)[:3])
        raise RecipeError(
            f"model.init_from: {source} holds a different model ({len(missing)} tensors "
            f"missing, {len(wrong)} of another shape, e.g. {sample}); start from a run of the "
            "same model and kwargs"
        )
    shared = {k: v for k, v in state.items() if k in target}
    model.load_state_dict(shared, strict=False)
    return any(_is_quantizer_key(k) for k in shared)


def _is_quantizer_key(key: str) -> bool:
    return ".act_quant." in key or ".weight_quant." in key or key.startswith("act_quant.")


def model_config(recipe: Recipe) -> dict[str, Any]:
    """What rebuilds the model without the rest of the recipe."""
    return {
        "name": recipe.model.name,
        "kwargs": recipe.model.kwargs,
        "quant": recipe.quant.model_dump(mode="json") if recipe.quant.enabled else None,
    }


def model_from_checkpoint(payload: dict[str, Any]) -> nn.Module:
    """Rebuild the model a checkpoint was trained as and load its weights.

    A checkpoint is untrusted input: its model settings pass the recipe's validation, and
    options that make timm read files or the network (``pretrained``, ``pretrained_cfg*``,
    ``checkpoint_path``) are refused.
    """
    config = payload["model_config"]
    kwargs = config.get("kwargs") or {}
    unsafe = sorted(k for k in kwargs if k in _UNSAFE_KWARGS or k.startswith("pretrained"))
    if unsafe:
        raise CheckpointError(
            f"the checkpoint's model options {unsafe} would make timm load files or download; "
            "refused. Only load checkpoints written by qsgt"
        )
    dataset = payload["recipe"].get("data", {}).get("dataset", "mnist")
    example = example_batch(dataset) if dataset in DATASETS else None
    try:
        model = build_model(config["name"], kwargs, config.get("quant"), example)
    except RecipeError as exc:
        raise CheckpointError(
            f"the checkpoint describes a model that cannot be built: {exc}"
        ) from None
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint weights do not fit the model it describes: {exc}"
        ) from None
    return model


_UNSAFE_KWARGS = frozenset({"checkpoint_path", "pretrained", "cache_dir"})


@dataclass
class Run:
    """A trained run: its recipe, checkpoint and rebuilt model (in eval mode)."""

    path: Path
    recipe: Recipe
    checkpoint: dict
    model: nn.Module
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or self.path.name

    @property
    def quantized(self) -> bool:
        return self.checkpoint["model_config"].get("quant") is not None

    @property
    def bits(self) -> str:
        """``w4a4`` for a quantized run, ``fp32`` otherwise."""
        quant = self.checkpoint["model_config"].get("quant")
        return f"w{quant['weight_bits']}a{quant['act_bits']}" if quant else "fp32"

    @property
    def label(self) -> str:
        """Short description: ``w4a4``, ``fp32``, with ``+SGT``."""
        return self.bits + ("+SGT" if self.recipe.sgt.enabled else "")

    def metrics(self) -> list[dict]:
        return read_metrics(self.path)

    def test_loader(self, limit: int | None = None, device: str | torch.device = "cpu") -> Loader:
        """The run's test split (its first ``limit`` images), normalised as in training."""
        return make_loader(self.recipe, False, torch.device(device), limit)

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        info = DATASETS[self.recipe.data.dataset]
        return info.mean, info.std


def load_run(path: str | Path, data_root: str | None = None) -> Run:
    """Load a run directory (its ``best.pt``, else ``last.pt``, else ``model.pt``) or a checkpoint.

    Raises:
        RunError: the path is missing or holds no checkpoint.
        CheckpointError: the checkpoint is corrupted, unsafe or foreign.
    """
    file = find_checkpoint(path)
    payload = load_checkpoint(file)
    extra = [f"data.root={data_root}"] if data_root else []
    try:
        recipe = parse_recipe(apply_overrides(payload["recipe"], extra), source=str(file))
    except RecipeError as exc:
        raise CheckpointError(f"{file} holds a recipe this version cannot read: {exc}") from None
    model = model_from_checkpoint(payload).eval()
    return Run(file.parent, recipe, payload, model)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
