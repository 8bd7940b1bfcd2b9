import numpy as np
import pytest
import torch

from suite import SolveBreakdown, conjugate_gradient, hvp_at


def spd(n, kappa, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return torch.tensor((Q * np.geomspace(1, kappa, n)) @ Q.T), torch.tensor(rng.standard_normal(n))


def test_cg_solves_spd_system_in_n_steps():
    A, b = spd(12, 50.0)
    res = conjugate_gradient(lambda v: A @ v, b, max_iter=12)
    expected = np.linalg.solve(A.numpy(), b.numpy())
    # CG is exact after n steps in exact arithmetic; in float64 with kappa = 50 the
    # forward error is ~kappa * eps * (loss of orthogonality), far below 1e-10.
    np.testing.assert_allclose(res.x.numpy(), expected, rtol=0, atol=1e-10 * np.abs(expected).max())
    assert res.iterations == 12 and res.residual < 1e-8
    # With a larger budget it reaches its default tolerance (10 eps) and says so.
    res = conjugate_gradient(lambda v: A @ v, b, max_iter=36)
    assert res.converged and res.residual <= 10 * np.finfo(np.float64).eps


def test_cg_reports_unconverged_budget_and_residual():
    A, b = spd(30, 1e3)
    res = conjugate_gradient(lambda v: A @ v, b, max_iter=3)
    assert res.iterations == 3 and not res.converged
    true_residual = np.linalg.norm(b.numpy() - A.numpy() @ res.x.numpy()) / np.linalg.norm(b)
    assert res.residual == pytest.approx(true_residual, rel=1e-8)


def test_cg_error_in_energy_norm_falls_with_iterations():
    # CG minimizes the A-norm of the error over growing Krylov spaces (the residual itself
    # need not fall monotonically).
    A, b = spd(30, 1e3)
    x_star = torch.linalg.solve(A, b)

    def energy_error(k):
        e = conjugate_gradient(lambda v: A @ v, b, max_iter=k).x - x_star
        return float(e @ A @ e)

    errors = [energy_error(k) for k in (1, 3, 10, 30)]
    assert all(a > b for a, b in zip(errors, errors[1:]))


def test_cg_detects_indefinite_system():
    A = torch.diag(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    b = torch.ones(3, dtype=torch.float64)
    with pytest.raises(SolveBreakdown, match="not positive definite"):
        conjugate_gradient(lambda v: A @ v, b, max_iter=3)
    flagged = conjugate_gradient(lambda v: A @ v, b, max_iter=3, on_breakdown="return")
    assert flagged.breakdown and not flagged.converged


def test_cg_zero_rhs_and_bad_arguments():
    A, b = spd(4, 2.0)
    assert conjugate_gradient(lambda v: A @ v, torch.zeros(4, dtype=torch.float64),
                              max_iter=4).x.abs().max() == 0
    with pytest.raises(ValueError, match="max_iter"):
        conjugate_gradient(lambda v: A @ v, b, max_iter=-1)
    with pytest.raises(ValueError, match="tol"):
        conjugate_gradient(lambda v: A @ v, b, max_iter=2, tol=2.0)


def test_hvp_matches_dense_hessian():
    torch.manual_seed(0)
    W = torch.randn(5, 5, dtype=torch.float64)

    def f(x):
        return torch.tanh(W @ x).pow(2).sum() + x.pow(4).sum()

    x = torch.randn(5, dtype=torch.float64)
    v = torch.randn(5, dtype=torch.float64)
    grad, hvp = hvp_at(f, x)
    H = torch.autograd.functional.hessian(f, x)
    torch.testing.assert_close(hvp(v), H @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hvp(2 * v), 2 * (H @ v), rtol=1e-12, atol=1e-12)  # graph reusable
    torch.testing.assert_close(grad, torch.func.grad(f)(x), rtol=1e-13, atol=1e-13)


def test_hvp_of_linear_loss_is_zero():
    _, hvp = hvp_at(lambda x: x.sum(), torch.ones(3))
    assert hvp(torch.ones(3)).abs().max() == 0


def _diagonal(eigenvalues, seed=0):
    """A symmetric A = Q diag(eigenvalues) Q^T and b with every eigen-component non-zero."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return (torch.tensor((Q * eigenvalues) @ Q.T), torch.tensor(Q), torch.tensor(eigenvalues),
            torch.tensor(rng.standard_normal(len(eigenvalues))))


def test_neumann_series_follows_its_known_rate():
    # r_K = (I - step A)^K b exactly: in the eigenbasis each component is multiplied by
    # (1 - step lambda_i)^K. A spectrum in [1, 4] with step 0.4 gives factors in [-0.6, 0.6];
    # float64 rounding over 40 products of a 10 x 10 matrix is ~1e-14 relative.
    from suite.core.linalg import neumann_series
    eig = np.linspace(1.0, 4.0, 10)
    A, Q, lam, b = _diagonal(eig)
    for K in (1, 5, 40):
        res = neumann_series(lambda v: A @ v, b, max_iter=K, tol=0.0, step=0.4)
        r_K = Q @ ((1 - 0.4 * lam) ** K * (Q.T @ b))
        assert abs(res.residual - float(r_K.norm() / b.norm())) < 1e-12
        x_K = Q @ ((1 - (1 - 0.4 * lam) ** K) / lam * (Q.T @ b))
        assert float((res.x - x_K).norm() / x_K.norm()) < 1e-12
        assert res.iterations == K and not res.breakdown
    assert res.residual <= 0.6 ** 40
    assert 1.0 - 1e-12 <= res.min_curvature and res.min_curvature <= 4.0


def test_neumann_series_divergence_names_the_step():
    from suite.core.linalg import NeumannDivergence, neumann_series
    A, _, _, b = _diagonal(np.linspace(1.0, 4.0, 10))
    # step 0.6 > 2 / 4: the top component grows by |1 - 2.4| = 1.4 per iteration
    with pytest.raises(NeumannDivergence, match=r"neumann_step=0.6 must be in \(0, 2 / largest"):
        neumann_series(lambda v: A @ v, b, max_iter=200, step=0.6)
    kept = neumann_series(lambda v: A @ v, b, max_iter=200, step=0.6, on_breakdown="return")
    assert kept.breakdown and not kept.converged and kept.residual <= 1.0
    went_on = neumann_series(lambda v: A @ v, b, max_iter=200, step=0.6, on_breakdown="continue")
    assert went_on.breakdown and went_on.residual > 1e10 and went_on.iterations == 200
    # a negative eigenvalue: no step converges, and the message says so
    A, _, _, b = _diagonal(np.array([-1.0, 1.0, 2.0]))
    with pytest.raises(NeumannDivergence, match="not positive definite"):
        neumann_series(lambda v: A @ v, b, max_iter=500, step=0.1)
    for step in (None, 0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="neumann_step"):
            neumann_series(lambda v: A @ v, b, max_iter=5, step=step)


def test_imaml_with_the_neumann_series_reaches_the_exact_meta_gradient():
    # On the synthetic task (lam = 1, kappa = 20: eigenvalues of H + I in [1, 20]) the step
    # 1/20 contracts every component by at least 1 - 1/20 per iteration: 800 iterations leave
    # 0.95^800 ~ 1e-18, so the error is the inner solve's and CG's rounding, ~1e-13.
    import synthetic
    from suite import meta_gradient
    from suite.core.solvers import NewtonCG
    from suite.core.tasks import LinearRegressionTask
    task = synthetic.make_task(10, 30, 20, kappa=20.0, lam=1.0, seed=5)
    theta = np.random.default_rng(6).standard_normal(10)
    exact = synthetic.exact_meta_gradient(task, theta)
    r = meta_gradient("imaml", LinearRegressionTask.from_synthetic(task), torch.tensor(theta),
                      lam=1.0, solver=NewtonCG(30, 40), cg_steps=800, linear_solver="neumann",
                      neumann_step=1 / 20)
    assert float(np.linalg.norm(r.grad.numpy() - exact) / np.linalg.norm(exact)) < 1e-10
    assert r.stats.cg_converged
    with pytest.raises(ValueError, match="only used by linear_solver='neumann'"):
        meta_gradient("imaml", LinearRegressionTask.from_synthetic(task), torch.tensor(theta),
                      lam=1.0, solver=NewtonCG(30, 40), neumann_step=0.05)
