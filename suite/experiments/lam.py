"""A learned per-coordinate lam against the best scalar lam, on tasks whose coordinates need
priors of different strength (``imaml-suite lam``).

Tasks (``synthetic.make_prior_tasks``): linear regression whose true weights vary around a
common mean with a different spread per coordinate; fewer training points than weights, so
the prior decides much of the answer. The Bayes-optimal iMAML prior is known in closed form
(theta = the mean, lam_i = noise^2 / (n spreads_i^2), ``synthetic.bayes_lam``).

Meta-training: outer Adam on theta and log lam with iMAML's meta-gradients in both (one CG
solve per task gives d/dtheta = lam * u and d/dlam = (theta - phi) * u), the inner problem
solved to rounding by Newton-CG. Compared, at the same iterations and task stream: the learned
vector lam, a learned scalar lam, and theta meta-trained at each scalar lam of a grid. The
meta-test loss is computed by the numpy reference (exact inner solutions) on held-out tasks.

Writes ``results/learned_lam.csv`` (one row per configuration, resumable),
``results/learned_lam_coordinates.csv``, ``reports/learned_lam.png`` and
``reports/learned_lam.md``.
"""
from __future__ import annotations

import sys
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.stats  # noqa: E402
import torch  # noqa: E402

import synthetic  # noqa: E402
from suite.harness import cli, commands  # noqa: E402
from suite.harness.cli import HelpFormatter, cli_out_folder  # noqa: E402
from suite.core.validation import check_float, check_int  # noqa: E402
from suite.core.adapt import adapt  # noqa: E402
from suite.core.methods import Stats  # noqa: E402
from suite.harness.results import (ResultsStore, pin_commit, provenance, write_csv_atomic)  # noqa: E402
from suite.core.solvers import NewtonCG  # noqa: E402
from suite.core.tasks import LinearRegressionTask  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GAIN_TARGET = 0.10      # learned vector lam at least 10% below the best scalar's loss
RANK_TARGET = 0.9       # Spearman correlation of learned lam with 1 / spreads^2
EVAL_SEED = 777         # held-out tasks, the same for every configuration


