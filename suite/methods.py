"""Meta-gradient methods: one function each, one signature, one entry point.

Every method takes ``(task, theta, *, lam, solver, **options)`` and returns a
``MetaGradient`` whose ``grad`` estimates d/dtheta L_test(Alg(theta)), where Alg runs
``solver`` on G(phi) = L_train(phi) + lam/2 |phi - theta|^2 from phi_0 = theta.

Work is counted in the paper's unit, gradients of the training loss (``grad_evals``), plus
Hessian-vector products (``hvps``): a CG iteration costs one, and so does backpropagating
through one unrolled solver step (a vector-Jacobian product of a gradient step). Each
method also takes one gradient of the test loss, not counted.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch

from .linalg import conjugate_gradient, hvp_at
from .solvers import InnerProblem, backtracking_step, check_float, check_int
from .tasks import check_finite, num_parameters

EXACT_MAX_DIM = 4096
"""Largest parameter count for ``"exact"`` (it forms the dense Hessian: d^2 entries)."""


@dataclass
class Stats:
    inner_steps: int = 0
    grad_evals: int = 0
    hvps: int = 0
    loss_evals: int = 0
    cg_iterations: int = 0          # of the meta-gradient's CG solve (iMAML)
    inner_cg_iterations: int = 0    # of the inner solver's own CG (Newton-CG)
    cg_residual: float = math.nan   # final relative residual |b - A g| / |b| (iMAML)
    cg_converged: bool | None = None
    cg_breakdown: bool = False      # only with on_breakdown="return"; otherwise it raises
    inner_converged: bool | None = None
    inner_message: str = ""
    wall_time_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class MetaGradient:
    grad: torch.Tensor
    stats: Stats = field(default_factory=Stats)
    phi: torch.Tensor | None = None   # the adapted parameters (None for a meta-batch)


def _test_grad(task, phi: torch.Tensor) -> torch.Tensor:
    phi = phi.detach().requires_grad_(True)
    with torch.enable_grad():
        g, = torch.autograd.grad(task.test_loss(phi), phi)
    return g


def _inner(problem: InnerProblem, solver, stats: Stats, unroll: int = 0):
    result = solver.solve(problem, unroll=unroll)
    stats.inner_steps = result.steps
    stats.inner_converged = result.converged
    stats.inner_message = result.message
    stats.inner_cg_iterations = result.cg_iterations
    return result.phi


def _require_differentiable(solver, method: str) -> None:
    if not getattr(solver, "differentiable", False):
        raise ValueError(f"method {method!r} backpropagates through the solver's steps, but "
                         f"{solver!r} is not differentiable; use GD or NesterovAGD, or the "
                         "'imaml' / 'fomaml' methods")


def _unrolled(task, theta, lam, solver, stats: Stats, unroll: int) -> torch.Tensor:
    theta_leaf = theta.detach().requires_grad_(True)
    problem = InnerProblem(task, theta_leaf, lam)
    with torch.enable_grad():
        phi = _inner(problem, solver, stats, unroll=unroll)
        loss = task.test_loss(phi)
        grad, = torch.autograd.grad(loss, theta_leaf, allow_unused=True)
    stats.grad_evals, stats.loss_evals = problem.grad_evals, problem.loss_evals
    stats.hvps = unroll
    return torch.zeros_like(theta) if grad is None else grad


def maml(task, theta, *, lam, solver):
    """Backpropagation through every step of the (differentiable) solver."""
    _require_differentiable(solver, "maml")
    stats = Stats()
    return MetaGradient(_unrolled(task, theta, lam, solver, stats, solver.steps), stats)


def truncated(task, theta, *, lam, solver, truncate):
    """Backpropagation through the last ``truncate`` steps only (Shaban et al. 2019).

    The iterate before them is treated as a constant; ``truncate = steps`` is ``maml``.
    theta then reaches the result only through the proximal term lam (phi - theta) of the
    kept steps: with lam = 0 and truncate < steps the meta-gradient is exactly zero.
    """
    _require_differentiable(solver, "truncated")
    truncate = check_int("truncate", truncate, minimum=1)
    if truncate > solver.steps:
        raise ValueError(f"truncate must be in [1, steps={solver.steps}], got {truncate}")
    stats = Stats()
    return MetaGradient(_unrolled(task, theta, lam, solver, stats, truncate), stats)


def fomaml(task, theta, *, lam, solver):
    """First-order MAML: dphi/dtheta taken as I, so the meta-gradient is grad L_test(phi)."""
    stats = Stats()
    problem = InnerProblem(task, theta.detach(), lam)
    phi = _inner(problem, solver, stats).detach()
    stats.grad_evals, stats.hvps, stats.loss_evals = (
        problem.grad_evals, problem.hvps, problem.loss_evals)
    return MetaGradient(_test_grad(task, phi), stats, phi)


def imaml(task, theta, *, lam, solver, cg_steps=5, cg_tol=None, on_breakdown="raise"):
    """Implicit MAML: solve (I + H/lam) g = grad L_test(phi) by CG at the solver's output phi.

    Lemma 1 of the paper: at phi = Alg*(theta), dAlg*/dtheta = (I + H/lam)^-1. The CG solve
    uses ``cg_steps`` iterations at most (stopping early below ``cg_tol``); a budget that
    leaves a residual is reported in ``stats`` (``cg_converged=False``). A breakdown
    (negative curvature beyond lam) raises ``CGBreakdown``, or with ``on_breakdown="return"``
    returns the CG iterate reached before it, flagged ``stats.cg_breakdown=True``.
    """
    if lam <= 0:
        raise ValueError(f"lam must be > 0 for 'imaml' (I + H/lam must exist), got {lam}")
    cg_steps = check_int("cg_steps", cg_steps, minimum=1)
    stats = Stats()
    problem = InnerProblem(task, theta.detach(), lam)
    phi = _inner(problem, solver, stats).detach()
    v = _test_grad(task, phi)
    _, hvp = hvp_at(task.train_loss, phi)
    hvps_before = problem.hvps

    def matvec(u):
        problem.hvps += 1
        return u + hvp(u) / lam

    cg = conjugate_gradient(matvec, v, max_iter=cg_steps, tol=cg_tol, on_breakdown=on_breakdown)
    stats.cg_breakdown = cg.breakdown
    stats.grad_evals = problem.grad_evals + 1   # + the gradient whose graph gives the HVPs
    stats.hvps, stats.loss_evals = problem.hvps, problem.loss_evals
    stats.cg_iterations = problem.hvps - hvps_before
    stats.cg_residual, stats.cg_converged = cg.residual, cg.converged
    return MetaGradient(cg.x, stats, phi)


def exact(task, theta, *, lam, solver=None, max_newton=100):
    """Dense reference for small problems: Newton with the dense Hessian until the step is at
    rounding level, then g = (I + H/lam)^-1 grad L_test(phi) by a dense solve.

    ``solver`` is ignored. Raises above ``EXACT_MAX_DIM`` parameters, when G is not strongly
    convex at the solution, or when Newton has not converged after ``max_newton`` steps.
    """
    if lam <= 0:
        raise ValueError(f"lam must be > 0 for 'exact', got {lam}")
    n = theta.numel()
    if n > EXACT_MAX_DIM:
        raise ValueError(f"'exact' forms the dense Hessian; theta has {n} entries, more than "
                         f"EXACT_MAX_DIM = {EXACT_MAX_DIM}")
    stats = Stats()
    problem = InnerProblem(task, theta.detach(), lam)
    eye = torch.eye(n, dtype=theta.dtype, device=theta.device)
    eps = torch.finfo(theta.dtype).eps

    def hessian_of_G(phi):
        H = torch.autograd.functional.hessian(task.train_loss, phi.detach())
        return H + lam * eye

    phi = theta.detach().clone()
    for k in range(check_int("max_newton", max_newton, minimum=1)):
        g = problem.grad(phi)
        A = hessian_of_G(phi)
        L, info = torch.linalg.cholesky_ex(A)
        direction = (-torch.cholesky_solve(g[:, None], L)[:, 0] if info == 0 else -g)
        phi_next, t = backtracking_step(problem, phi, direction, g)
        step = float(torch.linalg.vector_norm(phi_next - phi))
        phi = phi_next.detach()
        if step <= 16 * eps * (1 + float(torch.linalg.vector_norm(phi))):
            break
    else:
        raise RuntimeError(f"'exact': Newton did not converge in max_newton={max_newton} steps")
    stats.inner_steps, stats.inner_converged = k + 1, True
    A = hessian_of_G(phi)
    L, info = torch.linalg.cholesky_ex(A)
    if info != 0:
        raise ValueError(f"'exact': H + lam I is not positive definite at the inner solution; "
                         f"lam={lam} is too small for this task's negative curvature")
    v = _test_grad(task, phi)
    grad = lam * torch.cholesky_solve(v[:, None], L)[:, 0]
    stats.grad_evals, stats.loss_evals = problem.grad_evals, problem.loss_evals
    return MetaGradient(grad, stats, phi)


METHODS = {"maml": maml, "fomaml": fomaml, "truncated": truncated, "imaml": imaml,
           "exact": exact}


def _validate(method, task, theta, lam, solver) -> float:
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, one of {sorted(METHODS)}, got {method!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    for attr in ("train_loss", "test_loss"):
        if not callable(getattr(task, attr, None)):
            raise TypeError(f"task must have a callable {attr}(phi); got {type(task).__name__}")
    check_finite("theta", theta)
    if not theta.is_floating_point() or theta.ndim != 1:
        raise ValueError(f"theta must be a 1-D floating-point tensor, got dtype {theta.dtype} "
                         f"and shape {tuple(theta.shape)}")
    n = num_parameters(task)
    if n is not None and theta.numel() != n:
        raise ValueError(f"theta must have {n} entries (the task's parameter count), "
                         f"got {theta.numel()}")
    lam = check_float("lam", lam, 0.0, low_open=False)
    if method != "exact" and not callable(getattr(solver, "solve", None)):
        raise TypeError(f"solver must be an inner solver from suite.solvers (with .solve), "
                        f"got {solver!r}")
    return lam


def meta_gradient(method: str, task, theta: torch.Tensor, *, lam: float, solver=None,
                  **options) -> MetaGradient:
    """The meta-gradient of ``task`` at ``theta`` by ``method`` (see ``METHODS``).

    Options per method: ``truncate`` ("truncated"), ``cg_steps``, ``cg_tol`` and
    ``on_breakdown`` ("imaml"),
    ``max_newton`` ("exact"). ``stats.wall_time_s`` covers the whole computation.
    """
    lam = _validate(method, task, theta, lam, solver)
    start = time.perf_counter()
    result = METHODS[method](task, theta, lam=lam, solver=solver, **options)
    result.stats.wall_time_s = time.perf_counter() - start
    check_finite(f"the {method!r} meta-gradient (a non-finite result is never returned)",
                 result.grad)
    result.grad = result.grad.detach()
    return result


def meta_gradient_batch(method: str, tasks, theta: torch.Tensor, *, lam: float, solver=None,
                        **options) -> MetaGradient:
    """The average meta-gradient over a meta-batch; counts and wall time are summed."""
    tasks = list(tasks)
    if not tasks:
        raise ValueError("tasks must be a non-empty sequence of tasks")
    results = [meta_gradient(method, t, theta, lam=lam, solver=solver, **options) for t in tasks]
    total = Stats()
    for r in results:
        for name in ("inner_steps", "grad_evals", "hvps", "loss_evals", "cg_iterations",
                     "inner_cg_iterations", "wall_time_s"):
            setattr(total, name, getattr(total, name) + getattr(r.stats, name))
    residuals = [r.stats.cg_residual for r in results if not math.isnan(r.stats.cg_residual)]
    total.cg_residual = max(residuals) if residuals else math.nan
    total.cg_breakdown = any(r.stats.cg_breakdown for r in results)
    flags = [r.stats.cg_converged for r in results if r.stats.cg_converged is not None]
    total.cg_converged = all(flags) if flags else None
    flags = [r.stats.inner_converged for r in results if r.stats.inner_converged is not None]
    total.inner_converged = all(flags) if flags else None
    grad = torch.stack([r.grad for r in results]).mean(0)
    return MetaGradient(grad, total)
