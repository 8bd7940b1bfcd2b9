"""Linear-regression tasks with a controlled condition number, and their exact answers.

Everything here is numpy/scipy in float64 and shares no code with ``suite/``: it is the
reference the suite is checked against.

A task has training data (X, y) with the loss L_train(phi) = |X phi - y|^2 / (2 n) and
training Hessian H = X^T X / n, and test data with the same kind of loss. The inner
objective is (paper eq. 4)

    G(phi) = L_train(phi) + lam/2 |phi - theta|^2,   Hessian H + lam I,

and the generator places the eigenvalues of H + lam I geometrically between
mu = h_min + lam and kappa * mu, so that kappa = (h_max + lam) / (h_min + lam) exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg


def _check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


KAPPA_MAX = 1e12
"""Largest condition number made: in float64 the smallest eigenvalue of H + lam I is lost
in rounding (relative error ~ kappa * 1e-16) beyond it."""


def _check_real(name: str, value, minimum: float, strict: bool = False,
                maximum: float = math.inf) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    bad = value <= minimum if strict else value < minimum
    if not math.isfinite(value) or bad or value > maximum:
        op = ">" if strict else ">="
        upper = f" and <= {maximum:g}" if math.isfinite(maximum) else ""
        raise ValueError(f"{name} must be a finite number {op} {minimum:g}{upper}, "
                         f"got {value!r}")
    return value


@dataclass(frozen=True)
class RegressionTask:
    """One task: training and test data of a linear model (float64 numpy arrays)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    lam: float
    kappa: float

    @property
    def dim(self) -> int:
        return self.X_train.shape[1]

    def train_hessian(self) -> np.ndarray:
        return self.X_train.T @ self.X_train / self.X_train.shape[0]

    def realized_kappa(self) -> float:
        """Condition number of H + lam I from its computed eigenvalues."""
        eig = scipy.linalg.eigvalsh(self.train_hessian()) + self.lam
        return float(eig[-1] / eig[0])

    # Losses and gradients of the test objective, in closed form.
    def test_loss(self, phi: np.ndarray) -> float:
        r = self.X_test @ phi - self.y_test
        return float(r @ r / (2 * self.X_test.shape[0]))

    def test_grad(self, phi: np.ndarray) -> np.ndarray:
        return self.X_test.T @ (self.X_test @ phi - self.y_test) / self.X_test.shape[0]

    def train_grad(self, phi: np.ndarray) -> np.ndarray:
        return self.X_train.T @ (self.X_train @ phi - self.y_train) / self.X_train.shape[0]


