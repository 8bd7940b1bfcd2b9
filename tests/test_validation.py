"""Bad input gets a clear error naming the parameter."""
import math

import pytest
import torch

import suite
from suite import LinearRegressionTask, ModuleTask, meta_gradient
from suite.core.solvers import GD, NesterovAGD, NewtonCG, ScipyLBFGS


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(method="imaml", lam=0.0), ValueError, "lam must be a finite number > 0, got 0.0"),
    (dict(method="imaml", lam=-1.0), ValueError, "lam must be a finite number > 0, got -1.0"),
    (dict(method="maml", lam=-1.0), ValueError, "lam must be a finite number >= 0, got -1.0"),
    (dict(method="maml", lam=math.nan), ValueError, "lam"),
    (dict(method="maml", lam="big"), TypeError, "lam"),
    (dict(method="newton"), ValueError, "method must be one of"),
    (dict(method=3), TypeError, "method"),
    (dict(method="imaml", cg_steps=0), ValueError, "cg_steps"),
    (dict(method="truncated", truncate=0), ValueError, "truncate"),
    (dict(method="truncated", truncate=11), ValueError, "truncate"),
    (dict(method="maml", solver="GD"), TypeError, "solver"),
    (dict(method="maml", solver=NewtonCG(3)), ValueError, "not differentiable"),
    (dict(method="truncated", solver=ScipyLBFGS(3), truncate=1), ValueError, "not differentiable"),
])
def test_meta_gradient_arguments(quad, kwargs, exc, match):
    _, task, _, theta = quad
    args = dict(method="maml", lam=1.0, solver=GD(10, 0.1)) | kwargs
    method = args.pop("method")
    with pytest.raises(exc, match=match):
        meta_gradient(method, task, theta, **args)


def test_theta_shape_dtype_and_values(quad):
    _, task, _, theta = quad
    for bad, match in [(theta[:-1], "theta must have 8 entries"),
                       (theta[None], "1-D floating-point"),
                       (theta.long(), "1-D floating-point"),
                       (torch.full_like(theta, math.nan), "theta contains NaN"),
                       (theta.numpy(), "theta must be a torch.Tensor")]:
        with pytest.raises((ValueError, TypeError), match=match):
            meta_gradient("fomaml", task, bad, lam=1.0, solver=GD(2, 0.1))


@pytest.mark.parametrize("make,match", [
    (lambda: GD(-1, 0.1), "steps"), (lambda: GD(3, 0.0), "lr"), (lambda: GD(2.5, 0.1), "steps"),
    (lambda: NesterovAGD(3, 0.1, momentum=1.0), "momentum"),
    (lambda: NewtonCG(3, cg_steps=0), "cg_steps"), (lambda: ScipyLBFGS(0), "max_iter"),
    (lambda: ScipyLBFGS(5, tol=-1.0), "tol"),
])
def test_solver_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_non_finite_data_is_refused():
    x = torch.ones(4, 2, dtype=torch.float64)
    y = torch.ones(4, dtype=torch.float64)
    bad = x.clone()
    bad[0, 0] = math.inf
    with pytest.raises(ValueError, match="X_train contains NaN or Inf"):
        LinearRegressionTask(bad, y, x, y)
    with pytest.raises(ValueError, match=r"support\[0\] \(inputs\) contains NaN"):
        ModuleTask(torch.nn.Linear(2, 1), (torch.full((4, 2), math.nan), y), (x, y))
    with pytest.raises(ValueError, match="same number of rows"):
        ModuleTask(torch.nn.Linear(2, 1), (x, y[:3]), (x, y))


def test_exact_refuses_large_problems():
    n = suite.EXACT_MAX_DIM + 1
    task = LinearRegressionTask(torch.zeros(1, n), torch.zeros(1), torch.zeros(1, n), torch.zeros(1),
                                dtype=torch.float32)
    with pytest.raises(ValueError, match="EXACT_MAX_DIM"):
        meta_gradient("exact", task, torch.zeros(n), lam=1.0)


def test_task_without_protocol_is_refused(quad):
    _, _, _, theta = quad
    with pytest.raises(TypeError, match="train_loss"):
        meta_gradient("fomaml", object(), theta, lam=1.0, solver=GD(1, 0.1))


def test_indefinite_imaml_system_raises():
    # A concave training loss with curvature -4 and lam = 1: I + H/lam = -3 I is indefinite.
    class Concave:
        def train_loss(self, phi):
            return -2.0 * phi.pow(2).sum()

        def test_loss(self, phi):
            return phi.sum()

    theta = torch.ones(3, dtype=torch.float64)
    with pytest.raises(suite.SolveBreakdown, match="increase lam"):
        meta_gradient("imaml", Concave(), theta, lam=1.0, solver=GD(0, 0.1))
    # "keep" with a breakdown at CG's first iteration has no iterate to keep (x = 0): the
    # task gets the first-order direction grad L_test = ones, never a zero vector.
    flagged = meta_gradient("imaml", Concave(), theta, lam=1.0, solver=GD(0, 0.1),
                            on_breakdown="keep")
    assert flagged.stats.cg_breakdown and flagged.stats.cg_converged is False
    assert flagged.stats.cg_fallbacks == 1 and flagged.stats.cg_breakdown_iteration == 0
    assert torch.equal(flagged.grad, torch.ones(3, dtype=torch.float64))
    assert flagged.stats.cg_min_curvature == pytest.approx(-3.0, rel=1e-14)


def test_meta_batch_averages(quad):
    ref, task, _, theta = quad
    solver = GD(20, 0.1)
    single = meta_gradient("maml", task, theta, lam=1.0, solver=solver)
    batch = suite.meta_gradient_batch("maml", [task, task], theta, lam=1.0, solver=solver)
    torch.testing.assert_close(batch.grad, single.grad, rtol=1e-15, atol=0)
    assert batch.stats.grad_evals == 2 * single.stats.grad_evals
    with pytest.raises(ValueError, match="tasks"):
        suite.meta_gradient_batch("maml", [], theta, lam=1.0, solver=solver)
