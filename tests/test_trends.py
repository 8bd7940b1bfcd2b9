"""How each method's error moves with its budget (paper Figure 2a in miniature).

Task: dim 10, kappa 100, lam 1 (G's curvature in [1, 100]); errors against the exact
meta-gradient of Alg* from ``synthetic`` (float64).
"""
import numpy as np
import pytest
import torch

import synthetic
from suite import LinearRegressionTask, meta_gradient
from suite.core.solvers import GD

LAM, KAPPA = 1.0, 100.0


@pytest.fixture(scope="module")
def hard():
    ref = synthetic.make_task(10, 40, 30, KAPPA, LAM, seed=9)
    theta = np.random.default_rng(1).standard_normal(10)
    return ref, LinearRegressionTask.from_synthetic(ref), theta, torch.tensor(theta)


def error(result, ref, theta):
    return synthetic.relative_error(result.grad.numpy(), synthetic.exact_meta_gradient(ref, theta))


def test_imaml_error_falls_with_cg_steps(hard):
    ref, task, theta_np, theta = hard
    solver = GD(2500, 1 / (KAPPA * LAM))  # (1 - 1/100)^2500 ~ 1e-11: converged inner solve
    errors = [error(meta_gradient("imaml", task, theta, lam=LAM, solver=solver, cg_steps=k),
                    ref, theta_np) for k in (1, 3, 10)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-6


def test_maml_error_falls_with_inner_steps(hard):
    ref, task, theta_np, theta = hard
    errors = [error(meta_gradient("maml", task, theta, lam=LAM, solver=GD(k, 1 / KAPPA)),
                    ref, theta_np) for k in (10, 100, 1000)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3   # 0.99^1000 ~ 4e-5 of the slowest mode remains


def test_truncated_approaches_maml_as_k_grows(hard):
    _, task, _, theta = hard
    solver = GD(60, 1 / KAPPA)
    full = meta_gradient("maml", task, theta, lam=LAM, solver=solver).grad
    gaps = [float(torch.linalg.vector_norm(
        meta_gradient("truncated", task, theta, lam=LAM, solver=solver, truncate=k).grad - full))
        for k in (1, 10, 40, 60)]
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3] == 0.0


def test_large_lam_approaches_fomaml(hard):
    # As lam -> inf, Alg*(theta) -> theta and (I + H/lam)^-1 -> I: iMAML tends to FOMAML.
    _, task, _, theta = hard
    gaps = []
    for lam in (1.0, 1e2, 1e4):
        solver = GD(200, 1 / (lam + KAPPA))
        a = meta_gradient("imaml", task, theta, lam=lam, solver=solver, cg_steps=10).grad
        b = meta_gradient("fomaml", task, theta, lam=lam, solver=solver).grad
        gaps.append(float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)))
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-2   # the gap is O(|H| / lam) = O(1e2 / 1e4)