def make_task(dim: int, n_train: int, n_test: int, kappa: float, lam: float, *,
              noise: float = 0.1, h_min: float = 0.0, seed: int | np.random.Generator = 0
              ) -> RegressionTask:
    """A task whose inner objective G has condition number exactly ``kappa``.

    ``h_min`` is the smallest eigenvalue of the training Hessian; with ``lam = 0``
    (classic MAML) it must be positive. With ``n_train >= dim`` the eigenvalues of H + lam I
    are geometric from mu = h_min + lam to kappa * mu. With ``n_train < dim`` (few-shot) H has
    rank ``n_train``: dim - n_train eigenvalues of H + lam I equal lam (so h_min must be 0)
    and the other n_train are geometric above it, up to kappa * lam. The task's true
    weights are drawn from N(0, I/dim).
    """
    dim = _check_positive_int("dim", dim)
    n_train = _check_positive_int("n_train", n_train)
    n_test = _check_positive_int("n_test", n_test)
    kappa = _check_real("kappa", kappa, 1.0, maximum=KAPPA_MAX)
    lam = _check_real("lam", lam, 0.0)
    noise = _check_real("noise", noise, 0.0)
    h_min = _check_real("h_min", h_min, 0.0)
    if h_min + lam <= 0:
        raise ValueError(f"lam and h_min are both 0: G would not be strongly convex; give "
                         f"lam > 0 (the proximal term) or h_min > 0 (classic MAML, lam = 0)")
    if isinstance(seed, bool) or not (isinstance(seed, np.random.Generator) or (
            isinstance(seed, (int, np.integer)) and seed >= 0)):
        raise ValueError(f"seed must be an integer >= 0 or a numpy Generator, got {seed!r}")
    if n_train < dim and h_min != 0:
        raise ValueError(f"h_min must be 0 when n_train < dim (H has rank n_train={n_train}), "
                         f"got {h_min}")
    if dim == 1 and kappa != 1.0:
        raise ValueError(f"kappa must be 1 when dim = 1, got {kappa}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    mu = h_min + lam
    rank = min(n_train, dim)
    # Eigenvalues of G's Hessian, geometric up to kappa * mu, both ends exact.
    if rank == dim:
        g_eig = mu * kappa ** np.linspace(0.0, 1.0, dim)
        g_eig[0] = mu
    else:
        g_eig = np.concatenate([np.full(dim - rank, mu),
                                mu * kappa ** np.linspace(0.0, 1.0, rank + 1)[1:]])
    g_eig[-1] = mu * kappa
    h_eig = np.maximum(g_eig - lam, 0.0)
    h_eig[0] = h_min

    U, _ = np.linalg.qr(rng.standard_normal((n_train, rank)))
    V, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    X_train = math.sqrt(n_train) * (U * np.sqrt(h_eig[dim - rank:])) @ V[:, dim - rank:].T
    w_true = rng.standard_normal(dim) / math.sqrt(dim)
    y_train = X_train @ w_true + noise * rng.standard_normal(n_train)
    X_test = rng.standard_normal((n_test, dim))
    y_test = X_test @ w_true + noise * rng.standard_normal(n_test)
    return RegressionTask(X_train, y_train, X_test, y_test, lam, kappa)


def make_meta_batch(n_tasks: int, dim: int, n_train: int, n_test: int, kappa: float, lam: float,
                    *, noise: float = 0.1, h_min: float = 0.0, seed: int = 0) -> list[RegressionTask]:
    """``n_tasks`` independent tasks drawn from one seed (reproducible as a whole)."""
    n_tasks = _check_positive_int("n_tasks", n_tasks)
    rng = np.random.default_rng(_check_positive_int("seed", seed, minimum=0))
    return [make_task(dim, n_train, n_test, kappa, lam, noise=noise, h_min=h_min, seed=rng)
            for _ in range(n_tasks)]


def inner_solution(task: RegressionTask, theta: np.ndarray) -> np.ndarray:
    """Alg*(theta) = argmin G, solved with a Cholesky factorisation of H + lam I."""
    n = task.X_train.shape[0]
    A = task.train_hessian() + task.lam * np.eye(task.dim)
    b = task.X_train.T @ task.y_train / n + task.lam * theta
    return scipy.linalg.cho_solve(scipy.linalg.cho_factor(A), b)


def exact_meta_gradient(task: RegressionTask, theta: np.ndarray) -> np.ndarray:
    """d/dtheta L_test(Alg*(theta)) = (I + H/lam)^-1 grad L_test(Alg*(theta)), lam > 0."""
    if task.lam <= 0:
        raise ValueError(f"lam must be > 0 for the implicit meta-gradient, got {task.lam}")
    A = task.train_hessian() + task.lam * np.eye(task.dim)
    v = task.test_grad(inner_solution(task, theta))
    return task.lam * scipy.linalg.cho_solve(scipy.linalg.cho_factor(A), v)


def prox_inner_solution(task: RegressionTask, theta: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """argmin L_train(phi) + 1/2 sum_i lam_i (phi_i - theta_i)^2 for a vector ``lam`` > 0
    (``task.lam`` is not used): (H + diag(lam)) phi = X^T y / n + lam * theta."""
    lam = np.asarray(lam, dtype=float)
    if lam.shape != (task.dim,) or not np.all(np.isfinite(lam)) or np.any(lam <= 0):
        raise ValueError(f"lam must be a vector of {task.dim} finite entries > 0")
    n = task.X_train.shape[0]
    A = task.train_hessian() + np.diag(lam)
    return scipy.linalg.solve(A, task.X_train.T @ task.y_train / n + lam * theta, assume_a="pos")


def prox_meta_gradients(task: RegressionTask, theta: np.ndarray, lam: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of L_test(phi*(theta, lam)) in theta and in a vector ``lam``, from the dense
    Jacobians of phi*: differentiating (H + diag(lam)) phi* = X^T y / n + lam * theta gives
    dphi*/dtheta = (H + diag(lam))^-1 diag(lam) and dphi*/dlam = (H + diag(lam))^-1
    diag(theta - phi*); each gradient is J^T grad L_test(phi*)."""
    lam = np.asarray(lam, dtype=float)
    phi = prox_inner_solution(task, theta, lam)
    A = task.train_hessian() + np.diag(lam)
    J_theta = scipy.linalg.solve(A, np.diag(lam), assume_a="pos")
    J_lam = scipy.linalg.solve(A, np.diag(theta - phi), assume_a="pos")
    v = task.test_grad(phi)
    return J_theta.T @ v, J_lam.T @ v


def gd_path(task: RegressionTask, theta: np.ndarray, steps: int, lr: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """K steps of GD on G from phi_0 = theta: returns (phi_K, dphi_K/dtheta).

    The Jacobian follows J_{k+1} = (I - lr (H + lam I)) J_k + lr lam I, J_0 = I.
    """
    steps = _check_positive_int("steps", steps, minimum=0)
    lr = _check_real("lr", lr, 0.0, strict=True)
    d = task.dim
    A = task.train_hessian() + task.lam * np.eye(d)
    b = task.X_train.T @ task.y_train / task.X_train.shape[0]
    phi, J = theta.astype(np.float64).copy(), np.eye(d)
    step_matrix = np.eye(d) - lr * A
    for _ in range(steps):
        phi = phi - lr * (A @ phi - b - task.lam * theta)
        J = step_matrix @ J + lr * task.lam * np.eye(d)
    return phi, J


def agd_path(task: RegressionTask, theta: np.ndarray, steps: int, lr: float, momentum: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """K steps of Nesterov's AGD on G from phi_0 = y_0 = theta: (phi_K, dphi_K/dtheta).

    phi_{k+1} = y_k - lr grad G(y_k),  y_{k+1} = phi_{k+1} + m (phi_{k+1} - phi_k);
    the Jacobians of phi and y follow the same linear recurrences.
    """
    steps = _check_positive_int("steps", steps, minimum=0)
    lr = _check_real("lr", lr, 0.0, strict=True)
    d = task.dim
    A = task.train_hessian() + task.lam * np.eye(d)
    b = task.X_train.T @ task.y_train / task.X_train.shape[0]
    phi, y = theta.astype(np.float64).copy(), theta.astype(np.float64).copy()
    J_phi, J_y = np.eye(d), np.eye(d)
    step_matrix = np.eye(d) - lr * A
    for _ in range(steps):
        phi_next = y - lr * (A @ y - b - task.lam * theta)
        J_next = step_matrix @ J_y + lr * task.lam * np.eye(d)
        y = phi_next + momentum * (phi_next - phi)
        J_y = J_next + momentum * (J_next - J_phi)
        phi, J_phi = phi_next, J_next
    return phi, J_phi


def gd_meta_gradient(task: RegressionTask, theta: np.ndarray, steps: int, lr: float) -> np.ndarray:
    """MAML's own target: d/dtheta L_test(phi_K) through K steps of GD (exact)."""
    phi, J = gd_path(task, theta, steps, lr)
    return J.T @ task.test_grad(phi)


def truncated_meta_gradient(task: RegressionTask, theta: np.ndarray, steps: int, lr: float,
                            truncate: int) -> np.ndarray:
    """Backprop through the last ``truncate`` of ``steps`` GD steps only: phi_{K-k} is held
    constant, so dphi_K/dtheta = sum_{i<k} (I - lr (H + lam I))^i lr lam (the prox terms)."""
    truncate = _check_positive_int("truncate", truncate)
    if truncate > steps:
        raise ValueError(f"truncate must be <= steps={steps}, got {truncate}")
    phi, _ = gd_path(task, theta, steps, lr)
    d = task.dim
    step_matrix = np.eye(d) - lr * (task.train_hessian() + task.lam * np.eye(d))
    J, power = np.zeros((d, d)), np.eye(d)
    for _ in range(truncate):
        J += power * lr * task.lam
        power = step_matrix @ power
    return J.T @ task.test_grad(phi)


def agd_meta_gradient(task: RegressionTask, theta: np.ndarray, steps: int, lr: float,
                      momentum: float) -> np.ndarray:
    """d/dtheta L_test(phi_K) through K steps of Nesterov's AGD (exact)."""
    phi, J = agd_path(task, theta, steps, lr, momentum)
    return J.T @ task.test_grad(phi)


def relative_error(estimate, reference) -> float:
    """|estimate - reference| / |reference| in float64 (undefined, and refused, for a zero
    or non-finite reference)."""
    estimate = np.asarray(estimate, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if estimate.shape != reference.shape:
        raise ValueError(f"estimate and reference must have the same shape, got "
                         f"{estimate.shape} and {reference.shape}")
    scale = np.linalg.norm(reference)
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"the reference's norm is {scale}: a relative error needs a finite, "
                         "non-zero reference")
    return float(np.linalg.norm(estimate - reference) / scale)
