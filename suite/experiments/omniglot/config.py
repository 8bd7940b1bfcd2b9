"""A training run's settings (``TrainConfig``, checked on construction) and what its outer
loop updates (``Learner``, with ``LayerLam`` for a recipe that learns lam per layer)."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import pandas as pd
import torch

from suite.core.validation import check_float, check_int
from suite.experiments.omniglot import recipes
from suite.models.conv4 import check_batchnorm


DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Fields that may change between a checkpoint and its resumption.
RESUMABLE = ("max_iterations", "budget_s", "eval_tasks", "checkpoint_every", "eval_every",
             "curve_tasks", "probe_every", "device")


@dataclass
class TrainConfig:
    recipe: str
    n_way: int = 5
    k_shot: int = 1
    k_query: int = 15
    inner_steps: int = 16
    inner_lr: float = 0.1
    cg_steps: int = 5
    hf_steps: int = 5             # Newton iterations of imaml-hf
    truncate: int = 5
    meta_batch: int = 8
    outer_lr: float = 1e-3
    max_iterations: int = 300
    budget_s: float = math.inf    # wall-clock budget for training (resume continues it)
    eval_tasks: int = 600
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 25
    eval_every: int = 50          # learning-curve point every this many iterations
    curve_tasks: int = 100
    probe_every: int = 25
    dtype: str = "float32"
    lam_lr: float = 0.01          # outer Adam's step on log lam (recipes that learn lam)
    batchnorm: str = "native"     # conv4's BatchNorm (native: as Table 2 was trained)

    def __post_init__(self):
        self.spec = recipes.get(self.recipe)
        check_int("n_way", self.n_way, minimum=2)
        for name in ("k_shot", "k_query", "inner_steps", "meta_batch", "eval_tasks",
                     "cg_steps", "hf_steps", "truncate", "checkpoint_every", "eval_every",
                     "curve_tasks", "probe_every"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("max_iterations", self.max_iterations)
        check_int("seed", self.seed)
        check_float("inner_lr", self.inner_lr, 0.0)
        check_float("outer_lr", self.outer_lr, 0.0)
        check_float("lam_lr", self.lam_lr, 0.0)
        check_batchnorm(self.batchnorm)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not self.budget_s > 0:
            raise ValueError(f"budget_s must be > 0, got {self.budget_s!r}")
        if self.spec.train_shots is not None and self.k_shot > self.spec.train_shots:
            raise ValueError(f"k_shot must be <= {self.spec.train_shots} for recipe "
                             f"{self.recipe} (it trains on that many shots), got {self.k_shot}")

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def train_shots(self) -> int:
        return self.spec.train_shots or self.k_shot


class LayerLam:
    """One lam per parameter tensor of the model, learned in log space:
    lam_i = exp(log_lam[layer of i]); autograd carries d/dlam back to log_lam."""

    def __init__(self, model: torch.nn.Module, init: float):
        named = list(model.named_parameters())
        p = named[0][1]
        self.names = [n for n, _ in named]
        self.sizes = torch.tensor([q.numel() for _, q in named], device=p.device)
        self.layer = torch.repeat_interleave(torch.arange(len(named), device=p.device),
                                             self.sizes)
        self.log_lam = torch.full((len(named),), math.log(init), dtype=p.dtype,
                                  device=p.device, requires_grad=True)

    def vector(self, differentiable: bool = False) -> torch.Tensor:
        """lam as a vector of theta's length (``differentiable``: in the graph of log_lam)."""
        log_lam = self.log_lam if differentiable else self.log_lam.detach()
        return torch.repeat_interleave(log_lam.exp(), self.sizes)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"parameter": self.names, "entries": self.sizes.tolist(),
                             "lam": self.log_lam.detach().exp().tolist()})


@dataclass
class Learner:
    """What the outer loop updates and what a checkpoint holds."""

    theta: torch.Tensor
    optimizer: torch.optim.Optimizer
    iteration: int = 0
    elapsed_s: float = 0.0
    layer_lam: LayerLam | None = None

    def lam(self, cfg: "TrainConfig", differentiable: bool = False):
        """The lam the recipe adapts with: its own, or the learned vector (``differentiable``:
        in the graph of the learned log lam)."""
        return cfg.spec.lam if self.layer_lam is None else self.layer_lam.vector(differentiable)
