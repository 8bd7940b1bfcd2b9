import numpy as np
import pytest
import torch

import synthetic
from suite import LinearRegressionTask, ModuleTask


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


@pytest.fixture
def tanh_task():
    """A 2-layer tanh net (4 -> 6 -> 3, 51 parameters), cross-entropy, float64, and theta."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),
                              torch.nn.Linear(6, 3)).double()
    x, xq = torch.randn(12, 4, dtype=torch.float64), torch.randn(9, 4, dtype=torch.float64)
    task = ModuleTask(net, (x, torch.arange(12) % 3), (xq, torch.arange(9) % 3))
    return task, task.flat_parameters()
