import numpy as np
import pytest
import torch

import synthetic
from suite import LinearRegressionTask


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Plain ``pytest`` runs each benchmark once as a check; ``--benchmark-only`` (or
    ``--benchmark-enable``) times them."""
    if hasattr(config.option, "benchmark_disable"):
        if not (config.option.benchmark_only or config.option.benchmark_enable):
            config.option.benchmark_disable = True


@pytest.fixture
def quad():
    """A small float64 quadratic task (dim 8, kappa 10, lam 1) with its numpy reference."""
    ref = synthetic.make_task(8, 32, 24, kappa=10.0, lam=1.0, seed=3)
    theta = np.random.default_rng(7).standard_normal(8)
    return ref, LinearRegressionTask.from_synthetic(ref), theta, torch.tensor(theta)
