"""One contract over every (method, solver) pair, against the scipy closed forms (float64).

The quadratic task has dim 8, kappa 10, lam 1 (so G's curvature lies in [1, 10]): 400 GD steps
at lr = 1/10 contract the error by 0.9^400 ~ 1e-18, i.e. every solver below converges to
rounding, and the exact-arithmetic answers are known from ``synthetic``.
"""
import numpy as np
import pytest
import torch

import synthetic
import suite
from suite import meta_gradient
from suite.solvers import GD, NesterovAGD, NewtonCG, ScipyLBFGS

DIM, KAPPA, LAM, L_SMOOTH = 8, 10.0, 1.0, 10.0
K = 400
SOLVERS = {
    "GD": lambda: GD(K, 1 / L_SMOOTH),
    "AGD": lambda: NesterovAGD.for_condition(120, L_SMOOTH, KAPPA),
    "NewtonCG": lambda: NewtonCG(8, cg_steps=DIM),
    "LBFGS": lambda: ScipyLBFGS(500, tol=1e-14),
}
METHODS = list(suite.METHODS)   # a method added to the registry must get a contract below
OPTIONS = {"imaml": dict(cg_steps=DIM), "truncated": dict(truncate=None)}


def run(method, solver, task, theta):
    options = dict(OPTIONS.get(method, {}))
    if method == "truncated":
        options["truncate"] = solver.steps
    return meta_gradient(method, task, theta, lam=LAM, solver=solver, **options)


@pytest.mark.parametrize("solver_name", SOLVERS)
@pytest.mark.parametrize("method", METHODS)
def test_contract(method, solver_name, quad):
    ref, task, theta_np, theta = quad
    solver = SOLVERS[solver_name]()
    if method in ("maml", "truncated") and not solver.differentiable:
        with pytest.raises(ValueError, match="not differentiable"):
            run(method, solver, task, theta)
        return
    result = run(method, solver, task, theta)
    grad = result.grad.numpy()
    assert result.grad.shape == theta.shape and result.grad.dtype == theta.dtype
    exact = synthetic.exact_meta_gradient(ref, theta_np)
    if method == "exact":
        # Newton + Cholesky in float64 on a kappa-10 system: error ~ kappa * eps ~ 1e-15.
        assert synthetic.relative_error(grad, exact) < 1e-10
    elif method == "imaml":
        # Converged inner solution (error ~1e-15) and CG with dim iterations: the CG residual
        # in float64 at kappa 10 is ~1e-13; 1e-8 leaves a wide margin.
        assert synthetic.relative_error(grad, exact) < 1e-8
        assert result.stats.cg_iterations <= DIM and result.stats.hvps >= result.stats.cg_iterations
    elif method == "maml":
        if solver_name == "GD":
            target = synthetic.gd_meta_gradient(ref, theta_np, solver.steps, solver.lr)
        else:
            target = synthetic.agd_meta_gradient(ref, theta_np, solver.steps, solver.lr,
                                                 solver.momentum)
        # Backprop and the Jacobian recurrence differ only in rounding order over K steps
        # of a contraction: ~K * eps relative.
        assert synthetic.relative_error(grad, target) < 1e-10
        assert result.stats.hvps == solver.steps
    elif method == "truncated":
        full = meta_gradient("maml", task, theta, lam=LAM, solver=solver)
        assert torch.equal(result.grad, full.grad)  # k = K is the same computation
    elif method == "fomaml":
        phi = result.phi.numpy()
        np.testing.assert_allclose(grad, ref.test_grad(phi), rtol=1e-12, atol=1e-14)
        if solver_name == "GD":
            phi_K, _ = synthetic.gd_path(ref, theta_np, solver.steps, solver.lr)
            np.testing.assert_allclose(phi, phi_K, rtol=1e-12, atol=1e-14)
    else:
        pytest.fail(f"method {method!r} is in suite.METHODS but has no contract here")
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("truncate", [1, 7, 30])
def test_truncated_backprop_equals_its_closed_form(quad, truncate):
    # Only the last k steps carry theta's influence, through the prox terms:
    # J = sum_{i<k} (I - lr (H + lam I))^i lr lam, written in synthetic without torch.
    ref, task, theta_np, theta = quad
    solver = GD(60, 1 / L_SMOOTH)
    got = meta_gradient("truncated", task, theta, lam=LAM, solver=solver, truncate=truncate)
    want = synthetic.truncated_meta_gradient(ref, theta_np, solver.steps, solver.lr, truncate)
    # k products of a contraction in float64: ~k eps relative.
    assert synthetic.relative_error(got.grad.numpy(), want) < 1e-10


def test_every_method_leaves_theta_untouched(quad):
    _, task, _, theta = quad
    before = theta.clone()
    for method in METHODS:
        run(method, SOLVERS["GD"](), task, theta)
    assert torch.equal(theta, before)
