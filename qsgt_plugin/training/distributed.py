"""Data-parallel training under ``torchrun``: process group, sharding, rank-0 writes, checks.

``torchrun --nproc_per_node N -m qsgt_plugin.cli train RECIPE`` (or ``qsgt train --nproc N``)
starts N processes; each holds the whole model wrapped in DistributedDataParallel and trains on
its share of every global batch, so a run sees the same batches as a single process.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from qsgt_plugin.common.modes import unwrap
from qsgt_plugin.training.launch import watch_parent

__all__ = ["Distributed", "setup"]


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run (a single process has rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Only the main process writes checkpoints, logs and the resolved recipe."""
        return self.rank == 0

    def device(self, requested: torch.device) -> torch.device:
        if self.enabled and requested.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return requested

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        if not self.enabled:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any(self, flag: torch.Tensor) -> torch.Tensor:
        """Whether ``flag`` (a 0-d integer tensor, e.g. a step number >= 0) is set on any rank."""
        if self.enabled:
            flag = flag.clone()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics each rank updated alone)."""
        if self.enabled:
            for buffer in unwrap(model).buffers():
                dist.broadcast(buffer, src=0)

    def identical(self, model: nn.Module) -> bool:
        """True when every rank holds bit-identical weights (a SHA-256 of the state dict)."""
        if not self.enabled:
            return True
        digest = hashlib.sha256()
        for tensor in unwrap(model).state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        gathered: list[str | None] = [None] * self.world
        dist.all_gather_object(gathered, digest.hexdigest())
        return len(set(gathered)) == 1

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: torch.device) -> Distributed:
    """Join the process group ``torchrun`` describes in the environment (no-op otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    info = Distributed(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    # A rank whose launcher (torchrun) died, even by SIGKILL, stops too: nothing keeps writing.
    watch_parent()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info
