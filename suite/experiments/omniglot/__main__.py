"""Omniglot few-shot pipeline: download, train a recipe, Table 2 and the iMAML variants.

    imaml-suite omniglot recipes                          # the registry, one entry each
    imaml-suite omniglot train --recipe imaml-gn --iterations 300
    imaml-suite omniglot table2                            # Table 2's recipes, then the table
    imaml-suite omniglot variants                          # every iMAML variant, the report
    imaml-suite omniglot download --root data/omniglot     # the full archives (network)

Recipes are compared at an equal number of outer iterations (``--iterations``, default 300);
``--minutes`` adds a wall-clock budget per recipe. On 2 CPU cores at meta-batch 8, 5-way
1-shot, a recipe takes 6 (first-order MAML) to 12 minutes (MAML), iMAML-HF about 20, training
and evaluations included: ``table2`` (7 recipes) runs about 70 minutes, ``variants`` (12)
about 2 hours.

Under ``torchrun --nproc_per_node N`` each meta-batch is split across the N processes (gloo
on CPU, nccl on CUDA with one GPU per process); rank 0 alone writes. See the README.

``--data small`` reads the two small archives (default: ../shared/data/omniglot): small1
for meta-training, the characters of small2 that small1 lacks for meta-testing.
``--data full`` reads images_background.zip and images_evaluation.zip from ``--root``:
1200 characters for meta-training, 423 for meta-testing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from suite.harness import cli, commands, distributed
from suite.harness.cli import UsageError, check_device
from suite.harness.distributed import World
from suite.harness.results import ResultsStore, pin_commit, write_csv_atomic
from suite.models.conv4 import BATCHNORMS
from suite.experiments.omniglot import data, recipes, report
from suite.experiments.omniglot.train import TrainConfig, evaluate, run_provenance, train

ROOT = Path(__file__).resolve().parents[3]
SHARED = ROOT.parent / "shared" / "data" / "omniglot"
CACHE = ROOT / ".cache" / "omniglot"
PROG = commands.prog("omniglot")
KEY = ["recipe", "setting", "iterations_asked", "recipe_spec", "train_seed", "heldout"]
VALIDATION_SEED = 777   # which training characters become validation characters


def archive_root(args) -> Path:
    """The folder holding the archives ``--data`` asks for; a ``UsageError`` saying how to get
    them when one is missing (checked by every process before any joins the others)."""
    root = Path(args.root) if args.root else (SHARED if args.data == "small" else
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
        train_chars, test_chars = data.small_split(root, CACHE)
    else:
        train_chars, test_chars = data.standard_split(root, CACHE, seed=args.split_seed)
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


def add_training_args(p):
    defaults = TrainConfig("maml")
    p.add_argument("--data", choices=["small", "full"], default="small",
                   help="the small shared archives or the full standard ones (default: small)")
    p.add_argument("--root", default=None, help="folder with the archives (default: "
                   "../shared/data/omniglot for small, data/omniglot for full)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the full 1200/423 split "
                   "(default: 0)")
    for flag, kind, what in (("n-way", int, "classes per task"), ("k-shot", int, "support "
                             "images per class"), ("k-query", int, "query images per class"),
                             ("inner-steps", int, "inner GD steps"), ("inner-lr", float,
                             "inner GD learning rate"), ("cg-steps", int, "CG steps of the "
                             "implicit solve (and of Newton-CG)"), ("meta-batch", int, "tasks "
                             "per outer iteration"), ("outer-lr", float, "outer Adam learning "
                             "rate"), ("lam-lr", float, "outer Adam learning rate of log "
                             "lam (recipes that learn lam)"), ("eval-tasks", int, "held-out "
                             "tasks of the final evaluation"), ("seed", int, "seed of the "
                             "initialisation and the task stream")):
        name = flag.replace("-", "_")
        p.add_argument(f"--{flag}", dest=name, type=kind, default=None,
                       help=f"{what} (default: {getattr(defaults, name)})")
    p.add_argument("--iterations", type=int, default=defaults.max_iterations,
                   help="outer iterations per recipe (default: %(default)s)")
    p.add_argument("--minutes", type=float, default=None,
                   help="also stop a recipe after this many training minutes (default: none)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--batchnorm", choices=sorted(BATCHNORMS), default=None,
                   help="the network's BatchNorm, the same function in each: closed-form makes "
                   "iMAML faster on a CPU for 20-way 5-shot tasks, native for 5-way 1-shot "
                   "(results/hvp_cost_cpu*.csv) and on CUDA (default: "
                   f"{defaults.batchnorm}, as the committed Table 2 rows were trained)")
    p.add_argument("--out", type=Path, default=cli.out_path("results", "omniglot"),
                   help="results folder (default: out/results/omniglot; the committed runs: "
                   "--out results/omniglot)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--validation", type=int, default=0, help="evaluate on this many "
                   "characters moved out of the meta-training ones (to choose a recipe "
                   "without the held-out test characters); 0: the test characters")


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


def build_parser() -> cli.Parser:
    parser = cli.Parser(prog=PROG, description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="fetch the standard archives and check their MD5")
    d.add_argument("--root", type=Path, default=Path("data/omniglot"),
                   help="where to put them (default: %(default)s)")
    sub.add_parser("recipes", help="list the training recipes")
    p = sub.add_parser("train", help="train one recipe, then evaluate it")
    add_training_args(p)
    p.add_argument("--recipe", choices=recipes.names(), required=True,
                   help="what to train (see the recipes command)")
    p.add_argument("--retrain", action="store_true", help="train even if runs.csv has the row")
    for name, names, helptext in (
            ("table2", recipes.TABLE2_RECIPES, "train Table 2's recipes, write table2.md"),
            ("choose", recipes.IMAML_CANDIDATES, "train the candidate default iMAML recipes "
             "on the meta-training characters less --validation, evaluate on those, write "
             "imaml_choice.md"),
            ("variants", recipes.VARIANT_RECIPES,
             "train every iMAML variant, write imaml_variants.md")):
        p = sub.add_parser(name, help=helptext)
        add_training_args(p)
        p.add_argument("--recipes", nargs="+", choices=recipes.names(), default=names,
                       help="which recipes (default: %(default)s)")
        p.add_argument("--retrain", action="store_true", help="train rows runs.csv already has")
        p.add_argument("--report-only", action="store_true",
                       help="rewrite the report from the results folder, train nothing")
        p.add_argument("--reports", type=Path, default=cli.out_path("reports"),
                       help="folder of the report and its figure (default: out/reports; the "
                       "committed ones: --reports reports)")
        p.add_argument("--seeds", type=int, nargs="+", default=None,
                       help="train every recipe at each of these seeds (initialisation and "
                       "task stream; default: --seed, else 0; choose: 0 1 2)")
        if name == "choose":
            p.set_defaults(validation=20, seeds=[0, 1, 2])
    return parser


def check_args(parser, args) -> None:
    """The training commands' flags in range, before any data is read."""
    if args.iterations < 0:
        parser.error(f"--iterations must be >= 0, got {args.iterations}")
    if args.minutes is not None and not args.minutes > 0:
        parser.error(f"--minutes must be > 0, got {args.minutes}")
    if getattr(args, "seeds", None) is not None:
        if args.seed is not None:
            parser.error("--seed and --seeds: give one")
        if min(args.seeds) < 0 or len(set(args.seeds)) < len(args.seeds):
            parser.error(f"--seeds must be distinct integers >= 0, got {args.seeds}")
    if args.validation < 0:
        parser.error(f"--validation must be >= 0, got {args.validation}")
    args.seed_list = getattr(args, "seeds", None) or [args.seed or 0]
    if args.command == "choose" and args.validation < 2:
        parser.error("choose compares recipes on validation characters: --validation must "
                     f"be >= 2, got {args.validation}")


