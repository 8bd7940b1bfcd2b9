"""Drawing the figures of ``suite.experiments.figures``: one style per method (the paper's
methods as in its Figure 2, any other registered method in a style of its own) and one
function per figure, rows in, PNG and PDF out (under ``DESTINATION``'s ``reports/``)."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from suite import METHODS
from suite.harness import cli

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

ROOT = cli.ROOT

DESTINATION = {"root": cli.OUT}   # where results/ and reports/ go (figures --out sets it)


def output_dir(kind: str) -> Path:
    path = DESTINATION["root"] / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def shown(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)

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
    out = output_dir("reports") / f"{name}.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=130)
    fig.savefig(out.with_suffix(".pdf"))
    plt.close(fig)
    return out
