"""Regenerate the paper's Figure 2 (a, b) and Table 1 into out/results/ and out/reports/
(``--out .``: the committed results/ and reports/, as ``make refresh`` does).

    imaml-suite figures                  # CPU, default scale (a few minutes on 2 cores)
    imaml-suite figures --full           # the paper's scale (kappa up to 1e4, more steps)
    imaml-suite figures --from-results   # re-plot from the CSVs, no computation

Raw rows go to results/figure2a.csv, results/figure2b.csv, results/table1.csv and
results/linear_solvers.csv (CG against the Neumann series for iMAML's implicit system);
figures and the table to reports/. An interrupted run resumes from
results/.<name>.partial.csv.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from suite import METHODS
from suite.experiments import claims, table1
from suite.experiments.plots import (DESTINATION, output_dir, plot_fig2a, plot_fig2b,
                                     plot_frontier, plot_neumann, shown)
from suite.experiments.sweeps import (PAPER_METHODS, cost_points, error_points, hvp_cost,
                                      run_sweep)
from suite.harness import cli, commands
from suite.harness.cli import HelpFormatter, check_device, cli_range
from suite.harness.results import ResultsStore, pin_commit, write_csv_atomic
from suite.harness.workloads import synthetic_workload

SCALES = {
    "default": dict(
        fig2a=dict(kappa=1e3, steps=[10, 30, 100, 300, 1000, 3000, 10000],
                   cg=[2, 5, 20, 50], truncate=[10], panels=[(50, 4), (20, 40)]),
        fig2b=dict(steps=[1, 2, 4, 8, 16], repeats=4),
        frontier=dict(steps=[1, 2, 4, 8, 16, 32, 64], at=[16, 64], repeats=3, kappa=100.0,
                      dim=20),
        table1=dict(kappas=[10.0, 100.0, 1000.0], deltas=[1e-2, 1e-3, 1e-4], dim=20,
                    cap=200_000),
        neumann=dict(kappa=100.0, dim=40, iterations=[1, 2, 5, 10, 20, 40, 100, 200, 500])),
    "full": dict(
        fig2a=dict(kappa=1e4, steps=[10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000,
                                     300000],
                   cg=[2, 5, 20, 100], truncate=[10, 100], panels=[(100, 4), (50, 100)]),
        fig2b=dict(steps=[1, 2, 4, 8, 16, 25], repeats=5),
        frontier=dict(steps=[1, 2, 4, 8, 16, 32, 64, 100], at=[16, 64, 100], repeats=5,
                      kappa=100.0, dim=20),
        table1=dict(kappas=[10.0, 100.0, 1000.0, 10000.0],
                    deltas=[1e-2, 1e-4, 1e-6, 1e-8], dim=20, cap=2_000_000),
        neumann=dict(kappa=1000.0, dim=100, iterations=[1, 2, 5, 10, 20, 50, 100, 200, 500,
                                                       1000, 2000, 5000])),
    # seconds: to try the pipeline (a plugin method, a new machine), not to read numbers
    "smoke": dict(
        fig2a=dict(kappa=10.0, steps=[10, 30], cg=[5], truncate=[5], panels=[(8, 16)]),
        fig2b=dict(steps=[1, 2], repeats=1),
        frontier=dict(steps=[1, 2, 4], at=[2, 4], repeats=1, kappa=10.0, dim=8),
        table1=dict(kappas=[10.0, 100.0], deltas=[1e-2, 1e-3], dim=8, cap=20_000),
        neumann=dict(kappa=10.0, dim=8, iterations=[1, 2, 5])),
}
LAM = 1.0
# Figure 2b shows the paper's methods and the exact low-memory forms of MAML; the frontier
# compares every exact method against iMAML and FOMAML.
FIG2B_METHODS = (*PAPER_METHODS, "maml-checkpoint", "maml-mixed")
DEFAULT_OUTPUTS = ("fig2a", "fig2b", "table1", "neumann")
FRONTIER_METHODS = ("maml", "maml-checkpoint", "maml-mixed", "imaml", "fomaml")


def finish(partial: Path, final: Path) -> None:
    """The run completed: its rows replace the previous results."""
    os.replace(partial, final)


def sweep_to(name: str, points, *, quiet: bool, **kw) -> pd.DataFrame:
    partial = output_dir("results") / f".{name}.partial.csv"
    final = output_dir("results") / f"{name}.csv"
    store = run_sweep(points, partial, progress=not quiet, desc=name, **kw)
    frame = store.read()
    if (frame["status"] == "error").any():
        raise SystemExit(f"{name}: some points failed (see {partial}); rerun to retry them")
    finish(partial, final)
    return frame


# --------------------------------------------------------------------------- Figure 2a
def run_fig2a(cfg, device, quiet, methods=PAPER_METHODS) -> pd.DataFrame:
    points = []
    for dim, n_train in cfg["panels"]:
        points += error_points(methods=list(methods),
                               steps_list=cfg["steps"], cg_list=cfg["cg"], kappas=[cfg["kappa"]],
                               truncate_list=cfg["truncate"], lam=LAM, dim=dim, n_train=n_train,
                               device=device)
    # Errors only: one computation per point, no timing or memory meters.
    return sweep_to("figure2a", points, quiet=quiet, repeats=0, memory=False)


# --------------------------------------------------------------------------- Figure 2b
def run_fig2b(cfg, device, quiet, methods=FIG2B_METHODS) -> pd.DataFrame:
    points = cost_points(workload="cnn", methods=list(methods),
                         steps_list=cfg["steps"], cg_list=[5], truncate_list=[5], device=device)
    # Every method at one step count is timed together: their ratios come from one run.
    return sweep_to("figure2b", points, quiet=quiet, repeats=cfg["repeats"],
                    interleave=("inner_steps",))


# --------------------------------------------------------------------------- the frontier
def run_frontier(cfg, device, quiet, methods=FRONTIER_METHODS) -> pd.DataFrame:
    """Peak bytes and time of each method on the CNN against K (every method at one K timed
    in one interleaved group), and each method's meta-gradient error on the synthetic problem
    (float64) at the K of the panels: one CSV, the rows told apart by ``workload``."""
    cost = sweep_to("frontier_cost", cost_points(workload="cnn", methods=list(methods),
                                                  steps_list=cfg["steps"], cg_list=[5],
                                                  device=device),
                    quiet=quiet, repeats=cfg["repeats"], interleave=("inner_steps",))
    error = sweep_to("frontier_error", error_points(
        methods=list(methods), steps_list=cfg["at"], cg_list=[5], kappas=[cfg["kappa"]],
        lam=LAM, dim=cfg["dim"], device=device), quiet=quiet, repeats=0, memory=False)
    frame = pd.concat([cost, error], ignore_index=True)
    write_csv_atomic(frame, output_dir("results") / "frontier.csv")
    for name in ("frontier_cost", "frontier_error"):   # their rows live on in frontier.csv
        (output_dir("results") / f"{name}.csv").unlink(missing_ok=True)
    return frame


# --------------------------------------------------------------------------- Table 1
def run_table1(cfg, device, quiet, threads) -> pd.DataFrame:
    partial = output_dir("results") / ".table1.partial.csv"
    store = ResultsStore(partial, ["row", "kappa", "delta"], ["compute_grads", "error"])
    cells = [(row, kappa, delta) for kappa in cfg["kappas"] for row in table1.ROWS
             for delta in cfg["deltas"]]
    bar = tqdm(total=len(cells), desc="table1", disable=quiet, unit="cell")
    for kappa in cfg["kappas"]:
        w = synthetic_workload(dim=cfg["dim"], kappa=kappa, lam=LAM, device=device)
        ev = table1.Evaluator(w)
        hvp = hvp_cost(w.tasks[0], w.theta, repeats=15, threads=threads)["hvp_in_grads"]
        for row in table1.ROWS:
            previous = None
            for delta in cfg["deltas"]:
                key = dict(row=row, kappa=kappa, delta=delta)
                if not store.done(key):
                    cell = table1.measure_cell(ev, row, kappa, delta, hvp, cap=cfg["cap"],
                                               previous=previous, seed=0, threads=threads,
                                               memory=delta == min(cfg["deltas"]))
                    store.add(cell)
                    if cell["status"] == "ok":
                        previous = {"steps": cell["inner_steps"],
                                    "extra": cell.get("truncate") or cell.get("cg_steps") or 1}
                bar.update()
    bar.close()
    finish(partial, output_dir("results") / "table1.csv")
    return pd.read_csv(output_dir("results") / "table1.csv")


# --------------------------------------------------------------------------- CG vs Neumann
def run_neumann(cfg, device) -> pd.DataFrame:
    """Relative error of iMAML's meta-gradient against the exact one after k products with
    A = H + lam I, for CG and the Neumann series (step 1/lambda_max, the usual safe choice,
    and 2/(lambda_min + lambda_max), the best fixed step), at an inner solution exact to
    rounding, on one synthetic task."""
    import scipy.linalg
    import synthetic
    from suite import meta_gradient
    from suite.harness.results import provenance, write_csv_atomic
    from suite.core.solvers import NewtonCG
    from suite.core.tasks import LinearRegressionTask
    dim, kappa = cfg["dim"], cfg["kappa"]
    task = synthetic.make_task(dim, 2 * dim, dim, kappa, LAM, seed=0)
    theta = np.random.default_rng(1).standard_normal(dim)
    exact = synthetic.exact_meta_gradient(task, theta)
    eig = scipy.linalg.eigvalsh(task.train_hessian()) + LAM
    t = LinearRegressionTask.from_synthetic(task, device=device)
    solvers = [("cg", None), ("neumann", 1 / eig[-1]), ("neumann", 2 / (eig[0] + eig[-1]))]
    rows = []
    for name, step in solvers:
        for k in cfg["iterations"]:
            r = meta_gradient("imaml", t, torch.tensor(theta, device=device), lam=LAM,
                              solver=NewtonCG(3, 4 * dim), cg_steps=k, linear_solver=name,
                              neumann_step=step)
            rows.append({"linear_solver": name, "step": step, "iterations": k,
                         "products": r.stats.cg_iterations, "residual": r.stats.cg_residual,
                         "rel_error": synthetic.relative_error(r.grad.cpu().numpy(), exact),
                         "kappa": kappa, "realized_kappa": eig[-1] / eig[0], "dim": dim,
                         "lam": LAM, "lambda_min": eig[0], "lambda_max": eig[-1],
                         **provenance(device=device, dtype="float64",
                                      threads=torch.get_num_threads(), seed=0)})
    frame = pd.DataFrame(rows)
    write_csv_atomic(frame, output_dir("results") / "linear_solvers.csv")
    return frame


@dataclass(frozen=True)
class Output:
    """One output of this command: its rows' file, how they are computed, what is drawn (or
    written) from them, and the paper's claims checked on them."""
    title: str
    csv: str
    run: Callable       # (scale's config, args, threads) -> rows
    draw: Callable      # rows -> the figure or report written
    verdicts: Callable  # rows -> one line per claim checked


