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

import matplotlib
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from suite import METHODS
from suite.experiments import claims, table1
from suite.experiments.sweeps import (PAPER_METHODS, cost_points, error_points, hvp_cost,
                                      run_sweep)
from suite.harness import cli, commands
from suite.harness.cli import HelpFormatter, check_device, cli_range
from suite.harness.results import ResultsStore, pin_commit, write_csv_atomic
from suite.harness.workloads import synthetic_workload

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

ROOT = Path(__file__).resolve().parents[2]
_OUT = {"root": cli.OUT}   # where results/ and reports/ go (--out)


def _dir(kind: str) -> Path:
    path = _OUT["root"] / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def _show(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)

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
STYLE = {"maml": ("MAML (GD + backprop)", "C3", "o"), "fomaml": ("FOMAML", "C7", "s"),
         "truncated": ("truncated backprop", "C1", "v"), "imaml": ("iMAML", "C0", "D"),
         "reptile": ("Reptile (θ - φ)", "C6", "P"),
         "maml-checkpoint": ("MAML, checkpointed (√K segments)", "C9", "^"),
         "maml-mixed": ("MAML, mixed mode", "C2", "X")}
LINESTYLE = {"fomaml": "--", "truncated": ":", "maml-checkpoint": "-.", "maml-mixed": "-."}
UNDERNEATH = ("fomaml", "truncated")   # Figure 2a: biased methods, drawn under the others
_MARKERS = "XP*^<>hp"


AXIS_TEXT = {"cg_steps": "{} CG steps", "truncate": "last {} steps"}


def axis_of(method: str) -> str | None:
    """The sweep axis the method has an option on (cg_steps, truncate), if any."""
    spec = METHODS.get(method)
    return next((o.axis for o in spec.options if o.axis), None) if spec else None


def axis_text(method: str, values: dict, before: str, after: str = "") -> str:
    axis = axis_of(method)
    if axis is None or values.get(axis) is None or values[axis] != values[axis]:
        return ""
    return before + AXIS_TEXT[axis].format(int(values[axis])) + after


def linestyle(method: str) -> str:
    """Dashed for a method the paper does not have, so that one lying on another shows."""
    return LINESTYLE.get(method, "-" if method in STYLE else (0, (4, 2)))


def style(method: str) -> tuple[str, str, str]:
    """(label, colour, marker): the paper's methods as in STYLE, any other registered method
    (a plugin's) by its name, in a colour and marker of its own."""
    if method in STYLE:
        return STYLE[method]
    others = sorted(m for m in METHODS if m not in STYLE)
    i = others.index(method) if method in others else len(others)
    return method, ("C8", "C4", "C9", "C2")[i % 4], _MARKERS[i % len(_MARKERS)]


def finish(partial: Path, final: Path) -> None:
    """The run completed: its rows replace the previous results."""
    os.replace(partial, final)


def sweep_to(name: str, points, *, quiet: bool, **kw) -> pd.DataFrame:
    partial = _dir("results") / f".{name}.partial.csv"
    final = _dir("results") / f"{name}.csv"
    store = run_sweep(points, partial, progress=not quiet, desc=name, **kw)
    frame = store.read()
    if (frame["status"] == "error").any():
        raise SystemExit(f"{name}: some points failed (see {partial}); rerun to retry them")
    finish(partial, final)
    return frame


SYMBOLS = {"kappa": "κ", "lam": "λ", "lr": "lr", "n_way": "N", "k_shot": "K-shot",
           "device_name": "device"}


def config_text(frame: pd.DataFrame, *keys) -> str:
    parts = []
    for k in keys:
        values = frame[k].dropna().unique()
        if len(values) == 1:
            v, name = values[0], SYMBOLS.get(k, k)
            parts.append(f"{name} = {v:g}" if isinstance(v, (float, np.floating))
                         else f"{name} = {v}")
    return ", ".join(parts)


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


