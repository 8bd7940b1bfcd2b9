"""A differentiable face for every method: ``phi = adapt(method, task, theta, ...)`` is the
adapted parameters, and backpropagating any loss of ``phi`` gives ``theta`` (and ``lam``, if
it requires grad) that method's meta-gradient, so a training loop is
``task.test_loss(phi).backward(); opt.step()``.

Invariant: for a loss f, the gradient reaching theta through ``adapt`` equals
``meta_gradient(method, task', theta, ...)`` where task' has the test loss
<df/dphi, phi>: the method's vector-Jacobian product with df/dphi (for f = L_test, exactly the
method's meta-gradient). The backward pass reruns the method on that linear test loss, so one
forward and backward costs one inner loop more than ``meta_gradient``.
"""
from __future__ import annotations

import torch

from suite.core.methods import meta_gradient
from suite.core.registry import get_method
from suite.core.solvers import InnerProblem, for_tasks, run_solver


class _LinearTest:
    """``task`` with its test loss replaced by <v, phi> (everything else delegated)."""

    def __init__(self, task, v: torch.Tensor):
        self._task, self._v = task, v

    def test_loss(self, phi):
        return torch.dot(self._v, phi)

    def __getattr__(self, name):
        return getattr(self._task, name)


class _Adapt(torch.autograd.Function):
    @staticmethod
    def forward(ctx, theta, lam_leaf, call):
        ctx.call = call
        return call.phi(theta.detach())

    @staticmethod
    def backward(ctx, v):
        grad, lam_grad = ctx.call.vjp(v)
        return grad, lam_grad, None


class _Call:
    def __init__(self, spec, task, lam, solver, options, lam_wanted, on_backward):
        self.spec, self.task, self.lam, self.solver = spec, task, lam, solver
        self.options, self.lam_wanted, self.on_backward = options, lam_wanted, on_backward

    def _lam(self):
        lam = self.lam
        return lam.detach() if torch.is_tensor(lam) else lam

    def phi(self, theta):
        self.theta = theta
        if self.spec.needs_solver:
            return run_solver(self.solver, InnerProblem(self.task, theta, self._lam())).phi.detach()
        return meta_gradient(self.spec, self.task, theta, lam=self._lam(), solver=self.solver,
                             **self.options).phi

    def vjp(self, v):
        r = meta_gradient(self.spec, _LinearTest(self.task, v.detach()), self.theta,
                          lam=self._lam(), solver=self.solver, lam_grad=self.lam_wanted,
                          **self.options)
        if self.on_backward is not None:
            self.on_backward(r)
        if not self.lam_wanted:
            return r.grad, None
        lam = self.lam
        return r.grad, torch.as_tensor(r.lam_grad, dtype=lam.dtype, device=lam.device).reshape(
            lam.shape)


def adapt(method, task, theta: torch.Tensor, *, lam, solver=None, on_backward=None,
          **options) -> torch.Tensor:
    """The adapted parameters phi of ``task`` from ``theta``, differentiable by ``method``'s
    meta-gradient (see the module docstring). ``lam``: a number or a tensor (of theta's shape,
    or 0-dim, or computed from parameters that require grad: they receive d/dlam through
    it). A solver that draws per task (Adam's mini-batches) has its draws fixed once, so the
    forward and the backward pass adapt alike. ``on_backward(result)`` receives the
    ``MetaGradient`` the backward pass computed (its ``stats``: CG residual, stationarity)."""
    spec = get_method(method)
    wants = torch.is_tensor(lam) and lam.requires_grad
    if wants and not spec.lam_grad:
        raise ValueError(f"lam requires grad, but method {spec.name!r} has no gradient in lam")
    if spec.needs_solver and solver is not None:
        solver = for_tasks(solver, [task])[0]
    call = _Call(spec, task, lam, solver, options, wants, on_backward)
    lam_leaf = lam if wants else torch.zeros((), dtype=theta.dtype, device=theta.device)
    return _Adapt.apply(theta, lam_leaf, call)
