import numpy as np
import pytest
import torch

from suite import CGBreakdown, conjugate_gradient, hvp_at


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
    with pytest.raises(CGBreakdown, match="not positive definite"):
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
