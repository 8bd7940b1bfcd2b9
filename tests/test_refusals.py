"""No silent wrong numbers: each case below once returned a zero, NaN or astronomically large
meta-gradient, or a raw torch error; each now fails with a message naming what to change."""
import re
import math

import numpy as np
import pytest
import torch

import synthetic
import suite
from suite import LinearRegressionTask, ModuleTask, meta_gradient
from suite.harness.cli import check_device
from suite.core.solvers import GD, InnerDivergence, NesterovAGD


@pytest.fixture
def readme_task():
    """The README's task: kappa = 100, lam = 1, so G's largest curvature is 100."""
    ref = synthetic.make_task(dim=10, n_train=40, n_test=30, kappa=100.0, lam=1.0, seed=0)
    theta = torch.tensor(np.random.default_rng(0).standard_normal(10))
    return LinearRegressionTask.from_synthetic(ref), theta


@pytest.mark.parametrize("method", ["imaml", "maml", "fomaml", "truncated"])
@pytest.mark.parametrize("lr,what", [(10.0, "NaN or Inf"), (0.03, "grew from")])
def test_a_diverging_inner_solve_is_refused(readme_task, method, lr, what):
    # lr * 100 = 1000 overflows to NaN; lr * 100 = 3 > 2 grows |grad G| by 2x a step.
    task, theta = readme_task
    options = {"truncate": 5} if method == "truncated" else {}
    with pytest.raises(InnerDivergence, match=f"{what}.*lower lr \\(now {lr:g}\\)"):
        meta_gradient(method, task, theta, lam=1.0, solver=GD(200, lr), **options)


def test_a_stable_step_size_is_not_flagged(readme_task):
    # lr = 0.019: lr * 100 = 1.9 < 2 oscillates but contracts; nothing is refused.
    task, theta = readme_task
    result = meta_gradient("maml", task, theta, lam=1.0, solver=GD(200, 0.019))
    assert bool(torch.isfinite(result.grad).all())


def test_a_nan_test_loss_is_refused_by_every_method(readme_task):
    task, theta = readme_task
    task.y_test = task.y_test.clone()
    task.y_test[0] = math.nan          # bypasses the constructor's own check on purpose
    for method in ("imaml", "maml", "fomaml"):
        with pytest.raises(ValueError, match="not finite|NaN or Inf"):
            meta_gradient(method, task, theta, lam=1.0, solver=GD(5, 0.01))


def test_dtype_mismatch_and_non_scalar_loss_are_named(readme_task):
    task, theta = readme_task
    with pytest.raises(TypeError, match="theta is torch.float32 but the task computes in "
                                        "torch.float64"):
        meta_gradient("fomaml", task, theta.float(), lam=1.0, solver=GD(2, 0.01))
    module = torch.nn.Linear(3, 2)
    mt = ModuleTask(module, (torch.randn(4, 3), torch.arange(4) % 2),
                    (torch.randn(4, 3), torch.arange(4) % 2))
    with pytest.raises(TypeError, match="theta is torch.float64 but the task computes in "
                                        "torch.float32"):
        meta_gradient("fomaml", mt, mt.flat_parameters().double(), lam=0.0, solver=GD(1, 0.1))
    per_row = ModuleTask(module, mt.support, mt.query,
                         loss=lambda out, y: torch.nn.functional.cross_entropy(
                             out, y, reduction="none"))
    with pytest.raises(ValueError, match="train_loss.*scalar"):
        meta_gradient("fomaml", per_row, mt.flat_parameters(), lam=0.0, solver=GD(1, 0.1))


def test_range_messages_state_the_range_that_is_checked():
    for momentum in (1.5, 1.0):
        with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
            NesterovAGD(3, 0.1, momentum=momentum)
    with pytest.raises(ValueError, match="lam and h_min are both 0"):
        synthetic.make_task(4, 8, 4, kappa=10.0, lam=0.0)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        synthetic.make_task(4, 8, 4, kappa=10.0, lam=1.0, seed=-1)
    with pytest.raises(ValueError, match="kappa must be a finite number >= 1 and <= 1e"):
        synthetic.make_task(4, 8, 4, kappa=1e20, lam=1.0)
    with pytest.raises(ValueError, match="non-zero reference"):
        synthetic.relative_error(np.ones(3), np.zeros(3))


