"""A per-parameter (vector) lam: meta-gradients in theta and in lam against dense float64
references and finite differences; a scalar lam is the constant vector bit for bit."""
import numpy as np
import pytest
import torch

import synthetic
from suite import meta_gradient
from suite.core.batched import BatchedTasks, batched_meta_gradient
from suite.core.solvers import GD, NewtonCG
from suite.core.tasks import LinearRegressionTask
from suite.harness.workloads import cnn_tasks

DIM = 12
F64 = torch.float64


@pytest.fixture
def problem():
    task = synthetic.make_task(DIM, 40, 30, kappa=20.0, lam=1.0, seed=3)
    rng = np.random.default_rng(4)
    theta = rng.standard_normal(DIM)
    lam = np.exp(rng.uniform(np.log(0.3), np.log(3.0), DIM))
    return task, theta, lam


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("method,solver,options", [
    ("imaml", NewtonCG(steps=30, cg_steps=4 * DIM), {"cg_steps": 4 * DIM}),
    ("exact", None, {})])
def test_vector_lam_matches_dense_reference(problem, method, solver, options):
    task, theta, lam = problem
    g_theta, g_lam = synthetic.prox_meta_gradients(task, theta, lam)
    # kappa(H + diag(lam)) here is below 1e3: solves in float64 are accurate to ~kappa * eps
    # ~ 1e-13, so 1e-10 (the target) leaves a wide margin and still catches a wrong formula.
    A = task.train_hessian() + np.diag(lam)
    assert np.linalg.cond(A) < 1e3
    lam_t = torch.tensor(lam, requires_grad=True)
    r = meta_gradient(method, LinearRegressionTask.from_synthetic(task), torch.tensor(theta),
                      lam=lam_t, solver=solver, **options)
    assert isinstance(r.lam_grad, torch.Tensor) and r.lam_grad.shape == (DIM,)
    assert _rel(r.grad.numpy(), g_theta) < 1e-10
    assert _rel(r.lam_grad.numpy(), g_lam) < 1e-10


def test_lam_gradient_matches_finite_differences(problem):
    # The reference's formula checked against L_test(Alg*(theta, lam)) itself: central
    # differences with h = 1e-5 lam_j carry O(h^2) ~ 1e-10 truncation and eps / h ~ 1e-11
    # rounding (relative), so 1e-6 is a safe bound.
    task, theta, lam = problem
    r = meta_gradient("imaml", LinearRegressionTask.from_synthetic(task), torch.tensor(theta),
                      lam=torch.tensor(lam), lam_grad=True, solver=NewtonCG(30, 4 * DIM),
                      cg_steps=4 * DIM)
    fd = np.empty(DIM)
    for j in range(DIM):
        h = 1e-5 * lam[j]
        up, down = lam.copy(), lam.copy()
        up[j] += h
        down[j] -= h
        fd[j] = (task.test_loss(synthetic.prox_inner_solution(task, theta, up))
                 - task.test_loss(synthetic.prox_inner_solution(task, theta, down))) / (2 * h)
    assert _rel(r.lam_grad.numpy(), fd) < 1e-6


def test_unrolled_lam_gradient_matches_finite_differences(problem):
    # MAML's d/dlam through K GD steps on G, against central differences of the same K steps
    # written in numpy (phi_K is a polynomial in lam: the O(h^2) error is ~1e-10 relative).
    task, theta, lam = problem
    steps, lr = 40, 0.04
    H, c = task.train_hessian(), task.X_train.T @ task.y_train / task.X_train.shape[0]

    def loss(lam_vec):
        phi = theta.copy()
        for _ in range(steps):
            phi = phi - lr * (H @ phi - c + lam_vec * (phi - theta))
        return task.test_loss(phi)

    fd = np.array([(loss(lam + h * e) - loss(lam - h * e)) / (2 * h)
                   for e, h in zip(np.eye(DIM), 1e-5 * lam)])
    r = meta_gradient("maml", LinearRegressionTask.from_synthetic(task), torch.tensor(theta),
                      lam=torch.tensor(lam, requires_grad=True), solver=GD(steps, lr))
    assert _rel(r.lam_grad.numpy(), fd) < 1e-6