@dataclass
class LamConfig:
    dim: int = 16
    n_train: int = 8
    n_test: int = 32
    noise: float = 0.3
    spread_min: float = 0.05
    spread_max: float = 2.0
    iterations: int = 300
    meta_batch: int = 8
    outer_lr: float = 0.05
    lam_init: float = 0.1
    grid: list[float] = field(default_factory=lambda: [0.003, 0.01, 0.03, 0.1, 0.3, 1.0])
    eval_tasks: int = 2000
    seed: int = 0

    def __post_init__(self):
        for name in ("dim", "n_train", "n_test", "iterations", "meta_batch", "eval_tasks"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("seed", self.seed)
        for name in ("noise", "spread_min", "outer_lr", "lam_init"):
            check_float(name, getattr(self, name), 0.0)
        check_float("spread_max", self.spread_max, self.spread_min, low_open=False)
        if not self.grid:
            raise ValueError("grid must hold at least one scalar lam")
        for lam in self.grid:
            check_float("grid", lam, 0.0)

    def family(self) -> tuple[np.ndarray, np.ndarray]:
        """The common mean and the per-coordinate spreads (geometric, in shuffled order)."""
        rng = np.random.default_rng(self.seed)
        mean = rng.standard_normal(self.dim)
        spreads = rng.permutation(np.geomspace(self.spread_min, self.spread_max, self.dim))
        return mean, spreads

    def tasks(self, n: int, rng) -> list:
        mean, spreads = self.family()
        return synthetic.make_prior_tasks(n, mean=mean, spreads=spreads, n_train=self.n_train,
                                          n_test=self.n_test, noise=self.noise, seed=rng)

    def settings(self) -> dict:
        d = asdict(self)
        d.pop("grid")
        return d


def meta_test_loss(tasks, theta: np.ndarray, lam: np.ndarray) -> tuple[float, float]:
    """Mean test loss after the exact inner solution (numpy reference), with a 95% interval."""
    losses = np.array([t.test_loss(synthetic.prox_inner_solution(t, theta, lam)) for t in tasks])
    return float(losses.mean()), float(1.96 * losses.std(ddof=1) / math.sqrt(len(losses)))


def meta_train(cfg: LamConfig, lam_init: float, learn: str | None):
    """theta (and lam if ``learn`` is "scalar" or "vector") after ``cfg.iterations`` outer
    Adam steps; the task stream is the same for every call. Returns (theta, lam vector,
    largest CG residual and largest inner stationarity met)."""
    theta = torch.zeros(cfg.dim, dtype=torch.float64, requires_grad=True)
    size = {"vector": cfg.dim, "scalar": 1}.get(learn)
    params = [theta]
    if size:
        log_lam = torch.full((size,), math.log(lam_init), dtype=torch.float64,
                             requires_grad=True)
        params.append(log_lam)
    optimizer = torch.optim.Adam(params, lr=cfg.outer_lr)
    rng = np.random.default_rng(cfg.seed + 1)
    # The inner problem is quadratic: one Newton step with CG to rounding solves it (the
    # stationarity |grad G(phi)| / |grad G(theta)| reached is recorded, ~1e-15).
    solver, cg = NewtonCG(steps=1, cg_steps=4 * cfg.dim), 4 * cfg.dim
    worst = stationarity = 0.0
    for _ in range(cfg.iterations):
        tasks = [LinearRegressionTask.from_synthetic(t) for t in cfg.tasks(cfg.meta_batch, rng)]
        # lam from log lam: autograd carries d/dlam (from adapt) back to log lam
        lam = (log_lam.exp().expand(cfg.dim) if size
               else torch.full((cfg.dim,), lam_init, dtype=torch.float64))
        results = []
        loss = sum(t.test_loss(adapt("imaml", t, theta, lam=lam, solver=solver, cg_steps=cg,
                                     on_backward=results.append)) for t in tasks) / len(tasks)
        optimizer.zero_grad()
        loss.backward()
        stats = Stats.combine([r.stats for r in results])
        worst = max(worst, stats.cg_residual)
        stationarity = max(stationarity, stats.inner_stationarity)
        optimizer.step()
    lam = (log_lam.detach().exp().expand(cfg.dim) if size
           else torch.full((cfg.dim,), lam_init, dtype=torch.float64))
    return theta.detach().numpy(), lam.numpy().copy(), worst, stationarity


def run(cfg: LamConfig, out: Path, coordinates: Path, progress=print) -> pd.DataFrame:
    """Every configuration not yet in ``out`` (rows are written as they finish)."""
    store = ResultsStore(out, ["config", *cfg.settings()], ["meta_test_loss"])
    held_out = cfg.tasks(cfg.eval_tasks, np.random.default_rng(EVAL_SEED))
    mean, spreads = cfg.family()
    target = synthetic.bayes_lam(spreads, cfg.noise, cfg.n_train)
    configs = ([(f"scalar lam {lam:g}", lam, None) for lam in cfg.grid]
               + [("learned scalar", cfg.lam_init, "scalar"),
                  ("learned vector", cfg.lam_init, "vector"), ("Bayes-optimal", None, None)])
    for name, lam_init, learn in configs:
        row = {"config": name, **cfg.settings()}
        if store.done(row):
            continue
        start = time.perf_counter()
        if lam_init is None:
            theta, lam, worst, stationarity = mean, target, math.nan, math.nan
        else:
            theta, lam, worst, stationarity = meta_train(cfg, lam_init, learn)
        loss, ci = meta_test_loss(held_out, theta, lam)
        rho = scipy.stats.spearmanr(lam, 1 / spreads ** 2).statistic if learn == "vector" \
            else math.nan
        store.add(row | {
            "learned": learn or "", "meta_test_loss": loss, "ci95": ci,
            "lam_geomean": float(np.exp(np.log(lam).mean())),
            "spearman_vs_inverse_spread2": rho,
            "median_abs_log10_lam_over_bayes": float(np.median(np.abs(np.log10(lam / target)))),
            "max_cg_residual": worst, "max_inner_stationarity": stationarity,
            "seconds": round(time.perf_counter() - start, 2),
            "status": "ok", **provenance(device="cpu", dtype="float64",
                                         threads=torch.get_num_threads(), seed=cfg.seed)})
        if learn == "vector":
            write_csv_atomic(pd.DataFrame({"coordinate": np.arange(cfg.dim), "spread": spreads,
                                           "bayes_lam": target, "learned_lam": lam,
                                           "mean": mean, "learned_theta": theta}), coordinates)
        progress(f"{name}: meta-test loss {loss:.5f} ± {ci:.5f}")
    return store.read()


def summary(frame: pd.DataFrame) -> dict:
    """The numbers the report states, from the results rows."""
    by = frame.set_index("config")
    grid = frame[frame.config.str.startswith("scalar lam")]
    best = grid.loc[grid.meta_test_loss.idxmin()]
    vec, bayes = by.loc["learned vector"], by.loc["Bayes-optimal"]
    gain = 1 - vec.meta_test_loss / best.meta_test_loss
    gap = best.meta_test_loss - bayes.meta_test_loss
    return {"best_scalar": best.config, "best_scalar_loss": best.meta_test_loss,
            "best_scalar_lam": best.lam_geomean, "vector_loss": vec.meta_test_loss,
            "vector_ci95": vec.ci95, "scalar_learned_loss": by.loc["learned scalar",
                                                                    "meta_test_loss"],
            "scalar_learned_lam": by.loc["learned scalar", "lam_geomean"],
            "bayes_loss": bayes.meta_test_loss, "gain": gain,
            "gap_closed": (best.meta_test_loss - vec.meta_test_loss) / gap if gap > 0 else
            math.nan, "spearman": vec.spearman_vs_inverse_spread2,
            "median_log10": vec.median_abs_log10_lam_over_bayes,
            "gain_ok": gain >= GAIN_TARGET, "rank_ok": vec.spearman_vs_inverse_spread2 >=
            RANK_TARGET, "iterations": int(vec.iterations), "seconds": frame.seconds.sum(),
            "commit": vec.git_commit}


def plot(frame: pd.DataFrame, coords: pd.DataFrame, path: Path) -> Path:
    s = summary(frame)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.4))
    a.loglog(coords.bayes_lam, coords.learned_lam, "o", color="C0", label="learned vector λ")
    span = np.array([coords.bayes_lam.min() / 2, coords.bayes_lam.max() * 2])
    a.plot(span, span, "k:", lw=1, label="λ = Bayes-optimal")
    a.axhline(s["scalar_learned_lam"], color="C1", ls="--", label="learned scalar λ")
    a.axhline(s["best_scalar_lam"], color="C2", ls="-.", label="best scalar λ of the grid")
    a.set_xlabel("Bayes-optimal λ_i = σ² / (n s_i²)")
    a.set_ylabel("λ_i after meta-training")
    a.set_title(f"(a) per coordinate (Spearman ρ with 1/s² = {s['spearman']:.2f})")
    a.legend(fontsize=8)
    grid = frame[frame.config.str.startswith("scalar lam")].sort_values("lam_geomean")
    b.errorbar(grid.lam_geomean, grid.meta_test_loss, yerr=grid.ci95, fmt="o-", color="C2",
               ms=4, label="θ meta-trained at a fixed scalar λ")
    b.set_xscale("log")
    for name, color, ls in (("learned scalar", "C1", "--"), ("learned vector", "C0", "-"),
                            ("Bayes-optimal", "k", ":")):
        extra = " (θ = mean, λ = σ²/(n s²))" if name == "Bayes-optimal" else ""
        b.axhline(frame.set_index("config").loc[name, "meta_test_loss"], color=color, ls=ls,
                  label=name + extra)
    b.set_xlabel("scalar λ")
    b.set_ylabel("meta-test loss (held-out tasks)")
    b.set_title(f"(b) meta-test loss after {s['iterations']} outer iterations")
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.grid(alpha=0.3, which="both")
    r = frame.iloc[0]
    fig.suptitle(f"Linear-regression tasks with {int(r.dim)} weights: task weights w_i = "
                 f"mean_i + s_i z (z ~ N(0, 1)), spreads s_i from {r.spread_min:g} to "
                 f"{r.spread_max:g}; "
                 f"n = {int(r.n_train)} training points,\nlabel noise σ = {r.noise:g}. λ_i weighs "
                 "coordinate i in the inner problem's proximal term ½ Σ λ_i (φ_i − θ_i)²; "
                 f"meta-test loss on {int(r.eval_tasks)} held-out tasks (95% interval)",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def markdown(frame: pd.DataFrame, cfg: LamConfig) -> str:
    s = summary(frame)
    verdict = lambda ok: "reached" if ok else "**not reached**"  # noqa: E731
    rows = ["| configuration | meta-test loss | λ (geometric mean) | s |", "|---|---|---|---|"]
    for _, r in frame.iterrows():
        rows.append(f"| {r.config} | {r.meta_test_loss:.5f} ± {r.ci95:.5f} | "
                    f"{r.lam_geomean:.3g} | {r.seconds:.1f} |")
    return "\n".join([
        "# A learned per-coordinate λ", "",
        "Generated by `imaml-suite lam` (see `suite/experiments/lam.py`).", "",
        f"Linear-regression tasks in {cfg.dim} dimensions whose true weights vary around a "
        f"common mean with spreads from {cfg.spread_min:g} to {cfg.spread_max:g} (one per "
        f"coordinate), {cfg.n_train} training and {cfg.n_test} test points per task, noise "
        f"{cfg.noise:g}. Outer Adam (lr {cfg.outer_lr:g}) for {cfg.iterations} iterations of "
        f"{cfg.meta_batch} tasks, the same task stream for every configuration; iMAML "
        f"meta-gradients in θ and λ from one CG solve per task; meta-test loss on "
        f"{cfg.eval_tasks} held-out tasks after the exact inner solution (95% intervals; the "
        f"tasks are shared, so differences are tighter than the intervals suggest). "
        f"Commit {s['commit']}.", "", *rows, "",
        f"- Learned vector λ: {s['vector_loss']:.5f}, against the best scalar λ of the grid "
        f"({s['best_scalar']}) {s['best_scalar_loss']:.5f}: {100 * s['gain']:.1f}% lower "
        f"(target >= {100 * GAIN_TARGET:.0f}%: {verdict(s['gain_ok'])}). A learned scalar λ "
        f"reaches {s['scalar_learned_loss']:.5f} (λ = {s['scalar_learned_lam']:.3g}).",
        f"- The Bayes-optimal prior (θ = the mean, λ_i = σ²/(n s_i²)) gives "
        f"{s['bayes_loss']:.5f}: the learned vector closes {100 * s['gap_closed']:.0f}% of "
        f"the gap between the best scalar λ and it.",
        f"- Ordering: Spearman correlation of the learned λ with 1/s² is {s['spearman']:.3f} "
        f"(target >= {RANK_TARGET}: {verdict(s['rank_ok'])}); the median |log10(learned / "
        f"Bayes-optimal)| over coordinates is {s['median_log10']:.2f}.", "",
        "![learned λ](learned_lam.png)", ""])


def main(argv=None) -> int:
    defaults = LamConfig()
    p = cli.Parser(prog=commands.prog("lam"), description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--iterations", type=int, default=defaults.iterations,
                   help="outer iterations per configuration")
    p.add_argument("--meta-batch", type=int, default=defaults.meta_batch, help="tasks per "
                   "outer iteration")
    p.add_argument("--eval-tasks", type=int, default=defaults.eval_tasks,
                   help="held-out tasks of the meta-test loss")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the task family")
    p.add_argument("--out", type=Path, default=cli.out_path("results", "learned_lam.csv"),
                   help="results file (configurations already in it are not rerun)")
    p.add_argument("--reports", type=Path, default=cli.out_path("reports"),
                   help="folder of learned_lam.png and learned_lam.md")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    pin_commit()
    for flag in ("iterations", "meta_batch", "eval_tasks"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be an integer >= 1, got "
                    f"{getattr(args, flag)}")
    if args.seed < 0:
        p.error(f"--seed must be an integer >= 0, got {args.seed}")
    cli_out_folder(p, "--out", args.out)
    cli_out_folder(p, "--reports", args.reports / "learned_lam.md")
    cfg = LamConfig(iterations=args.iterations, meta_batch=args.meta_batch,
                    eval_tasks=args.eval_tasks, seed=args.seed)
    coordinates = args.out.with_name(args.out.stem + "_coordinates.csv")
    frame = run(cfg, args.out, coordinates, progress=(lambda *a: None) if args.quiet else print)
    frame = frame[(frame.iterations == cfg.iterations) & (frame.meta_batch == cfg.meta_batch)
                  & (frame.eval_tasks == cfg.eval_tasks) & (frame.seed == cfg.seed)]
    plot(frame, pd.read_csv(coordinates), args.reports / "learned_lam.png")
    (args.reports / "learned_lam.md").write_text(markdown(frame, cfg))
    print(f"-> {args.out}, {args.reports / 'learned_lam.png'}, {args.reports / 'learned_lam.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog=commands.prog("lam")))
