"""Omniglot few-shot pipeline: download, train, evaluate, and a measured Table 2.

    python -m suite.omniglot download --root data/omniglot
    python -m suite.omniglot train --method imaml-gd --data small --minutes 5
    python -m suite.omniglot table2 --data small --minutes 4     # every method, then the table

``--data small`` reads the two small archives (default: ../shared/data/omniglot): small1
for meta-training, the characters of small2 that small1 lacks for meta-testing.
``--data full`` reads images_background.zip and images_evaluation.zip from ``--root``:
1200 characters for meta-training, 423 for meta-testing.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, fields
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from ..results import ResultsStore
from . import data
from .train import METHODS, TrainConfig, evaluate, train

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data" / "omniglot"
CACHE = ROOT / ".cache" / "omniglot"
PAPER = {  # Table 2 of the paper (accuracy %, 5w1s / 5w5s / 20w1s / 20w5s)
    "maml": ("MAML", [98.7, 99.9, 95.8, 98.9]),
    "fomaml": ("first-order MAML", [98.3, 99.2, 89.4, 97.9]),
    "reptile": ("Reptile", [97.68, 99.48, 89.43, 97.12]),
    "imaml-gd": ("iMAML, GD", [99.16, 99.67, 94.46, 98.69]),
    "imaml-hf": ("iMAML, Hessian-free", [99.50, 99.74, 96.18, 99.14]),
    "truncated": ("truncated backprop", None),
}
SETTINGS = {(5, 1): 0, (5, 5): 1, (20, 1): 2, (20, 5): 3}


def load_split(args):
    if args.data == "small":
        return data.small_split(Path(args.root or SHARED), CACHE)
    return data.standard_split(Path(args.root or "data/omniglot"), CACHE, seed=args.split_seed)


def config_from(args, method) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
              if getattr(args, f.name, None) is not None}
    values["method"] = method
    values["budget_s"] = args.minutes * 60
    return TrainConfig(**values)


def add_training_args(p):
    p.add_argument("--data", choices=["small", "full"], default="small")
    p.add_argument("--root", default=None, help="folder with the archives")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the full 1200/423 split")
    p.add_argument("--n-way", dest="n_way", type=int, default=5)
    p.add_argument("--k-shot", dest="k_shot", type=int, default=1)
    p.add_argument("--k-query", dest="k_query", type=int, default=None)
    p.add_argument("--inner-steps", dest="inner_steps", type=int, default=None)
    p.add_argument("--inner-lr", dest="inner_lr", type=float, default=None)
    p.add_argument("--lam", type=float, default=None, help="iMAML regularisation (paper: 2.0)")
    p.add_argument("--cg-steps", dest="cg_steps", type=int, default=None)
    p.add_argument("--meta-batch", dest="meta_batch", type=int, default=None)
    p.add_argument("--outer-lr", dest="outer_lr", type=float, default=None)
    p.add_argument("--max-iterations", dest="max_iterations", type=int, default=None)
    p.add_argument("--minutes", type=float, default=5.0, help="training budget per method")
    p.add_argument("--eval-tasks", dest="eval_tasks", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "omniglot")


def run_method(args, method, train_chars, test_chars) -> dict:
    cfg = config_from(args, method)
    tag = f"{cfg.n_way}w{cfg.k_shot}s-{args.data}"
    out = args.out / tag / method
    with tqdm(desc=f"{method} ({tag})", unit="it", disable=args.quiet) as bar:
        learner = train(cfg, train_chars, out, progress=bar)
    result = evaluate(cfg, learner.theta.detach(), test_chars)
    return {"method": method, "setting": tag, "iterations": learner.iteration,
            "train_s": round(learner.elapsed_s, 1), **result, **{
                k: v for k, v in asdict(cfg).items() if k not in ("method", "device", "seed")}}


def table2_markdown(frame: pd.DataFrame) -> str:
    first = frame.iloc[0]
    col = SETTINGS.get((int(first["n_way"]), int(first["k_shot"])))
    lines = ["# Table 2, measured (Omniglot)", "",
             f"Setting: {int(first['n_way'])}-way {int(first['k_shot'])}-shot, data "
             f"`{first['setting']}`, {int(first['k_query'])} query images per class, "
             f"meta-batch {int(first['meta_batch'])}, outer Adam lr {first['outer_lr']:g}, "
             f"inner GD {int(first['inner_steps'])} steps at lr {first['inner_lr']:g}, iMAML "
             f"lam {first['lam']:g} with {int(first['cg_steps'])} CG steps, a training budget of "
             f"{first['budget_s'] / 60:g} min per method on {first['device_name']} "
             f"({int(first['threads'])} threads), evaluated on {int(first['tasks'])} held-out "
             f"tasks (95% interval). Commit {first['git_commit']}.", "",
             "| method | ours: accuracy % | iterations | paper (same setting) |",
             "|---|---|---|---|"]
    for r in frame.itertuples():
        label, paper = PAPER[r.method]
        ref = f"{paper[col]}" if paper is not None and col is not None else "-"
        lines.append(f"| {label} | {100 * r.accuracy:.1f} ± {100 * r.ci95:.1f} | "
                     f"{r.iterations} | {ref} |")
    lines += ["", "The paper trains for hours on a GPU over the full 1200 training characters; "
              "these runs have minutes of CPU on the small subsets, so only the ordering of "
              "methods, not the level, is comparable."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m suite.omniglot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="fetch the standard archives and check their MD5")
    d.add_argument("--root", type=Path, default=Path("data/omniglot"))
    for name, helptext in (("train", "train one method, then evaluate it"),
                           ("table2", "train and evaluate every method, write reports/table2.md")):
        p = sub.add_parser(name, help=helptext)
        add_training_args(p)
        p.add_argument("--quiet", action="store_true")
        if name == "train":
            p.add_argument("--method", choices=METHODS, required=True)
        else:
            p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    args = parser.parse_args(argv)
    if args.command == "download":
        for path in data.download(args.root):
            print(f"{path}  md5 ok")
        return 0
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device is available on this machine")
    train_chars, test_chars = load_split(args)
    print(f"meta-training characters: {len(train_chars.names)}, meta-testing: "
          f"{len(test_chars.names)} (x4 rotations each)", file=sys.stderr)
    methods = [args.method] if args.command == "train" else args.methods
    store = ResultsStore(args.out / "table2.csv", ["method", "setting"], ["accuracy", "ci95"])
    for method in methods:
        row = run_method(args, method, train_chars, test_chars)
        store.add(dict(row, status="ok"))
        print(f"{method}: {100 * row['accuracy']:.1f} ± {100 * row['ci95']:.1f}% "
              f"after {row['iterations']} iterations")
    if args.command == "table2":
        frame = store.read()
        frame = frame[frame.method.isin(methods)]
        report = ROOT / "reports" / "table2.md"
        report.write_text(table2_markdown(frame))
        print(f"Table 2 -> {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
