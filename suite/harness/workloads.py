"""Workloads for the harnesses: synthetic regression tasks and few-shot tasks for the paper's
4-layer CNN (``suite.models.conv4``) on random images."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import synthetic

from suite.core.tasks import LinearRegressionTask, ModuleTask
from suite.core.validation import check_int
from suite.models.conv4 import conv4, resolve_batchnorm


@dataclass
class SyntheticWorkload:
    """Tasks of one kappa, their numpy references, and a theta (float64 numpy and torch)."""

    references: list
    tasks: list
    theta: torch.Tensor
    kappa: float
    lam: float

    @property
    def smoothness(self) -> float:
        """Largest curvature of G (the same for every task): lr = 1/smoothness for GD."""
        return self.kappa * self.lam  # h_min = 0, so mu = lam and L = kappa * lam

    def exact(self) -> np.ndarray:
        """The exact meta-gradient of Alg*, averaged over the tasks."""
        theta = self.theta.cpu().double().numpy()
        return np.mean([synthetic.exact_meta_gradient(r, theta) for r in self.references], 0)


def synthetic_workload(*, dim: int = 20, kappa: float = 100.0, lam: float = 1.0,
                       n_tasks: int = 1, n_train: int | None = None, n_test: int = 40,
                       noise: float = 0.1, seed: int = 0, dtype=torch.float64,
                       device="cpu") -> SyntheticWorkload:
    n_train = n_train or 2 * dim
    refs = synthetic.make_meta_batch(n_tasks, dim, n_train, n_test, kappa, lam, noise=noise,
                                     seed=seed)
    tasks = [LinearRegressionTask.from_synthetic(r, dtype=dtype, device=device) for r in refs]
    theta = torch.as_tensor(np.random.default_rng(seed + 1).standard_normal(dim),
                            dtype=dtype, device=device)
    return SyntheticWorkload(refs, tasks, theta, kappa, lam)


def random_images(n_way: int, shots: int, generator: torch.Generator, *, dtype, device):
    """``n_way * shots`` random 28x28 images with labels 0..n_way-1 (``shots`` each)."""
    x = torch.rand(n_way * shots, 1, 28, 28, generator=generator, dtype=dtype)
    y = torch.arange(n_way).repeat_interleave(shots)
    return x.to(device), y.to(device)


def cnn_tasks(*, n_way: int = 20, k_shot: int = 5, k_query: int | None = None,
              n_tasks: int = 1, seed: int = 0, dtype=torch.float32, device="cpu",
              batchnorm: str = "auto"):
    """A meta-batch of N-way K-shot tasks on random images for the 4-layer CNN, and theta.

    Random pixels are valid for time and memory, whose cost does not depend on the values.
    ``batchnorm="auto"``: the fastest for iMAML on ``device`` (``FASTEST_BATCHNORM``).
    """
    n_way, k_shot = check_int("n_way", n_way, 2), check_int("k_shot", k_shot, 1)
    k_query = check_int("k_query", k_query if k_query is not None else k_shot, 1)
    n_tasks = check_int("n_tasks", n_tasks, 1)
    torch.manual_seed(seed)
    model = conv4(n_way, batchnorm=resolve_batchnorm(batchnorm, device)).to(device=device,
                                                                           dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    tasks = [ModuleTask(model, random_images(n_way, k_shot, g, dtype=dtype, device=device),
                        random_images(n_way, k_query, g, dtype=dtype, device=device))
             for _ in range(n_tasks)]
    return tasks, tasks[0].flat_parameters()
