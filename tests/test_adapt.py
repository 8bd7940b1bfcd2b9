"""``suite.core.adapt``: phi whose backward gives each registered method's meta-gradient (float64).

adapt's backward reruns the method on the linear test loss <dL/dphi, phi>, whose gradient
at phi is dL/dphi exactly; the rerun repeats the same float64 operations in the same order,
so the two paths differ only by the rounding of how autograd sums dL/dphi: 1e-12 relative.
"""
import pytest
import torch

import suite
from suite import adapt
from suite import meta_gradient
from suite.core.solvers import GD

TOL = 1e-12


def _options(spec, solver):
    options = dict(spec.converged_options)
    for o in spec.options:
        if o.axis == "truncate":
            options[o.name] = max(1, solver.steps // 2)
    return options


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("method", list(suite.METHODS))
@pytest.mark.parametrize("which", ["quad", "tanh"])
def test_adapt_backward_equals_meta_gradient(method, which, quad, tanh_task):
    if which == "quad":
        _, task, _, theta = quad
        lam, solver = 1.0, GD(60, 0.1)
    else:
        task, theta = tanh_task
        lam, solver = 2.0, GD(20, 0.2)
    spec = suite.METHODS[method]
    options = _options(spec, solver)
    want = meta_gradient(method, task, theta, lam=lam, solver=solver, **options)
    leaf = theta.clone().requires_grad_(True)
    phi = adapt(method, task, leaf, lam=lam, solver=solver, **options)
    torch.testing.assert_close(phi, want.phi, rtol=0, atol=0)   # the same inner loop
    task.test_loss(phi).backward()
    assert _rel(leaf.grad, want.grad) < TOL


@pytest.mark.parametrize("method", [m for m, s in suite.METHODS.items() if s.lam_grad])
def test_adapt_gives_lam_its_gradient(method, tanh_task):
    task, theta = tanh_task
    solver = GD(20, 0.2)
    spec = suite.METHODS[method]
    options = _options(spec, solver)
    lam = torch.full_like(theta, 2.0)
    lam[:10] = 3.0
    want = meta_gradient(method, task, theta, lam=lam, solver=solver, lam_grad=True, **options)
    lam_leaf, leaf = lam.clone().requires_grad_(True), theta.clone().requires_grad_(True)
    task.test_loss(adapt(method, task, leaf, lam=lam_leaf, solver=solver, **options)).backward()
    assert _rel(leaf.grad, want.grad) < TOL
    assert _rel(lam_leaf.grad, want.lam_grad) < TOL
    # a 0-dim lam gets the sum over parameters, as meta_gradient's float
    scalar = torch.tensor(2.0, dtype=theta.dtype, requires_grad=True)
    want = meta_gradient(method, task, theta, lam=2.0, solver=solver, lam_grad=True, **options)
    task.test_loss(adapt(method, task, theta.clone().requires_grad_(True), lam=scalar,
                         solver=solver, **options)).backward()
    assert abs(float(scalar.grad) - want.lam_grad) <= TOL * abs(want.lam_grad)


def test_adapt_in_a_training_step(tanh_task):
    """The loop of the docstring: loss.backward(); opt.step() moves theta by the meta-gradient."""
    task, theta = tanh_task
    leaf = theta.clone().requires_grad_(True)
    opt = torch.optim.SGD([leaf], lr=0.1)
    want = meta_gradient("imaml", task, theta, lam=2.0, solver=GD(20, 0.2), cg_steps=10)
    task.test_loss(adapt("imaml", task, leaf, lam=2.0, solver=GD(20, 0.2), cg_steps=10)).backward()
    opt.step()
    torch.testing.assert_close(leaf.detach(), theta - 0.1 * want.grad, rtol=0, atol=1e-14)


def test_adapt_refusals(tanh_task):
    task, theta = tanh_task
    lam = torch.tensor(1.0, dtype=theta.dtype, requires_grad=True)
    with pytest.raises(ValueError, match="no gradient in lam"):
        adapt("fomaml", task, theta.clone().requires_grad_(True), lam=lam, solver=GD(3, 0.1))
    with pytest.raises(ValueError, match="method must be one of"):
        adapt("nope", task, theta, lam=1.0, solver=GD(3, 0.1))
