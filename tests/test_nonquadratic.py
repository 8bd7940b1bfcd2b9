"""iMAML on non-quadratic tasks (logistic regression, a small tanh network) in float64.

References share no code with the suite: the inner problem is solved by scipy's trust-region
Newton with the dense Hessian from torch.autograd.functional, the Jacobian solve by numpy,
and finite differences of F(theta) = L_test(Alg*(theta)) check the whole chain.
Smooth activations only: with ReLU, GD does not converge to machine precision (kinks).
"""
import numpy as np
import pytest
import scipy.optimize
import torch
import torch.nn.functional as F
from torch import nn

import synthetic
from suite import ModuleTask, meta_gradient
from suite.core.solvers import NewtonCG, ScipyLBFGS

LAM = 1.0


def logistic_task():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, generator=g, dtype=torch.float64)
    xs, xq = (torch.randn(n, 5, generator=g, dtype=torch.float64) for n in (20, 15))
    ys, yq = ((x @ w + 0.5 * torch.randn(len(x), generator=g, dtype=torch.float64) > 0).double()
              for x in (xs, xq))
    model = nn.Linear(5, 1).double()
    loss = lambda out, y: F.binary_cross_entropy_with_logits(out[:, 0], y)
    return ModuleTask(model, (xs, ys), (xq, yq), loss=loss)


def tanh_task():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    g = torch.Generator().manual_seed(2)
    xs, xq = (torch.randn(n, 3, generator=g, dtype=torch.float64) for n in (12, 9))
    ys, yq = (torch.randint(0, 3, (n,), generator=g) for n in (12, 9))
    return ModuleTask(model, (xs, ys), (xq, yq))


TASKS = {"logistic": logistic_task, "tanh-net": tanh_task}


def reference_solution(task, theta):
    theta = torch.as_tensor(theta)

    def G(phi):
        return task.train_loss(phi) + 0.5 * LAM * (phi - theta).pow(2).sum()

    def fun(x):
        phi = torch.tensor(x, requires_grad=True)
        value = G(phi)
        grad, = torch.autograd.grad(value, phi)
        return value.item(), grad.numpy()

    hess = lambda x: torch.autograd.functional.hessian(G, torch.tensor(x)).numpy()
    res = scipy.optimize.minimize(fun, theta.numpy(), jac=True, hess=hess, method="trust-exact",
                                  options={"gtol": 1e-13})
    # trust-exact can stop at ~1e-8 ("failure to predict improvement"); a few pure Newton
    # steps from there converge quadratically to rounding.
    x = res.x
    for _ in range(4):
        x = x - np.linalg.solve(hess(x), fun(x)[1])
    assert np.linalg.norm(fun(x)[1]) < 1e-13
    return x


def reference_meta_gradient(task, theta):
    phi = reference_solution(task, theta)
    H = torch.autograd.functional.hessian(task.train_loss, torch.tensor(phi)).numpy()
    p = torch.tensor(phi, requires_grad=True)
    v, = torch.autograd.grad(task.test_loss(p), p)
    return np.linalg.solve(np.eye(len(phi)) + H / LAM, v.numpy())


def finite_difference_meta_gradient(task, theta, h=1e-4):
    def F_(th):
        return task.test_loss(torch.tensor(reference_solution(task, th))).item()
    return np.array([(F_(theta + h * e) - F_(theta - h * e)) / (2 * h)
                     for e in torch.eye(len(theta), dtype=torch.float64)])


@pytest.fixture(params=list(TASKS), scope="module")
def problem(request):
    task = TASKS[request.param]()
    theta = task.flat_parameters()
    return task, theta, reference_meta_gradient(task, theta)


def test_reference_agrees_with_finite_differences(problem):
    task, theta, ref = problem
    # h = 1e-4: truncation h^2 |F'''| ~ 1e-8, rounding eps/h ~ 1e-12, inner error gtol/mu/h
    # ~ 1e-9, so 1e-6 relative is a safe bound that still catches any wrong Jacobian.
    assert synthetic.relative_error(ref, finite_difference_meta_gradient(task, theta)) < 1e-6


@pytest.mark.parametrize("solver", [NewtonCG(30, cg_steps=40), ScipyLBFGS(1000, tol=1e-13)],
                         ids=["NewtonCG", "LBFGS"])
def test_imaml_converges_to_exact_meta_gradient(problem, solver):
    task, theta, ref = problem
    n = theta.numel()
    result = meta_gradient("imaml", task, theta, lam=LAM, solver=solver, cg_steps=2 * n)
    # Inner solution to ~1e-12 and CG to its float64 tolerance: error well under 1e-8.
    assert synthetic.relative_error(result.grad.numpy(), ref) < 1e-8
    assert result.stats.cg_converged


def test_exact_method_matches_dense_reference(problem):
    task, theta, ref = problem
    result = meta_gradient("exact", task, theta, lam=LAM)
    assert synthetic.relative_error(result.grad.numpy(), ref) < 1e-10


def test_module_task_views_and_flat_parameters():
    task = tanh_task()
    flat = task.flat_parameters()
    params = list(task.module.parameters())
    assert flat.numel() == sum(p.numel() for p in params)
    torch.testing.assert_close(flat[:12].view(4, 3), params[0].detach())
    flat[0] += 1.0  # a copy: the module is untouched
    assert params[0][0, 0].item() != flat[0].item()
    phi = task.flat_parameters()
    views = task.unflatten(phi)
    assert all(v.untyped_storage().data_ptr() == phi.untyped_storage().data_ptr()
               for v in views.values())  # zero-copy
    x, y = task.support
    torch.testing.assert_close(task.train_loss(phi), F.cross_entropy(task.module(x), y))
    with pytest.raises(ValueError, match="phi must be a 1-D tensor of 31"):
        task.train_loss(phi[:-1])
