"""MAML's own meta-gradient in less memory: gradient checkpointing through the inner loop and
mixed-mode differentiation. Both equal backprop through the unrolled steps to rounding.

Invariant: for every differentiable solver, ``backprop(..., segment=s)`` and ``mixed(...)``
return d/dtheta L_test(Alg_K(theta)) (and d/dlam) as ``suite.meta_gradient("maml", ...)``
does, through the last ``unroll`` steps (all of them: MAML; fewer: truncated backprop).

- Checkpointing (Chen et al. 2016; ``torch_maml``'s GradientCheckpointMAML): the forward pass
  keeps the solver's state every ``segment`` steps and no graph; the backward pass recomputes
  one segment at a time with its graph and backpropagates through it. Memory: K/s states plus
  s steps' graphs (O(sqrt K) at s = sqrt K), for one more forward pass per step.
- Mixed mode (Kemaev et al. 2025, MixFlow-MG): the forward pass keeps every state (parameter
  vectors, no graph); the backward pass takes each step's vector-Jacobian product with the
  solver's ``step_vjp``, which writes it through one Hessian-vector product at the step's point
  (the step's Jacobian is symmetric for GD: I - lr (H + lam)), by forward-over-reverse or by
  one step's reverse graph (``suite.core.hvp.HVP_PRODUCTS``). Memory: K + 1 states and one
  product's graph.
"""
from __future__ import annotations

import torch

from suite.core.solvers import InnerProblem, run_solver


def _zeros_if_none(grads, like):
    return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, like))


class _Backward:
    """The leaves and the running cotangents of one low-memory backward pass."""

    def __init__(self, task, theta, lam, lam_grad: bool):
        self.theta = theta.detach().requires_grad_(True)
        # a scalar lam as the constant vector, so that d/dlam is summed as for a vector
        self.lam = (torch.full_like(theta, lam) if not torch.is_tensor(lam) else lam.clone()
                    ).requires_grad_(True) if lam_grad else lam
        self.problem = InnerProblem(task, self.theta, self.lam)
        self.leaves = (self.theta, self.lam) if lam_grad else (self.theta,)
        self.g_theta = torch.zeros_like(theta)
        self.g_lam = torch.zeros_like(theta) if lam_grad else None

    def through(self, start: tuple, run, cotangent=None):
        """Backpropagate ``cotangent`` (None: ``run`` returns the loss) through
        ``run(state) -> state or loss`` from ``start``; returns the cotangent of ``start``."""
        state = tuple(s.detach().requires_grad_(True) for s in start)
        with torch.enable_grad():
            out = run(state)
            outs = (out,) if cotangent is None else tuple(out)
            inputs = state + self.leaves
            grads = torch.autograd.grad(outs, inputs, grad_outputs=cotangent,
                                        allow_unused=True)
        grads = _zeros_if_none(grads, inputs)
        self.add(grads[len(state)], grads[len(state) + 1] if self.g_lam is not None else None)
        return grads[:len(state)]

    def add(self, g_theta, g_lam=None):
        self.g_theta = self.g_theta + g_theta
        if self.g_lam is not None and g_lam is not None:
            self.g_lam = self.g_lam + g_lam


def _forward(task, theta, lam, solver, keep):
    """Run the solver without a graph, keeping the states whose index ``keep(k)`` accepts,
    and the last one (k = steps)."""
    kept = {}
    problem = InnerProblem(task, theta.detach(), lam.detach() if torch.is_tensor(lam) else lam)

    def record(k, state):
        if k == solver.steps or keep(k):
            kept[k] = state
    result = run_solver(solver, problem, record=record)
    return problem, result, kept


def _finish_and_loss(bw: _Backward, task, solver, state_K, phi_holder):
    """The cotangent of the last state, through ``finish`` and the test loss."""
    def run(state):
        phi = solver.output(solver.finish(bw.problem, state, True))
        phi_holder.append(phi.detach())
        return task.test_loss(phi)
    return bw.through(state_K, run)


def _start(bw: _Backward, solver, cotangent, unroll: int):
    """Full unroll: the first state is init(theta) itself, so theta gets its cotangent."""
    if unroll == solver.steps:
        with torch.enable_grad():
            state = solver.init(bw.theta)
            g, = torch.autograd.grad(state, bw.theta, grad_outputs=cotangent)
        bw.add(g)


def backprop(task, theta, lam, solver, *, unroll: int, segment: int, lam_grad: bool):
    """Checkpointed backprop through the last ``unroll`` steps, ``segment`` steps at a time:
    (grad, lam grad or None, phi, forward problem, backward problem)."""
    K = solver.steps
    first = K - unroll
    fwd, result, kept = _forward(task, theta, lam, solver,
                                 lambda k: k >= first and (k - first) % segment == 0)
    bw, phis = _Backward(task, theta, lam, lam_grad), []
    cot = _finish_and_loss(bw, task, solver, kept.pop(K), phis)
    for k0 in sorted(kept, reverse=True):
        k1 = min(k0 + segment, K)

        def run(state, n=k1 - k0):
            for _ in range(n):
                state = solver.step(bw.problem, state, True)
            return state
        cot = bw.through(kept.pop(k0), run, cot)
    _start(bw, solver, cot, unroll)
    return bw, fwd, result, phis[0]


def mixed(task, theta, lam, solver, *, unroll: int, product_at, lam_grad: bool):
    """Mixed-mode backprop through the last ``unroll`` steps: every state kept, each step's
    VJP by ``solver.step_vjp`` with Hessian-vector products from ``product_at``."""
    if not callable(getattr(solver, "step_vjp", None)):
        raise ValueError(f"mixed mode needs the solver's step_vjp (GD, NesterovAGD and "
                         f"PullBackGD have it); {solver!r} has not: use 'maml-checkpoint'")
    K = solver.steps
    fwd, result, kept = _forward(task, theta, lam, solver, lambda k: k >= K - unroll)
    bw, phis = _Backward(task, theta, lam, lam_grad), []
    cot = _finish_and_loss(bw, task, solver, kept.pop(K), phis)
    vjp_problem = InnerProblem(task, theta.detach(), lam.detach() if torch.is_tensor(lam)
                               else lam)
    for k in range(K - 1, K - unroll - 1, -1):
        cot, g_theta, g_lam = solver.step_vjp(vjp_problem, kept.pop(k), cot, product_at)
        bw.add(g_theta, g_lam)
    _start(bw, solver, cot, unroll)
    bw.problem.grad_evals += vjp_problem.grad_evals
    bw.problem.hvps += vjp_problem.hvps
    return bw, fwd, result, phis[0]
