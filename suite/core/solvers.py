"""Inner solvers: each minimizes G(phi) = L_train(phi) + lam/2 |phi - theta|^2 from phi_0 = theta.

One protocol: ``solver.solve(problem, unroll=0) -> InnerResult``. ``unroll = k > 0`` asks a
differentiable solver (``solver.differentiable``) to keep the autograd graph of its last k
steps back to ``problem.theta``; the others (Newton-CG, scipy's L-BFGS) refuse it.
Iterative differentiable solvers only define ``init(phi0) -> state``,
``step(problem, state, create_graph) -> state`` and ``output(state) -> phi``.

The problem and ``run_solver`` are in ``suite.core.inner_problem``, Newton-CG and L-BFGS in
``suite.core.newton``; every solver is registered here (``SOLVERS``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from suite.core.validation import check_float, check_int
from suite.core.inner_problem import (InnerDivergence, InnerProblem, InnerResult, counted_hvp,
                                      run_solver)
from suite.core.newton import NewtonCG, ScipyLBFGS, backtracking_step
from suite.core.registry import SOLVERS, Option, SolverSpec, register_solver


class IterativeSolver:
    """Runs ``steps`` iterations, then ``finish`` (by default nothing); the last ``unroll``
    iterations and ``finish`` keep the graph to theta."""

    differentiable = True
    steps: int

    def solve(self, problem: InnerProblem, unroll: int = 0, record=None) -> InnerResult:
        """``record(k, state)``, if given, sees the state before each step k and the last
        state (k = steps) before ``finish`` (the low-memory MAMLs keep some of them)."""
        unroll = check_int("unroll", unroll)
        if unroll > self.steps:
            raise ValueError(f"unroll must be in [0, steps={self.steps}], got {unroll}")
        theta = problem.theta
        # Unrolling every step starts from theta itself, so that dphi_0/dtheta = I.
        state = self.init(theta if unroll == self.steps else theta.detach())
        for k in range(self.steps):
            if record is not None:
                record(k, state)
            graph = k >= self.steps - unroll
            if graph and k == self.steps - unroll and unroll < self.steps:
                state = tuple(s.detach().requires_grad_(True) for s in state)
            if graph:
                state = self.step(problem, state, True)
            else:
                with torch.no_grad():
                    state = self.step(problem, state, False)
        if record is not None:
            record(self.steps, state)
        with torch.enable_grad() if unroll else torch.no_grad():
            state = self.finish(problem, state, bool(unroll))
        return InnerResult(self.output(state), self.steps)

    def finish(self, problem, state, create_graph):
        return state


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

    def step_vjp(self, problem, state, cotangent, product_at):
        """(state cotangent, theta's, lam's) of one step: phi' = phi - lr (grad L(phi) +
        lam (phi - theta)) has the symmetric Jacobian I - lr (H + lam), so the state's is
        v - lr (H v + lam v), H v by ``product_at`` at phi."""
        (phi,), (v,) = state, cotangent
        hv = counted_hvp(problem, product_at, phi, v)
        lam, theta = problem.lam, problem.theta.detach()
        return (v - self.lr * (hv + lam * v),), self.lr * lam * v, -self.lr * (phi - theta) * v

    def __repr__(self):
        return f"GD(steps={self.steps}, lr={self.lr:g})"


class PullBackGD(GD):
    """The official iMAML code's inner loop: ``steps`` of GD on L_train alone (no proximal
    term), then one step on lam/2 |phi - theta|^2 alone, phi <- phi - lr lam (phi - theta).

    It does not minimise G; the suite offers it to compare with the published code.
    """

    def step(self, problem, state, create_graph):
        phi, = state
        return (phi - self.lr * problem.train_grad(phi, create_graph),)

    def finish(self, problem, state, create_graph):
        phi, = state
        theta = problem.theta if create_graph else problem.theta.detach()
        return (phi - self.lr * problem.lam * (phi - theta),)

    def step_vjp(self, problem, state, cotangent, product_at):
        """phi' = phi - lr grad L_train(phi): Jacobian I - lr H; theta and lam not used."""
        (phi,), (v,) = state, cotangent
        zero = torch.zeros_like(v)
        return (v - self.lr * counted_hvp(problem, product_at, phi, v),), zero, zero

    def __repr__(self):
        return f"PullBackGD(steps={self.steps}, lr={self.lr:g})"