def write_reports(args, store: ResultsStore, names: list[str]) -> None:
    """The report of ``table2``, ``variants`` or ``choose`` (and its figure) into --reports."""
    reports = cli.writable_folder("--reports", args.reports)
    if args.command == "choose":
        frame = rows_for(store, args, names, "choose")
        tested = rows_for(store, argparse.Namespace(**{**vars(args), "validation": 0}),
                          names, "choose", required=False)
        (reports / "imaml_choice.md").write_text(report.choice_markdown(frame, args.out, tested))
        print(f"-> {reports / 'imaml_choice.md'}")
    elif args.command == "table2":
        frame = rows_for(store, args, names, "table2")
        variants = rows_for(store, args, recipes.VARIANT_RECIPES, "table2", required=False)
        (reports / "table2.md").write_text(report.table2_markdown(frame, args.out, variants))
        report.plot_curves(first_seed(frame), args.out, reports / "omniglot_curves.png",
                           "Table 2 recipes")
        print(f"-> {reports / 'table2.md'}, {reports / 'omniglot_curves.png'}")
    else:
        frame = rows_for(store, args, names, "variants")
        reference = rows_for(store, args, ["maml", "fomaml", "untrained"], "variants",
                             required=False)
        curves = first_seed(frame)
        if frame.train_seed.nunique() > 1:   # the report's numbers: means over seeds
            frame = report.seed_means(frame)
            reference = report.seed_means(reference) if len(reference) else reference
        (reports / "imaml_variants.md").write_text(
            report.variants_markdown(frame, args.out, reference))
        report.plot_curves(curves, args.out, reports / "imaml_variants_curves.png",
                           "iMAML variants")
        print(f"-> {reports / 'imaml_variants.md'}, {reports / 'imaml_variants_curves.png'}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    pin_commit()
    if args.command == "download":
        try:
            for path in data.download(args.root):
                print(f"{path}  md5 ok")
        except OSError as err:
            raise UsageError(f"download: could not fetch the archives ({err}). Without network, "
                             "copy images_background.zip and images_evaluation.zip from the "
                             f"public Omniglot repository into {args.root}")
        return 0
    if args.command == "recipes":
        print(recipes.describe())
        return 0
    check_args(parser, args)
    store = ResultsStore(args.out / "runs.csv", KEY, ["accuracy", "ci95"])
    names = [args.recipe] if args.command == "train" else args.recipes
    if not getattr(args, "report_only", False) and not train_all(args, names, store):
        return 0
    if args.command != "train":
        write_reports(args, store, names)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog=commands.prog("omniglot")))
