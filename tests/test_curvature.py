"""Curvature operators and breakdown policies of the implicit system, against dense float64
references (the matrices formed entry by entry with torch.autograd.functional)."""
import pytest
import torch

import synthetic
from suite import meta_gradient
from suite.core.curvature import Curvature, gauss_newton_at
from suite.core.linalg import SolveBreakdown, normal_equations_cg, solve_implicit
from suite.core.solvers import GD

# Products on float64 problems of tens of parameters: each entry is a short sum of products,
# so agreement with the dense matrices is ~1e-15 relative; 1e-12 leaves room for the order
# of summation and still fails on any wrong term (those are O(1)).
TIGHT = 1e-12


def rel(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def dense_gauss_newton(task, phi):
    J = torch.autograd.functional.jacobian(task.train_outputs, phi)       # (12, 3, n)
    out = task.train_outputs(phi).detach()
    H_out = torch.autograd.functional.hessian(task.train_output_loss, out)  # (12, 3, 12, 3)
    J2 = J.reshape(-1, phi.numel())
    return J2.T @ H_out.reshape(J2.shape[0], J2.shape[0]) @ J2


def test_gauss_newton_equals_dense_JT_Hout_J_on_a_tanh_net(tanh_task):
    task, phi = tanh_task
    G = dense_gauss_newton(task, phi)
    grad, product = gauss_newton_at(task.train_outputs, task.train_output_loss, phi)
    for seed in range(3):
        u = torch.randn(phi.numel(), dtype=torch.float64,
                        generator=torch.Generator().manual_seed(seed))
        assert rel(product(u), G @ u) < TIGHT
    assert rel(grad, torch.func.grad(task.train_loss)(phi)) < TIGHT
    # Positive semi-definite (cross-entropy's output Hessian is), unlike this net's Hessian.
    assert float(torch.linalg.eigvalsh(G).min()) > -1e-12
    H = torch.autograd.functional.hessian(task.train_loss, phi)
    assert float(torch.linalg.eigvalsh(H).min()) < -1e-6


def test_gauss_newton_equals_the_hessian_for_linear_regression(quad):
    ref, task, _, theta = quad
    _, product = gauss_newton_at(task.train_outputs, task.train_output_loss, theta)
    H = torch.tensor(ref.X_train.T @ ref.X_train / ref.X_train.shape[0])
    u = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert rel(product(u), H @ u) < TIGHT
    # So iMAML with either curvature reaches the exact meta-gradient (CG with dim steps).
    exact = synthetic.exact_meta_gradient(ref, theta.numpy())
    for curvature in ("hessian", "gauss-newton"):
        g = meta_gradient("imaml", task, theta, lam=1.0, solver=GD(400, 0.1), cg_steps=8,
                          curvature=curvature).grad
        assert synthetic.relative_error(g.numpy(), exact) < 1e-8


def test_damping_zero_is_the_paper_operator_bit_for_bit(tanh_task):
    task, theta = tanh_task
    kwargs = dict(lam=20.0, solver=GD(5, 0.1), cg_steps=6)
    paper = meta_gradient("imaml", task, theta, curvature="hessian", **kwargs)
    damped = meta_gradient("imaml", task, theta, curvature=Curvature("damped", damping=0.0),
                           **kwargs)
    assert torch.equal(paper.grad, damped.grad)


@pytest.mark.parametrize("curvature,matrix", [
    (Curvature("damped", damping=3.0), lambda H, lam, n: torch.eye(n) + (H + 3.0 * torch.eye(n)) / lam),
    (Curvature("official"), lambda H, lam, n: 2.0 * torch.eye(n) + H / (lam + 10.0)),
    (Curvature("gauss-newton"), None),
])
def test_each_operator_solves_its_dense_system(tanh_task, curvature, matrix):
    task, theta = tanh_task
    lam, n = 20.0, theta.numel()
    result = meta_gradient("imaml", task, theta, lam=lam, solver=GD(5, 0.1), cg_steps=4 * n,
                           curvature=curvature)
    phi = result.phi
    if matrix is None:
        A = torch.eye(n, dtype=torch.float64) + dense_gauss_newton(task, phi) / lam
    else:
        H = torch.autograd.functional.hessian(task.train_loss, phi)
        A = matrix(H, lam, n).double()
    v = torch.func.grad(task.test_loss)(phi)
    # CG to its default tolerance (10 eps) on a system of condition ~2: forward error ~1e-14.
    assert result.stats.cg_converged
    assert rel(result.grad, torch.linalg.solve(A, v)) < 1e-10


def test_gauss_newton_needs_outputs():
    class Bare:
        def train_loss(self, phi):
            return (phi ** 2).sum()

        def test_loss(self, phi):
            return phi.sum()

    with pytest.raises(TypeError, match="gauss-newton.*train_outputs"):
        meta_gradient("imaml", Bare(), torch.ones(2, dtype=torch.float64), lam=1.0,
                      solver=GD(1, 0.1), curvature="gauss-newton")
    with pytest.raises(ValueError, match="curvature must be one of"):
        Curvature("newton")
    with pytest.raises(ValueError, match="damping"):
        Curvature("damped", damping=-1.0)


# A hand-made indefinite 2x2 system: A = diag(1, -1/2), b = (1, 1). CG's first step has
# p^T A p = 1/2 and reaches x1 = (4, 4); its second direction p1 = (6, 12) has
# p^T A p = -36, a breakdown at iteration 1. Stepping on anyway gives x2 = (1, -2), which is
# A^-1 b (CG on a 2x2 system ends after two steps if no p^T A p is zero).
A2 = torch.diag(torch.tensor([1.0, -0.5], dtype=torch.float64))
B2 = torch.ones(2, dtype=torch.float64)


def test_breakdown_policies_on_an_indefinite_2x2():
    matvec = lambda u: u @ A2   # noqa: E731 (acts row by row on a 2-D batch as well)
    with pytest.raises(SolveBreakdown, match="iteration 1"):
        solve_implicit(matvec, B2, max_iter=5, on_breakdown="raise")
    keep = solve_implicit(matvec, B2, max_iter=5, on_breakdown="keep")
    assert keep.x.tolist() == [4.0, 4.0] and keep.fallback == 0
    assert keep.breakdown and keep.breakdown_iteration == 1 and not keep.converged
    assert keep.min_curvature == pytest.approx(-36 / 180, rel=1e-14)   # p^T A p / |p|^2
    first = solve_implicit(matvec, B2, max_iter=5, on_breakdown="first-order")
    assert torch.equal(first.x, B2) and first.fallback == 1
    through = solve_implicit(matvec, B2, max_iter=5, on_breakdown="continue")
    torch.testing.assert_close(through.x, torch.tensor([1.0, -2.0], dtype=torch.float64),
                               rtol=1e-14, atol=0)
    assert through.breakdown and through.breakdown_iteration == 1 and through.converged


def test_a_breakdown_at_the_first_iteration_never_gives_a_zero_vector():
    # diag(1, -2), b = (1, 1): p^T A p = -1 at once. Per row of a batch, the broken row gets
    # b (the first-order direction) and the healthy row its CG solution.
    A = torch.diag(torch.tensor([1.0, -2.0], dtype=torch.float64))
    b = torch.stack([B2, torch.tensor([1.0, 0.0], dtype=torch.float64)])
    for policy in ("keep", "first-order"):
        res = solve_implicit(lambda U: U @ A, b, max_iter=5, on_breakdown=policy)
        assert torch.equal(res.x[0], b[0]) and res.fallback == 1
        assert torch.equal(res.x[1], b[1])     # A^-1 (1, 0) = (1, 0) in one step


def test_normal_equations_solve_indefinite_systems():
    res = normal_equations_cg(lambda u: A2 @ u, B2, max_iter=2)
    torch.testing.assert_close(res.x, torch.tensor([1.0, -2.0], dtype=torch.float64),
                               rtol=1e-13, atol=0)
    assert not res.breakdown
    # Through iMAML: a quadratic task with Hessian diag(-2, 1) and lam = 1, so I + H/lam =
    # diag(-1, 2) is indefinite; the normal equations still solve it (2 products a step + 1).
    class Quadratic:
        def train_loss(self, phi):
            return 0.5 * (phi * phi * torch.tensor([-2.0, 1.0], dtype=phi.dtype)).sum()

        def test_loss(self, phi):
            return phi.sum()

    r = meta_gradient("imaml", Quadratic(), torch.zeros(2, dtype=torch.float64), lam=1.0,
                      solver=GD(0, 0.1), cg_steps=2, linear_solver="normal-cg")
    torch.testing.assert_close(r.grad, torch.tensor([-1.0, 0.5], dtype=torch.float64),
                               rtol=1e-13, atol=0)
    assert r.stats.hvps == 2 * r.stats.cg_iterations + 1


def test_nan_right_hand_side_is_refused():
    with pytest.raises(ValueError, match="NaN"):
        solve_implicit(lambda u: u, torch.tensor([1.0, float("nan")]), max_iter=2)


def test_inner_stationarity_is_reported(quad):
    _, task, _, theta = quad
    one = meta_gradient("imaml", task, theta, lam=1.0, solver=GD(1, 0.1), cg_steps=8)
    grad_G = lambda p: torch.func.grad(task.train_loss)(p) + (p - theta)   # noqa: E731
    expected = float(grad_G(one.phi).norm() / grad_G(theta).norm())
    assert one.stats.inner_stationarity == pytest.approx(expected, rel=1e-12)
    # 400 GD steps on a kappa-10 problem contract |grad G| by 0.9^400: rounding level.
    done = meta_gradient("imaml", task, theta, lam=1.0, solver=GD(400, 0.1), cg_steps=8)
    assert done.stats.inner_stationarity < 1e-12