def test_device_names_are_checked():
    with pytest.raises(SystemExit, match="--device gpu: not a torch device name"):
        check_device("gpu")
    assert check_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device"):
            check_device("cuda")


def test_cg_never_returns_zeros_for_a_nan_system():
    with pytest.raises(suite.SolveBreakdown, match="non-finite"):
        suite.conjugate_gradient(lambda v: v * math.nan, torch.ones(3), max_iter=3)


@pytest.mark.parametrize("argv,message", [
    (["error", "--steps", "-5"], "--steps must be a finite number >= 1, got -5"),
    (["error", "--steps", "5", "--kappas", "0.5"], "--kappas must be in [1, 1e+12], got 0.5"),
    (["error", "--steps", "5", "--cg-steps", "0"], "--cg-steps must be a finite number >= 1"),
    (["error", "--steps", "5", "--dim", "0"], "--dim must be a finite number >= 1"),
    (["cost", "--steps", "1", "--repeats", "-1"], "--repeats must be a finite number >= 0"),
    (["hvp-cost", "--repeats", "0"], "--repeats must be a finite number >= 1"),
    (["cost", "--steps", "1", "--threads", "0"], "--threads must be a finite number >= 1"),
    (["cost", "--steps", "1", "--lam", "0"], "--lam must be a finite number > 0"),
    (["hvp-cost", "--n-way", "1"], "--n-way must be a finite number >= 2"),
])
def test_sweep_arguments_are_checked_before_any_row(argv, message, tmp_path, capsys,
                                                    monkeypatch):
    from suite.experiments import sweeps, sweeps_cli
    monkeypatch.setattr(sweeps_cli, "run_sweep", lambda *a, **k: pytest.fail("work began"))
    monkeypatch.setattr(sweeps, "cnn_tasks", lambda *a, **k: pytest.fail("work began"))
    out = [] if argv[0] == "hvp-cost" else ["--out", str(tmp_path / "x.csv")]
    with pytest.raises(SystemExit, match=re.escape(message)):
        sweeps_cli.main(argv + out)


def test_sweep_out_into_a_missing_folder_is_refused(tmp_path, capsys):
    from suite.experiments import sweeps_cli
    with pytest.raises(SystemExit, match=re.escape("does not exist")):
        sweeps_cli.main(["error", "--steps", "5", "--out", str(tmp_path / "nope" / "x.csv")])
    assert not (tmp_path / "nope").exists()


def test_regress_with_a_missing_baseline_computes_nothing(tmp_path, monkeypatch):
    from suite.experiments import regress
    monkeypatch.setattr(regress, "measure", lambda: pytest.fail("metrics computed first"))
    with pytest.raises(SystemExit, match="no baseline"):
        regress.main(["--baseline", str(tmp_path / "missing.json")])


def test_omniglot_download_offline_says_what_to_do(tmp_path, monkeypatch):
    import urllib.error
    from suite.experiments.omniglot import __main__ as cli
    from suite.experiments.omniglot import data

    def offline(root):
        raise urllib.error.URLError("Temporary failure in name resolution")
    monkeypatch.setattr(data, "download", offline)
    with pytest.raises(SystemExit, match="could not fetch.*copy images_background.zip"):
        cli.main(["download", "--root", str(tmp_path)])


def test_pinned_commit_survives_the_command_rewriting_tracked_files(monkeypatch):
    # A command pins its commit at its start, so rows written after it rewrites a committed
    # results file are not marked '+dirty' by its own output.
    from suite.harness import results
    monkeypatch.setenv("SUITE_GIT_COMMIT", "")      # restored (or removed) after the test
    monkeypatch.delenv("SUITE_GIT_COMMIT")
    pinned = results.pin_commit()
    monkeypatch.setattr(results.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("git asked again")))
    assert results.git_commit() == pinned
