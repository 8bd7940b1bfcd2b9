"""The inner problem G(phi) = L_train(phi) + lam/2 |phi - theta|^2 of one task, with the work
done on it counted, what a solver returns, and ``run_solver``, through which every caller runs
a solver (so that divergence is refused for every solver alike). The solvers are in
``suite.core.solvers``."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from suite.core.hvp import hvp_at
from suite.core.validation import check_scalar


class InnerProblem:
    """G(phi) = L_train(phi) + lam/2 |phi - theta|^2 for one task, counting the work done.

    ``lam`` is a number or a tensor of theta's shape (the prox 1/2 sum_i lam_i (phi_i -
    theta_i)^2); one that requires grad makes the unrolled steps differentiable in it.

    ``grad_norm_at_theta``: |grad L_train| at the first full-batch gradient evaluated; every
    solver starts at theta, where grad L_train = grad G, so it is |grad G(theta)|, the scale
    of inner stationarity.
    """

    def __init__(self, task, theta: torch.Tensor, lam):
        self.task, self.theta, self.lam = task, theta, lam
        self.grad_evals = self.hvps = self.loss_evals = 0
        self.grad_norm_at_theta: float | None = None
        self.last_grad_norm: float | None = None

    def value(self, phi: torch.Tensor) -> float:
        self.loss_evals += 1
        with torch.no_grad():
            d = phi - self.theta
            return float(self.task.train_loss(phi) + 0.5 * torch.dot(self.lam * d, d))

    def train_grad(self, phi: torch.Tensor, create_graph: bool = False,
                   index=None) -> torch.Tensor:
        """grad L_train(phi) (on the training rows ``index`` only, if given); with
        ``create_graph`` differentiable w.r.t. phi."""
        self.grad_evals += 1
        task = self.task if index is None else self.task.restricted(index)
        if not create_graph:
            phi = phi.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = check_scalar("task.train_loss(phi)", task.train_loss(phi))
            g, = torch.autograd.grad(loss, phi, create_graph=create_graph)
        self._note(g, index)   # at theta, grad L_train = grad G
        return g if create_graph else g.detach()

    def grad(self, phi: torch.Tensor, create_graph: bool = False, index=None) -> torch.Tensor:
        """grad G(phi); with ``create_graph`` differentiable w.r.t. phi and theta."""
        theta = self.theta if create_graph else self.theta.detach()
        return self.train_grad(phi, create_graph, index) + self.lam * (phi - theta)

    def grad_and_hvp(self, phi: torch.Tensor):
        """grad G(phi) and ``v -> (H_train + lam I) v`` (each call counted as one HVP)."""
        self.grad_evals += 1
        g_train, hvp = hvp_at(self.task.train_loss, phi)

        def matvec(v):
            self.hvps += 1
            return hvp(v) + self.lam * v

        self._note(g_train, None)
        return g_train + self.lam * (phi.detach() - self.theta.detach()), matvec

    def _note(self, g, index):
        if index is None:
            self.last_grad_norm = float(torch.linalg.vector_norm(g.detach()))
            if self.grad_norm_at_theta is None:
                self.grad_norm_at_theta = self.last_grad_norm


def counted_hvp(problem: InnerProblem, product_at, point, v):
    """H_train(point) v by ``product_at`` (``suite.core.hvp.HVP_PRODUCTS``), counted as one
    gradient (the product's graph or tangent) and one HVP."""
    problem.grad_evals += 1
    problem.hvps += 1
    return product_at(problem.task.train_loss, point.detach())[1](v)


class InnerDivergence(ArithmeticError):
    """An inner solver diverged: its output is not finite, or the gradient grew by more than
    ``DIVERGENCE_GROWTH`` from its value at theta. Its result is never used."""


DIVERGENCE_GROWTH = 1e4


def run_solver(solver, problem: InnerProblem, unroll: int = 0, **options) -> "InnerResult":
    """``solver.solve(problem, unroll, **options)``, refused (``InnerDivergence``) when it
    diverged.

    Every caller of an inner solver goes through here, so divergence is detected for every
    solver alike: a non-finite output, or a full-batch gradient that ends more than
    ``DIVERGENCE_GROWTH`` times larger than at theta (GD with lr * curvature > 2 grows it
    geometrically; a converging or merely slow solver shrinks it).
    """
    result = solver.solve(problem, unroll=unroll, **options)
    first, last = problem.grad_norm_at_theta, problem.last_grad_norm
    finite = bool(torch.isfinite(result.phi).all())
    if not finite or (first and last is not None and last > DIVERGENCE_GROWTH * first):
        what = ("its output has NaN or Inf entries" if not finite else
                f"|grad| grew from {first:.3g} at theta to {last:.3g}")
        advice = (f"lower lr (now {solver.lr:g}): GD on G is stable only for "
                  "lr * (largest curvature of G) < 2" if hasattr(solver, "lr") else
                  "check the task's losses")
        raise InnerDivergence(f"the inner solver {solver!r} diverged: {what}; {advice}")
    return result


@dataclass
class InnerResult:
    phi: torch.Tensor
    steps: int
    converged: bool | None = None  # None: a fixed-step solver makes no claim
    message: str = ""
    cg_iterations: int = 0
