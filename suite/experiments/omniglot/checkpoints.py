"""Checkpoints of a training run: written atomically with the previous one kept, loaded
with a fallback (a checkpoint cut short by a crash makes the run resume from the previous one,
or start over, saying so), and restored only into a run with the same settings."""
from __future__ import annotations

import os
import sys
from dataclasses import fields
from pathlib import Path

import pandas as pd
import torch

from suite.experiments.omniglot.config import RESUMABLE, Learner, TrainConfig
from suite.harness.distributed import World


def checkpoint_path(out: Path) -> Path:
    return out / "checkpoint.pt"


def previous_path(out: Path) -> Path:
    return out / "checkpoint.prev.pt"


def load_checkpoint(out: Path, say=None) -> dict | None:
    """The newest checkpoint under ``out`` that loads: ``checkpoint.pt``, else the previous
    one ``checkpoint.prev.pt`` (a file cut short by a crash while writing does not load), else
    None (start over). ``say(line)`` hears which was taken and why."""
    say = say or (lambda line: print(line, file=sys.stderr))
    failures = []
    for path in (checkpoint_path(out), previous_path(out)):
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


def same_run(saved: dict, cfg: TrainConfig) -> bool:
    """Settings equal, except the resumable ones; fields added since the checkpoint was
    written take their defaults."""
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.name != "recipe"}
    current = {k: v for k, v in cfg.as_dict().items() if k not in RESUMABLE}
    old = {k: v for k, v in {**defaults, **saved}.items() if k not in RESUMABLE}
    return old == current


def save(learner: Learner, cfg: TrainConfig, out: Path, rngs: dict, world: World) -> None:
    """Write ``learner``'s state under ``out``: atomically (a temporary file, flushed to
    disk, then renamed), keeping the last checkpoint as the previous one."""
    out.mkdir(parents=True, exist_ok=True)
    state = {"config": cfg.as_dict(), "recipe_spec": cfg.spec.signature(),
             "world_size": world.size,
             "theta": learner.theta.detach().cpu(),
             "log_lam": (None if learner.layer_lam is None
                         else learner.layer_lam.log_lam.detach().cpu()),
             "optimizer": learner.optimizer.state_dict(), "iteration": learner.iteration,
             "elapsed_s": learner.elapsed_s,
             "rng_state": {k: r.bit_generator.state for k, r in rngs.items()}}
    # The previous one is kept for when the newest turns out unreadable.
    tmp = checkpoint_path(out).with_suffix(".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if checkpoint_path(out).exists():
        os.replace(checkpoint_path(out), previous_path(out))
    os.replace(tmp, checkpoint_path(out))


def restore(learner: Learner, state: dict, cfg: TrainConfig, rngs: dict, out: Path
            ) -> tuple[list, list]:
    """Put a loaded checkpoint's state back into ``learner`` and ``rngs``; the metrics and
    curve rows up to its iteration (those after it are redone). Refused when the checkpoint
    was written with other settings."""
    if not same_run(state["config"], cfg) or state.get("recipe_spec") != cfg.spec.signature():
        raise ValueError(f"{checkpoint_path(out)} was written with other settings; choose "
                         "another output folder or remove it")
    with torch.no_grad():
        learner.theta.copy_(state["theta"])
        if learner.layer_lam is not None:
            learner.layer_lam.log_lam.copy_(state["log_lam"])
    learner.optimizer.load_state_dict(state["optimizer"])
    learner.iteration, learner.elapsed_s = state["iteration"], state["elapsed_s"]
    for k, r in rngs.items():
        if k in state["rng_state"]:
            r.bit_generator.state = state["rng_state"][k]
    rows, curve = [], []
    for name, target in (("metrics.csv", rows), ("curve.csv", curve)):
        if (out / name).exists():
            target += [r for r in pd.read_csv(out / name).to_dict("records")
                       if r["iteration"] <= learner.iteration]
    return rows, curve
