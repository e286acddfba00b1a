"""Multi-process training on torch's own engine: torchrun + DistributedDataParallel (DDP).

    torchrun --nproc_per_node 2 -m lib_cfg train --preset quick      # 2 processes (CPU: gloo, CUDA: nccl)

`batch_size` stays the *global* batch: each of the k processes takes its 1/k share of the rows,
DDP averages the gradients, so k processes take the same optimisation step as one process would
(the training step draws t, eps and the null-caption dropout for the whole global batch with the
same seed everywhere and keeps its own rows). Only process 0 logs, validates, samples and saves.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import List

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Shard:
    """Which process this is (rank) out of how many (world_size); one process is Shard(0, 1)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, per_process: int) -> slice:
        """This process's rows of a global batch of per_process * world_size rows."""
        return slice(self.rank * per_process, (self.rank + 1) * per_process)

    def per_process(self, global_batch: int) -> int:
        if global_batch % self.world_size:
            raise ValueError(f"batch_size={global_batch} does not split evenly over {self.world_size} processes; "
                             f"choose a multiple of {self.world_size}")
        return global_batch // self.world_size

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self):
        """Process 0 runs the block first (say, writing a cache file), then the others (reading it)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def mean_losses(self, losses: torch.Tensor) -> List[float]:
        """Each step's loss averaged over the processes, for losses [S] (the last S steps', on the device): reading
        them is the host sync, one small all-reduce for the S steps."""
        if self.world_size == 1:
            return losses.tolist()
        total = losses.detach().float().clone()
        dist.all_reduce(total)
        return (total / self.world_size).tolist()

    def any(self, flag) -> bool:
        """Whether `flag` is set in any process (a Ctrl-C may reach only one of them): a one-number exchange on
        the CPU, cheap enough for every step, and it never waits for the GPU."""
        if self.world_size == 1:
            return bool(flag)
        value = torch.tensor([float(bool(flag))])
        dist.all_reduce(value, group=_cpu_group)
        return value.item() > 0


_cpu_group = None  # under torchrun on CUDA: a gloo group for `Shard.any` (None: the default group, gloo on a CPU)


def init(device: str) -> Shard:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR);
    without torchrun, a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Shard()
    if not dist.is_initialized():
        cuda = device.startswith("cuda")
        if cuda:  # one GPU per process: plain "cuda" then means this process's GPU
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
        global _cpu_group
        _cpu_group = dist.new_group(backend="gloo") if cuda else None
    return Shard(dist.get_rank(), dist.get_world_size())


def close(shard: Shard) -> None:
    if shard.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, shard: Shard) -> torch.nn.Module:
    """The model DDP keeps in sync across processes (the model itself for one process)."""
    if shard.world_size == 1:
        return model

    return DistributedDataParallel(model)
