"""The implicit meta-gradients: iMAML (Lemma 1's linear system, solved by CG or another
``LINEAR_SOLVERS`` entry with a chosen curvature) and ``exact``, its dense reference.

Both solve (H + diag(lam)) u = grad L_test(phi) at the inner solution phi and return
g = lam * u, d/dlam = (theta - phi) * u. Registered in ``suite.core.methods``.
"""
from __future__ import annotations

import torch

from suite.core.curvature import CURVATURES, Curvature, gauss_newton_at
from suite.core.linalg import BREAKDOWN_POLICIES, LINEAR_SOLVERS, solve_implicit
from suite.core.hvp import HVP_PRODUCTS, hvp_product
from suite.core.methods import (EXACT_MAX_DIM, MetaGradient, Stats, lam_result, run_inner,
                                test_gradient)
from suite.core.registry import Option
from suite.core.solvers import InnerProblem, backtracking_step
from suite.core.tasks import OutputTask


def imaml(task, theta, *, lam, solver, cg_steps=5, cg_tol=None, on_breakdown="raise",
          curvature="hessian", linear_solver="cg", neumann_step=None, hvp="auto",
          lam_grad=False):
    """Implicit MAML: solve (I + H/lam) g = grad L_test(phi) at the solver's output phi.

    Lemma 1 of the paper: at phi = Alg*(theta), dAlg*/dtheta = (I + H/lam)^-1. Solved as
    (H + diag(lam)) u = v, g = lam * u (the Hessian of G, symmetric also for a vector lam);
    then d/dlam = (theta - phi) * u from the same solve. The solve uses ``cg_steps``
    iterations at most (stopping early below ``cg_tol``) of ``linear_solver``
    (``suite.core.linalg.LINEAR_SOLVERS``: "cg", "normal-cg", or "neumann" with its
    ``neumann_step`` in (0, 2 / largest eigenvalue of H + lam)); a budget that leaves a
    residual is reported in ``stats`` (``cg_converged=False``). ``curvature`` (a name or
    ``suite.core.curvature.Curvature``) replaces H: "hessian" (the paper), "gauss-newton",
    "damped", "official"; with an approximate H, d/dlam is approximate alike. A breakdown
    (p^T A p <= 0) is handled by ``on_breakdown`` (``suite.core.linalg.BREAKDOWN_POLICIES``):
    "raise" (default), "keep", "first-order" or "continue"; ``stats`` records the policy, the
    iteration and the smallest curvature met, and how many tasks got the first-order direction.
    ``stats.inner_stationarity`` = |grad G(phi)| / |grad G(theta)|: Lemma 1 assumes 0.
    ``hvp`` picks the exact Hessian product (``suite.core.hvp.HVP_PRODUCTS``: "reverse" on the
    kept gradient graph, "forward" over reverse; "auto": the faster one measured for the
    device, ``FASTEST_HVP``); "gauss-newton" has its own product and ignores it.
    """
    product_at = hvp_product(hvp, theta.device)
    curvature = _checked_curvature(curvature, task, lam_grad)
    stats = Stats(cg_policy=on_breakdown)
    problem = InnerProblem(task, theta.detach(), lam)
    phi = run_inner(problem, solver, stats).detach()
    v = test_gradient(task, phi)
    product = _curvature_product(problem, curvature, product_at, phi, stats)
    matvec, scale = curvature.system(product, lam)
    solve = solve_implicit(matvec, v, scale=scale, max_iter=cg_steps, tol=cg_tol,
                           on_breakdown=on_breakdown, linear_solver=linear_solver,
                           step=neumann_step)
    stats.grad_evals = problem.grad_evals + 1   # + the gradient whose graph gives the products
    stats.hvps, stats.loss_evals = problem.hvps, problem.loss_evals
    stats.cg_iterations = solve.iterations
    stats.cg_residual, stats.cg_converged = solve.residual, solve.converged
    stats.cg_breakdowns, stats.cg_fallbacks = int(solve.breakdown), solve.fallback
    stats.cg_breakdown_iteration, stats.cg_min_curvature = (solve.breakdown_iteration,
                                                            solve.min_curvature)
    return MetaGradient(solve.x, stats, phi, lam_result(lam, (theta.detach() - phi) * solve.u,
                                                        theta) if lam_grad else None)


