"""The Omniglot learning curves: held-out accuracy against outer iterations and training
seconds, one series per recipe, named by the system it solves and coloured by curvature
family."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import pandas as pd

from suite.experiments.omniglot import recipes
from suite.experiments.omniglot.report import run_dir

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)


CURVATURE_TEXT = {"hessian": "Hessian", "gauss-newton": "Gauss-Newton", "damped": "damped Hessian",
                  "official": "official system"}
CURVATURE_COLORS = {"hessian": "Reds", "gauss-newton": "Blues", "damped": "Purples",
                    "official": "Greens"}


def series_label(name: str) -> str:
    """A curve's legend entry: the recipe's label, and for an implicit recipe the system it
    solves (curvature, λ, linear solver, breakdown policy), so the figure reads without the
    report."""
    r = recipes.RECIPES[name]
    if r.method != "imaml":
        return r.label
    c = r.curvature
    parts = [CURVATURE_TEXT.get(c.name, c.name) + (f" + {c.damping:g} I" if c.damping else ""),
             f"λ learned per layer from {r.lam:g}" if r.learn_lam else f"λ {r.lam:g}"]
    if r.linear_solver != "cg":
        parts.append(r.linear_solver)
    if c.name == "hessian" and r.on_breakdown != "raise":
        parts.append(f"on breakdown: {r.on_breakdown}")
    return f"{name}: " + ", ".join(parts)


def _curve_styles(names: list[str]) -> dict:
    """Colour by the family of the implicit system (shades of one colour per curvature), a
    marker and line style per series; the other methods in the default cycle."""
    styles, by_family = {}, {}
    for n in names:
        r = recipes.RECIPES[n]
        by_family.setdefault(r.curvature.name if r.method == "imaml" else None, []).append(n)
    cycle = plt.get_cmap("tab10").colors
    for family, members in by_family.items():
        for j, n in enumerate(members):
            color = cycle[j % 10] if family is None else plt.get_cmap(
                CURVATURE_COLORS.get(family, "Greys"))(0.45 + 0.5 * j / max(len(members) - 1, 1))
            styles[n] = dict(color=color, marker="os^vDP*X<>h"[j % 11],
                             ls=["-", "--", "-.", ":"][j % 4])
    return styles


def plot_curves(frame: pd.DataFrame, out: Path, path: Path, title: str) -> Path:
    """Held-out accuracy against outer iterations and against training seconds. A recipe
    trained for 0 iterations (the untrained initialisation) is a horizontal reference line."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.2), sharey=True)
    styles = _curve_styles(list(frame.recipe))
    for _, r in frame.iterrows():
        path_c = run_dir(out, r) / "curve.csv"
        if not path_c.exists():
            continue
        c = pd.read_csv(path_c).sort_values("iteration")
        if int(r.iterations) == 0:   # not trained: its accuracy is a reference level
            for ax in axes:
                ax.axhline(100 * c.accuracy.iloc[0], color="black", lw=1.2, ls=(0, (6, 3)),
                           label=series_label(r.recipe) if ax is axes[0] else None)
            continue
        kw = dict(ms=4, label=series_label(r.recipe), **styles[r.recipe])
        axes[0].plot(c.iteration, 100 * c.accuracy, **kw)
        axes[1].plot(c.train_s, 100 * c.accuracy, **kw)
    first = frame.iloc[0]
    chance = 100 / int(first["n_way"])
    for ax, xl in zip(axes, ("outer iterations", "training time (s, CPU)")):
        ax.axhline(chance, color="grey", lw=0.8, ls=":")
        ax.annotate(f"chance ({chance:.0f}%: 1 of {int(first['n_way'])} classes)",
                    (0.99, chance), xycoords=("axes fraction", "data"), ha="right",
                    va="bottom", fontsize=8, color="grey")
        ax.set_xlabel(xl)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    ncol = 3 if max(map(len, labels), default=0) > 40 else 4
    fig.legend(handles, labels, loc="lower center", ncol=min(ncol, len(labels)), fontsize=8)
    axes[0].set_ylabel(f"held-out accuracy % (each point: {int(first['curve_tasks'])} tasks)")
    fig.suptitle(f"{title}: {int(first['n_way'])}-way {int(first['k_shot'])}-shot, "
                 f"meta-batch {int(first['meta_batch'])}, {first['device_name']}\n"
                 f"curve points on {int(first['curve_tasks'])} held-out tasks; the tables' "
                 f"accuracies on {int(first['eval_tasks'])} tasks after training", fontsize=10)
    rows = -(-len(labels) // min(ncol, max(len(labels), 1)))
    fig.tight_layout(rect=(0, 0.04 * rows + 0.02, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
