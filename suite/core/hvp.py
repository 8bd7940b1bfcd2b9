"""Exact Hessian-vector products of a loss, two ways (reverse over reverse on a kept gradient
graph; forward over reverse with torch.func), and the measured choice between them per device
type (``hvp="auto"``)."""
from __future__ import annotations

from typing import Callable

import torch

from suite.core.fastest import UNMEASURED, fastest
from suite.core.linalg import Matvec


def hvp_at(loss_fn: Callable[[torch.Tensor], torch.Tensor], phi: torch.Tensor
           ) -> tuple[torch.Tensor, Matvec]:
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


def forward_over_reverse_at(loss_fn: Callable[[torch.Tensor], torch.Tensor], phi: torch.Tensor
                            ) -> tuple[torch.Tensor, Matvec]:
    """As ``hvp_at``, by forward-over-reverse: H v = d/dt grad(phi + t v) at t = 0, a
    ``torch.func.jvp`` of ``torch.func.grad``. Nothing is kept between products (each one
    recomputes the gradient with a tangent); written with torch.func only."""
    from torch.func import grad, jvp
    phi = phi.detach()
    g = grad(loss_fn)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        try:
            return jvp(g, (phi,), (v,))[1]
        except RuntimeError as err:
            if "ZeroTensors are immutable" not in str(err):
                raise
            raise RuntimeError(
                "the forward-over-reverse Hessian product fails on this loss: PyTorch's "
                "forward-mode formula of F.mse_loss(reduction='mean') mutates a zero tangent "
                "(pytorch/pytorch#123996, open in torch 2.13); use hvp='reverse'") from err

    return g(phi).detach(), hvp


HVP_PRODUCTS: dict[str, Callable] = {"reverse": hvp_at, "forward": forward_over_reverse_at}
"""Exact Hessian-vector products: name -> ``product_at(loss_fn, phi) -> (grad, v -> H v)``."""

FASTEST_HVP = fastest("hvp")
"""The product ``hvp="auto"`` takes per device type: measured by ``imaml-suite sweeps
hvp-cost`` and recorded in ``results/fastest.json`` (see ``suite.core.fastest``)."""


def hvp_product(name: str, device) -> Callable:
    """The product named ``name`` ("auto": ``FASTEST_HVP`` for ``device``'s type)."""
    if name == "auto":
        name = FASTEST_HVP.get(torch.device(device).type, UNMEASURED["hvp"])
    if name not in HVP_PRODUCTS:
        raise ValueError(f"hvp must be 'auto' or one of {sorted(HVP_PRODUCTS)}, got {name!r}")
    return HVP_PRODUCTS[name]