@pytest.mark.parametrize("method,solver,options", [
    ("imaml", GD(50, 0.04), {"cg_steps": 6}),
    ("imaml", GD(50, 0.04), {"cg_steps": 6, "curvature": "gauss-newton"}),
    ("imaml", GD(50, 0.04), {"cg_steps": 30, "linear_solver": "neumann", "neumann_step": 0.03}),
    ("maml", GD(20, 0.04), {}), ("truncated", GD(20, 0.04), {"truncate": 5}),
    ("fomaml", GD(20, 0.04), {}), ("exact", None, {})])
def test_scalar_lam_is_the_constant_vector_bit_for_bit(problem, method, solver, options):
    task, theta, _ = problem
    t, theta = LinearRegressionTask.from_synthetic(task), torch.tensor(theta)
    wants = {} if method == "fomaml" else {"lam_grad": True}
    a = meta_gradient(method, t, theta, lam=0.7, solver=solver, **wants, **options)
    b = meta_gradient(method, t, theta, lam=torch.full((DIM,), 0.7, dtype=F64), solver=solver,
                      **wants,
                      **options)
    assert torch.equal(a.grad, b.grad)
    if wants:
        assert isinstance(a.lam_grad, float) and a.lam_grad == float(b.lam_grad.sum())


def test_batched_vector_lam_equals_the_loop():
    # float64: the loop and vmap differ by the order of sums (~1e-15); 1e-10 catches a lam
    # applied to the wrong parameters.
    from suite import meta_gradient_batch
    tasks, theta = cnn_tasks(n_way=5, k_shot=1, n_tasks=2, dtype=torch.float64, seed=1)
    lam = torch.linspace(10.0, 40.0, theta.numel(), dtype=torch.float64)
    for method, options in (("maml", {}), ("imaml", {"cg_steps": 3})):
        loop = meta_gradient_batch(method, tasks, theta, lam=lam, solver=GD(2, 0.1), **options)
        got = batched_meta_gradient(method, BatchedTasks.stack(tasks), theta, lam=lam, steps=2,
                                    lr=0.1, **options)
        assert float((got.grad - loop.grad).norm() / loop.grad.norm()) < 1e-10



@pytest.mark.parametrize("lam,message", [
    (torch.ones(DIM + 1, dtype=F64), "shape"), (torch.ones(DIM, 1, dtype=F64), "shape"),
    (torch.zeros(DIM, dtype=F64), "lam\\[0\\] = 0.0"),
    (torch.full((DIM,), float("nan"), dtype=F64), "finite"),
    (torch.ones(DIM, dtype=torch.float32), "float32"),
    (torch.tensor(-1.0, dtype=F64), "lam must be a finite number > 0")])
def test_bad_vector_lam_is_refused(problem, lam, message):
    task, theta, _ = problem
    with pytest.raises((ValueError, TypeError), match=message):
        meta_gradient("imaml", LinearRegressionTask.from_synthetic(task), torch.tensor(theta),
                      lam=lam, solver=GD(5, 0.04))


def test_lam_gradient_refusals(problem):
    task, theta, _ = problem
    t, theta = LinearRegressionTask.from_synthetic(task), torch.tensor(theta)
    with pytest.raises(ValueError, match="'fomaml' has no gradient in lam"):
        meta_gradient("fomaml", t, theta, lam=1.0, lam_grad=True, solver=GD(5, 0.04))
    with pytest.raises(ValueError, match="'official'"):
        meta_gradient("imaml", t, theta, lam=1.0, lam_grad=True, solver=GD(5, 0.04),
                      curvature="official")
    # a zero entry is allowed where lam = 0 is (the unrolled methods), refused by Lemma 1
    lam = torch.ones(DIM, dtype=torch.float64)
    lam[0] = 0.0
    assert meta_gradient("maml", t, theta, lam=lam, solver=GD(5, 0.04)).lam_grad is None
