"""Every reference meta-gradient at one setting (steps K, step size lr, lam) of a problem, all
from the same theta, in float64.

The unrolled ones (MAML, with one step fewer or more, without the proximal term, first-order,
truncated, Reptile's direction, the gradient at theta) are the suite's methods, themselves
checked against closed forms and finite differences by its test suite; the implicit one at
phi_K is a dense solve written here (the Hessian by autograd.functional), and the one at the
converged inner solution is the suite's ``exact`` (Newton to rounding, Cholesky).
"""
from __future__ import annotations

import torch

from suite.core.methods import meta_gradient
from suite.core.solvers import GD

TRUNCATIONS = (1, 2, 3)   # truncated backprop through the last k steps (k >= K: full MAML)


def _dense_implicit(task, phi: torch.Tensor, lam: float, v: torch.Tensor):
    """lam (H + lam I)^-1 v with the dense Hessian of L_train at phi, and cond(I + H/lam)."""
    H = torch.autograd.functional.hessian(task.train_loss, phi.detach())
    A = H + lam * torch.eye(len(phi), dtype=phi.dtype)
    eig = torch.linalg.eigvalsh(A)
    u = torch.linalg.solve(A, v)
    return lam * u, float(eig[-1] / eig[0]) if eig[0] > 0 else float("inf")


def references(problem, *, steps: int, lr: float, lam: float) -> tuple[dict, dict]:
    """({name: reference gradient}, {facts: condition number, inner error, ...})."""
    task, theta = problem.task(), problem.theta()

    def mg(method, k=steps, lam_=lam, **options):
        return meta_gradient(method, task, theta, lam=lam_, solver=GD(k, lr), **options)

    maml = mg("maml")
    refs = {"maml": maml.grad, "maml-more": mg("maml", steps + 1).grad,
            "fomaml": mg("fomaml").grad, "reptile": mg("reptile").grad}
    if steps > 1:
        refs["maml-fewer"] = mg("maml", steps - 1).grad
    for k in TRUNCATIONS:
        refs[f"truncated-{k}"] = mg("truncated", truncate=min(k, steps)).grad
    refs["no-adaptation"] = _query_grad(task, theta)
    facts = {}
    if lam > 0:
        refs["maml-no-prox"] = mg("maml", lam_=0.0).grad
        v = _query_grad(task, maml.phi)
        refs["implicit-at-phiK"], facts["cond"] = _dense_implicit(task, maml.phi, lam, v)
        try:
            exact = meta_gradient("exact", task, theta, lam=lam)
            refs["implicit-at-optimum"] = exact.grad
            facts["inner_error"] = float((maml.phi - exact.phi).norm() / exact.phi.norm())
        except (ValueError, RuntimeError) as err:   # G not strongly convex here: no optimum
            facts["no_optimum"] = str(err)
    return refs, facts


def _query_grad(task, phi):
    phi = phi.detach().requires_grad_(True)
    with torch.enable_grad():
        g, = torch.autograd.grad(task.test_loss(phi), phi)
    return g