class NesterovAGD(IterativeSolver):
    """Nesterov's accelerated gradient: phi' = y - lr grad G(y), y' = phi' + m (phi' - phi).

    For a quadratic with curvature in [mu, L], lr = 1/L and m = (sqrt(kappa)-1)/(sqrt(kappa)+1)
    converge at rate 1 - 1/sqrt(kappa) (see ``for_condition``).
    """

    def __init__(self, steps: int, lr: float, momentum: float = 0.9):
        self.steps = check_int("steps", steps)
        self.lr = check_float("lr", lr, 0.0)
        self.momentum = check_float("momentum", momentum, 0.0, 1.0, low_open=False,
                                    high_open=True)

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

    def step_vjp(self, problem, state, cotangent, product_at):
        """phi' = y - lr grad G(y), y' = (1 + m) phi' - m phi: with a = v_phi' + (1 + m) v_y',
        the cotangents are v_phi = -m v_y', v_y = a - lr (H(y) a + lam a); theta's lr lam a."""
        (_, y), (v_phi, v_y) = state, cotangent
        a = v_phi + (1 + self.momentum) * v_y
        lam, theta = problem.lam, problem.theta.detach()
        ha = counted_hvp(problem, product_at, y, a)
        return ((-self.momentum * v_y, a - self.lr * (ha + lam * a)), self.lr * lam * a,
                -self.lr * (y - theta) * a)

    def __repr__(self):
        return f"NesterovAGD(steps={self.steps}, lr={self.lr:g}, momentum={self.momentum:g})"


