"""An example plugin: implicit MAML whose Hessian-vector products are central differences of
training-loss gradients, H u ~ (grad L(phi + h u) - grad L(phi - h u)) / 2h (the approximation
DARTS uses; Liu et al. 2019). It needs first-order gradient code only.

Installed beside imaml-suite, the entry point in pyproject.toml registers ``METHOD`` under the
name ``imaml-fd``: every sweep, figure, the regression gate and the Omniglot recipes then offer
it, with no file of the suite changed. Written against the suite's public API only.
"""
import torch

import suite
from suite.core.solvers import InnerProblem, run_solver


def imaml_fd(task, theta, *, lam, solver, cg_steps=10, fd_step=1e-5, on_breakdown="raise",
             lam_grad=False):
    """Solve (H + lam) u = grad L_test(phi) by CG with finite-difference products, g = lam u;
    a breakdown (negative curvature) is handled by ``on_breakdown`` as in the suite's iMAML.

    The difference step is h = fd_step (1 + |phi|) / |u|: on a quadratic the central
    difference is exact and only rounding remains (~eps / fd_step relative); on a smooth
    loss the truncation error is O(h^2 |d^3 L|)."""
    problem = InnerProblem(task, theta.detach(), lam)
    phi = run_solver(solver, problem).phi.detach()
    stats = suite.Stats(inner_steps=solver.steps)
    with torch.enable_grad():
        p = phi.clone().requires_grad_(True)
        v, = torch.autograd.grad(task.test_loss(p), p)
    scale = 1.0 + float(phi.norm())

    def matvec(u):
        h = fd_step * scale / max(float(u.norm()), 1e-300)
        diff = problem.train_grad(phi + h * u) - problem.train_grad(phi - h * u)
        return diff / (2 * h) + lam * u

    # the operator is accurate to ~eps / fd_step: no point asking CG for more
    cg = suite.solve_implicit(matvec, v, scale=lam, max_iter=cg_steps, tol=1e-9,
                              on_breakdown=on_breakdown)
    stats.grad_evals, stats.loss_evals = problem.grad_evals, problem.loss_evals
    stats.cg_iterations, stats.cg_residual, stats.cg_converged = (cg.iterations, cg.residual,
                                                                  cg.converged)
    stats.cg_breakdowns, stats.cg_fallbacks = int(cg.breakdown), cg.fallback
    lam_g = None
    if lam_grad:   # d/dlam = (theta - phi) u, summed for a number lam
        g = (theta.detach() - phi) * cg.u
        lam_g = g if torch.is_tensor(lam) else float(g.sum())
    return suite.MetaGradient(cg.x, stats, phi, lam_g)


METHOD = suite.Method(
    name="imaml-fd",
    fn=imaml_fd,
    doc=imaml_fd.__doc__,
    options=(suite.Option("cg_steps", "int", 10, "CG iterations at most", low=1,
                          axis="cg_steps"),
             suite.Option("fd_step", "float", 1e-5, "relative finite-difference step",
                          low=0.0, high=1.0, low_open=True),
             suite.Option("on_breakdown", "choice", "raise", "what a CG breakdown does",
                          choices=tuple(suite.BREAKDOWN_POLICIES))),
    needs_positive_lam=True,
    lam_grad=True,
    exact_for="implicit",
    converged_options={"cg_steps": 64},
)
