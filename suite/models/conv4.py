"""The paper's 4-layer CNN (conv4) and the BatchNorms it can be built with: the same function
three ways, whose Hessian-vector products differ in cost."""
from __future__ import annotations

import torch
from torch import nn

from suite.core.fastest import UNMEASURED, fastest
from suite.models.batchnorm import ClosedFormBatchNorm2d


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
meta-gradient ``imaml-suite sweeps hvp-cost`` timed fastest on its default 20-way 5-shot
tasks (all compute the same function), recorded in ``results/fastest.json``
(``suite.core.fastest``). The choice depends on the size: on 5-way 1-shot tasks per-operation
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
