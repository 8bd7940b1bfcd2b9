"""Data-parallel meta-training and sweeps over torch.distributed, as a thin layer.

Under ``torchrun`` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT),
``init(device)`` joins the process group, gloo on a CPU and nccl on CUDA with one device per
rank (``cuda:LOCAL_RANK``). Without torchrun it returns the one-process ``World()``, whose
methods are identities, so the single-process path is the same code.

Invariant: every rank draws the same tasks from the same seed and ends an outer iteration with
the same theta; a rank only computes its share of the tasks.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from suite.harness.cli import PeerLost, UsageError

# How long a rank waits at a collective before giving up on its peers. A healthy rank waits
# at most for rank 0 to build the image cache of the full Omniglot archives (under two
# minutes) or for the slowest rank's share of one outer iteration (seconds); a rank that died
# or hung should not hold the others for torch's default of 30 minutes (gloo).
TIMEOUT_S = float(os.environ.get("IMAML_SUITE_DIST_TIMEOUT_S", "600"))


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
        self._collective("all_reduce", dist.all_reduce, out, op=dist.ReduceOp.SUM)
        return out / self.size

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        self._collective("all_gather", dist.all_gather_object, out, obj)
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
            self._collective("barrier", dist.barrier)

    def _collective(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RuntimeError as err:   # DistBackendError, a closed connection, the timeout
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PeerLost(f"rank {self.rank}: {what} with the other {self.size - 1} "
                           f"process(es) failed ({first[:160]}); one of them died or hung "
                           f"(timeout {TIMEOUT_S:g} s, IMAML_SUITE_DIST_TIMEOUT_S). Rank 0's "
                           "files are whole: rerun the same command to resume") from err


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
            raise UsageError(f"rank {rank}: LOCAL_RANK {local_rank} but this machine has "
                             f"{torch.cuda.device_count()} CUDA devices; start at most that "
                             "many processes per node (--nproc_per_node)")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo",
                                timeout=datetime.timedelta(seconds=TIMEOUT_S))
    return World(rank, size, local_rank), device


def planned_size() -> int:
    """The number of processes torchrun started (1 without it), known before ``init``."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_divisible(name: str, n: int, size: int) -> None:
    """A meta-batch of ``n`` tasks that ``size`` processes cannot split equally: ValueError
    naming ``name`` (the field, or the flag when a CLI checks it before joining)."""
    if n % size:
        raise ValueError(f"{name} {n} is not divisible by the {size} processes: every rank "
                         f"must take an equal share of the meta-batch (choose a multiple of "
                         f"{size})")


def close(wait: bool = True) -> None:
    """Leave the process group, once every rank is here (``wait``): a rank that tears gloo
    down while a peer's last collective is still in flight can abort it ("terminate called
    without an active exception", seen once in CI). ``wait=False`` on the way out of an error,
    when the peers may be gone."""
    if dist.is_initialized():
        if wait:
            World(dist.get_rank(), dist.get_world_size()).barrier()
        dist.destroy_process_group()