def plot_fig2a(frame: pd.DataFrame) -> Path:
    panels = sorted({(int(d), int(n)) for d, n in zip(frame.dim, frame.n_train)},
                    key=lambda p: p[1] / p[0])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), squeeze=False)
    for ax, (dim, n_train) in zip(axes[0], panels):
        regime = "few-shot, rank-deficient H" if n_train < dim else "full-rank H"
        title = f"dim {dim}, {n_train} training points ({regime})"
        sub = frame[(frame.dim == dim) & (frame.n_train == n_train) & (frame.status == "ok")]
        for (method, cg, trunc), g in sub.groupby(["method", "cg_steps", "truncate"],
                                                  dropna=False):
            label, color, marker = style(method)
            label += axis_text(method, {"cg_steps": cg, "truncate": trunc}, ", ")
            if method in STYLE and axis_of(method) == "cg_steps":   # a colour per CG budget
                color = {2: "C9", 5: "C0", 20: "C2", 100: "C4"}.get(int(cg), "C5")
            g = g.sort_values("inner_steps")
            # A biased method's line is drawn under the others with large hollow markers, so
            # that a line lying on it (iMAML with 2 CG steps, few-shot) stays visible.
            under = method in UNDERNEATH
            ax.loglog(g.inner_steps, g.rel_error.clip(lower=1e-17), marker=marker, color=color,
                      label=label, ms=8 if under else 4, lw=2.4 if under else 1.4,
                      mfc="none" if under else color, mew=1.3, zorder=1 if under else 2,
                      alpha=0.8 if under else 1.0, ls=linestyle(method))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("inner GD steps K (lr = 1/L)")
        ax.set_ylabel("relative error of the meta-gradient")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    info = config_text(frame, "kappa", "lam", "dtype", "device")
    fig.suptitle("Figure 2a: relative error against d/dθ L_test(Alg*(θ)), "
                 f"synthetic linear regression\n({info})", fontsize=10)
    fig.tight_layout()
    return save(fig, "figure2a")


# --------------------------------------------------------------------------- Figure 2b
def run_fig2b(cfg, device, quiet, methods=FIG2B_METHODS) -> pd.DataFrame:
    points = cost_points(workload="cnn", methods=list(methods),
                         steps_list=cfg["steps"], cg_list=[5], truncate_list=[5], device=device)
    # Every method at one step count is timed together: their ratios come from one run.
    return sweep_to("figure2b", points, quiet=quiet, repeats=cfg["repeats"],
                    interleave=("inner_steps",))


def plot_fig2b(frame: pd.DataFrame) -> Path:
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.6))
    ok = frame[frame.status == "ok"]
    for method, g in ok.groupby("method"):
        label, color, marker = style(method)
        label += axis_text(method, {"cg_steps": g.cg_steps.iloc[0],
                                    "truncate": g["truncate"].max()}, " (", ")")
        g = g.sort_values("inner_steps")
        ls = linestyle(method)
        ax_t.errorbar(g.inner_steps, g.time_s, yerr=g.time_iqr_s / 2, marker=marker, color=color,
                      label=label, ms=4, capsize=2, ls=ls)
        ax_m.plot(g.inner_steps, g.peak_bytes / 2**20, marker=marker, color=color, label=label,
                  ms=4, ls=ls)
    oom = frame[frame.status == "oom"]
    for _, r in oom.iterrows():
        ax_m.annotate("OOM", (r.inner_steps, ax_m.get_ylim()[1]), color="C3", fontsize=8)
    ax_t.set_ylabel("wall time per meta-gradient [s] (median, IQR bars)")
    ax_m.set_ylabel("peak live tensor memory [MiB]")
    for ax in (ax_t, ax_m):
        ax.set_xlabel("inner GD steps")
        ax.grid(True, alpha=0.3)
    ax_t.legend(fontsize=8)
    ax_m.legend(fontsize=8)
    info = config_text(frame, *[k for k in ("n_way", "k_shot", "lam", "lr", "dtype", "batchnorm",
                                            "device_name", "threads") if k in frame])
    fig.suptitle(f"Figure 2b: compute and memory, 4-layer CNN, one task of random 28x28 "
                 f"images\n({info})", fontsize=10)
    fig.tight_layout()
    return save(fig, "figure2b")


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
    write_csv_atomic(frame, _dir("results") / "frontier.csv")
    for name in ("frontier_cost", "frontier_error"):   # their rows live on in frontier.csv
        (_dir("results") / f"{name}.csv").unlink(missing_ok=True)
    return frame


