"""Inner solvers: each minimizes G(phi) = L_train(phi) + lam/2 |phi - theta|^2 from phi_0 = theta.

One protocol: ``solver.solve(problem, unroll=0) -> InnerResult``. ``unroll = k > 0`` asks a
differentiable solver (``solver.differentiable``) to keep the autograd graph of its last k
steps back to ``problem.theta``; the others (Newton-CG, scipy's L-BFGS) refuse it.
Iterative differentiable solvers only define ``init(phi0) -> state``,
``step(problem, state, create_graph) -> state`` and ``output(state) -> phi``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch

from suite.core.validation import check_float, check_int, check_scalar
from suite.core.linalg import conjugate_gradient, hvp_at
from suite.core.registry import SOLVERS, Option, SolverSpec, register_solver


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


def _hvp(problem: InnerProblem, product_at, point, v):
    """H_train(point) v by ``product_at`` (``suite.core.linalg.HVP_PRODUCTS``), counted as one
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
        hv = _hvp(problem, product_at, phi, v)
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
        return (v - self.lr * _hvp(problem, product_at, phi, v),), zero, zero

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
        ha = _hvp(problem, product_at, y, a)
        return ((-self.momentum * v_y, a - self.lr * (ha + lam * a)), self.lr * lam * a,
                -self.lr * (y - theta) * a)

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
