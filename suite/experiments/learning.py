"""The regression gate's learning check: every Table 2 recipe trains briefly on the small
Omniglot archives (fixed seed) and its held-out accuracy is gated, so that a change that
stops a method from learning fails ``make regress`` even when its meta-gradient errors,
bytes and time ratios do not move.

    imaml-suite learning --seeds 0 1 2 3 4   # the seed spread the tolerance comes from

The tolerance of recipe r is ``3 * sqrt(2) * sd_r``, sd_r the standard deviation of its
accuracy across seeds at this same length (``results/learning_seeds.csv``). Why: the gate
runs at seed 0 and is deterministic on one machine, so an unchanged computation gives the
baseline exactly; a change that only reorders floating-point sums (another BLAS, thread
count) perturbs the training trajectory at worst like a change of seed, and the difference
of two seeds' accuracies has standard deviation sqrt(2) sd_r: 3 of those leave a false alarm
about 1 time in 400 (Gaussian), while a method that stops learning falls to the untrained
accuracy, many sd_r below (the spread file shows how many).
"""
from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from suite.harness import cli, commands
from suite.harness.cli import HelpFormatter
from suite.experiments.omniglot import data, recipes
from suite.experiments.omniglot.train import evaluate, train
from suite.experiments.omniglot.config import TrainConfig
from suite.harness.results import ResultsStore, pin_commit, provenance

ROOT = Path(__file__).resolve().parents[2]
SPREAD = ROOT / "results" / "learning_seeds.csv"
# Short on purpose: every recipe at one seed in about 6 minutes on 2 cores.
SETTINGS = dict(n_way=5, k_shot=1, k_query=5, inner_steps=8, meta_batch=4, cg_steps=5,
                max_iterations=40, eval_tasks=300, checkpoint_every=1000, probe_every=1000,
                eval_every=1000)
SIGMAS = 3 * math.sqrt(2)


def characters():
    if not all((data.SHARED / f"{n}.zip").exists() for n in data.SMALL):
        raise cli.UsageError(f"the learning check reads the small Omniglot archives from "
                             f"{data.SHARED}; put ../shared beside the checkout")
    return data.small_split(data.SHARED, data.CACHE)


def accuracy(recipe: str, seed: int = 0, split=None) -> dict:
    """Held-out accuracy of ``recipe`` after the gate's short training at ``seed``, with the
    seconds it took."""
    train_chars, test_chars = split or characters()
    cfg = TrainConfig(recipe, seed=seed, **SETTINGS)
    if cfg.spec.method is None:
        cfg.max_iterations = 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        learner = train(cfg, train_chars, Path(out))
    score = evaluate(cfg, learner.theta.detach(), test_chars,
                     adaptations=(cfg.spec.evaluation,), lam=learner.lam(cfg))
    return {"recipe": recipe, "seed": seed, "recipe_spec": cfg.spec.signature(),
            "accuracy": score[cfg.spec.evaluation]["accuracy"],
            "seconds": round(time.perf_counter() - start, 1)}


def tolerances(path: Path = SPREAD) -> dict[str, float]:
    """{recipe: 3 sqrt(2) x its accuracy's standard deviation across the seeds in ``path``}
    at the current recipe definitions; a recipe with fewer than 3 seeds has none."""
    if not path.exists():
        return {}
    frame = pd.read_csv(path)
    specs = {n: recipes.get(n).signature() for n in recipes.TABLE2_RECIPES}
    frame = frame[frame.recipe_spec == frame.recipe.map(specs)]
    return {r: SIGMAS * float(g.accuracy.std(ddof=1)) for r, g in frame.groupby("recipe")
            if len(g) >= 3}


def gate_metrics(put, names=None) -> None:
    """``put(name, "accuracy", value, tolerance=...)`` for every Table 2 recipe (or
    ``names``) trained at seed 0."""
    split = characters()
    tol = tolerances()
    for recipe in names or recipes.TABLE2_RECIPES:
        row = accuracy(recipe, 0, split)
        put(f"omniglot5w1s/{recipe}/accuracy", "accuracy", row["accuracy"],
            tolerance=tol.get(recipe))


def main(argv=None) -> int:
    parser = cli.Parser(prog=commands.prog("learning"), description=__doc__,
                        formatter_class=HelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="seeds to train each recipe at")
    parser.add_argument("--recipes", nargs="+", choices=recipes.names(),
                        default=recipes.TABLE2_RECIPES, help="which recipes")
    parser.add_argument("--out", type=Path, default=cli.out_path("results", SPREAD.name),
                        help="rows (resumed if present; the gate reads the committed "
                        "results/learning_seeds.csv)")
    args = parser.parse_args(argv)
    if min(args.seeds) < 0:
        parser.error(f"--seeds must be integers >= 0, got {args.seeds}")
    cli.writable_folder("--out", args.out.parent)
    pin_commit()
    split = characters()
    store = ResultsStore(args.out, ["recipe", "seed", "recipe_spec"], ["accuracy"])
    for recipe in args.recipes:
        for seed in args.seeds:
            key = {"recipe": recipe, "seed": seed, "recipe_spec": recipes.get(recipe).signature()}
            if store.done(key):
                continue
            cli.progress(f"{recipe} at seed {seed}; finished rows are in {args.out}")
            row = accuracy(recipe, seed, split)
            store.add(row | provenance(device="cpu", dtype="float32",
                                       threads=torch.get_num_threads(), seed=seed))
            print(f"{recipe} seed {seed}: {100 * row['accuracy']:.1f}% ({row['seconds']} s)",
                  file=sys.stderr)
    frame = store.read()
    summary = frame.groupby("recipe").accuracy.agg(["mean", "std", "count"])
    summary["tolerance"] = SIGMAS * summary["std"]
    print((100 * summary[["mean", "std", "tolerance"]]).round(2).assign(
        seeds=summary["count"]).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog=commands.prog("learning")))
