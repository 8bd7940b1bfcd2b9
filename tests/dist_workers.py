"""Process bodies for tests/test_distributed.py (spawned, so they live in an importable
module): each joins a gloo group on localhost as torchrun would set it up."""
import os
from pathlib import Path

import numpy as np
import torch

from suite.harness import distributed
from suite.experiments.omniglot.data import Characters
from suite.experiments.omniglot.train import train
from suite.experiments.omniglot.config import TrainConfig

TINY = dict(n_way=5, k_shot=1, k_query=2, inner_steps=2, meta_batch=4, cg_steps=3,
            eval_every=3, curve_tasks=6, probe_every=100, dtype="float64")


def fake_characters(n=12, seed=0) -> Characters:
    rng = np.random.default_rng(seed)
    images = (rng.random((n, 20, 28, 28)) > 0.8).astype(np.uint8) * 255
    return Characters([("A", f"character{i:02d}") for i in range(n)], images)


def join(rank: int, size: int, port: int) -> distributed.World:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(size))
    torch.set_num_threads(1)
    world, _ = distributed.init("cpu")
    return world


def skip_finalization():
    """Leave without the interpreter's teardown, once the work is done and the group closed:
    there gloo's threads can still drop tensors and abort the process (SIGABRT, about 1 run
    in 20 here; pytorch/pytorch#179291 describes the likely mechanism), which would fail a test
    whose results are already complete. A failure before this point still raises."""
    import sys
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def train_worker(rank, size, port, recipe, iterations, out, result):
    world = join(rank, size, port)
    try:
        cfg = TrainConfig(recipe, max_iterations=iterations, **TINY)
        learner = train(cfg, fake_characters(), Path(out), heldout=fake_characters(seed=1),
                        world=world)
        if world.main:
            torch.save(learner.theta.detach(), result)
    finally:
        distributed.close()
    skip_finalization()


def sweep_worker(rank, size, port, points, out):
    from suite.experiments import sweeps
    world = join(rank, size, port)
    try:
        sweeps.run_sweep(points, Path(out), repeats=0, progress=False, world=world)
    finally:
        distributed.close()
    skip_finalization()


def hang_worker(rank, size, port, folder):
    """Rank 1 joins, then stops answering (sleeps past the timeout); rank 0 records what its
    next collective says and how long it waited."""
    import time
    from suite.harness.cli import PeerLost
    world = join(rank, size, port)
    if rank == 1:
        time.sleep(4)
        return
    start = time.monotonic()
    try:
        world.mean(torch.ones(3))
    except PeerLost as err:
        Path(folder, "rank0.txt").write_text(f"{err}\n{time.monotonic() - start}")
        distributed.close(wait=False)   # as the CLIs do on the way out
