"""Data-parallel meta-training and sweeps over torch.distributed, as a thin layer.

Under ``torchrun`` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT),
``init(device)`` joins the process group, gloo on a CPU and nccl on CUDA with one device per
rank (``cuda:LOCAL_RANK``). Without torchrun it returns the one-process ``World()``, whose
methods are identities, so the single-process path is the same code.

Invariant: every rank draws the same tasks from the same seed and ends an outer iteration with
the same theta; a rank only computes its share of the tasks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics and results."""
        return self.rank == 0

    def share(self, n: int) -> list[int]:
        """This rank's indices of ``n`` items: a contiguous block when ``size`` divides n
        (meta-batches, which must divide), strided otherwise (evaluation tasks)."""
        if n % self.size == 0:
            block = n // self.size
            return list(range(self.rank * block, (self.rank + 1) * block))
        return list(range(self.rank, n, self.size))

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of equal-sized shares' means: the mean over all items."""
        if self.size == 1:
            return tensor
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.size

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def merge(self, n: int, mine: list) -> list:
        """The items of ``n`` in their original order, from each rank's ``share(n)`` results."""
        if self.size == 1:
            return list(mine)
        merged = [None] * n
        for rank, part in enumerate(self.gather(list(mine))):
            for i, item in zip(World(rank, self.size).share(n), part):
                merged[i] = item
        return merged

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def init(device: str = "cpu") -> tuple[World, str]:
    """(this process's World, the device it computes on). Joins the process group when
    launched by torchrun with more than one process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if torch.cuda.device_count() <= local_rank:
            raise SystemExit(f"rank {rank}: LOCAL_RANK {local_rank} but this machine has "
                             f"{torch.cuda.device_count()} CUDA devices; start at most that "
                             "many processes per node (--nproc_per_node)")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return World(rank, size, local_rank), device


def check_divisible(flag: str, n: int, world: World) -> None:
    if n % world.size:
        raise SystemExit(f"{flag} {n} is not divisible by the {world.size} processes: every "
                         "rank must take an equal share of the meta-batch (choose a multiple "
                         f"of {world.size})")


def close() -> None:
    """Leave the process group once every rank is here: a rank that tears gloo down while a
    peer's last collective is still in flight can abort it ("terminate called without an
    active exception", seen once in CI)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
