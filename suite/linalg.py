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

    A 2-D ``b`` holds independent systems, one per row (``matvec`` acts row by row, as for
    a meta-batch of tasks): each row stops on its own, ``residual`` is the largest.
    """
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be an integer >= 0, got {max_iter!r}")
    if on_breakdown not in ("raise", "return"):
        raise ValueError(f"on_breakdown must be 'raise' or 'return', got {on_breakdown!r}")
    if tol is None:
        tol = 10 * torch.finfo(b.dtype).eps
    elif not (0 <= tol < 1):
        raise ValueError(f"tol must be in [0, 1), got {tol!r}")
    if b.ndim not in (1, 2):
        raise ValueError(f"b must be 1-D (one system) or 2-D (one per row), got {b.ndim}-D")
    batched = b.ndim == 2
    B = b if batched else b[None]
    b_norm = torch.linalg.vector_norm(B, dim=1)
    safe_norm = torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm))
    x = torch.zeros_like(B)
    r, p = B.clone(), B.clone()
    rr = (r * r).sum(1)
    residual = rr.sqrt() / safe_norm
    broken = torch.zeros_like(b_norm, dtype=torch.bool)
    k = 0
    while k < max_iter:
        active = (residual > tol) & ~broken
        if not bool(active.any()):
            break
        Ap = matvec(p if batched else p[0]).reshape(B.shape)
        curvature = (p * Ap).sum(1)
        bad = active & ~(curvature > 0)            # ~(c > 0) also catches NaN
        if bool(bad.any()):
            if on_breakdown == "raise":
                raise CGBreakdown(k, float(curvature[bad][0]))
            broken |= bad
            active &= ~bad
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
        k += 1
    worst = float(residual.max())
    return CGResult(x if batched else x[0], k, worst,
                    worst <= tol and not bool(broken.any()), bool(broken.any()))


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
