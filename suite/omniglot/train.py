"""Meta-training on Omniglot for every method, with checkpoints, resume and evaluation.

Outer loop: Adam on theta (the 4-layer CNN's flat parameters), a meta-batch of N-way K-shot
tasks per step. Inner loop and meta-gradient per method (the paper's settings by default):

    maml        GD on L_train (lam = 0), backprop through every step
    fomaml      GD on L_train (lam = 0), grad L_test at the adapted parameters
    truncated   GD on G (lam as iMAML), backprop through the last ``truncate`` steps
    reptile     GD on L_train (lam = 0), direction theta - phi (Nichol et al. 2018)
    imaml-gd    GD on G = L_train + lam/2 |phi - theta|^2, then CG (implicit gradient)
    imaml-hf    Newton-CG (Hessian-free, line search) on G, then CG

Evaluation adapts on each held-out task's support set with the method's own inner loop and
scores the query set: mean accuracy over tasks with its 95% confidence interval.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..methods import meta_gradient_batch
from ..results import provenance, write_csv_atomic
from ..solvers import GD, InnerProblem, NewtonCG
from ..tasks import ModuleTask
from ..workloads import conv4
from .data import Characters, TaskSampler

METHODS = ("maml", "fomaml", "truncated", "reptile", "imaml-gd", "imaml-hf")


@dataclass
class TrainConfig:
    method: str
    n_way: int = 5
    k_shot: int = 1
    k_query: int = 15
    inner_steps: int = 16
    inner_lr: float = 0.1
    lam: float = 2.0              # iMAML and truncated; the other methods use lam = 0
    cg_steps: int = 5
    hf_steps: int = 5             # Newton iterations of imaml-hf
    truncate: int = 5
    meta_batch: int = 8
    outer_lr: float = 1e-3
    max_iterations: int = 10_000
    budget_s: float = math.inf    # wall-clock budget for training (resume continues it)
    eval_tasks: int = 600
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 25

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        for name in ("n_way", "k_shot", "k_query", "inner_steps", "meta_batch", "eval_tasks",
                     "cg_steps", "hf_steps", "truncate", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("inner_lr", "outer_lr", "budget_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.method in ("imaml-gd", "imaml-hf", "truncated") and not self.lam > 0:
            raise ValueError(f"lam must be > 0 for {self.method}, got {self.lam}")


@dataclass
class Learner:
    """What the outer loop updates and what a checkpoint holds."""

    theta: torch.Tensor
    optimizer: torch.optim.Adam
    iteration: int = 0
    elapsed_s: float = 0.0
    rng_state: dict = field(default_factory=dict)


def inner(cfg: TrainConfig):
    """(solver, lam, meta-gradient method and options) of a training method."""
    if cfg.method == "imaml-hf":
        return NewtonCG(cfg.hf_steps, cg_steps=cfg.cg_steps), cfg.lam, "imaml", \
            {"cg_steps": cfg.cg_steps, "on_breakdown": "return"}
    solver = GD(cfg.inner_steps, cfg.inner_lr)
    if cfg.method == "imaml-gd":
        return solver, cfg.lam, "imaml", {"cg_steps": cfg.cg_steps, "on_breakdown": "return"}
    if cfg.method == "truncated":
        # Truncated backprop needs the proximal term: with lam = 0, theta enters only through
        # phi_0 and a truncated backward pass never reaches it (a zero meta-gradient).
        return solver, cfg.lam, "truncated", {"truncate": min(cfg.truncate, cfg.inner_steps)}
    return solver, 0.0, cfg.method, {}


def adapt(cfg: TrainConfig, task: ModuleTask, theta: torch.Tensor) -> torch.Tensor:
    solver, lam, _, _ = inner(cfg)
    return solver.solve(InnerProblem(task, theta.detach(), lam)).phi.detach()


def outer_direction(cfg: TrainConfig, tasks, theta):
    """The direction handed to Adam, and the statistics of computing it."""
    if cfg.method == "reptile":
        phis = [adapt(cfg, t, theta) for t in tasks]
        return theta.detach() - torch.stack(phis).mean(0), {"cg_breakdown": False}
    solver, lam, method, options = inner(cfg)
    result = meta_gradient_batch(method, tasks, theta.detach(), lam=lam, solver=solver, **options)
    return result.grad, {"cg_breakdown": result.stats.cg_breakdown}


def _checkpoint_path(out: Path) -> Path:
    return out / "checkpoint.pt"


def save(learner: Learner, cfg: TrainConfig, out: Path, sampler: TaskSampler) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {"config": asdict(cfg), "theta": learner.theta.detach().cpu(),
             "optimizer": learner.optimizer.state_dict(), "iteration": learner.iteration,
             "elapsed_s": learner.elapsed_s, "rng_state": sampler.rng.bit_generator.state}
    tmp = _checkpoint_path(out).with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(_checkpoint_path(out))


def train(cfg: TrainConfig, chars: Characters, out: Path, *, progress=None) -> Learner:
    """Train until ``max_iterations`` or ``budget_s``; resumes from ``out/checkpoint.pt``
    (same method and settings) and appends to ``out/metrics.csv``."""
    torch.manual_seed(cfg.seed)
    model = conv4(cfg.n_way).to(cfg.device)
    sampler = TaskSampler(chars, cfg.n_way, cfg.k_shot, cfg.k_query, seed=cfg.seed,
                          device=cfg.device)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).requires_grad_(True)
    learner = Learner(theta, torch.optim.Adam([theta], lr=cfg.outer_lr))
    rows = []
    ckpt = _checkpoint_path(out)
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        if state["config"] | {"budget_s": 0, "max_iterations": 0, "eval_tasks": 0} != \
                asdict(cfg) | {"budget_s": 0, "max_iterations": 0, "eval_tasks": 0}:
            raise ValueError(f"{ckpt} was written with other settings; choose another output "
                             "folder or remove it")
        with torch.no_grad():
            theta.copy_(state["theta"])
        learner.optimizer.load_state_dict(state["optimizer"])
        learner.iteration, learner.elapsed_s = state["iteration"], state["elapsed_s"]
        sampler.rng.bit_generator.state = state["rng_state"]
        if (out / "metrics.csv").exists():
            rows = pd.read_csv(out / "metrics.csv").to_dict("records")
    start = time.perf_counter() - learner.elapsed_s
    while learner.iteration < cfg.max_iterations and learner.elapsed_s < cfg.budget_s:
        tasks = [ModuleTask(model, *sampler.sample()) for _ in range(cfg.meta_batch)]
        direction, info = outer_direction(cfg, tasks, theta)
        learner.optimizer.zero_grad()
        theta.grad = direction
        learner.optimizer.step()
        learner.iteration += 1
        learner.elapsed_s = time.perf_counter() - start
        with torch.no_grad():
            query_loss = float(np.mean([t.test_loss(theta) for t in tasks[:2]]))
        rows.append({"iteration": learner.iteration, "elapsed_s": learner.elapsed_s,
                     "query_loss_at_theta": query_loss,
                     "direction_norm": float(direction.norm()),
                     "cg_breakdown": bool(info["cg_breakdown"])})
        if progress is not None:
            progress.update(1)
        if learner.iteration % cfg.checkpoint_every == 0:
            _flush(learner, cfg, out, sampler, rows)
    _flush(learner, cfg, out, sampler, rows)
    return learner


def _flush(learner, cfg, out, sampler, rows):
    save(learner, cfg, out, sampler)
    write_csv_atomic(pd.DataFrame(rows), out / "metrics.csv")


def evaluate(cfg: TrainConfig, theta: torch.Tensor, chars: Characters, *,
             seed: int = 12345) -> dict:
    """Mean query accuracy over ``cfg.eval_tasks`` held-out tasks, with a 95% interval."""
    torch.manual_seed(cfg.seed)
    model = conv4(cfg.n_way).to(cfg.device)
    sampler = TaskSampler(chars, cfg.n_way, cfg.k_shot, cfg.k_query, seed=seed,
                          device=cfg.device)
    accuracies = []
    for _ in range(cfg.eval_tasks):
        task = ModuleTask(model, *sampler.sample())
        phi = adapt(cfg, task, theta)
        x, y = task.query
        with torch.no_grad():
            logits = torch.func.functional_call(model, task.unflatten(phi), (x,))
        accuracies.append(float((logits.argmax(1) == y).float().mean()))
    acc = np.asarray(accuracies)
    half = 1.96 * acc.std(ddof=1) / math.sqrt(len(acc))
    return {"accuracy": float(acc.mean()), "ci95": float(half), "tasks": len(acc),
            **provenance(device=cfg.device, dtype="float32", threads=torch.get_num_threads(),
                         seed=seed)}
