"""Inner solvers run to convergence rather than unrolled (``differentiable = False``):
Newton-CG with a backtracking (Armijo) line search, and scipy's L-BFGS-B. Registered with the
others in ``suite.core.solvers``."""
from __future__ import annotations

import numpy as np
import scipy.optimize
import torch

from suite.core.inner_problem import InnerProblem, InnerResult
from suite.core.linalg import conjugate_gradient
from suite.core.validation import check_float, check_int


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