class Adam:
    """Adam on G from theta, on mini-batches of the training data (Reptile's inner loop:
    Nichol et al. 2018 use beta1 = 0). Fresh moments for every task; mini-batches of
    ``batch_size`` rows run through shuffled passes over the training rows, drawn from
    ``rng`` (a ``numpy.random.Generator``; the caller checkpoints its state). Without
    ``batch_size`` every step uses all rows. Not differentiable.
    """

    differentiable = False

    def __init__(self, steps: int, lr: float, *, beta1: float = 0.0, beta2: float = 0.999,
                 eps: float = 1e-8, batch_size: int | None = None, rng=None):
        self.steps = check_int("steps", steps)
        self.lr = check_float("lr", lr, 0.0)
        self.beta1 = check_float("beta1", beta1, 0.0, 1.0, low_open=False, high_open=True)
        self.beta2 = check_float("beta2", beta2, 0.0, 1.0, low_open=False, high_open=True)
        self.eps = check_float("eps", eps, 0.0)
        self.batch_size = None if batch_size is None else check_int("batch_size", batch_size, 1)
        self.rng = rng if rng is not None else np.random.default_rng(0)

    def batches(self, n: int):
        """``steps`` index arrays of ``batch_size`` rows, passes over a shuffled order."""
        if self.batch_size is None:
            return [None] * self.steps
        order = np.concatenate([self.rng.permutation(n) for _ in range(
            -(-self.steps * self.batch_size // n))])
        return [order[i * self.batch_size:(i + 1) * self.batch_size].tolist()
                for i in range(self.steps)]

    def for_tasks(self, sizes: list[int]) -> list["Adam"]:
        """One solver per task, each with its mini-batches drawn now, in task order, from
        ``rng``: every process of a data-parallel run draws them all and keeps its share, so
        the shared stream stays in step."""
        out = []
        for n in sizes:
            fixed = copy.copy(self)
            fixed.fixed_batches = self.batches(n)
            out.append(fixed)
        return out

    fixed_batches = None

    def solve(self, problem: InnerProblem, unroll: int = 0, batches=None) -> InnerResult:
        """``batches``: the mini-batches' row indices, drawn by ``batches(n)`` (default: those
        fixed by ``for_tasks``, else drawn now from ``rng``)."""
        batches = self.fixed_batches if batches is None else batches
        if unroll:
            raise ValueError("Adam is not differentiable here: it cannot be unrolled "
                             "(use it with 'fomaml' or Reptile)")
        n = getattr(problem.task, "train_size", None)
        if self.batch_size is not None and n is None:
            raise TypeError(f"Adam(batch_size={self.batch_size}) needs a task with train_size "
                            "and restricted(index) (ModuleTask has them)")
        phi = problem.theta.detach().clone()
        m, v = torch.zeros_like(phi), torch.zeros_like(phi)
        for t, index in enumerate(self.batches(n) if batches is None else batches, start=1):
            g = problem.grad(phi, index=index)
            m = self.beta1 * m + (1 - self.beta1) * g
            v = self.beta2 * v + (1 - self.beta2) * g * g
            m_hat, v_hat = m / (1 - self.beta1 ** t), v / (1 - self.beta2 ** t)
            phi = phi - self.lr * m_hat / (v_hat.sqrt() + self.eps)
        return InnerResult(phi, self.steps)

    def __repr__(self):
        return (f"Adam(steps={self.steps}, lr={self.lr:g}, beta1={self.beta1:g}, "
                f"batch_size={self.batch_size})")


def for_tasks(solver, tasks) -> list:
    """One solver per task: the solver itself for every task, or, for a solver that draws
    per task (``for_tasks``, Adam's mini-batches), one with its draws fixed in task order."""
    if callable(getattr(solver, "for_tasks", None)):
        return solver.for_tasks([getattr(t, "train_size", None) for t in tasks])
    return [solver] * len(tasks)


def _agd(steps, lr, momentum=0.9, kappa=None):
    if kappa is not None:   # for_condition's momentum at this lr itself (not 1 / (1 / lr))
        root = check_float("kappa", kappa, 1.0, low_open=False) ** 0.5
        momentum = (root - 1.0) / (root + 1.0)
    return NesterovAGD(steps, lr, momentum)


for _spec in (
    SolverSpec("gd", GD, True, doc=GD.__doc__),
    SolverSpec("nesterov-agd", _agd, True, doc=NesterovAGD.__doc__, options=(
        Option("momentum", "float", 0.9, "m", low=0.0, high=1.0),
        Option("kappa", "float", None, "condition number: sets m = (sqrt(kappa) - 1) / "
               "(sqrt(kappa) + 1) (and lr = 1/L)", low=1.0, none_ok=True))),
    SolverSpec("pullback-gd", PullBackGD, True, doc=PullBackGD.__doc__),
    SolverSpec("newton-cg", NewtonCG, False, takes_lr=False, doc=NewtonCG.__doc__, options=(
        Option("cg_steps", "int", 5, "CG iterations per Newton step", low=1),
        Option("tol", "float", 0.0, "stop when |grad G| <= tol", low=0.0))),
    SolverSpec("adam", Adam, False, doc=Adam.__doc__, options=(
        Option("beta1", "float", 0.0, low=0.0, high=1.0),
        Option("beta2", "float", 0.999, low=0.0, high=1.0),
        Option("batch_size", "int", None, "mini-batch rows (None: all)", low=1, none_ok=True),
        Option("rng", "any", None, "a numpy Generator drawing the mini-batches",
               none_ok=True))),
    SolverSpec("lbfgs", lambda steps, tol=1e-10: ScipyLBFGS(max_iter=steps, tol=tol), False,
               takes_lr=False, doc=ScipyLBFGS.__doc__, options=(
                   Option("tol", "float", 1e-10, "scipy's gtol", low=0.0),)),
):
    register_solver(_spec)


__all__ = ["SOLVERS", "for_tasks", "InnerProblem", "InnerResult", "InnerDivergence", "run_solver",
           "GD", "PullBackGD",
           "NesterovAGD", "NewtonCG", "Adam", "ScipyLBFGS", "backtracking_step"]
