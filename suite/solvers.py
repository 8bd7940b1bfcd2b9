"""Inner solvers: each minimizes G(phi) = L_train(phi) + lam/2 |phi - theta|^2 from phi_0 = theta.

One protocol: ``solver.solve(problem, unroll=0) -> InnerResult``. ``unroll = k > 0`` asks a
differentiable solver (``solver.differentiable``) to keep the autograd graph of its last k
steps back to ``problem.theta``; the others (Newton-CG, scipy's L-BFGS) refuse it.
Iterative differentiable solvers only define ``init(phi0) -> state``,
``step(problem, state, create_graph) -> state`` and ``output(state) -> phi``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch

from .linalg import conjugate_gradient, hvp_at


def check_int(name: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(name: str, value, low: float, high: float = float("inf"), *,
                low_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    ok = (value > low if low_open else value >= low) and value <= high and np.isfinite(value)
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value!r}")
    return value


class InnerProblem:
    """G(phi) = L_train(phi) + lam/2 |phi - theta|^2 for one task, counting the work done."""

    def __init__(self, task, theta: torch.Tensor, lam: float):
        self.task, self.theta, self.lam = task, theta, lam
        self.grad_evals = self.hvps = self.loss_evals = 0

    def value(self, phi: torch.Tensor) -> float:
        self.loss_evals += 1
        with torch.no_grad():
            d = phi - self.theta
            return float(self.task.train_loss(phi) + 0.5 * self.lam * torch.dot(d, d))

    def grad(self, phi: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """grad G(phi); with ``create_graph`` differentiable w.r.t. phi and theta."""
        self.grad_evals += 1
        theta = self.theta if create_graph else self.theta.detach()
        if not create_graph:
            phi = phi.detach().requires_grad_(True)
        with torch.enable_grad():
            g, = torch.autograd.grad(self.task.train_loss(phi), phi, create_graph=create_graph)
        g = g + self.lam * (phi - theta)
        return g if create_graph else g.detach()

    def grad_and_hvp(self, phi: torch.Tensor):
        """grad G(phi) and ``v -> (H_train + lam I) v`` (each call counted as one HVP)."""
        self.grad_evals += 1
        g_train, hvp = hvp_at(self.task.train_loss, phi)

        def matvec(v):
            self.hvps += 1
            return hvp(v) + self.lam * v

        return g_train + self.lam * (phi.detach() - self.theta.detach()), matvec


@dataclass
class InnerResult:
    phi: torch.Tensor
    steps: int
    converged: bool | None = None  # None: a fixed-step solver makes no claim
    message: str = ""
    cg_iterations: int = 0


class IterativeSolver:
    """Runs ``steps`` iterations; the last ``unroll`` of them keep the graph to theta."""

    differentiable = True
    steps: int

    def solve(self, problem: InnerProblem, unroll: int = 0) -> InnerResult:
        unroll = check_int("unroll", unroll)
        if unroll > self.steps:
            raise ValueError(f"unroll must be in [0, steps={self.steps}], got {unroll}")
        theta = problem.theta
        # Unrolling every step starts from theta itself, so that dphi_0/dtheta = I.
        state = self.init(theta if unroll == self.steps else theta.detach())
        for k in range(self.steps):
            graph = k >= self.steps - unroll
            if graph and k == self.steps - unroll and unroll < self.steps:
                state = tuple(s.detach().requires_grad_(True) for s in state)
            if graph:
                state = self.step(problem, state, True)
            else:
                with torch.no_grad():
                    state = self.step(problem, state, False)
        return InnerResult(self.output(state), self.steps)


class GD(IterativeSolver):
    """phi <- phi - lr grad G(phi), ``steps`` times."""

    def __init__(self, steps: int, lr: float):
        self.steps = check_int("steps", steps)
        self.lr = check_float("lr", lr, 0.0)

    def init(self, phi0):
        return (phi0,)

    def step(self, problem, state, create_graph):
        phi, = state
        return (phi - self.lr * problem.grad(phi, create_graph),)

    def output(self, state):
        return state[0]

    def __repr__(self):
        return f"GD(steps={self.steps}, lr={self.lr:g})"


class NesterovAGD(IterativeSolver):
    """Nesterov's accelerated gradient: phi' = y - lr grad G(y), y' = phi' + m (phi' - phi).

    For a quadratic with curvature in [mu, L], lr = 1/L and m = (sqrt(kappa)-1)/(sqrt(kappa)+1)
    converge at rate 1 - 1/sqrt(kappa) (see ``for_condition``).
    """

    def __init__(self, steps: int, lr: float, momentum: float = 0.9):
        self.steps = check_int("steps", steps)
        self.lr = check_float("lr", lr, 0.0)
        self.momentum = check_float("momentum", momentum, 0.0, 1.0, low_open=False)
        if self.momentum == 1.0:
            raise ValueError("momentum must be in [0, 1), got 1.0")

    @classmethod
    def for_condition(cls, steps: int, smoothness: float, kappa: float) -> "NesterovAGD":
        kappa = check_float("kappa", kappa, 1.0, low_open=False)
        root = kappa ** 0.5
        return cls(steps, 1.0 / check_float("smoothness", smoothness, 0.0),
                   (root - 1.0) / (root + 1.0))

    def init(self, phi0):
        return (phi0, phi0)

    def step(self, problem, state, create_graph):
        phi, y = state
        phi_next = y - self.lr * problem.grad(y, create_graph)
        return (phi_next, phi_next + self.momentum * (phi_next - phi))

    def output(self, state):
        return state[0]

    def __repr__(self):
        return f"NesterovAGD(steps={self.steps}, lr={self.lr:g}, momentum={self.momentum:g})"


def backtracking_step(problem: InnerProblem, phi, direction, grad, *, shrink: float = 0.5,
                      armijo: float = 1e-4, max_halvings: int = 40):
    """Armijo backtracking along ``direction``; returns (new phi, step size) or (phi, 0.0).

    The sufficient-decrease test allows a rounding slack of a few ulps of G, so that full
    Newton steps near the minimum (whose decrease is below rounding) are still taken.
    """
    slope = float(torch.dot(grad, direction))
    if not slope < 0:
        direction, slope = -grad, -float(torch.dot(grad, grad))
    f0 = problem.value(phi)
    slack = 8 * torch.finfo(phi.dtype).eps * abs(f0)
    t = 1.0
    for _ in range(max_halvings):
        candidate = phi + t * direction
        f = problem.value(candidate)
        if np.isfinite(f) and f <= f0 + armijo * t * slope + slack:
            return candidate, t
        t *= shrink
    return phi, 0.0


class NewtonCG:
    """Hessian-free Newton: a CG search direction from HVPs, then a backtracking line search.

    Stops after ``steps`` iterations, when |grad G| <= ``tol``, or when the line search
    finds no decrease (converged to rounding). Not differentiable (the line search is not).
    """

    differentiable = False

    def __init__(self, steps: int, cg_steps: int = 5, tol: float = 0.0):
        self.steps = check_int("steps", steps)
        self.cg_steps = check_int("cg_steps", cg_steps, minimum=1)
        self.tol = check_float("tol", tol, 0.0, low_open=False)

    def solve(self, problem: InnerProblem, unroll: int = 0) -> InnerResult:
        if unroll:
            raise ValueError("NewtonCG is not differentiable: it cannot be unrolled "
                             "(use it with 'imaml' or 'fomaml')")
        phi = problem.theta.detach().clone()
        cg_total = 0
        for k in range(self.steps):
            g, matvec = problem.grad_and_hvp(phi)
            if float(torch.linalg.vector_norm(g)) <= self.tol:
                return InnerResult(phi, k, True, "gradient norm <= tol", cg_total)
            cg = conjugate_gradient(matvec, -g, max_iter=self.cg_steps, on_breakdown="return")
            cg_total += cg.iterations
            direction = cg.x if cg.iterations > 0 else -g
            phi_next, t = backtracking_step(problem, phi, direction, g)
            if t == 0.0:
                return InnerResult(phi, k, True, "no further decrease (rounding level)", cg_total)
            phi = phi_next.detach()
        g = problem.grad(phi)
        done = float(torch.linalg.vector_norm(g)) <= self.tol
        return InnerResult(phi, self.steps, done if self.tol > 0 else None,
                           "step budget used", cg_total)

    def __repr__(self):
        return f"NewtonCG(steps={self.steps}, cg_steps={self.cg_steps})"


class ScipyLBFGS:
    """scipy.optimize's L-BFGS-B on float64 numpy copies: an external, non-differentiable
    optimizer. ``converged`` is scipy's own ``success`` flag; its message is kept."""

    differentiable = False

    def __init__(self, max_iter: int = 500, tol: float = 1e-10):
        self.max_iter = check_int("max_iter", max_iter, minimum=1)
        self.tol = check_float("tol", tol, 0.0, low_open=False)

    @property
    def steps(self) -> int:
        return self.max_iter

    def solve(self, problem: InnerProblem, unroll: int = 0) -> InnerResult:
        if unroll:
            raise ValueError("ScipyLBFGS is not differentiable: it cannot be unrolled "
                             "(use it with 'imaml' or 'fomaml')")
        theta = problem.theta.detach()

        def fun(x):
            phi = torch.as_tensor(x, dtype=theta.dtype, device=theta.device)
            value = problem.value(phi)
            return value, problem.grad(phi).cpu().double().numpy()

        res = scipy.optimize.minimize(
            fun, theta.cpu().double().numpy(), jac=True, method="L-BFGS-B",
            options={"maxiter": self.max_iter, "gtol": self.tol, "ftol": 0.0, "maxcor": 20})
        phi = torch.as_tensor(res.x, dtype=theta.dtype, device=theta.device)
        return InnerResult(phi, int(res.nit), bool(res.success), str(res.message))

    def __repr__(self):
        return f"ScipyLBFGS(max_iter={self.max_iter}, tol={self.tol:g})"


__all__ = ["InnerProblem", "InnerResult", "GD", "NesterovAGD", "NewtonCG", "ScipyLBFGS",
           "backtracking_step"]