def _table1_report(frame: pd.DataFrame) -> Path:
    out = output_dir("reports") / "table1.md"
    out.write_text(claims.table1_markdown(frame))
    return out


OUTPUTS = {
    "fig2a": Output("Figure 2a", "figure2a", lambda cfg, a, threads: run_fig2a(
        cfg["fig2a"], a.device, a.quiet, a.methods or PAPER_METHODS), plot_fig2a,
        claims.figure2a),
    "fig2b": Output("Figure 2b", "figure2b", lambda cfg, a, threads: run_fig2b(
        cfg["fig2b"], a.device, a.quiet, a.methods or FIG2B_METHODS), plot_fig2b,
        claims.figure2b),
    "table1": Output("Table 1", "table1", lambda cfg, a, threads: run_table1(
        cfg["table1"], a.device, a.quiet, threads), _table1_report, claims.table1_verdicts),
    "neumann": Output("CG vs Neumann", "linear_solvers", lambda cfg, a, threads: run_neumann(
        cfg["neumann"], a.device), plot_neumann, claims.linear_solvers),
    "frontier": Output("The frontier", "frontier", lambda cfg, a, threads: run_frontier(
        cfg["frontier"], a.device, a.quiet), plot_frontier, claims.frontier),
}


def build_parser() -> cli.Parser:
    parser = cli.Parser(prog=commands.prog("figures"), description=__doc__,
                        formatter_class=HelpFormatter)
    parser.add_argument("--full", action="store_true",
                        help="the paper's scale: kappa up to 1e4, more steps (hours on a CPU)")
    parser.add_argument("--scale", choices=list(SCALES), default="default",
                        help="default (minutes), full (--full), or smoke (seconds: a trial of "
                        "the pipeline, its numbers not meant to be read)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--from-results", action="store_true",
                        help="re-plot from the CSVs under --out's results/ without computing")
    parser.add_argument("--only", nargs="+", choices=list(OUTPUTS), default=list(DEFAULT_OUTPUTS),
                        help="which outputs to make (the frontier, K up to 64, about 10 more "
                        "minutes on 2 cores, is made on request)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (None: torch's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--methods", nargs="+", default=None,
                        choices=[m for m, s in METHODS.items() if not s.needs_dense],
                        help="registered methods in Figures 2a and 2b (plugins included; "
                        f"default: {', '.join(PAPER_METHODS)} in 2a, and "
                        f"{', '.join(FIG2B_METHODS[len(PAPER_METHODS):])} too in 2b)")
    parser.add_argument("--out", type=Path, default=cli.OUT,
                        help="folder whose results/ and reports/ receive the outputs (default: "
                        "out/, ignored by git; --out . refreshes the committed ones)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli_range(parser, "--threads", args.threads, 1)
    cli.writable_folder("--out", args.out)
    DESTINATION["root"] = args.out.resolve()
    check_device(args.device)
    pin_commit()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    cfg = SCALES["full" if args.full else args.scale]
    start, summary = time.perf_counter(), []
    for what in args.only:
        output = OUTPUTS[what]
        csv = output_dir("results") / f"{output.csv}.csv"
        if args.from_results:
            if not csv.exists():
                raise cli.UsageError(f"--from-results: {csv} does not exist; run without it "
                                     "first")
            frame = pd.read_csv(csv)
        else:
            frame = output.run(cfg, args, threads)
        summary += [f"{output.title} -> {shown(output.draw(frame))}"] + output.verdicts(frame)
    print("\n".join(summary))
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog=commands.prog("figures")))
