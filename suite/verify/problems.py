"""The verifier's small float64 problems, each with a model handed to the function under test.

Classification (cross-entropy, the mean over the batch as ``F.cross_entropy``): a tanh MLP
(4 -> 8 -> 3) and a tanh CNN (1 x 6 x 6 images, 4 channels of 3 x 3, linear head), 3-way
4-shot support and 5-query sets. Regression (``F.mse_loss``, mean; targets shaped (n, 1) like
the output): a linear model with closed-form references (numpy/scipy, sharing no code with
the suite) and a tanh MLP (3 -> 8 -> 1).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from suite.core.tasks import ModuleTask

LOSSES = {"ce": F.cross_entropy, "mse": F.mse_loss}


@dataclass
class Problem:
    name: str
    model: nn.Module
    support: tuple
    query: tuple
    loss: Callable

    def task(self, model: nn.Module | None = None) -> ModuleTask:
        return ModuleTask(model or self.model, self.support, self.query, self.loss)

    def theta(self) -> torch.Tensor:
        return self.task().flat_parameters()

    def fresh_model(self) -> nn.Module:
        """A copy for one call of the function under test (it may not alter theta)."""
        return copy.deepcopy(self.model)

    @property
    def linear(self) -> bool:
        return isinstance(self.model, nn.Linear)


def _classes(gen, n_way, shots, shape):
    means = torch.randn(n_way, *shape, generator=gen, dtype=torch.float64)
    y = torch.arange(n_way).repeat_interleave(shots)
    return means[y] + 0.8 * torch.randn(len(y), *shape, generator=gen, dtype=torch.float64), y


def _regression(gen, n, d):
    w = torch.randn(d, 1, generator=gen, dtype=torch.float64)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return x, torch.tanh(x @ w) + 0.1 * torch.randn(n, 1, generator=gen, dtype=torch.float64)


def problems(loss: str) -> list[Problem]:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
    gen = torch.Generator().manual_seed(2019)
    torch.manual_seed(2019)
    if loss == "ce":
        mlp = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
        cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(),
                            nn.Linear(4 * 4 * 4, 3)).double()
        return [Problem("tanh MLP (4-8-3, 3-way 4-shot)", mlp, _classes(gen, 3, 4, (4,)),
                        _classes(gen, 3, 5, (4,)), F.cross_entropy),
                Problem("tanh CNN (6x6 images, 3-way 4-shot)", cnn,
                        _classes(gen, 3, 4, (1, 6, 6)), _classes(gen, 3, 5, (1, 6, 6)),
                        F.cross_entropy)]
    linear = nn.Linear(5, 1, bias=False).double()
    mlp = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    return [Problem("linear regression (5 features, closed forms)", linear,
                    _regression(gen, 12, 5), _regression(gen, 10, 5), F.mse_loss),
            Problem("tanh MLP regression (3-8-1)", mlp, _regression(gen, 12, 3),
                    _regression(gen, 10, 3), F.mse_loss)]


def linear_closed_forms(problem: Problem, theta: np.ndarray, *, steps: int, lr: float,
                        lam: float) -> dict[str, np.ndarray]:
    """For the linear MSE problem, L(w) = |X w - y|^2 / n, in numpy/scipy: the K-step GD
    unroll's meta-gradient (the Jacobian recurrence J <- (I - lr (H + lam)) J + lr lam I),
    first-order MAML, and the implicit gradient lam (H + lam)^-1 grad L_test at phi_K."""
    (xs, ys), (xq, yq) = [(x.numpy(), y.numpy()[:, 0]) for x, y in (problem.support,
                                                                    problem.query)]
    n, d = xs.shape
    H = 2 * xs.T @ xs / n
    grad = lambda X, Y, w: 2 * X.T @ (X @ w - Y) / len(Y)   # noqa: E731
    phi, J = theta.copy(), np.eye(d)
    for _ in range(steps):
        phi, J = (phi - lr * (grad(xs, ys, phi) + lam * (phi - theta)),
                  (np.eye(d) - lr * (H + lam * np.eye(d))) @ J + lr * lam * np.eye(d))
    v = grad(xq, yq, phi)
    out = {"maml": J.T @ v, "fomaml": v}
    if lam > 0:
        out["implicit-at-phiK"] = lam * scipy.linalg.solve(H + lam * np.eye(d), v,
                                                           assume_a="pos")
    return out
