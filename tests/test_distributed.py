"""Data-parallel training and sweeps on 2 CPU processes (gloo) against one process.

Float64: the only difference between the runs is the order in which per-task gradients are
summed (a mean of two ranks' means against one mean of all tasks, and other thread counts),
~1e-16 relative per outer step, so after three outer steps theta agrees to ~1e-15 relative
and 1e-12 is a bound with room that any dropped or doubled task (an O(1) change) breaks.
One exception, measured and explained: the biases of the convolutions, which batch
normalisation cancels, have a zero gradient in exact arithmetic, and Adam divides their
rounding noise (~1e-17) by sqrt(v) + eps, moving them by up to lr * noise / eps ~ 1e-12 per
step in one run and not the other (1e-10 measured). They cannot change the network's outputs,
so they are compared through the outputs instead.
"""
import socket

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

import dist_workers as w
from suite import ModuleTask
from suite.experiments import sweeps, sweeps_cli
from suite.harness.distributed import World
from suite.experiments.omniglot.train import train
from suite.experiments.omniglot.config import TrainConfig
from suite.models.conv4 import conv4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, *args, size=2):
    mp.start_processes(fn, args=(size, free_port(), *args), nprocs=size, start_method="spawn")


def single(recipe, iterations, out):
    cfg = TrainConfig(recipe, max_iterations=iterations, **w.TINY)
    return train(cfg, w.fake_characters(), out, heldout=w.fake_characters(seed=1)).theta.detach()


def rel(a, b):
    return float((a - b).norm() / b.norm())


def same_network(a, b):
    """theta equal to 1e-12 relative outside the cancelled biases, and equal outputs."""
    model = conv4(w.TINY["n_way"]).double()
    task = ModuleTask(model, (torch.rand(10, 1, 28, 28, dtype=torch.float64),
                              torch.arange(10) % 5), (torch.zeros(1, 1, 28, 28), torch.zeros(1)))
    keep = torch.cat([torch.full((p.numel(),), not (name.endswith("bias") and
                                                    isinstance(model[int(name.split(".")[0])],
                                                               torch.nn.Conv2d)))
                      for name, p in model.named_parameters()])
    assert rel(a[keep], b[keep]) < 1e-12
    out_a, out_b = task.train_outputs(a), task.train_outputs(b)
    assert rel(out_a, out_b) < 1e-12


# imaml-gn on two processes is also test_resume_a_one_process_checkpoint_on_two's run.
@pytest.mark.parametrize("recipe", ["maml", "reptile", "imaml-gn-learned-lam"])
def test_two_processes_follow_the_single_process_run(recipe, tmp_path):
    spawn(w.train_worker, recipe, 3, str(tmp_path / "two"), str(tmp_path / "theta.pt"))
    two = torch.load(tmp_path / "theta.pt")
    one = single(recipe, 3, tmp_path / "one")
    same_network(two, one)
    # Rank 0 alone wrote, the same rows; the curve's held-out tasks were split and gathered.
    m1, m2 = (pd.read_csv(tmp_path / d / "metrics.csv") for d in ("one", "two"))
    assert list(m2.iteration) == list(m1.iteration) == [1, 2, 3]
    c1, c2 = (pd.read_csv(tmp_path / d / "curve.csv") for d in ("one", "two"))
    assert list(c1.iteration) == list(c2.iteration)
    # A prediction could only flip on an exact tie of logits: at most 1 of 6 x 10 queries.
    assert (c1.accuracy - c2.accuracy).abs().max() <= 1 / 60 + 1e-12
    ckpt = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=False)
    assert ckpt["world_size"] == 2
    if recipe == "imaml-gn-learned-lam":
        # d/dlam averaged over ranks like theta's direction: the same learned lam. Adam's step
        # turns a rounding difference of the summed gradient into at most ~eps_adam / |g|
        # relative where g ~ 0 (the batch-norm-cancelled conv biases: about 1e-9), 1e-16
        # elsewhere; 1e-8 relative covers both.
        l1, l2 = (pd.read_csv(tmp_path / d / "lam.csv").lam for d in ("one", "two"))
        assert np.allclose(l1, l2, rtol=1e-8, atol=0) and not np.allclose(l1, 0.5)


def test_resume_a_one_process_checkpoint_on_two(tmp_path):
    single("imaml-gn", 2, tmp_path / "run")
    spawn(w.train_worker, "imaml-gn", 3, str(tmp_path / "run"), str(tmp_path / "theta.pt"))
    same_network(torch.load(tmp_path / "theta.pt"), single("imaml-gn", 3, tmp_path / "ref"))
    assert list(pd.read_csv(tmp_path / "run" / "metrics.csv").iteration) == [1, 2, 3]


def test_a_sweep_on_two_processes_equals_the_serial_one(tmp_path):
    points = sweeps.error_points(methods=["maml", "fomaml", "imaml"], steps_list=[2, 4],
                                 cg_list=[3], kappas=[10.0], dim=6)
    spawn(w.sweep_worker, points, str(tmp_path / "two.csv"))
    sweeps.run_sweep(points, tmp_path / "one.csv", repeats=0, progress=False)
    cols = ["method", "inner_steps", "cg_steps", "kappa", "status", "peak_bytes", "graph_bytes"]
    one, two = (pd.read_csv(tmp_path / f).sort_values(["method", "inner_steps"])
                .reset_index(drop=True) for f in ("one.csv", "two.csv"))
    pd.testing.assert_frame_equal(one[cols], two[cols])
    assert set(one.world_size) == {1} and set(two.world_size) == {2}   # each row says how run
    # float64 errors of the same computation; thread counts may reorder BLAS sums.
    pd.testing.assert_series_equal(one.rel_error, two.rel_error, rtol=1e-10)


def test_refusals(tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match="meta_batch 4 is not divisible by the 3 processes: "
                       "every rank"):
        train(TrainConfig("maml", meta_batch=4), None, tmp_path / "run", world=World(0, 3))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(sweeps_cli, "init", lambda device: (World(0, 2), device))
    with pytest.raises(SystemExit, match="share this machine's CPU"):
        sweeps_cli.main(["error", "--steps", "2", "--out", str(tmp_path / "x.csv")])