def plot_frontier(frame: pd.DataFrame) -> Path:
    cost = frame[(frame.workload == "cnn") & (frame.status == "ok")]
    error = frame[(frame.workload == "synthetic") & (frame.status == "ok")]
    panels = sorted(int(k) for k in error.inner_steps.unique() if k in set(cost.inner_steps))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.8), squeeze=False)
    for ax, k in zip(axes[0], panels):
        at, err_at = cost[cost.inner_steps == k], error[error.inner_steps == k]
        for r in at.itertuples():
            label, color, marker = style(r.method)
            e = err_at[err_at.method == r.method].rel_error
            ax.plot(r.time_s, r.peak_bytes / 2**20, marker=marker, color=color, ms=9, ls="",
                    label=label)
            ax.annotate(f"{r.method}\nerror {e.iloc[0]:.1e}" if len(e) else r.method,
                        (r.time_s, r.peak_bytes / 2**20), textcoords="offset points",
                        xytext=(7, 4), fontsize=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.margins(x=0.3, y=0.2)   # room for the labels beside the points
        ax.set_xlabel("time per meta-gradient [s] (median)")
        ax.set_ylabel("peak live tensor memory [MiB]")
        ax.set_title(f"K = {k} inner steps", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    info = config_text(cost, *[k for k in ("n_way", "k_shot", "lam", "lr", "dtype", "batchnorm",
                                           "device_name", "threads") if k in cost])
    kappa = error.kappa.iloc[0] if len(error) else float("nan")
    fig.suptitle("The memory frontier: exact MAML (backprop, checkpointed, mixed mode) against "
                 f"iMAML and FOMAML, 4-layer CNN\n({info}); error: relative, against "
                 f"d/dθ L_test(Alg*(θ)) on the synthetic task (κ = {kappa:g}, float64)",
                 fontsize=9)
    fig.tight_layout()
    return save(fig, "frontier")


# --------------------------------------------------------------------------- Table 1
def run_table1(cfg, device, quiet, threads) -> pd.DataFrame:
    partial = _dir("results") / ".table1.partial.csv"
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
    finish(partial, _dir("results") / "table1.csv")
    return pd.read_csv(_dir("results") / "table1.csv")


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
    write_csv_atomic(frame, _dir("results") / "linear_solvers.csv")
    return frame


def plot_neumann(frame: pd.DataFrame) -> Path:
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    lo, hi = frame.lambda_min.iloc[0], frame.lambda_max.iloc[0]
    k = np.array(sorted(frame.iterations.unique()))
    styles = {"cg": ("C0", "D", "CG")}
    for i, ((name, step), g) in enumerate(frame.groupby(["linear_solver", "step"],
                                                        dropna=False)):
        g = g.sort_values("products")
        if name == "cg":
            color, marker, label = styles["cg"]
            rate, bound = (np.sqrt(hi / lo) - 1) / (np.sqrt(hi / lo) + 1), 2.0
            theory = f"CG bound 2((√κ-1)/(√κ+1))^k"
        else:
            color, marker = ("C1", "s") if np.isclose(step, 1 / hi) else ("C2", "o")
            which = "1/λ_max" if np.isclose(step, 1 / hi) else "2/(λ_min+λ_max)"
            label = f"Neumann series, step {which}"
            rate, bound = max(abs(1 - step * lo), abs(1 - step * hi)), 1.0
            theory = f"max|1 - step λ|^k = {rate:.3f}^k"
        ax.semilogy(g.products, g.rel_error.clip(lower=1e-17), marker=marker, color=color,
                    ms=4, label=label)
        ax.semilogy(k, np.clip(bound * rate ** k, 1e-17, None), color=color, ls=":", lw=1,
                    label=theory)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("products with A = H + λI (CG or Neumann iterations)")
    ax.set_ylabel("relative error of the meta-gradient")
    ax.set_ylim(1e-16, 10)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower left")
    info = config_text(frame, "kappa", "lam", "dim", "dtype")
    fig.suptitle(f"iMAML's implicit solve: CG against the Neumann series\n({info}, exact "
                 "inner solution)", fontsize=9)
    fig.tight_layout()
    return save(fig, "linear_solvers")


def save(fig, name: str) -> Path:
    out = _dir("reports") / f"{name}.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=130)
    fig.savefig(out.with_suffix(".pdf"))
    plt.close(fig)
    return out


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
    out = _dir("reports") / "table1.md"
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
    _OUT["root"] = args.out.resolve()
    check_device(args.device)
    pin_commit()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    cfg = SCALES["full" if args.full else args.scale]
    start, summary = time.perf_counter(), []
    for what in args.only:
        output = OUTPUTS[what]
        csv = _dir("results") / f"{output.csv}.csv"
        if args.from_results:
            if not csv.exists():
                raise cli.UsageError(f"--from-results: {csv} does not exist; run without it "
                                     "first")
            frame = pd.read_csv(csv)
        else:
            frame = output.run(cfg, args, threads)
        summary += [f"{output.title} -> {_show(output.draw(frame))}"] + output.verdicts(frame)
    print("\n".join(summary))
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog=commands.prog("figures")))
