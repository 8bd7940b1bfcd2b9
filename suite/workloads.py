"""Workloads for the harnesses: synthetic regression tasks and the paper's 4-layer CNN."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import synthetic

from .batchnorm import ClosedFormBatchNorm2d
from .checks import check_int
from .fastest import UNMEASURED, fastest
from .tasks import LinearRegressionTask, ModuleTask


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


class PrimitiveBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with batch statistics (``track_running_stats=False``) written from
    primitive operations: x -> (x - mean) * (weight / sqrt(var + eps)) + bias by
    ``torch.addcmul``. The same function as the native kernel (equal to ~1e-15 in float64),
    whose double backward, a Hessian-vector product's share, differs in cost; autograd keeps
    more of its intermediates, so unrolled methods hold more memory."""

    def __init__(self, num_features: int, **kwargs):
        super().__init__(num_features, track_running_stats=False, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean((0, 2, 3), keepdim=True)
        centred = x - mean
        var = centred.pow(2).mean((0, 2, 3), keepdim=True)
        scale = self.weight[:, None, None] * torch.rsqrt(var + self.eps)
        return torch.addcmul(self.bias[:, None, None], centred, scale)


BATCHNORMS = {"native": lambda c: nn.BatchNorm2d(c, track_running_stats=False),
              "primitive": PrimitiveBatchNorm2d, "closed-form": ClosedFormBatchNorm2d}

FASTEST_BATCHNORM = fastest("batchnorm")
"""The BatchNorm ``cnn_tasks(batchnorm="auto")`` takes per device type: the one whose iMAML
meta-gradient ``python -m suite.sweeps hvp-cost`` timed fastest on its default 20-way 5-shot
tasks (all compute the same function), recorded in ``results/fastest.json``
(``suite.fastest``). The choice depends on the size: on 5-way 1-shot tasks per-operation
overhead dominates and native is faster on the CPU too (``results/hvp_cost_cpu_5w1s.csv``), so
conv4 and the Omniglot runs name theirs."""


def resolve_batchnorm(batchnorm: str, device) -> str:
    """``batchnorm`` checked against ``BATCHNORMS``; "auto": ``FASTEST_BATCHNORM`` for
    ``device``'s type (native where unmeasured)."""
    if batchnorm == "auto":
        return FASTEST_BATCHNORM.get(torch.device(device).type, UNMEASURED["batchnorm"])
    if batchnorm not in BATCHNORMS:
        raise ValueError(f"batchnorm must be 'auto' or one of {sorted(BATCHNORMS)}, got "
                         f"{batchnorm!r}")
    return batchnorm


def check_batchnorm(batchnorm: str) -> str:
    """``batchnorm`` if it names one of ``BATCHNORMS`` ("auto" needs a device and a size)."""
    if batchnorm == "auto":
        raise ValueError(f"batchnorm='auto' is cnn_tasks' choice (measured on its 20-way 5-shot "
                         f"tasks); name one of {sorted(BATCHNORMS)}")
    if batchnorm not in BATCHNORMS:
        raise ValueError(f"batchnorm must be one of {sorted(BATCHNORMS)}, got {batchnorm!r}")
    return batchnorm


def conv4(n_way: int, channels: int = 64, in_channels: int = 1,
          activation: type[nn.Module] = nn.ReLU, batchnorm: str = "native") -> nn.Sequential:
    """The 4-layer CNN of MAML and iMAML for 28x28 inputs: 4 x [conv 3x3 stride 2 pad 1,
    BatchNorm (batch statistics, no running stats), ReLU], flatten, linear to ``n_way``.
    ``activation=nn.Tanh`` gives the smooth variant used where exactness is tested.
    ``batchnorm``: "native" (``nn.BatchNorm2d``), "closed-form" (``ClosedFormBatchNorm2d``:
    native kernels, double backward in closed form, the cheapest Hessian-vector product
    measured) or "primitive" (``PrimitiveBatchNorm2d``); all the same function."""
    batchnorm = check_batchnorm(batchnorm)
    layers, c = [], in_channels
    for _ in range(4):
        layers += [nn.Conv2d(c, channels, 3, stride=2, padding=1),
                   BATCHNORMS[batchnorm](channels), activation()]
        c = channels
    # 28 -> 14 -> 7 -> 4 -> 2 spatially.
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * 2 * 2, n_way))


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