def _checked_curvature(curvature, task, lam_grad: bool) -> Curvature:
    curvature = Curvature.parse(curvature)
    if lam_grad and curvature.name == "official":
        raise ValueError("lam_grad: the 'official' curvature's matrix does not come from the "
                         "prox term, so it has no gradient in lam; use 'hessian', "
                         "'gauss-newton' or 'damped'")
    if curvature.needs_outputs and not isinstance(task, OutputTask):
        raise TypeError(f"curvature 'gauss-newton' needs the model's outputs: the task must have "
                        f"train_outputs(phi) and train_output_loss(outputs) (ModuleTask and "
                        f"LinearRegressionTask do); {type(task).__name__} has not")
    return curvature


def _curvature_product(problem: InnerProblem, curvature: Curvature, product_at, phi,
                       stats: Stats):
    """u -> (the curvature's matrix at phi) u, each call counted in ``problem.hvps``; records
    ``stats.inner_stationarity`` from the training gradient that comes with it."""
    task, lam = problem.task, problem.lam
    if curvature.needs_outputs:
        g_train, product = gauss_newton_at(task.train_outputs, task.train_output_loss, phi)
    else:
        g_train, product = product_at(task.train_loss, phi)
    if problem.grad_norm_at_theta:
        grad_G_norm = float(torch.linalg.vector_norm(g_train + lam * (phi - problem.theta)))
        stats.inner_stationarity = grad_G_norm / problem.grad_norm_at_theta
    del g_train   # not held through the solve: memory is what iMAML is measured on

    def counted(u):
        problem.hvps += 1
        return product(u)

    return counted


def exact(task, theta, *, lam, solver=None, max_newton=100, lam_grad=False):
    """Dense reference for small problems: Newton with the dense Hessian until the step is at
    rounding level, then u = (H + diag(lam))^-1 grad L_test(phi) by a dense (Cholesky) solve,
    g = lam * u, d/dlam = (theta - phi) * u.

    ``solver`` is ignored. Raises above ``EXACT_MAX_DIM`` parameters, when G is not strongly
    convex at the solution, or when Newton has not converged after ``max_newton`` steps.
    """
    n = theta.numel()
    if n > EXACT_MAX_DIM:
        raise ValueError(f"'exact' forms the dense Hessian; theta has {n} entries, more than "
                         f"EXACT_MAX_DIM = {EXACT_MAX_DIM}")
    stats = Stats()
    problem = InnerProblem(task, theta.detach(), lam)
    prox = torch.diag(torch.as_tensor(lam, dtype=theta.dtype, device=theta.device)
                      * torch.ones(n, dtype=theta.dtype, device=theta.device))
    eps = torch.finfo(theta.dtype).eps

    def hessian_of_G(phi):
        H = torch.autograd.functional.hessian(task.train_loss, phi.detach())
        return H + prox

    phi = theta.detach().clone()
    for k in range(max_newton):
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
    v = test_gradient(task, phi)
    u = torch.cholesky_solve(v[:, None], L)[:, 0]
    stats.grad_evals, stats.loss_evals = problem.grad_evals, problem.loss_evals
    return MetaGradient(lam * u, stats, phi, lam_result(lam, (theta.detach() - phi) * u, theta)
                        if lam_grad else None)


def _check_curvature(value):
    Curvature.parse(value)


OPTIONS = (
    Option("cg_steps", "int", 5, "iterations of the linear solver at most", low=1,
           axis="cg_steps"),
    Option("cg_tol", "float", None, "stop below this relative residual", low=0.0,
           low_open=True, none_ok=True),
    Option("on_breakdown", "choice", "raise", "what a CG breakdown (p^T A p <= 0) does",
           choices=tuple(BREAKDOWN_POLICIES)),
    Option("curvature", "any", "hessian", f"the matrix standing for H: one of {CURVATURES} "
           "or a suite.Curvature", check=_check_curvature),
    Option("linear_solver", "choice", "cg", "the linear solver", choices=tuple(LINEAR_SOLVERS)),
    Option("neumann_step", "float", None, "the Neumann series' step, in (0, 2 / largest "
           "eigenvalue of H + lam)", low=0.0, low_open=True, none_ok=True),
    Option("hvp", "choice", "auto", "the exact Hessian product",
           choices=("auto",) + tuple(HVP_PRODUCTS)),
)
