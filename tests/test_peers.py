"""Agreement with peer libraries (optional extra [peers]: higher, torchopt), float64."""
import pandas as pd
import pytest
import torch
from torch import nn

from suite import ModuleTask, meta_gradient
from suite.core.solvers import GD
from suite.models.conv4 import conv4
from suite.harness.workloads import random_images

higher = pytest.importorskip("higher", reason="the [peers] extra (higher 0.2.1) is not installed")
torchopt = pytest.importorskip("torchopt",
                               reason="the [peers] extra (torchopt 0.7.3) is not installed")
from suite.experiments import peers  # noqa: E402


def cnn_task(activation):
    torch.manual_seed(0)
    model = conv4(5, channels=8, activation=activation).double()
    g = torch.Generator().manual_seed(0)
    support = random_images(5, 1, g, dtype=torch.float64, device="cpu")
    query = random_images(5, 2, g, dtype=torch.float64, device="cpu")
    return ModuleTask(model, support, query)


def test_maml_equals_higher_unrolled_maml():
    task = cnn_task(nn.ReLU)
    theta = task.flat_parameters()
    ours = meta_gradient("maml", task, theta, lam=0.0, solver=GD(3, 0.1)).grad
    theirs = peers.higher_maml([task], theta, steps=3, lr=0.1)
    # The same float64 operations in another order: ~1e-16 relative.
    assert float((ours - theirs).norm() / ours.norm()) <= 1e-10


def test_imaml_equals_torchopt_custom_root():
    task = cnn_task(nn.Tanh)   # smooth, so that the Hessian is well defined everywhere
    theta = task.flat_parameters()
    ours = meta_gradient("imaml", task, theta, lam=10.0, solver=GD(3, 0.1), cg_steps=40).grad
    theirs = peers.torchopt_imaml([task], theta, lam=10.0, steps=3, lr=0.1, cg_steps=40,
                                  rtol=1e-14)
    # Both CG solves converge to ~1e-14 on this 2061-parameter system.
    assert float((ours - theirs).norm() / ours.norm()) <= 1e-9


def test_side_by_side_rows_are_written_per_setting_and_resumed(tmp_path, monkeypatch):
    out = tmp_path / "peers.csv"
    args = dict(steps_list=[1], batch_steps=[1], meta_batch=2, n_way=5, k_shot=5, lam=1000.0,
                repeats=1, out=out, progress=False)
    first = peers.run(**args)
    assert set(first.impl) == {"ours", "higher", "torchopt", "ours-vmap"}
    assert len(first) == 4 + 8 and (first.status == "ok").all()

    def no_timing(*a, **k):
        raise AssertionError("a finished setting was measured again")
    monkeypatch.setattr(peers, "time_calls", no_timing)
    again = peers.run(**args)
    pd.testing.assert_frame_equal(again, first)
    assert "| 1 | 2 |" in peers.report(again)
