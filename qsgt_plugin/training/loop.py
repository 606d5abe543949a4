"""Training from a recipe, in the order it happens: set up, train epochs, evaluate each.

The run directory (``recipe.yaml``, ``metrics.jsonl``, ``last.pt``, ``best.pt``) is written
through :mod:`qsgt_plugin.run_dir`. Everything a recipe describes is built and checked before
the directory is touched. Under ``torchrun`` every process trains its share of each batch and
only rank 0 writes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import Tensor, nn
from tqdm import tqdm

from qsgt_plugin.common.evaluation import evaluate
from qsgt_plugin.errors import RecipeError, TrainingDivergedError
from qsgt_plugin.quant import alphas
from qsgt_plugin.recipe import Recipe, TrainSection, parse_run_recipe
from qsgt_plugin.run_dir import (
    RunDir,
    init_weights,
    load_weights,
    restore_training,
    training_payload,
)
from qsgt_plugin.training.build import (
    build_model,
    calibrate,
    check_buildable,
    check_recipe,
    example_batch,
    make_criterion,
    make_loader,
    make_optimizer,
    make_scheduler,
    make_sgt,
    resolve_device,
)
from qsgt_plugin.training.data import Loader, get_dataset
from qsgt_plugin.training.distributed import Distributed, setup
from qsgt_plugin.training.progress import Meter, Progress
from qsgt_plugin.training.resume import apply_resume_changes, resume_changes
from qsgt_plugin.training.step import (
    CompiledStep,
    make_train_step,
    resolve_auto,
    resolve_channels_last,
    resolve_precision,
)

__all__ = ["RunResult", "preflight", "resolve_speed", "train"]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    test_acc: float
    best_acc: float
    step: int


@dataclass
class Session:
    """Everything one training job holds."""

    recipe: Recipe
    dd: Distributed
    run: RunDir
    model: nn.Module  # the model being trained, unwrapped: what checkpoints hold
    step: CompiledStep  # runs a training step on it (compiled, DDP-wrapped)
    ema: ModelEmaV3 | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    train_loader: Loader
    test_loader: Loader
    total_steps: int
    progress: Progress
    resumed: dict[str, Any] | None  # the changes a resume applied, or None for a fresh run
    interval: Meter  # since the last log line
    epoch_meter: Meter  # since the start of the epoch
    started: float = 0.0

    @property
    def evaluated(self) -> nn.Module:
        """The weights that are evaluated and saved as the checkpoints' model."""
        return self.ema.module if self.ema is not None else self.model


def train(recipe: Recipe, *, resume: bool = False, overwrite: bool = False) -> RunResult:
    """Run the experiment a recipe describes; see the module docstring for what it writes."""
    recipe = check_recipe(recipe)
    check_buildable(recipe)  # the recipe's own errors before anything about the directory
    RunDir.check(Path(recipe.output.dir), resume, overwrite)
    dd = setup(resolve_device(recipe.train.device))
    try:
        _check_world(recipe, dd.world)
        session = _setup(recipe, dd, resume)
        with session.run.open(resume, overwrite):
            dd.barrier()  # the directory exists (and was cleared) before any rank goes on
            return _fit(session)
    finally:
        dd.close()


def preflight(recipe: Recipe, resume: bool, overwrite: bool, world: int = 1) -> Recipe:
    """Everything ``train`` checks before it writes, in this process, for ``world`` processes.

    ``qsgt train --nproc N`` calls it before starting any rank, so a user error prints once.
    """
    recipe = check_recipe(recipe)
    check_buildable(recipe)
    RunDir.check(Path(recipe.output.dir), resume, overwrite)
    _check_world(recipe, world)
    cpu = recipe.model_copy(update={"train": recipe.train.model_copy(update={"device": "cpu"})})
    _setup(cpu, Distributed(), resume)
    return recipe


def resolve_speed(
    recipe: Recipe, device: torch.device, started: TrainSection | None = None
) -> Recipe:
    """The recipe with ``train.precision`` and ``train.channels_last`` resolved for ``device``.

    A resumed run (``started``: the train section it saved) keeps what its ``auto`` resolved
    to when it started, on whatever machine it resumes: a float32 run stays float32 where
    ``auto`` would now mean bf16. Only an explicit value changes it (and the log records it).
    """
    t = recipe.train
    update = {
        "precision": resolve_precision(t.precision, device),
        "channels_last": resolve_channels_last(t.channels_last, device),
    }
    if started is not None:
        for key in update:
            kept = getattr(started, key)
            if getattr(t, key) == "auto" and kept != "auto" and update[key] != kept:
                log.info(
                    "resume keeps train.%s=%s, what the run started with (auto would mean %s "
                    "here; --set train.%s=%s changes it)",
                    key, kept, update[key], key, update[key],
                )  # fmt: skip
                update[key] = kept
    return recipe.model_copy(update={"train": t.model_copy(update=update)})


