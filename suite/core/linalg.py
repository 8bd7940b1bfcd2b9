"""Linear algebra written once for iMAML, Newton-CG and the batched path: conjugate gradient,
the Neumann series, and the implicit solve with its breakdown policies (the Hessian-vector
products they are given come from ``suite.core.hvp``).

A linear solver is ``solve(matvec, b, *, max_iter, tol, on_breakdown) -> LinearSolveResult`` for a
symmetric operator ``matvec(v) = A v`` (see ``LINEAR_SOLVERS``); the Neumann series also
takes its ``step``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

Matvec = Callable[[torch.Tensor], torch.Tensor]
CG_MODES = ("raise", "return", "continue")


class SolveBreakdown(ArithmeticError):
    """A linear solve met a direction with p^T A p <= 0 (the system is not positive definite)
    or an operator value that is not finite; ``solver`` names which solve."""

    def __init__(self, iteration: int, curvature: float, solver: str = "conjugate gradient"):
        self.iteration, self.curvature, self.solver = iteration, curvature, solver
        what = ("the operator returned a non-finite value" if not math.isfinite(curvature) else
                "the matrix is not positive definite (for iMAML: lam is too small for the "
                "negative curvature of the training loss; increase lam, or choose a positive "
                "semi-definite curvature such as 'gauss-newton')")
        super().__init__(f"{solver} broke down at iteration {iteration}: "
                         f"p^T A p = {curvature:.3e}; {what}")


@dataclass
class LinearSolveResult:
    """Invariant: ``residual == |b - A x| / |b|`` (from the recurrence, the worst row) after
    ``iterations``; ``converged`` means every row reached ``tol`` and none stopped early.

    ``breakdown``: some row met p^T A p <= 0 (at ``breakdown_iteration``, the first such
    iteration). ``min_curvature``: the smallest Rayleigh quotient p^T A p / |p|^2 met, a
    bound from above on A's smallest eigenvalue. ``row_iterations``: the iterations each row
    took (a row that stopped at 0 still holds x = 0). ``fallback``: rows whose x was replaced
    by b (the first-order direction) by ``solve_implicit``.
    """

    x: torch.Tensor
    iterations: int
    residual: float
    converged: bool
    breakdown: bool = False
    breakdown_iteration: int | None = None
    min_curvature: float = math.nan
    row_iterations: torch.Tensor | None = None
    row_breakdown: torch.Tensor | None = None
    fallback: int = 0
    u: torch.Tensor | None = None   # solve_implicit's unscaled solution (x = scale * u)


# The names from before the Neumann series shared them, kept for code written against them.
CGResult, CGBreakdown = LinearSolveResult, SolveBreakdown


def _check_common(max_iter, tol, b):
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be an integer >= 0, got {max_iter!r}")
    if tol is None:
        tol = 10 * torch.finfo(b.dtype).eps
    elif not (0 <= tol < 1):
        raise ValueError(f"tol must be in [0, 1), got {tol!r}")
    if b.ndim not in (1, 2):
        raise ValueError(f"b must be 1-D (one system) or 2-D (one per row), got {b.ndim}-D")
    if not bool(torch.isfinite(b).all()):
        raise ValueError("b (the right-hand side) contains NaN or Inf; a solve of it would "
                         "return a meaningless x")
    return tol


@dataclass
class _Rows:
    """The systems of a 1-D or 2-D right-hand side as rows, and their shared bookkeeping."""

    batched: bool
    B: torch.Tensor
    safe_norm: torch.Tensor     # |b| per row, 1 where b = 0 (its residual is then |r|)
    stopped: torch.Tensor       # rows stopped by a breakdown (or divergence)
    flagged: torch.Tensor       # rows that met one
    steps: torch.Tensor         # iterations taken per row

    @classmethod
    def of(cls, b: torch.Tensor) -> "_Rows":
        B = b if b.ndim == 2 else b[None]
        b_norm = torch.linalg.vector_norm(B, dim=1)
        none = torch.zeros_like(b_norm, dtype=torch.bool)
        return cls(b.ndim == 2, B, torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm)),
                   none, none.clone(), torch.zeros(B.shape[0], dtype=torch.long, device=B.device))

    def result(self, x, iterations, residual, tol, first, extreme) -> LinearSolveResult:
        one = (lambda t: t) if self.batched else (lambda t: t[0])  # noqa: E731
        worst = float(residual.max())
        return LinearSolveResult(one(x), iterations, worst, worst <= tol and not bool(self.stopped.any()),
                        bool(self.flagged.any()), first,
                        extreme if math.isfinite(extreme) else math.nan, one(self.steps),
                        one(self.flagged))


def conjugate_gradient(matvec: Matvec, b: torch.Tensor, *, max_iter: int,
                       tol: float | None = None, on_breakdown: str = "raise") -> LinearSolveResult:
    """Solve A x = b for symmetric positive definite A given only ``matvec(v) = A v``.

    Starts at x = 0 and runs at most ``max_iter`` iterations, stopping once the relative
    residual |r| / |b| <= ``tol`` (default: 10 x machine epsilon of b's dtype). When a
    direction has p^T A p <= 0 (A is not positive definite), ``on_breakdown`` decides:
    ``"raise"`` raises ``SolveBreakdown``; ``"return"`` stops that row and keeps its iterate
    (Newton-CG's use); ``"continue"`` steps on through negative curvature as codes without
    a curvature check do (hypertorch, the official iMAML code), stopping a row only where
    p^T A p is zero or not finite. A non-finite operator value raises in every mode.

    A 2-D ``b`` holds independent systems, one per row (``matvec`` acts row by row, as for
    a meta-batch of tasks): each row stops on its own, ``residual`` is the largest.
    """
    if on_breakdown not in CG_MODES:
        raise ValueError(f"on_breakdown must be one of {CG_MODES}, got {on_breakdown!r}")
    tol = _check_common(max_iter, tol, b)
    rows = _Rows.of(b)
    batched, B, safe_norm = rows.batched, rows.B, rows.safe_norm
    stopped, met_negative, steps = rows.stopped, rows.flagged, rows.steps
    x = torch.zeros_like(B)
    r, p = B.clone(), B.clone()
    rr = (r * r).sum(1)
    residual = rr.sqrt() / safe_norm
    first_breakdown, min_curvature = None, math.inf
    k = 0
    while k < max_iter:
        active = (residual > tol) & ~stopped
        if not bool(active.any()):
            break
        Ap = matvec(p if batched else p[0]).reshape(B.shape)
        curvature = (p * Ap).sum(1)
        if not bool(torch.isfinite(curvature[active]).all()):
            raise SolveBreakdown(k, float(curvature[active & ~torch.isfinite(curvature)][0]))
        quotient = curvature / (p * p).sum(1).clamp_min(torch.finfo(B.dtype).tiny)
        min_curvature = min(min_curvature, float(quotient[active].min()))
        bad = active & ~(curvature > 0)
        if bool(bad.any()):
            if on_breakdown == "raise":
                raise SolveBreakdown(k, float(curvature[bad][0]))
            first_breakdown = k if first_breakdown is None else first_breakdown
            met_negative |= bad
            halt = bad if on_breakdown == "return" else active & (curvature == 0)
            stopped |= halt
            active &= ~halt
            if not bool(active.any()):
                break
        alpha = torch.where(active, rr / torch.where(active, curvature, 1.0), 0.0)
        x = x + alpha[:, None] * p
        r = r - alpha[:, None] * Ap
        rr_new = (r * r).sum(1)
        beta = torch.where(active, rr_new / torch.where(rr > 0, rr, 1.0), 0.0)
        p = torch.where(active[:, None], r + beta[:, None] * p, p)
        rr = torch.where(active, rr_new, rr)
        residual = torch.where(active, rr.sqrt() / safe_norm, residual)
        steps += active.long()
        k += 1
    return rows.result(x, k, residual, tol, first_breakdown, min_curvature)


def normal_equations_cg(matvec: Matvec, b: torch.Tensor, *, max_iter: int,
                        tol: float | None = None, on_breakdown: str = "raise") -> LinearSolveResult:
    """CG on the normal equations A^T A x = A^T b of a symmetric A, i.e. A^2 x = A b.

    A^2 is positive semi-definite whatever A's curvature, so CG never meets negative
    curvature (torchopt's iMAML example solves this system); the price is two products
    per iteration plus one for A b, and the condition number squared. ``residual`` is the
    normal equations' own, |A b - A^2 x| / |A b|.
    """
    _check_common(max_iter, tol, b)
    return conjugate_gradient(lambda v: matvec(matvec(v)), matvec(b), max_iter=max_iter,
                              tol=tol, on_breakdown=on_breakdown)


class NeumannDivergence(ArithmeticError):
    """The Neumann series diverged: some eigenvalue of A lies outside (0, 2 / step)."""

    def __init__(self, iteration: int, step: float, largest: float, smallest: float):
        self.iteration, self.step, self.largest = iteration, step, largest
        if smallest <= 0:
            why = (f"A is not positive definite (a Rayleigh quotient of {smallest:.3e} was met), "
                   "and the series converges for no step")
        else:
            why = (f"A's largest eigenvalue is at least {largest:.4g} (the largest Rayleigh "
                   f"quotient met), so the step must be in (0, {2 / largest:.4g})")
        super().__init__(f"the Neumann series diverged at iteration {iteration} (the residual "
                         f"grew above |b|): neumann_step={step:g} must be in (0, 2 / largest "
                         f"eigenvalue of A); {why}")


def neumann_series(matvec: Matvec, b: torch.Tensor, *, max_iter: int, tol: float | None = None,
                   on_breakdown: str = "raise", step: float | None = None) -> LinearSolveResult:
    """Solve A x = b by the truncated Neumann series x_K = step sum_{k<K} (I - step A)^k b
    (Lorraine et al. 2020; hypertorch's and torchopt's implicit solver).

    Invariant: r_k = b - A x_k = (I - step A)^k b, kept by x += step r, r -= step A r (one
    product per iteration), so |r_K| <= max_i |1 - step lambda_i|^K |b|: the series converges
    exactly when every eigenvalue of A lies in (0, 2 / step), at that rate. A row whose
    residual grows above |b| has diverged: ``on_breakdown`` "raise" raises
    ``NeumannDivergence`` (naming the step's allowed range), "return" stops the row with its
    previous iterate, "continue" goes on. ``min_curvature`` is the smallest Rayleigh quotient
    r^T A r / |r|^2 met (CG's p^T A p / |p|^2 for the residuals). 2-D ``b``: one system per row.
    """
    if on_breakdown not in CG_MODES:
        raise ValueError(f"on_breakdown must be one of {CG_MODES}, got {on_breakdown!r}")
    if step is None:
        raise ValueError("neumann_step is required for the Neumann series: a step in "
                         "(0, 2 / largest eigenvalue of A)")
    step = float(step)
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"neumann_step must be a finite number in (0, 2 / largest eigenvalue "
                         f"of A), got {step!r}")
    tol = _check_common(max_iter, tol, b)
    rows = _Rows.of(b)
    batched, B, safe_norm = rows.batched, rows.B, rows.safe_norm
    stopped, diverged, steps = rows.stopped, rows.flagged, rows.steps
    x, r = torch.zeros_like(B), B.clone()
    residual = torch.linalg.vector_norm(r, dim=1) / safe_norm
    first_breakdown, smallest, largest = None, math.inf, -math.inf
    k = 0
    while k < max_iter:
        active = (residual > tol) & ~stopped
        if not bool(active.any()):
            break
        Ar = matvec(r if batched else r[0]).reshape(B.shape)
        if not bool(torch.isfinite(Ar[active]).all()):
            raise SolveBreakdown(k, math.nan, solver="the Neumann series")
        quotient = (r * Ar).sum(1) / (r * r).sum(1).clamp_min(torch.finfo(B.dtype).tiny)
        smallest = min(smallest, float(quotient[active].min()))
        largest = max(largest, float(quotient[active].max()))
        r_next = r - step * Ar
        res_next = torch.linalg.vector_norm(r_next, dim=1) / safe_norm
        grew = active & (res_next > 1)
        if bool(grew.any()):
            if on_breakdown == "raise":
                raise NeumannDivergence(k, step, largest, smallest)
            first_breakdown = k if first_breakdown is None else first_breakdown
            diverged |= grew
            if on_breakdown == "return":
                stopped |= grew
                active &= ~grew
        x = torch.where(active[:, None], x + step * r, x)
        r = torch.where(active[:, None], r_next, r)
        residual = torch.where(active, res_next, residual)
        steps += active.long()
        k += 1
        if not bool(active.any()):
            break
    return rows.result(x, k, residual, tol, first_breakdown, smallest)


LINEAR_SOLVERS: dict[str, Callable[..., LinearSolveResult]] = {
    "cg": conjugate_gradient,
    "normal-cg": normal_equations_cg,
    "neumann": neumann_series,
}
"""name -> ``solve(matvec, b, *, max_iter, tol, on_breakdown) -> LinearSolveResult`` ("neumann" also
takes ``step``)."""

BREAKDOWN_POLICIES = {
    "raise": "raise SolveBreakdown (the default: a non-positive-definite system is an error)",
    "keep": "keep the CG iterate reached before the breakdown; a task whose CG broke at its "
            "first iteration (x = 0) gets the first-order direction instead",
    "first-order": "a task whose CG broke down gets the first-order direction v (FOMAML's)",
    "continue": "no curvature check: CG steps on through negative curvature (hypertorch and "
                "the official iMAML code do this)",
}
"""For the Neumann series a "breakdown" is a residual grown above |b| (divergence)."""


def check_implicit_options(on_breakdown: str, linear_solver: str) -> None:
    if on_breakdown not in BREAKDOWN_POLICIES:
        raise ValueError(f"on_breakdown must be one of {sorted(BREAKDOWN_POLICIES)}, "
                         f"got {on_breakdown!r}")
    if linear_solver not in LINEAR_SOLVERS:
        raise ValueError(f"linear_solver must be one of {sorted(LINEAR_SOLVERS)}, "
                         f"got {linear_solver!r}")


def solve_implicit(matvec: Matvec, v: torch.Tensor, *, scale: float | torch.Tensor = 1.0,
                   max_iter: int, tol: float | None = None, on_breakdown: str = "raise",
                   linear_solver: str = "cg", step: float | None = None) -> LinearSolveResult:
    """Solve the implicit system A u = v (one row per task for a 2-D ``v``) with the named
    linear solver and breakdown policy (``BREAKDOWN_POLICIES``); return x = scale * u.

    For iMAML A is the Hessian of G (or its stand-in, ``suite.core.curvature``) and ``scale`` is
    lam, a number or a vector of u's length: x is the meta-gradient, ``result.u`` the
    solution itself. ``min_curvature`` is reported for A / min(scale) (the paper's I + H/lam
    for a scalar lam), ``residual`` is scale-free. ``step`` is the Neumann series' step.
    Never returns a zero row because the solver stopped at its first iteration: such a row
    gets v itself (the first-order direction), counted in ``fallback``.
    """
    check_implicit_options(on_breakdown, linear_solver)
    mode = {"keep": "return", "first-order": "return"}.get(on_breakdown, on_breakdown)
    options = {"step": step} if linear_solver == "neumann" else {}
    if step is not None and linear_solver != "neumann":
        raise ValueError(f"neumann_step is only used by linear_solver='neumann', not "
                         f"{linear_solver!r}")
    result = LINEAR_SOLVERS[linear_solver](matvec, v, max_iter=max_iter, tol=tol,
                                           on_breakdown=mode, **options)
    u = result.x
    replace = (result.row_breakdown if on_breakdown == "first-order"
               else result.row_iterations == 0) & (torch.linalg.vector_norm(v, dim=-1) > 0)
    if bool(replace.any()):
        u = torch.where(replace[..., None], v / scale, u)
        result.fallback = int(replace.sum())
    result.u, result.x = u, scale * u
    smallest = float(scale.min()) if isinstance(scale, torch.Tensor) else float(scale)
    result.min_curvature = result.min_curvature / smallest
    return result
