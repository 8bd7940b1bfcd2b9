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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from suite.experiments.omniglot import curves, data, recipes, report, variants_report
from suite.experiments.omniglot.config import TrainConfig
from suite.experiments.omniglot.runs import KEY, first_seed, rows_for, train_all
from suite.harness import cli, commands
from suite.harness.cli import UsageError
from suite.harness.results import ResultsStore, pin_commit
from suite.models.conv4 import BATCHNORMS

PROG = commands.prog("omniglot")


def _table2(args, store, names, reports: Path) -> list[Path]:
    frame = rows_for(store, args, names, "table2")
    variants = rows_for(store, args, recipes.VARIANT_RECIPES, "table2", required=False)
    (reports / "table2.md").write_text(report.table2_markdown(frame, args.out, variants))
    curves.plot_curves(first_seed(frame), args.out, reports / "omniglot_curves.png",
                       "Table 2 recipes")
    return [reports / "table2.md", reports / "omniglot_curves.png"]


def _choice(args, store, names, reports: Path) -> list[Path]:
    frame = rows_for(store, args, names, "choose")
    tested = rows_for(store, argparse.Namespace(**{**vars(args), "validation": 0}), names,
                      "choose", required=False)
    (reports / "imaml_choice.md").write_text(report.choice_markdown(frame, args.out, tested))
    return [reports / "imaml_choice.md"]


def _variants(args, store, names, reports: Path) -> list[Path]:
    frame = rows_for(store, args, names, "variants")
    reference = rows_for(store, args, ["maml", "fomaml", "untrained"], "variants",
                         required=False)
    curve_runs = first_seed(frame)
    if frame.train_seed.nunique() > 1:   # the report's numbers: means over seeds
        frame = report.seed_means(frame)
        reference = report.seed_means(reference) if len(reference) else reference
    (reports / "imaml_variants.md").write_text(
        variants_report.variants_markdown(frame, args.out, reference))
    curves.plot_curves(curve_runs, args.out, reports / "imaml_variants_curves.png",
                       "iMAML variants")
    return [reports / "imaml_variants.md", reports / "imaml_variants_curves.png"]


@dataclass(frozen=True)
class Report:
    """A command that trains a set of recipes and writes a report from their rows."""
    recipes: tuple
    help: str
    write: Callable   # (args, store, names, reports folder) -> the files written
    defaults: dict = field(default_factory=dict)   # flags whose default differs here


REPORTS = {
    "table2": Report(recipes.TABLE2_RECIPES, "train Table 2's recipes, write table2.md",
                     _table2),
    "choose": Report(recipes.IMAML_CANDIDATES, "train the candidate default iMAML recipes on "
                     "the meta-training characters less --validation, evaluate on those, "
                     "write imaml_choice.md", _choice, {"validation": 20, "seeds": [0, 1, 2]}),
    "variants": Report(recipes.VARIANT_RECIPES,
                       "train every iMAML variant, write imaml_variants.md", _variants),
}


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
    for name, rep in REPORTS.items():
        p = sub.add_parser(name, help=rep.help)
        add_training_args(p)
        p.add_argument("--recipes", nargs="+", choices=recipes.names(),
                       default=list(rep.recipes), help="which recipes (default: %(default)s)")
        p.add_argument("--retrain", action="store_true", help="train rows runs.csv already has")
        p.add_argument("--report-only", action="store_true",
                       help="rewrite the report from the results folder, train nothing")
        p.add_argument("--reports", type=Path, default=cli.out_path("reports"),
                       help="folder of the report and its figure (default: out/reports; the "
                       "committed ones: --reports reports)")
        p.add_argument("--seeds", type=int, nargs="+", default=None,
                       help="train every recipe at each of these seeds (initialisation and "
                       "task stream; default: --seed, else 0; choose: 0 1 2)")
        p.set_defaults(**rep.defaults)
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
    written = REPORTS[args.command].write(args, store, names, reports)
    print("-> " + ", ".join(map(str, written)))


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