def _check_world(recipe: Recipe, world: int) -> None:
    """Every process needs at least one image of every batch, the epoch's last one included."""
    if world <= 1:
        return
    n = recipe.data.train_subset or get_dataset(recipe.data.dataset).train_size
    batch = recipe.data.batch_size
    smallest = min(batch, n % batch or batch)
    if smallest < world:
        raise RecipeError(
            f"data.batch_size: {world} processes share each batch, but a batch of {smallest} "
            f"images (batch size {batch}, {n} training images) leaves some without any; use a "
            f"batch size of at least {world} whose last batch has at least {world} images"
        )


def _setup(recipe: Recipe, dd: Distributed, resume: bool) -> Session:
    """Build and check everything the recipe describes; nothing is written."""
    device = dd.device(resolve_device(recipe.train.device))
    run = RunDir(Path(recipe.output.dir), writer=dd.main)
    payload = run.resume_payload() if resume else None
    saved = parse_run_recipe(payload["recipe"]) if payload else None  # parsed once
    recipe = resolve_speed(recipe, device, saved.train if saved else None)  # what auto meant
    changes = resume_changes(saved, recipe) if saved else None
    torch.manual_seed(recipe.train.seed)
    fast = recipe.train.fast_path is not False  # auto: on
    layout = dict(fast=fast, channels_last=recipe.train.channels_last)
    train_loader = make_loader(recipe, True, device, shard=(dd.rank, dd.world), **layout)
    test_loader = make_loader(recipe, False, device, **layout)
    example = example_batch(recipe.data.dataset)
    model = build_model(recipe.model.name, recipe.model.kwargs, recipe.quant, example).to(device)
    if recipe.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if payload:  # weights before the optimizer: it must hold the parameters that train
        load_weights(payload, model)
    else:
        has_alphas = (
            init_weights(model, recipe.model.init_from) if recipe.model.init_from else False
        )
        if recipe.quant.enabled and recipe.quant.alpha_init == "calibrate" and not has_alphas:
            calibrate(model, recipe, device)
    ema = ModelEmaV3(model, decay=recipe.train.ema, use_warmup=True) if recipe.train.ema else None
    if payload and ema is not None:
        ema.module.load_state_dict(payload["model"])
    criterion = make_criterion(recipe.train.label_smoothing)
    optimizer = make_optimizer(model, recipe.optim)
    step = CompiledStep(
        model,
        lambda m: dd.wrap(m, device),
        lambda m: make_train_step(
            m, optimizer, criterion, make_sgt(m, recipe.sgt), recipe.train.precision
        ),
        resolve_auto(recipe.train.compile, device),
    )
    total_steps = recipe.train.max_steps or recipe.train.epochs * len(train_loader)
    scheduler = make_scheduler(optimizer, recipe.schedule, total_steps)
    progress = Progress()
    if payload:
        restored = restore_training(payload, optimizer, scheduler, train_loader.generator)
        progress = Progress(**restored)
        apply_resume_changes(changes, recipe, optimizer, scheduler)
    meters = {k: Meter(device, progress.meters.get(k)) for k in ("interval", "epoch")}
    return Session(
        recipe, dd, run, model, step, ema, optimizer, scheduler, train_loader, test_loader,
        total_steps, progress, changes, meters["interval"], meters["epoch"],
    )  # fmt: skip


def _fit(s: Session) -> RunResult:
    """Train epoch after epoch until the recipe's steps are done, evaluating after each."""
    p = s.progress
    s.run.start_log(p.step if s.resumed is not None else None)
    s.run.save_recipe(s.recipe)
    if s.resumed is not None:
        s.run.log(dict(kind="resume", step=p.step, epoch=_epochs(s), changed=s.resumed))
        log.info("resumed %s at step %d (epoch %d)", s.run.path, p.step, p.epoch + 1)
    else:  # the starting point of the alpha trajectories
        s.run.log(dict(kind="init", epoch=0.0, step=0, lr=_lr(s), alphas=_alpha_values(s.model)))
    if s.dd.main:
        t = s.recipe.train
        log.info(
            "training path: %s, %s, %s",
            "compiled (torch.compile)" if s.step.compiled else "eager",
            "bf16 autocast" if t.precision == "bf16" else "float32",
            "channels-last" if t.channels_last else "contiguous",
        )
    s.started = time.time() - p.elapsed
    while p.step < s.total_steps:
        _train_epoch(s)
        _end_epoch(s)
    if s.dd.enabled:
        same = s.dd.identical(s.model)
        s.run.log(dict(kind="ranks", step=p.step, world=s.dd.world, identical=same))
        if not same:
            raise RuntimeError(f"the {s.dd.world} ranks ended with different weights")
    if p.test_acc != p.test_acc:  # nothing left to train (a finished run resumed): report it
        p.test_acc, _ = evaluate(s.evaluated, s.test_loader)
    return RunResult(s.run.path, p.test_acc, max(p.best_acc, p.test_acc), p.step)


