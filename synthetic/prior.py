"""Linear-regression tasks drawn around a common mean with a different spread per
coordinate, and their Bayes-optimal prior (numpy, float64; shares no code with ``suite``).

Task t: w_t = mean + spreads * z (z ~ N(0, I)), inputs x ~ N(0, I), y = x^T w_t + noise * e.
With L_train(phi) = |X phi - y|^2 / (2 n), the posterior mean of w_t given the n training
points minimizes

    |X w - y|^2 / (2 noise^2) + 1/2 sum_i (w_i - mean_i)^2 / spreads_i^2,

which is noise^2 / n times L_train(w) + 1/2 sum_i lam_i (w_i - mean_i)^2 with

    lam_i = noise^2 / (n spreads_i^2),   theta = mean.

The posterior mean minimizes the expected squared error in w, hence the expected test loss
(a quadratic form in w - w_t): this (theta, lam) is the best any iMAML prior can do on these
tasks, and 1 / spreads^2 orders the coordinates as lam should.
"""
from __future__ import annotations

import math

import numpy as np

from .regression import RegressionTask, _check_positive_int, _check_real


def bayes_lam(spreads: np.ndarray, noise: float, n_train: int) -> np.ndarray:
    """The prior precision in the iMAML scaling: noise^2 / (n_train spreads^2)."""
    return noise ** 2 / (n_train * np.asarray(spreads, dtype=float) ** 2)


def make_prior_tasks(n_tasks: int, *, mean: np.ndarray, spreads: np.ndarray, n_train: int,
                     n_test: int, noise: float, seed) -> list[RegressionTask]:
    """``n_tasks`` tasks from one seed (an int or a numpy Generator). Their ``lam`` and
    ``kappa`` fields are NaN: these tasks have no prox strength or condition number of their
    own (see ``bayes_lam``)."""
    n_tasks = _check_positive_int("n_tasks", n_tasks)
    n_train, n_test = _check_positive_int("n_train", n_train), _check_positive_int("n_test", n_test)
    noise = _check_real("noise", noise, 0.0, strict=True)
    mean, spreads = np.asarray(mean, dtype=float), np.asarray(spreads, dtype=float)
    if mean.ndim != 1 or spreads.shape != mean.shape:
        raise ValueError(f"mean and spreads must be vectors of one length, got shapes "
                         f"{mean.shape} and {spreads.shape}")
    if not (np.all(np.isfinite(spreads)) and np.all(spreads > 0)):
        raise ValueError("every spread must be a finite number > 0")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(
        _check_positive_int("seed", seed, minimum=0))
    dim = mean.size
    tasks = []
    for _ in range(n_tasks):
        w = mean + spreads * rng.standard_normal(dim)
        X = rng.standard_normal((n_train + n_test, dim))
        y = X @ w + noise * rng.standard_normal(n_train + n_test)
        tasks.append(RegressionTask(X[:n_train], y[:n_train], X[n_train:], y[n_train:],
                                    math.nan, math.nan))
    return tasks
