"""Curvature operators for iMAML's implicit system A g = v at the adapted parameters phi.

The paper's system is (I + H / lam) g = grad L_test(phi), H the Hessian of the training
loss at phi (Lemma 1). On networks H is indefinite away from a minimum, so CG can break
down; the operators here replace H by a matrix that is positive semi-definite, or shift it:

    "hessian"       (I + H / lam)                    the paper (exact at a stationary point)
    "gauss-newton"  (I + J^T H_out J / lam)          J = d outputs / d phi, H_out the loss's
                                                     Hessian in output space (PSD for
                                                     cross-entropy and squared error)
    "damped"        (I + (H + mu I) / lam)           Levenberg-Marquardt damping mu >= 0
    "official"      ((1 + c) I + H / (lam + d))      the official iMAML code (c = 1, d = 10)

Each is solved in the symmetric form A u = v with g = scale * u: for "hessian",
A = H + lam I is the Hessian of G and scale = lam, which also holds for a vector lam
(A = H + diag(lam), a per-parameter prox), where I + H/lam would not be symmetric.
Damping mu is the paper's system with lam + mu in place of lam, scaled by (lam + mu) / lam;
"official" likewise has an effective lam + d, scaled by 1 + c. With mu = 0, "damped" is
"hessian" bit for bit.

Products are built by the caller (reverse-over-reverse per task, torch.func under vmap) and
handed to ``Curvature.system``, so the composition above is written once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.func import grad, jvp, vjp

from suite.core.validation import check_float
from suite.core.linalg import Matvec

CURVATURES = ("hessian", "gauss-newton", "damped", "official")


@dataclass(frozen=True)
class Curvature:
    """A named curvature operator and its parameters (``damping`` = mu of "damped";
    ``shift`` = c and ``lam_offset`` = d of "official")."""

    name: str = "hessian"
    damping: float = 0.0
    shift: float = 1.0
    lam_offset: float = 10.0

    def __post_init__(self):
        if self.name not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {self.name!r}")
        check_float("damping", self.damping, 0.0, low_open=False)
        check_float("shift", self.shift, -1.0)
        check_float("lam_offset", self.lam_offset, 0.0, low_open=False)

    @classmethod
    def parse(cls, curvature: "str | Curvature") -> "Curvature":
        """A ``Curvature`` as given, or one named with default parameters."""
        if isinstance(curvature, Curvature):
            return curvature
        if not isinstance(curvature, str):
            raise TypeError(f"curvature must be a name {CURVATURES} or a Curvature, "
                            f"got {curvature!r}")
        return cls(curvature)

    @property
    def needs_outputs(self) -> bool:
        return self.name == "gauss-newton"

    def system(self, product: Matvec, lam) -> tuple[Matvec, float | torch.Tensor]:
        """``(u -> A u, scale)`` given ``product(u)`` (the Hessian product, or the
        Gauss-Newton one for "gauss-newton", see ``needs_outputs``): the meta-gradient is
        ``scale * u`` where A u = v, A symmetric. For "hessian", A = H + diag(lam) is the
        Hessian of G and scale = lam, so scale * u = (I + H/lam)^-1 v for a scalar lam;
        ``lam`` may be a vector of u's length (a per-parameter prox)."""
        if self.name == "official":
            scale = lam + self.lam_offset
            diagonal = (1.0 + self.shift) * scale
            return (lambda u: product(u) + diagonal * u), scale
        diagonal = lam + self.damping if self.name == "damped" else lam
        return (lambda u: product(u) + diagonal * u), lam

    def label(self) -> str:
        if self.name == "damped":
            return f"damped (mu = {self.damping:g})"
        if self.name == "official":
            return f"official ((1 + {self.shift:g}) I + H / (lam + {self.lam_offset:g}))"
        return self.name


def gauss_newton_at(outputs_fn: Callable[[torch.Tensor], torch.Tensor],
                    output_loss: Callable[[torch.Tensor], torch.Tensor],
                    phi: torch.Tensor, *, with_grad: bool = True
                    ) -> tuple[torch.Tensor | None, Matvec]:
    """The training gradient at ``phi`` (None unless ``with_grad``) and
    ``u -> J^T H_out J u``, the generalized Gauss-Newton product (Schraudolph 2002), where
    the training loss is ``output_loss(outputs_fn(phi))``.

    J u is a forward-mode product, J^T w a reverse-mode one through the outputs' graph
    (kept), H_out w reverse-over-reverse in output space (small; forward-over-reverse fails
    on ``F.mse_loss``). Written with torch.func only, so it also runs under ``vmap``.
    """
    phi = phi.detach()
    outputs, pullback = vjp(outputs_fn, phi)
    outputs = outputs.detach()
    loss_grad = grad(output_loss)
    train_grad = pullback(loss_grad(outputs))[0].detach() if with_grad else None

    def product(u: torch.Tensor) -> torch.Tensor:
        _, Ju = jvp(outputs_fn, (phi,), (u,))
        HJu = grad(lambda o: (loss_grad(o) * Ju).sum())(outputs)
        return pullback(HJu)[0]

    return train_grad, product