def _train_epoch(s: Session) -> None:
    """Train on the epoch's batches (the rest of it, for a run resumed mid-epoch)."""
    p, loader, every = s.progress, s.train_loader, s.recipe.train
    if p.batch == 0:
        p.epoch_rng = loader.generator.get_state()
        s.epoch_meter.reset()
    else:  # resuming mid-epoch: replay this epoch's draws up to where the run stopped
        loader.generator.set_state(p.epoch_rng)
    s.model.train()
    nonfinite_at = torch.full((), -1, device=s.epoch_meter.sums.device)
    bar = tqdm(
        loader.batches(skip=p.batch, epoch=p.epoch),
        total=len(loader),
        initial=p.batch,
        desc=f"epoch {p.epoch + 1}",
        leave=False,
        disable=None if s.dd.main else True,
    )
    for x, y in bar:
        parts = s.step(x, y)  # [loss, ce, kl], on the device: no host sync per step
        s.scheduler.step()
        p.step += 1
        p.batch += 1
        if s.ema is not None:
            s.ema.update(s.model, step=p.step)
        nonfinite_at = torch.where(
            (nonfinite_at < 0) & ~torch.isfinite(parts[0]), p.step, nonfinite_at
        )
        s.interval.add(parts)
        s.epoch_meter.add(parts)
        if p.step % every.log_every == 0:
            _check_finite(s, nonfinite_at)
            bar.set_postfix(loss=f"{_log_train(s):.3f}")
        due = every.checkpoint_every and p.step % every.checkpoint_every == 0
        if due and p.step < s.total_steps:  # the run's end saves after its evaluation
            _check_finite(s, nonfinite_at)
            _save(s, "last.pt")
        if p.step >= s.total_steps:
            break
    bar.close()
    _check_finite(s, nonfinite_at)
    if p.batch == len(loader):
        p.epoch, p.batch = p.epoch + 1, 0


def _end_epoch(s: Session) -> None:
    """Evaluate, log, and write ``last.pt`` (and ``best.pt`` when the accuracy improved)."""
    p = s.progress
    s.dd.sync_buffers(s.model)  # every rank evaluates, checkpoints and resumes the same model
    p.test_acc, test_loss = evaluate(s.evaluated, s.test_loader)
    train_loss = s.epoch_meter.means()["loss"]
    s.run.log(
        dict(
            kind="eval",
            epoch=_epochs(s),
            step=p.step,
            test_acc=p.test_acc,
            test_loss=test_loss,
            train_loss=train_loss,
            lr=_lr(s),
            alphas=_alpha_values(s.model),
            elapsed=time.time() - s.started,
            compiled=s.step.compiled,
            ema=s.ema is not None,
        )
    )
    if s.dd.main:
        log.info(
            "step %d: train loss %.4f, test accuracy %.2f%%", p.step, train_loss, 100 * p.test_acc
        )
    improved = p.test_acc > p.best_acc
    p.best_acc = max(p.best_acc, p.test_acc)
    _save(s, "last.pt")
    if improved:
        _save(s, "best.pt")


def _log_train(s: Session) -> float:
    """Log the interval's mean losses and the alphas; returns the mean loss."""
    means = s.interval.means()
    s.run.log(
        dict(
            kind="train",
            epoch=_epochs(s),
            step=s.progress.step,
            **means,
            lr=_lr(s),
            alphas=_alpha_values(s.model),
        )
    )
    s.interval.reset()
    return means["loss"]


def _check_finite(s: Session, nonfinite_at: Tensor) -> None:
    step = int(s.dd.any(nonfinite_at).item())
    if step >= 0:
        raise TrainingDivergedError(
            f"the loss became NaN or infinite at step {step}; training stopped and the last good "
            f"checkpoint ({s.run.path / 'last.pt'}, if any) is kept. Lower optim.lr (for "
            "example --set optim.lr=0.01) or check the data, then continue with --resume or "
            "start over with --overwrite."
        )


def _save(s: Session, name: str) -> None:
    p = s.progress
    p.elapsed = time.time() - s.started
    p.meters = {"interval": s.interval.state(), "epoch": s.epoch_meter.state()}
    payload = training_payload(
        s.recipe, s.model, s.optimizer, s.scheduler, s.train_loader.generator.get_state(),
        asdict(p),
        evaluated=s.ema.module if s.ema is not None else None,
    )  # fmt: skip
    s.run.save(name, {**payload, "test_acc": p.test_acc})


def _lr(s: Session) -> float:
    return s.scheduler.get_last_lr()[0]


def _epochs(s: Session) -> float:
    """Epochs done, fractional within an epoch (the x axis of alpha plots)."""
    return s.progress.epoch + s.progress.batch / len(s.train_loader)


def _alpha_values(model: nn.Module) -> dict[str, float]:
    return {name: alpha.item() for name, alpha in alphas(model).items()}
