"""``imaml-suite sweeps error|cost|hvp-cost``: the command line of ``suite.experiments.sweeps``
(its flags checked before any work, rows written under ``out/results`` unless ``--out``)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

import synthetic

from suite.core import fastest
from suite.core.registry import METHODS, SOLVERS, get_method
from suite.experiments.sweeps import (DTYPES, PAPER_METHODS, cnn_products, cost_points,
                                      error_points, run_sweep)
from suite.harness import cli, commands
from suite.harness.cli import HelpFormatter, check_device, cli_out_folder, cli_range
from suite.harness.distributed import close, init
from suite.harness.results import pin_commit, write_csv_atomic


def _common_args(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--out", type=Path, default=cli.out_path("results", out),
                   help="CSV to write (resumed if present)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="None: float64 for synthetic tasks, float32 for the CNN")
    p.add_argument("--threads", type=int, default=None, help="torch threads (None: torch's)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed repeats per point (median, IQR); 0: not timed")
    p.add_argument("--seed", type=int, default=0, help="seed of the tasks and theta")
    p.add_argument("--lam", type=float, default=None,
                   help="regularisation lam of G (None: 1 synthetic, 10 CNN)")
    p.add_argument("--meta-batch", type=int, default=1, help="tasks per meta-gradient")
    p.add_argument("--methods", nargs="+", default=list(PAPER_METHODS),
                   choices=[m for m, s in METHODS.items() if not s.needs_dense],
                   help="registered methods to measure (plugins included)")
    p.add_argument("--solver", default="gd", choices=sorted(SOLVERS),
                   help="inner solver (a method that needs a differentiable one refuses others)")
    p.add_argument("--steps", type=int, nargs="+", required=True, help="inner GD steps")
    p.add_argument("--cg-steps", type=int, nargs="+", default=[5], help="CG steps (iMAML)")
    p.add_argument("--truncate", type=int, nargs="+", default=[5],
                   help="steps kept by truncated backprop (capped at the inner steps)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--shared-timing", action="store_true",
                   help="under torchrun, time points although several ranks share one CPU")


def check_arguments(parser, args) -> None:
    """Every numeric flag in its range, before any row is computed."""
    # --repeats 0: errors and memory only, no timing (what ranks sharing one CPU must use);
    # hvp-cost is a timing and needs at least one
    timed = 1 if getattr(args, "command", None) == "hvp-cost" else 0
    if getattr(args, "record_fastest", False) and args.out is None:
        parser.error("--record-fastest records the choice with the rows it comes from: give "
                     "--out (e.g. results/hvp_cost_cpu.csv)")
    for flag, low in (("n_way", 2), ("k_shot", 1), ("repeats", timed), ("threads", 1),
                      ("meta_batch", 1), ("steps", 1), ("cg_steps", 1), ("truncate", 1),
                      ("dim", 1), ("n_train", 1)):
        cli_range(parser, "--" + flag.replace("_", "-"), getattr(args, flag, None), low)
    cli_range(parser, "--kappas", getattr(args, "kappas", None), 1.0, synthetic.KAPPA_MAX)
    cli_range(parser, "--kappa", getattr(args, "kappa", None), 1.0, synthetic.KAPPA_MAX)
    cli_range(parser, "--lr", getattr(args, "lr", None), 0.0, low_open=True)
    lam_positive = any(get_method(m).needs_positive_lam   # hvp-cost times iMAML
                       for m in getattr(args, "methods", ["imaml"]))
    cli_range(parser, "--lam", getattr(args, "lam", None), 0.0, low_open=lam_positive)
    if getattr(args, "out", None) is not None:
        cli_out_folder(parser, "--out", args.out)
    solver = getattr(args, "solver", None)
    for m in getattr(args, "methods", []) if solver else []:
        if not get_method(m).accepts(SOLVERS[solver]):
            parser.error(f"--methods {m} needs a differentiable inner solver; --solver {solver} "
                         f"is not (differentiable: "
                         f"{', '.join(n for n, s in SOLVERS.items() if s.differentiable)})")


def build_parser() -> cli.Parser:
    parser = cli.Parser(prog=commands.prog("sweeps"), description=__doc__,
                        formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("error", help="meta-gradient error on synthetic tasks",
                       formatter_class=HelpFormatter)
    _common_args(e, "error_sweep.csv")
    e.add_argument("--kappas", type=float, nargs="+", default=[10.0, 100.0, 1000.0],
                   help="condition numbers of G")
    e.add_argument("--dim", type=int, default=20, help="parameters of the synthetic task")
    e.add_argument("--n-train", type=int, default=None,
                   help="training points per task (None: 2 x dim; < dim: few-shot)")
    c = sub.add_parser("cost", help="time and memory (synthetic or the 4-layer CNN)",
                       formatter_class=HelpFormatter)
    _common_args(c, "cost_sweep.csv")
    c.add_argument("--workload", choices=["cnn", "synthetic"], default="cnn",
                   help="the 4-layer CNN on random images, or a synthetic regression")
    c.add_argument("--n-way", type=int, default=20, help="CNN: classes per task")
    c.add_argument("--k-shot", type=int, default=5, help="CNN: images per class")
    c.add_argument("--kappa", type=float, default=100.0, help="synthetic workload only")
    c.add_argument("--dim", type=int, default=100, help="synthetic workload only")
    c.add_argument("--lr", type=float, default=None,
                   help="inner GD step size (None: 0.1 CNN, 1/L synthetic)")
    h = sub.add_parser("hvp-cost", help="cost of each curvature product in gradients on the "
                       "4-layer CNN (each BatchNorm: native, primitive, closed-form), and "
                       "iMAML against its ideal",
                       formatter_class=HelpFormatter)
    h.add_argument("--n-way", type=int, default=20, help="classes per task")
    h.add_argument("--k-shot", type=int, default=5, help="images per class")
    h.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    h.add_argument("--repeats", type=int, default=5, help="timed repeats")
    h.add_argument("--threads", type=int, default=None, help="torch threads (None: torch's)")
    h.add_argument("--lam", type=float, default=10.0,
                   help="lam of iMAML's system (the cost does not depend on it; on small tasks a "
                   "small lam meets negative curvature and CG breaks down)")
    h.add_argument("--lr", type=float, default=0.1,
                   help="inner GD step of the timed meta-gradients (below 2 / (lam + largest "
                   "curvature of L): a larger lam needs a smaller step)")
    h.add_argument("--out", type=Path, default=None,
                   help="also write the rows to this CSV (e.g. results/hvp_cost_cpu.csv)")
    h.add_argument("--record-fastest", action="store_true",
                   help="record this device type's fastest exact product and BatchNorm in "
                   "results/fastest.json (hvp='auto' and batchnorm='auto' read it at import); "
                   "needs --out, the rows it is read from")
    return parser


def hvp_cost_main(args) -> int:
    """``hvp-cost``: time every product with every BatchNorm, print the costs, write the rows."""
    import pandas as pd
    rows = pd.DataFrame(cnn_products(n_way=args.n_way, k_shot=args.k_shot, device=args.device,
                                     repeats=args.repeats, threads=args.threads, lam=args.lam,
                                     lr=args.lr))
    print(f"{args.n_way}-way {args.k_shot}-shot CNN, {rows.device_name.iloc[0]}, "
          f"{rows.threads.iloc[0]} threads; costs in gradients of the native model's "
          "training loss (and of the row's own model):")
    for r in rows.itertuples():
        if r.what.startswith("imaml /"):
            print(f"  {r.batchnorm:9s} {r.what:32s} {r.in_own_gradients:.3f} "
                  f"(ideal {r.ideal:.3f}: {r.over_ideal:.3f} of it)")
        else:
            print(f"  {r.batchnorm:9s} {r.what:32s} {r.in_native_gradients:6.2f} "
                  f"({r.in_own_gradients:.2f})")
    if args.out is not None:
        write_csv_atomic(rows, args.out)
    if args.record_fastest:
        choice = fastest.record(rows, torch.device(args.device).type, str(args.out))
        print(f"recorded in {fastest.RECORD}: hvp='auto' is {choice['hvp']}, "
              f"batchnorm='auto' is {choice['batchnorm']} on {args.device}")
    return 0


def sweep_points(args) -> list[dict]:
    """The points of an ``error`` or ``cost`` sweep, from its flags."""
    if args.command == "error":
        return error_points(methods=args.methods, steps_list=args.steps, cg_list=args.cg_steps,
                            kappas=args.kappas, truncate_list=args.truncate,
                            lam=args.lam or 1.0, dim=args.dim, n_train=args.n_train,
                            meta_batch=args.meta_batch, solver=args.solver,
                            device=args.device, dtype=args.dtype or "float64", seed=args.seed)
    return cost_points(workload=args.workload, methods=args.methods, steps_list=args.steps,
                       cg_list=args.cg_steps, truncate_list=args.truncate, lam=args.lam,
                       lr=args.lr, kappa=args.kappa, dim=args.dim, n_way=args.n_way,
                       k_shot=args.k_shot, meta_batch=args.meta_batch, device=args.device,
                       dtype=args.dtype, seed=args.seed, solver=args.solver)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    pin_commit()
    check_device(args.device)
    world, _ = init(args.device)
    if world.size > 1:
        ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", world.size))
        timing = args.command == "hvp-cost" or args.repeats > 0
        if timing and ranks_here > 1 and torch.device(args.device).type == "cpu" \
                and not getattr(args, "shared_timing", False):
            parser.error(f"{ranks_here} ranks share this machine's CPU, so their timings would "
                         "disturb each other: use --repeats 0 (errors and memory only), one "
                         "device per rank (--device cuda), or --shared-timing to accept it")
    if args.command == "hvp-cost":
        return hvp_cost_main(args)
    try:
        store = run_sweep(sweep_points(args), args.out, repeats=args.repeats, threads=args.threads,
                          interleave=("kappa", "inner_steps"),
                          progress=not args.quiet, desc=args.command, world=world)
    except BaseException:
        close(wait=False)   # stopped, or a peer lost: no goodbye to wait for
        raise
    close()
    if not world.main:
        return 0
    frame = store.read()
    shown = [c for c in ["method", "inner_steps", "cg_steps", "truncate", "kappa", "rel_error",
                         "time_s", "peak_bytes", "graph_bytes", "status"] if c in frame]
    print(frame[shown].to_string(index=False))
    return 0 if (frame["status"] != "error").all() else 1


if __name__ == "__main__":
    sys.exit(cli.run(main, prog=commands.prog("sweeps")))
