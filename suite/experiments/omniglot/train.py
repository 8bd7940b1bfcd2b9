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
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from suite.core.adapt import adapt
from suite.core.methods import Stats, meta_gradient, meta_gradient_batch
from suite.core.solvers import InnerProblem, for_tasks, run_solver
from suite.core.tasks import ModuleTask
from suite.experiments.omniglot import recipes
from suite.experiments.omniglot.checkpoints import load_checkpoint, restore, save
from suite.experiments.omniglot.config import DTYPES, LayerLam, Learner, TrainConfig
from suite.experiments.omniglot.data import Characters, TaskSampler
from suite.harness import cli
from suite.harness.cli import Interrupted, StopRequest
from suite.harness.distributed import World, check_divisible
from suite.harness.results import provenance, write_csv_atomic
from suite.models.conv4 import conv4

EVAL_SEED = 12345      # held-out tasks of the final evaluation
CURVE_SEED = 54321     # held-out tasks of the learning curve
PROBE_SEED = 999       # the training task of the cosine probe
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
    state = load_checkpoint(out, say=None if world.main else (lambda line: None))
    if state is not None:
        rows, curve = restore(learner, state, cfg, rngs, out)
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
