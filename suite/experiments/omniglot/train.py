"""Meta-training on Omniglot for every recipe (``recipes.RECIPES``), with checkpoints, resume,
diagnostics per outer iteration, a held-out learning curve, and evaluation.

Outer loop: the recipe's outer step (``OUTER``) on theta (the 4-layer CNN's flat parameters)
with the mean direction of its method over a meta-batch of N-way K-shot tasks: Adam for the
meta-gradients; Reptile's direction theta - phi with SGD at eps annealed linearly to 0 over
``max_iterations`` (theta += eps (mean phi - theta)), as published. A recipe with
``learn_lam`` also learns one lam per parameter tensor (``LayerLam``): Adam on log lam at
``lam_lr`` with d/dlam from the same implicit solve; ``lam.csv`` holds the learned values.

``metrics.csv`` holds one row per outer iteration: training seconds, query loss at theta,
the direction's norm and, for implicit recipes, the mean inner stationarity
|grad G(phi)| / |grad G(theta)|, the largest CG residual, the share of tasks whose CG met
negative curvature, the earliest iteration it did, the smallest curvature p^T A p / |p|^2,
and the tasks given the first-order direction. Every ``probe_every`` iterations, the cosine
between the recipe's direction on a fixed probe task and MAML's exact direction through the
same inner loop (where that loop is differentiable). ``curve.csv``: held-out accuracy every
``eval_every`` iterations on ``curve_tasks`` fixed tasks.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from suite.harness import cli
from suite.core.adapt import adapt
from suite.core.validation import check_float, check_int
from suite.harness.cli import Interrupted, StopRequest
from suite.harness.distributed import World, check_divisible
from suite.core.methods import Stats, meta_gradient, meta_gradient_batch
from suite.harness.results import provenance, write_csv_atomic
from suite.core.solvers import InnerProblem, for_tasks, run_solver
from suite.core.tasks import ModuleTask
from suite.models.conv4 import check_batchnorm, conv4
from suite.experiments.omniglot import recipes
from suite.experiments.omniglot.data import Characters, TaskSampler

EVAL_SEED = 12345      # held-out tasks of the final evaluation
CURVE_SEED = 54321     # held-out tasks of the learning curve
PROBE_SEED = 999       # the training task of the cosine probe
# Fields that may change between a checkpoint and its resumption.
DTYPES = {"float32": torch.float32, "float64": torch.float64}
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


def model_for(cfg: TrainConfig):
    torch.manual_seed(cfg.seed)
    return conv4(cfg.n_way, batchnorm=cfg.batchnorm).to(device=cfg.device,
                                                         dtype=DTYPES[cfg.dtype])


def sampler_for(cfg: TrainConfig, chars: Characters, *, seed: int, k_shot: int | None = None,
                k_query: int | None = None) -> TaskSampler:
    return TaskSampler(chars, cfg.n_way, k_shot or cfg.k_shot, k_query or cfg.k_query,
                       seed=seed, device=cfg.device, dtype=DTYPES[cfg.dtype])


def train_sampler(cfg: TrainConfig, chars: Characters) -> TaskSampler:
    per_char = chars.images.shape[1]
    return sampler_for(cfg, chars, seed=cfg.seed, k_shot=cfg.train_shots,
                       k_query=min(cfg.k_query, per_char - cfg.train_shots))


def outer_direction(cfg: TrainConfig, solver, tasks, theta, world: World = World(), lam=None):
    """The direction handed to the outer optimizer (the mean over all ``tasks``, of which
    this rank computes its share) and the diagnostics of computing it. A learned ``lam`` (a
    vector in the graph of its parameters: ``Learner.lam(cfg, differentiable=True)``) is
    adapted through ``suite.core.adapt``; ``info["lam_grad"]`` is then the mean d/dlam, to be
    backpropagated into those parameters (not a diagnostic)."""
    spec = cfg.spec
    lam = spec.lam if lam is None else lam
    learned = torch.is_tensor(lam) and lam.requires_grad
    mine = world.share(len(tasks))
    # Every rank fixes every task's draws (Adam's mini-batches), so the stream stays in step.
    solvers = for_tasks(solver, tasks)
    options = spec.meta_options(cfg)
    if learned:
        theta_leaf, results = theta.detach().requires_grad_(True), []
        loss = sum(tasks[i].test_loss(adapt(spec.method, tasks[i], theta_leaf, lam=lam,
                                            solver=solvers[i], on_backward=results.append,
                                            **options)) for i in mine) / len(mine)
        grad, lam_grad = torch.autograd.grad(loss, [theta_leaf, lam])
        stats = Stats.combine([r.stats for r in results])
    else:
        result = meta_gradient_batch(spec.method, [tasks[i] for i in mine], theta.detach(),
                                     lam=lam, solver=[solvers[i] for i in mine], **options)
        grad, stats = result.grad, result.stats
    direction = world.mean(grad)
    if not spec.implicit:
        return direction, {}
    s = Stats.combine(world.gather(stats))
    extra = {"lam_grad": world.mean(lam_grad)} if learned else {}
    return direction, extra | {
        "inner_stationarity": s.inner_stationarity, "cg_residual": s.cg_residual,
        "cg_breakdown": s.cg_breakdowns / len(tasks), "cg_breakdown_iteration":
            s.cg_breakdown_iteration, "cg_min_curvature": s.cg_min_curvature,
        "cg_fallbacks": s.cg_fallbacks}


def probe_cosine(cfg: TrainConfig, solver, task, theta, lam=None) -> float:
    """cos(recipe's direction, MAML's exact direction through the same inner loop) on one
    task; NaN where the inner loop is not differentiable (Newton-CG, Adam)."""
    lam = cfg.spec.lam if lam is None else lam
    if not getattr(solver, "differentiable", False):
        return math.nan
    own, _ = outer_direction(cfg, solver, [task], theta, lam=lam)   # this process alone
    exact = meta_gradient("maml", task, theta.detach(), lam=lam, solver=solver).grad
    return float(torch.dot(own, exact) / (own.norm() * exact.norm()))


def _adam(cfg: TrainConfig, theta, layer_lam: LayerLam | None):
    groups = [{"params": [theta]}]
    if layer_lam is not None:
        groups.append({"params": [layer_lam.log_lam], "lr": cfg.lam_lr})
    return torch.optim.Adam(groups, lr=cfg.outer_lr)


def reptile_step_size(cfg: TrainConfig, iteration: int) -> float:
    """eps at outer iteration ``iteration`` (0-based): 1 -> 0 linearly over max_iterations."""
    return recipes.REPTILE["meta_step"] * (1.0 - iteration / max(cfg.max_iterations, 1))


# The outer steps (``Recipe.outer``): (optimizer factory, step size at an iteration or None
# to keep the optimizer's). "annealed-sgd" is Reptile's as published: theta += eps (phi -
# theta), that is SGD on the direction theta - phi, eps 1 -> 0 linearly.
OUTER = {
    "adam": (_adam, None),
    "annealed-sgd": (lambda cfg, theta, layer_lam: torch.optim.SGD(
        [theta], lr=recipes.REPTILE["meta_step"]), reptile_step_size),
}


def make_optimizer(cfg: TrainConfig, theta, layer_lam: LayerLam | None = None
                   ) -> torch.optim.Optimizer:
    return OUTER[cfg.spec.outer][0](cfg, theta, layer_lam)


def _checkpoint_path(out: Path) -> Path:
    return out / "checkpoint.pt"


def _previous_path(out: Path) -> Path:
    return out / "checkpoint.prev.pt"


def load_checkpoint(out: Path, say=None) -> dict | None:
    """The newest checkpoint under ``out`` that loads: ``checkpoint.pt``, else the previous
    one ``checkpoint.prev.pt`` (a file cut short by a crash while writing does not load), else
    None (start over). ``say(line)`` hears which was taken and why."""
    say = say or (lambda line: print(line, file=sys.stderr))
    failures = []
    for path in (_checkpoint_path(out), _previous_path(out)):
        if not path.exists():
            continue
        try:
            state = torch.load(path, weights_only=False)
            if not isinstance(state, dict) or "iteration" not in state:
                raise ValueError("not a training checkpoint")
        except Exception as err:   # a torn or foreign file: say so, never die in torch.load
            failures.append(f"{path.name} does not load ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''})")
            continue
        if failures:
            say(f"{out}: {'; '.join(failures)}; resuming from {path.name} at iteration "
                f"{state['iteration']}")
        return state
    if failures:
        say(f"{out}: {'; '.join(failures)}; no checkpoint loads, starting over")
    return None


def _same_run(saved: dict, cfg: TrainConfig) -> bool:
    """Settings equal, except the resumable ones; fields added since the checkpoint was
    written take their defaults."""
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.name != "recipe"}
    current = {k: v for k, v in cfg.as_dict().items() if k not in RESUMABLE}
    old = {k: v for k, v in {**defaults, **saved}.items() if k not in RESUMABLE}
    return old == current


def save(learner: Learner, cfg: TrainConfig, out: Path, rngs: dict, world: World) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {"config": cfg.as_dict(), "recipe_spec": cfg.spec.signature(),
             "world_size": world.size,
             "theta": learner.theta.detach().cpu(),
             "log_lam": (None if learner.layer_lam is None
                         else learner.layer_lam.log_lam.detach().cpu()),
             "optimizer": learner.optimizer.state_dict(), "iteration": learner.iteration,
             "elapsed_s": learner.elapsed_s,
             "rng_state": {k: r.bit_generator.state for k, r in rngs.items()}}
    # Atomic: a temporary file, flushed to disk, then renamed; the last checkpoint is kept as
    # the previous one, for when the newest turns out unreadable.
    tmp = _checkpoint_path(out).with_suffix(".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if _checkpoint_path(out).exists():
        os.replace(_checkpoint_path(out), _previous_path(out))
    os.replace(tmp, _checkpoint_path(out))


def train(cfg: TrainConfig, chars: Characters, out: Path, *, heldout: Characters | None = None,
          progress=None, world: World = World()) -> Learner:
    """Train until ``max_iterations`` or ``budget_s``; resumes from ``out/checkpoint.pt``
    (same recipe and settings, any number of processes) and appends to ``out/metrics.csv``
    (and ``out/curve.csv`` when ``heldout`` characters are given). With several processes
    (``world``) each computes its share of every meta-batch and rank 0 alone writes."""
    check_divisible("meta_batch", cfg.meta_batch, world.size)
    model = model_for(cfg)
    sampler = train_sampler(cfg, chars)
    solver_rng = np.random.default_rng(cfg.seed + 1)
    rngs = {"sampler": sampler.rng, "solver": solver_rng}
    solver = cfg.spec.train_solver(cfg, solver_rng)
    probe = ModuleTask(model, *sampler_for(cfg, chars, seed=PROBE_SEED).sample())
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).requires_grad_(True)
    layer_lam = LayerLam(model, cfg.spec.lam) if cfg.spec.learn_lam else None
    learner = Learner(theta, make_optimizer(cfg, theta, layer_lam), layer_lam=layer_lam)
    rows, curve = [], []
    ckpt = _checkpoint_path(out)
    state = load_checkpoint(out, say=None if world.main else (lambda line: None))
    if state is not None:
        if not _same_run(state["config"], cfg) \
                or state.get("recipe_spec") != cfg.spec.signature():
            raise ValueError(f"{ckpt} was written with other settings; choose another output "
                             "folder or remove it")
        with torch.no_grad():
            theta.copy_(state["theta"])
            if layer_lam is not None:
                layer_lam.log_lam.copy_(state["log_lam"])
        learner.optimizer.load_state_dict(state["optimizer"])
        learner.iteration, learner.elapsed_s = state["iteration"], state["elapsed_s"]
        for k, r in rngs.items():
            if k in state["rng_state"]:
                r.bit_generator.state = state["rng_state"][k]
        for name, target in (("metrics.csv", rows), ("curve.csv", curve)):
            if (out / name).exists():   # rows beyond the checkpoint taken are redone
                target += [r for r in pd.read_csv(out / name).to_dict("records")
                           if r["iteration"] <= learner.iteration]
    done = {int(r["iteration"]) for r in curve}

    def curve_point():
        if heldout is not None and learner.iteration not in done:
            acc = evaluate(cfg, learner.theta.detach(), heldout, tasks=cfg.curve_tasks,
                           seed=CURVE_SEED, adaptations=(cfg.spec.evaluation,), world=world,
                           lam=learner.lam(cfg))
            curve.append({"iteration": learner.iteration, "train_s": learner.elapsed_s,
                          "accuracy": acc[cfg.spec.evaluation]["accuracy"],
                          "ci95": acc[cfg.spec.evaluation]["ci95"]})
            done.add(learner.iteration)

    cli.progress(f"{cfg.recipe}: " + (f"checkpoint at iteration {learner.iteration} in {out}"
                                      if state is not None else "no checkpoint yet"))
    with StopRequest(say=None if world.main else (lambda line: None)) as stop:
        if learner.iteration % cfg.eval_every == 0:   # a resumed run keeps the curve's grid
            curve_point()
        while learner.iteration < cfg.max_iterations and learner.elapsed_s < cfg.budget_s:
            _iteration(cfg, learner, model, sampler, solver, probe, world, rows, progress)
            if learner.iteration % cfg.eval_every == 0:
                curve_point()
            stopped = [s for s in world.gather(stop.signum) if s is not None]
            if stopped or learner.iteration % cfg.checkpoint_every == 0:
                _flush(learner, cfg, out, rngs, rows, curve, world)
                cli.progress(f"{cfg.recipe}: checkpoint at iteration {learner.iteration} in {out}")
            if stopped:
                world.barrier()
                raise Interrupted(stopped[0], f"{cfg.recipe} stopped after iteration "
                                  f"{learner.iteration} of {cfg.max_iterations}, checkpoint "
                                  f"and metrics written to {out}")
    curve_point()
    _flush(learner, cfg, out, rngs, rows, curve, world)
    world.barrier()   # the checkpoint is complete before any rank goes on
    cli.progress(f"{cfg.recipe}: trained ({learner.iteration} iterations, checkpoint in {out}); "
                 "evaluating")
    return learner


def _iteration(cfg, learner, model, sampler, solver, probe, world, rows, progress) -> None:
    """One outer iteration: the direction over a meta-batch, the outer step, and (rank 0)
    its metrics row."""
    theta, layer_lam = learner.theta, learner.layer_lam
    start = time.perf_counter()
    tasks = [ModuleTask(model, *sampler.sample()) for _ in range(cfg.meta_batch)]
    lam = learner.lam(cfg, differentiable=True)
    direction, info = outer_direction(cfg, solver, tasks, theta, world, lam=lam)
    if not bool(torch.isfinite(direction).all()):
        raise FloatingPointError(f"{cfg.recipe}: the outer direction at iteration "
                                 f"{learner.iteration + 1} is not finite")
    lam_grad = info.pop("lam_grad", None)
    schedule = OUTER[cfg.spec.outer][1]
    if schedule is not None:
        for group in learner.optimizer.param_groups:
            group["lr"] = schedule(cfg, learner.iteration)
    learner.optimizer.zero_grad()
    theta.grad = direction
    if layer_lam is not None:
        lam.backward(lam_grad)   # autograd's chain rule into log lam
        info |= {"lam_min": float(lam.detach().min()), "lam_max": float(lam.detach().max())}
    learner.optimizer.step()
    seconds = max(world.gather(time.perf_counter() - start))   # the slowest rank's
    learner.iteration += 1
    learner.elapsed_s += seconds
    if progress is not None:
        progress.update(1)
    if not world.main:
        return
    with torch.no_grad():
        query_loss = float(np.mean([float(t.test_loss(theta)) for t in tasks[:2]]))
    row = {"iteration": learner.iteration, "seconds": seconds,
           "train_s": learner.elapsed_s, "query_loss_at_theta": query_loss,
           "direction_norm": float(direction.norm()),
           "outer_lr": learner.optimizer.param_groups[0]["lr"], **info}
    if learner.iteration % cfg.probe_every == 0 or learner.iteration == 1:
        row["probe_cosine_to_maml"] = probe_cosine(
            cfg, solver, probe, theta, lam.detach() if torch.is_tensor(lam) else lam)
    rows.append(row)


def _flush(learner, cfg, out, rngs, rows, curve, world):
    if not world.main:
        return
    save(learner, cfg, out, rngs, world)
    if rows:
        write_csv_atomic(pd.DataFrame(rows), out / "metrics.csv")
    if curve:
        write_csv_atomic(pd.DataFrame(curve), out / "curve.csv")
    if learner.layer_lam is not None:
        write_csv_atomic(learner.layer_lam.table(), out / "lam.csv")


def evaluate(cfg: TrainConfig, theta: torch.Tensor, chars: Characters, *,
             tasks: int | None = None, seed: int = EVAL_SEED,
             adaptations=recipes.EVALUATIONS, world: World = World(), lam=None) -> dict:
    """{adaptation: {"accuracy", "ci95", "tasks", "per_task"}}: mean query accuracy over held-out tasks
    (the same tasks for every adaptation) with a 95% interval, adapting "as-trained" (the
    recipe's own inner loop, with ``lam`` if given: a learned one) and/or by "plain-gd" (GD
    on the training loss, lam = 0). With
    several processes each adapts its share of the tasks; every rank gets the result."""
    model = model_for(cfg)
    tasks = tasks or cfg.eval_tasks
    sampler = sampler_for(cfg, chars, seed=seed)
    mine = set(world.share(tasks))
    solvers = {a: cfg.spec.eval_solver(cfg, a, lam) for a in adaptations}
    scores = {a: [] for a in adaptations}
    for i in range(tasks):
        data = sampler.sample()         # every rank draws every task: one stream
        if i not in mine:
            continue
        task = ModuleTask(model, *data)
        x, y = task.query
        cache = {}
        for a, (solver, lam) in solvers.items():
            key = (repr(solver), id(lam) if torch.is_tensor(lam) else lam)
            if key not in cache:
                phi = run_solver(solver, InnerProblem(task, theta.detach(), lam)).phi.detach()
                with torch.no_grad():
                    logits = task.outputs(phi, x)
                cache[key] = float((logits.argmax(1) == y).float().mean())
            scores[a].append(cache[key])
    result = {}
    for a, acc in scores.items():
        acc = np.asarray(world.merge(tasks, acc))
        half = 1.96 * acc.std(ddof=1) / math.sqrt(len(acc)) if len(acc) > 1 else math.nan
        result[a] = {"accuracy": float(acc.mean()), "ci95": float(half), "tasks": len(acc),
                     "per_task": acc.tolist()}
    return result


def run_provenance(cfg: TrainConfig) -> dict:
    return provenance(device=cfg.device, dtype="float32", threads=torch.get_num_threads(),
                      seed=EVAL_SEED)
