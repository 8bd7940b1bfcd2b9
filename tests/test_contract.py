"""One contract over every registered method with every registered solver, against references
that share no code with the suite: the scipy closed forms and numpy recurrences (float64).

The quadratic task has dim 8, kappa 10, lam 1 (so G's curvature lies in [1, 10]): 400 GD steps
at lr = 1/10 contract the error by 0.9^400 ~ 1e-18. Each method is checked against the
reference of what it declares it is exact for (``Method.exact_for``), computed at the solver's
own output phi, so solvers that stop short of Alg* (Adam, the official pull-back loop) are
covered too; a method whose ``exact_for`` has no reference here fails.
"""
import numpy as np
import pytest
import torch

import synthetic
import suite
from suite import SOLVERS, meta_gradient
from suite.core.solvers import GD

DIM, KAPPA, LAM, L_SMOOTH = 8, 10.0, 1.0, 10.0
K = 400
SETTINGS = {  # per registered solver: (steps, lr, options) converging on this task
    "gd": (K, 1 / L_SMOOTH, {}),
    "nesterov-agd": (120, 1 / L_SMOOTH, {"kappa": KAPPA}),
    "pullback-gd": (60, 1 / L_SMOOTH, {}),
    "newton-cg": (8, None, {"cg_steps": DIM}),
    "adam": (300, 0.05, {}),
    "lbfgs": (500, None, {"tol": 1e-14}),
}


def make_solver(name):
    if name not in SETTINGS:
        pytest.fail(f"solver {name!r} is in suite.SOLVERS but has no setting in the contract")
    steps, lr, options = SETTINGS[name]
    return SOLVERS[name].make(steps, lr, **options)


def unrolled_path(ref, theta, solver_name, solver):
    """(phi_K, dphi_K/dtheta) by the affine recurrence of each differentiable solver."""
    H, n = ref.train_hessian(), len(theta)
    I = np.eye(n)
    if solver_name == "gd":
        return synthetic.gd_path(ref, theta, solver.steps, solver.lr)
    if solver_name == "nesterov-agd":
        return synthetic.agd_path(ref, theta, solver.steps, solver.lr, solver.momentum)
    if solver_name == "pullback-gd":  # K steps on L_train alone, then one prox step
        phi, J = theta.copy(), I.copy()
        for _ in range(solver.steps):
            phi, J = phi - solver.lr * ref.train_grad(phi), (I - solver.lr * H) @ J
        return (phi - solver.lr * LAM * (phi - theta),
                (1 - solver.lr * LAM) * J + solver.lr * LAM * I)
    pytest.fail(f"no unrolled reference for differentiable solver {solver_name!r}")


def reference(spec, ref, theta, solver_name, solver, phi, options):
    """What ``spec`` is exact for, at the solver's output phi (float64 numpy)."""
    H = ref.train_hessian()
    if spec.exact_for == "implicit":
        return LAM * np.linalg.solve(H + LAM * np.eye(DIM), ref.test_grad(phi))
    if spec.exact_for == "first-order":
        return ref.test_grad(phi)
    if spec.exact_for == "reptile":
        return theta - phi
    if spec.exact_for == "unroll":
        phi_K, J = unrolled_path(ref, theta, solver_name, solver)
        np.testing.assert_allclose(phi, phi_K, rtol=1e-12, atol=1e-13)
        return J.T @ ref.test_grad(phi_K)
    if spec.exact_for == "truncated":
        if solver_name != "gd":   # truncation = steps is the full unroll
            return reference(suite.METHODS["maml"], ref, theta, solver_name, solver, phi, {})
        return synthetic.truncated_meta_gradient(ref, theta, solver.steps, solver.lr,
                                                 options["truncate"])
    pytest.fail(f"method {spec.name!r} declares exact_for={spec.exact_for!r}, which no "
                "reference in the contract covers")


def options_for(spec, solver_name, solver):
    options = dict(spec.converged_options)
    if "truncate" in {o.name for o in spec.options}:
        options["truncate"] = solver.steps if solver_name != "gd" else 7
    return options


@pytest.mark.parametrize("solver_name", list(SOLVERS))
@pytest.mark.parametrize("method", list(suite.METHODS))
def test_contract(method, solver_name, quad):
    ref, task, theta_np, theta = quad
    spec, solver = suite.METHODS[method], make_solver(solver_name)
    options = options_for(spec, solver_name, solver)
    if not spec.accepts(solver):
        with pytest.raises(ValueError, match="not differentiable"):
            meta_gradient(method, task, theta, lam=LAM, solver=solver, **options)
        return
    result = meta_gradient(method, task, theta, lam=LAM, solver=solver, **options)
    assert result.grad.shape == theta.shape and result.grad.dtype == theta.dtype
    want = reference(spec, ref, theta_np, solver_name, solver, result.phi.numpy(), options)
    # Every reference is a float64 closed form at the same phi: what separates the method
    # from it is rounding (K steps of a contraction: ~K eps; a Cholesky or a converged
    # 64-step CG at kappa 10: ~kappa eps), far below 1e-9.
    assert synthetic.relative_error(result.grad.numpy(), want) < 1e-9
    if spec.exact_for == "implicit" and spec.needs_solver and solver_name in ("gd", "newton-cg",
                                                                              "lbfgs"):
        # these solvers reach Alg*(theta) to rounding: the closed form of Lemma 1 holds
        exact = synthetic.exact_meta_gradient(ref, theta_np)
        assert synthetic.relative_error(result.grad.numpy(), exact) < 1e-8
    if spec.exact_for == "unroll":
        assert result.stats.hvps == solver.steps


def test_every_registered_method_declares_checked_options():
    for spec in suite.METHODS.values():
        for option in spec.options:
            if option.kind in ("int", "float"):
                with pytest.raises((ValueError, TypeError), match=option.name):
                    spec.check_options({option.name: float("nan")})


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
    for method, spec in suite.METHODS.items():
        solver = make_solver("gd")
        meta_gradient(method, task, theta, lam=LAM, solver=solver,
                      **options_for(spec, "gd", solver))
    assert torch.equal(theta, before)
