"""Conjugate gradient and Hessian-vector products, written once for iMAML and Newton-CG."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


class CGBreakdown(ArithmeticError):
    """CG met a direction with p^T A p <= 0: the system is not positive definite."""

    def __init__(self, iteration: int, curvature: float):
        self.iteration, self.curvature = iteration, curvature
        super().__init__(
            f"conjugate gradient broke down at iteration {iteration}: p^T A p = {curvature:.3e} "
            "<= 0, the matrix is not positive definite (for iMAML: lam is too small for the "
            "negative curvature of the training loss; increase lam)")


@dataclass
class CGResult:
    """Invariant: ``residual == |b - A x| / |b|`` (from the recurrence) after ``iterations``."""

    x: torch.Tensor
    iterations: int
    residual: float
    converged: bool
    breakdown: bool = False


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, *,
                       max_iter: int, tol: float | None = None,
                       on_breakdown: str = "raise") -> CGResult:
    """Solve A x = b for symmetric positive definite A given only ``matvec(v) = A v``.

    Starts at x = 0 and runs at most ``max_iter`` iterations, stopping once the relative
    residual |r| / |b| <= ``tol`` (default: 10 x machine epsilon of b's dtype). On
    breakdown (p^T A p <= 0) it raises ``CGBreakdown``, or with ``on_breakdown="return"``
    returns the iterate reached so far flagged ``breakdown=True`` (Newton-CG's use).
    """
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be an integer >= 0, got {max_iter!r}")
    if on_breakdown not in ("raise", "return"):
        raise ValueError(f"on_breakdown must be 'raise' or 'return', got {on_breakdown!r}")
    if tol is None:
        tol = 10 * torch.finfo(b.dtype).eps
    elif not (0 <= tol < 1):
        raise ValueError(f"tol must be in [0, 1), got {tol!r}")
    b_norm = torch.linalg.vector_norm(b).item()
    x = torch.zeros_like(b)
    if b_norm == 0:
        return CGResult(x, 0, 0.0, True)
    r = b.clone()
    p = r.clone()
    rr = torch.dot(r, r)
    residual = 1.0
    for k in range(max_iter):
        if residual <= tol:
            return CGResult(x, k, residual, True)
        Ap = matvec(p)
        curvature = torch.dot(p, Ap)
        if not curvature.item() > 0:  # also catches NaN
            if on_breakdown == "raise":
                raise CGBreakdown(k, curvature.item())
            return CGResult(x, k, residual, False, breakdown=True)
        alpha = rr / curvature
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = torch.dot(r, r)
        residual = rr_new.sqrt().item() / b_norm
        p = r + (rr_new / rr) * p
        rr = rr_new
    return CGResult(x, max_iter, residual, residual <= tol)


def hvp_at(loss_fn: Callable[[torch.Tensor], torch.Tensor], phi: torch.Tensor
           ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """The gradient of ``loss_fn`` at ``phi`` and a function ``v -> H v`` for its Hessian.

    Reverse-over-reverse: the gradient's graph is built once and kept, so each product is
    one backward pass over it (memory: one gradient's graph, however many products).
    """
    phi = phi.detach().requires_grad_(True)
    with torch.enable_grad():
        grad, = torch.autograd.grad(loss_fn(phi), phi, create_graph=True)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        if not grad.requires_grad:  # a loss linear in phi: zero Hessian, no second-order graph
            return torch.zeros_like(v)
        out, = torch.autograd.grad(grad, phi, grad_outputs=v, retain_graph=True, allow_unused=True)
        return torch.zeros_like(v) if out is None else out

    return grad.detach(), hvp
