"""Running an Omniglot command's recipes from its parsed flags: the characters it asks for
(``--data``, ``--validation``), one ``TrainConfig`` per recipe and seed (a bad value is a
``UsageError`` naming the flag), one row of ``runs.csv`` per finished run (its folder under
``--out``), and those rows read back for a report."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from suite.experiments.omniglot import data, recipes, report
from suite.experiments.omniglot.config import TrainConfig
from suite.experiments.omniglot.train import evaluate, run_provenance, train
from suite.harness import cli, distributed
from suite.harness.cli import UsageError, check_device
from suite.harness.distributed import World
from suite.harness.results import ResultsStore, write_csv_atomic

KEY = ["recipe", "setting", "iterations_asked", "recipe_spec", "train_seed", "heldout"]
VALIDATION_SEED = 777   # which training characters become validation characters


def archive_root(args) -> Path:
    """The folder holding the archives ``--data`` asks for; a ``UsageError`` saying how to get
    them when one is missing (checked by every process before any joins the others)."""
    root = Path(args.root) if args.root else (data.SHARED if args.data == "small" else
                                              Path("data/omniglot"))
    names = data.SMALL if args.data == "small" else data.STANDARD
    missing = [n for n in names if not ((root / f"{n}.zip").exists() or (root / n).exists())]
    if missing:
        fetch = ("imaml-suite omniglot download --root " + str(root)) if args.data == "full" \
            else "the small archives ship in ../shared/data/omniglot beside the checkout"
        raise UsageError(f"--data {args.data}: {', '.join(m + '.zip' for m in missing)} not "
                         f"found in {root} (--root). Get them with: {fetch}")
    return root


def load_split(args):
    """(meta-training, held-out) characters: the test characters, or with ``--validation N``
    N characters moved out of the meta-training ones (the test characters untouched)."""
    root = archive_root(args)
    if args.data == "small":
        train_chars, test_chars = data.small_split(root, data.CACHE)
    else:
        train_chars, test_chars = data.standard_split(root, data.CACHE, seed=args.split_seed)
    n_val = getattr(args, "validation", 0)
    if not n_val:
        return train_chars, test_chars
    if not 2 <= n_val <= len(train_chars.names) - 2:
        raise UsageError(f"--validation {n_val}: choose between 2 and "
                         f"{len(train_chars.names) - 2} of the {len(train_chars.names)} "
                         "meta-training characters")
    return data.split(train_chars, len(train_chars.names) - n_val, seed=VALIDATION_SEED)


def heldout_name(args) -> str:
    n_val = getattr(args, "validation", 0)
    return f"validation{n_val}" if n_val else "test"


def check_data(args, configs, train_chars, test_chars) -> None:
    """Refuse settings the characters cannot satisfy, before any training."""
    for chars, what in ((train_chars, "meta-training"), (test_chars, "meta-testing")):
        classes, per_char = 4 * len(chars.names), chars.images.shape[1]
        for cfg in configs:
            if cfg.n_way > classes:
                raise UsageError(f"--n-way {cfg.n_way}: the {what} characters of --data "
                                 f"{args.data} give {classes} classes ({len(chars.names)} x 4 "
                                 f"rotations); choose --n-way <= {classes}")
            if cfg.k_shot + cfg.k_query > per_char:
                raise UsageError(f"--k-shot {cfg.k_shot} + --k-query {cfg.k_query}: a "
                                 f"character has {per_char} drawings; choose a sum <= "
                                 f"{per_char}")


FLAG_OF = {"max_iterations": "--iterations", "budget_s": "--minutes"}


def config_from(args, recipe: str, seed: int | None = None) -> TrainConfig:
    values = {name: getattr(args, name) for name in (
        "n_way", "k_shot", "k_query", "inner_steps", "inner_lr", "cg_steps", "meta_batch",
        "outer_lr", "lam_lr", "eval_tasks", "seed", "device", "batchnorm")
        if getattr(args, name, None) is not None}
    if seed is not None:
        values["seed"] = seed
    values["max_iterations"] = args.iterations
    values["budget_s"] = args.minutes * 60 if args.minutes else float("inf")
    try:
        return TrainConfig(recipe, **values)
    except (ValueError, TypeError) as err:   # the config names the field: say the flag
        name, _, rest = str(err).partition(" ")
        flag = FLAG_OF.get(name, "--" + name.replace("_", "-"))
        raise UsageError(f"{flag} {rest}" if name in values else str(err))


def run_recipe(args, cfg: TrainConfig, train_chars, test_chars, world: World) -> dict:
    """Train (nothing for 'untrained'), evaluate both adaptations, return the result row."""
    key = row_key(args, cfg)
    folder = report.run_dir(args.out, key)
    if cfg.spec.method is None:
        cfg.max_iterations = 0
    with tqdm(desc=f"{cfg.recipe} seed {cfg.seed} ({key['setting']})", unit="it",
              disable=args.quiet or not world.main, total=cfg.max_iterations) as bar:
        learner = train(cfg, train_chars, folder, heldout=test_chars, progress=bar, world=world)
    scores = evaluate(cfg, learner.theta.detach(), test_chars, world=world,
                      lam=learner.lam(cfg))
    if world.main:   # each held-out task's accuracy, for comparisons paired by task
        write_csv_atomic(pd.DataFrame({a: s["per_task"] for a, s in scores.items()})
                         .rename_axis("task").reset_index(), folder / "eval_tasks.csv")
    head = scores[cfg.spec.evaluation]
    return {**key,
            "iterations": learner.iteration, "train_s": round(learner.elapsed_s, 1),
            "evaluation": cfg.spec.evaluation, "accuracy": head["accuracy"], "ci95": head["ci95"],
            "acc_as_trained": scores["as-trained"]["accuracy"],
            "ci95_as_trained": scores["as-trained"]["ci95"],
            "acc_plain_gd": scores["plain-gd"]["accuracy"],
            "ci95_plain_gd": scores["plain-gd"]["ci95"], "world_size": world.size,
            "status": "ok",
            **run_provenance(cfg),
            **{k: v for k, v in cfg.as_dict().items() if k not in ("recipe", "device", "seed")}}


def row_key(args, cfg: TrainConfig) -> dict:
    """What identifies a run in runs.csv (and its folder: ``report.run_dir``)."""
    return {"recipe": cfg.recipe, "setting": f"{cfg.n_way}w{cfg.k_shot}s-{args.data}",
            "iterations_asked": args.iterations, "recipe_spec": cfg.spec.signature(),
            "train_seed": cfg.seed, "heldout": heldout_name(args)}


def run_all(args, configs: list[TrainConfig], store: ResultsStore, world: World) -> None:
    pending = [c for c in configs if args.retrain or not store.done(row_key(args, c))]
    if not pending:
        return
    if not world.main:
        world.barrier()            # rank 0 fills the image cache first
    train_chars, test_chars = load_split(args)
    if world.main:
        world.barrier()
    check_data(args, pending, train_chars, test_chars)
    if world.main:
        print(f"meta-training characters: {len(train_chars.names)}, evaluated on: "
              f"{len(test_chars.names)} ({heldout_name(args)}; x4 rotations each), "
              f"{world.size} process(es)", file=sys.stderr)
    for cfg in pending:
        row = run_recipe(args, cfg, train_chars, test_chars, world)
        if world.main:
            store.add(row)
            print(f"{cfg.recipe}: {100 * row['accuracy']:.1f} ± {100 * row['ci95']:.1f}% "
                  f"({row['evaluation']}) after {row['iterations']} iterations", file=sys.stderr)


def train_all(args, names: list[str], store: ResultsStore) -> bool:
    """Check every setting, join the other processes (torchrun), train what is missing;
    True on rank 0 (the one that writes)."""
    args.seed = None
    configs = [config_from(args, n, seed) for seed in args.seed_list for n in names]
    for cfg in configs:
        try:
            distributed.check_divisible("--meta-batch", cfg.meta_batch, distributed.planned_size())
        except ValueError as err:
            raise UsageError(str(err)) from None
    archive_root(args)
    cli.writable_folder("--out", args.out)
    check_device(args.device)
    world, args.device = distributed.init(args.device)
    for cfg in configs:
        cfg.device = args.device
    try:
        run_all(args, configs, store, world)
    except BaseException:
        distributed.close(wait=False)   # the others stop too: no goodbye to wait for
        raise
    distributed.close()
    return world.main


def first_seed(frame: pd.DataFrame) -> pd.DataFrame:
    """Each recipe's run at its lowest seed (the learning curves show one run per recipe)."""
    return frame.sort_values("train_seed").drop_duplicates("recipe")


def rows_for(store: ResultsStore, args, names, what: str, required: bool = True) -> pd.DataFrame:
    """The rows of ``names`` at this setting, iteration count and current recipe definitions."""
    frame = store.read()
    tag = f"{args.n_way or 5}w{args.k_shot or 1}s-{args.data}"
    if frame.empty:
        if not required:
            return frame
        raise UsageError(f"{what}: {store.path} holds no rows; run without --report-only first")
    specs = {n: recipes.get(n).signature() for n in names}
    frame = frame[(frame.setting == tag) & (frame.iterations_asked == args.iterations)
                  & frame.recipe.isin(names)
                  & (frame.recipe_spec == frame.recipe.map(specs))
                  & (frame.heldout == heldout_name(args))
                  & frame.train_seed.isin(args.seed_list)]
    if frame.empty and required:
        raise UsageError(f"{what}: {store.path} has no rows for {tag} at {args.iterations} "
                         "iterations with the current recipes; run without --report-only first")
    return frame
