"""Training and evaluation from a recipe. The loop is meant to be read in one sitting.

A run directory holds ``recipe.yaml`` (the resolved recipe), ``metrics.jsonl`` (one JSON record
per log interval and per evaluation, with every alpha), ``last.pt`` and ``best.pt``. Under
``torchrun`` every process trains its share of each batch and only rank 0 writes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from qsgt_plugin.build import (
    build_model,
    check_names,
    make_loader,
    make_optimizer,
    make_scheduler,
    make_sgt,
    resolve_device,
)
from qsgt_plugin.data import Loader
from qsgt_plugin.distributed import Distributed, setup
from qsgt_plugin.fast import CompiledStep, resolve_auto
from qsgt_plugin.quant import alphas
from qsgt_plugin.recipe import Recipe
from qsgt_plugin.run_dir import RunDir, RunDirError, RunExistsError
from qsgt_plugin.utils import unwrap

__all__ = [
    "RunDirError",
    "RunExistsError",
    "RunResult",
    "TrainingDivergedError",
    "evaluate",
    "train",
]

log = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class RunResult:
    run_dir: Path
    test_acc: float
    best_acc: float
    step: int


@dataclass
class Progress:
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches done in the current epoch
    best_acc: float = -1.0
    epoch_rng: Tensor | None = None  # loader generator state at the start of the epoch


def train(recipe: Recipe, *, resume: bool = False, overwrite: bool = False) -> RunResult:
    """Run the experiment a recipe describes; see the module docstring for what it writes."""
    check_names(recipe)
    dd = setup(resolve_device(recipe.train.device))
    try:
        return _train(recipe, resume, overwrite, dd)
    finally:
        dd.close()


def _train(recipe: Recipe, resume: bool, overwrite: bool, dd: Distributed) -> RunResult:
    device = dd.device(resolve_device(recipe.train.device))
    run = RunDir.prepare(Path(recipe.output.dir), resume, overwrite, writer=dd.main)
    dd.barrier()  # the directory exists (and was cleared) before any rank reads it
    torch.manual_seed(recipe.train.seed)
    fast = resolve_auto(recipe.train.fast_path, device)
    train_loader = make_loader(recipe, True, device, shard=(dd.rank, dd.world), fast=fast)
    test_loader = make_loader(recipe, False, device, fast=fast)

    # ``net`` is the model itself (what checkpoints hold); the step may run it compiled and
    # wrapped in DDP.
    net = build_model(recipe.model.name, recipe.model.kwargs, recipe.quant).to(device)
    if fast:
        net = net.to(memory_format=torch.channels_last)
    resumed = run.checkpoint(resume)
    if resumed:
        # Weights first: Brevitas may re-create quantizer parameters on load, and the optimizer
        # must hold the parameters that train.
        net.load_state_dict(resumed["model"])
    runner = CompiledStep(
        net, lambda m: dd.wrap(m, device), resolve_auto(recipe.train.compile, device)
    )
    sgt = make_sgt(runner.model, recipe.sgt)
    criterion = nn.CrossEntropyLoss()
    optimizer = make_optimizer(net, recipe.optim)
    total_steps = recipe.train.max_steps or recipe.train.epochs * len(train_loader)
    scheduler = make_scheduler(optimizer, recipe.schedule, total_steps)

    progress = _restore(resumed, optimizer, scheduler, train_loader) if resumed else Progress()
    run.start_log(progress.step if resumed else None)
    run.save_recipe(recipe)
    if resumed:
        log.info("resumed %s at step %d (epoch %d)", run.path, progress.step, progress.epoch + 1)
    else:  # the starting point of the alpha trajectories
        run.log(
            dict(
                kind="init",
                epoch=0.0,
                step=0,
                lr=scheduler.get_last_lr()[0],
                alphas=_alpha_values(net),
            )
        )

    def checkpoint(name: str, test_acc: float) -> None:
        payload = _payload(recipe, net, optimizer, scheduler, train_loader, progress)
        run.save(name, {**payload, "test_acc": test_acc})

    def check_finite(nonfinite_at: Tensor) -> None:
        step = int(dd.any(nonfinite_at).item())
        if step >= 0:
            raise TrainingDivergedError(
                f"the loss became NaN or infinite at step {step}; training stopped and the "
                f"last good checkpoint ({run.path / 'last.pt'}, if any) is kept. Lower optim.lr "
                "or check the data, then continue with --resume or start over with --overwrite."
            )

    def forward_backward(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        # Cross-entropy, plus SGT's KL term on the masked input when enabled.
        if sgt:
            sgt.model = model
        loss = sgt.loss(x, y, criterion) if sgt else criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    started = time.time()
    test_acc = float("nan")
    while progress.step < total_steps:
        if progress.batch == 0:
            progress.epoch_rng = train_loader.generator.get_state()
        else:  # resuming mid-epoch: replay this epoch's draws up to where the run stopped
            train_loader.generator.set_state(progress.epoch_rng)
        net.train()
        sums = torch.zeros(4, device=device)  # loss, ce, kl, steps since the last log line
        epoch_loss = torch.zeros(2, device=device)  # sum, count
        nonfinite_at = torch.full((), -1, device=device)
        bar = tqdm(
            train_loader.batches(skip=progress.batch),
            total=len(train_loader),
            initial=progress.batch,
            desc=f"epoch {progress.epoch + 1}",
            leave=False,
            disable=None if dd.main else True,
        )
        for x, y in bar:
            loss = runner.run(forward_backward, x, y)
            optimizer.step()
            scheduler.step()
            progress.step += 1
            progress.batch += 1

            # Book-keeping on the device; the host reads it only at log points.
            detached = loss.detach()
            nonfinite_at = torch.where(
                (nonfinite_at < 0) & ~torch.isfinite(detached), progress.step, nonfinite_at
            )
            parts = sgt.last if sgt and sgt.active else {}
            ce, kl = parts.get("ce", detached), parts.get("kl", torch.zeros((), device=device))
            one = torch.ones((), device=device)
            sums += torch.stack([detached, ce, kl, one])
            epoch_loss += torch.stack([detached, one])
            if progress.step % recipe.train.log_every == 0:
                check_finite(nonfinite_at)
                mean = (sums[:3] / sums[3]).tolist()
                run.log(
                    dict(
                        kind="train",
                        epoch=_epochs(progress, train_loader),
                        step=progress.step,
                        loss=mean[0],
                        ce=mean[1],
                        kl=mean[2],
                        lr=scheduler.get_last_lr()[0],
                        alphas=_alpha_values(net),
                    )
                )
                bar.set_postfix(loss=f"{mean[0]:.3f}")
                sums.zero_()
            every = recipe.train.checkpoint_every
            if every and progress.step % every == 0 and progress.step < total_steps:
                check_finite(nonfinite_at)
                checkpoint("last.pt", test_acc)
            if progress.step >= total_steps:
                break
        bar.close()
        check_finite(nonfinite_at)

        # End of an epoch (or of the run): evaluate, log, checkpoint.
        if progress.batch == len(train_loader):
            progress.epoch, progress.batch = progress.epoch + 1, 0
        dd.sync_buffers(net)  # every rank evaluates, checkpoints and resumes the same model
        test_acc, test_loss = evaluate(net, test_loader)
        train_loss = (epoch_loss[0] / epoch_loss[1].clamp(min=1)).item()
        run.log(
            dict(
                kind="eval",
                epoch=_epochs(progress, train_loader),
                step=progress.step,
                test_acc=test_acc,
                test_loss=test_loss,
                train_loss=train_loss,
                lr=scheduler.get_last_lr()[0],
                alphas=_alpha_values(net),
                elapsed=time.time() - started,
                compiled=runner.compiled,
            )
        )
        if dd.main:
            log.info(
                "step %d: train loss %.4f, test accuracy %.2f%%",
                progress.step,
                train_loss,
                100 * test_acc,
            )
        improved = test_acc > progress.best_acc
        progress.best_acc = max(progress.best_acc, test_acc)
        checkpoint("last.pt", test_acc)
        if improved:
            checkpoint("best.pt", test_acc)

    if dd.enabled:
        same = dd.identical(net)
        run.log(dict(kind="ranks", step=progress.step, world=dd.world, identical=same))
        if not same:
            raise RuntimeError(f"the {dd.world} ranks ended with different weights")
    if test_acc != test_acc:  # nothing left to train (a finished run resumed): report it
        test_acc, _ = evaluate(net, test_loader)
    return RunResult(run.path, test_acc, max(progress.best_acc, test_acc), progress.step)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Loader) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy over a loader, in eval mode."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=loader.device)
    loss = torch.zeros((), device=loader.device)
    for x, y in loader:
        logits = model(x)
        correct += (logits.argmax(1) == y).sum()
        loss += nn.functional.cross_entropy(logits, y, reduction="sum")
    model.train(was_training)
    n = len(loader.labels)
    return correct.item() / n, loss.item() / n


def _payload(recipe, model, optimizer, scheduler, loader, progress) -> dict:
    rng = {"torch": torch.get_rng_state(), "loader": loader.generator.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    if progress.epoch_rng is not None:
        rng["loader_epoch"] = progress.epoch_rng
    return {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": progress.step,
        "epoch": progress.epoch,
        "batch": progress.batch,
        "best_acc": progress.best_acc,
        "rng": rng,
        "recipe": recipe.model_dump(mode="json"),
        "model_config": {
            "name": recipe.model.name,
            "kwargs": recipe.model.kwargs,
            "quant": recipe.quant.model_dump(mode="json") if recipe.quant.enabled else None,
        },
    }


def _restore(payload, optimizer, scheduler, loader) -> Progress:
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    rng = payload["rng"]
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    loader.generator.set_state(rng["loader"])
    return Progress(
        payload["step"],
        payload["epoch"],
        payload["batch"],
        payload["best_acc"],
        rng.get("loader_epoch"),
    )


def _epochs(progress: Progress, loader: Loader) -> float:
    """Epochs done, fractional within an epoch (the x axis of alpha plots)."""
    return progress.epoch + progress.batch / len(loader)


def _alpha_values(model: nn.Module) -> dict[str, float]:
    return {name: alpha.item() for name, alpha in alphas(unwrap(model)).items()}
