"""The paper's claims, checked against result rows: each check prints its numbers, the
threshold it uses and a verdict. Figures never decide a claim by eye."""
from __future__ import annotations

import numpy as np
import pandas as pd

from suite.experiments.table1 import EXPONENT_TOLERANCE, ROWS, fit_exponent, fit_log_delta

VANISHED = 1e-6      # a relative error below this counts as "converged to the exact value"
FLAT = 0.01          # memory counts as flat when its spread is within 1% of its minimum
R2_LINEAR = 0.99     # memory counts as linear in steps when a line explains 99% of it


def _verdict(ok: bool) -> str:
    return "HOLDS" if ok else "DOES NOT HOLD"


def _curve(sub: pd.DataFrame, method: str, cg=None) -> pd.Series:
    g = sub[(sub.method == method) & ((sub.cg_steps == cg) if cg is not None else True)]
    return g.set_index("inner_steps").rel_error.sort_index()


PAPER_METHODS = {"maml", "fomaml", "imaml"}   # the paper's claims compare these


def _missing(frame: pd.DataFrame) -> list[str]:
    missing = sorted(PAPER_METHODS - set(frame.method))
    return [f"  the paper's claims need {', '.join(missing)} in the figure too: not checked"
            ] if missing else []


def _others(ok: pd.DataFrame, describe) -> list[str]:
    """One line per method the paper does not have (a plugin's, Reptile, ...)."""
    return [describe(m, g) for m, g in ok.groupby("method")
            if m not in PAPER_METHODS | {"truncated"}]


def figure2a(frame: pd.DataFrame) -> list[str]:
    ok = frame[frame.status == "ok"]
    lines = _others(ok, lambda m, g: f"  {m}: relative error at the largest K per panel: "
                    + ", ".join(f"{r.rel_error:.1e} (dim {r.dim}, n_train {r.n_train})"
                                for r in g.sort_values("inner_steps").groupby(
                                    ["dim", "n_train"]).tail(1).itertuples()))
    if _missing(ok):
        return _missing(ok) + lines
    for (dim, n_train), sub in ok.groupby(["dim", "n_train"]):
        maml = _curve(sub, "maml")
        cgs = sorted(sub[sub.method == "imaml"].cg_steps.dropna().unique())
        imaml = {int(c): _curve(sub, "imaml", c) for c in cgs}
        k_max = maml.index.max()
        best = imaml[int(cgs[-1])]
        lines.append(f"  [dim {dim}, n_train {n_train}, kappa {sub.kappa.iloc[0]:g}] at K={k_max}:"
                     f" MAML {maml[k_max]:.1e}, " + ", ".join(
                         f"iMAML/{c} CG {imaml[c][k_max]:.1e}" for c in imaml)
                     + f", FOMAML {_curve(sub, 'fomaml')[k_max]:.1e}")
        converge = maml[k_max] < VANISHED and best[k_max] < VANISHED
        lines.append(f"    both converge to the exact meta-gradient (< {VANISHED:g}): "
                     f"{_verdict(converge)}")
        finite = [k for k in maml.index if maml[k] > VANISHED]
        paper = imaml.get(5, best)
        wins = [k for k in finite if paper[k] < maml[k]]
        lines.append(f"    iMAML (5 CG) more accurate than MAML at finite K: at {len(wins)} of "
                     f"{len(finite)} step counts where MAML has not converged: "
                     f"{_verdict(len(finite) > 0 and len(wins) == len(finite))}")
        if 2 in imaml and 5 in imaml:
            t2, t5 = imaml[2][k_max], imaml[5][k_max]
            lines.append(f"    2 CG steps leave a terminal error ({t2:.1e}) and 5 do not "
                         f"({t5:.1e}, threshold {VANISHED:g}): "
                         f"{_verdict(t2 >= VANISHED and t5 < VANISHED)}")
    return lines


def _slope(g: pd.DataFrame, column: str) -> tuple[float, float]:
    """(slope per inner step, R^2) of a straight-line fit."""
    x, y = g.inner_steps.to_numpy(float), g[column].to_numpy(float)
    b, a = np.polyfit(x, y, 1)
    total = ((y - y.mean()) ** 2).sum()
    r2 = 1 - ((y - (a + b * x)) ** 2).sum() / total if total > 0 else 1.0
    return float(b), float(r2)


def figure2b(frame: pd.DataFrame) -> list[str]:
    ok = frame[frame.status == "ok"].sort_values("inner_steps")
    by = {m: g for m, g in ok.groupby("method")}
    lines = _others(ok, lambda m, g: f"  {m}: peak {g.peak_bytes.min() / 2**20:.1f}-"
                    f"{g.peak_bytes.max() / 2**20:.1f} MiB, time {g.time_s.min():.3f}-"
                    f"{g.time_s.max():.3f} s over K = {int(g.inner_steps.min())}-"
                    f"{int(g.inner_steps.max())}")
    if _missing(ok):
        return _missing(ok) + lines
    mem_slope, r2 = _slope(by["maml"], "peak_bytes")
    lines.append(f"  MAML memory grows linearly: {mem_slope / 2**20:.1f} MiB per inner step, "
                 f"R^2 {r2:.4f} (threshold {R2_LINEAR}): {_verdict(r2 >= R2_LINEAR)}")
    for m in ("imaml", "fomaml"):
        peak = by[m].peak_bytes
        spread = (peak.max() - peak.min()) / peak.min()
        lines.append(f"  {m} memory flat in steps: {peak.min() / 2**20:.1f}-"
                     f"{peak.max() / 2**20:.1f} MiB, spread {spread:.1%} (threshold "
                     f"{FLAT:.0%}): {_verdict(spread <= FLAT)}")
    t_maml, _ = _slope(by["maml"], "time_s")
    t_fo, _ = _slope(by["fomaml"], "time_s")
    t_im, _ = _slope(by["imaml"], "time_s")
    merged = by["imaml"].set_index("inner_steps").time_s - by["fomaml"].set_index(
        "inner_steps").time_s
    lines.append(f"  time per inner step: MAML {t_maml * 1e3:.0f} ms, FOMAML {t_fo * 1e3:.0f} ms,"
                 f" iMAML {t_im * 1e3:.0f} ms; iMAML - FOMAML = {merged.min():.2f}-"
                 f"{merged.max():.2f} s over the step counts")
    same_rate = abs(t_im - t_fo) <= 0.25 * t_fo
    lines.append(f"  iMAML time = FOMAML + a constant (per-step slopes within 25%): "
                 f"{_verdict(same_rate)}")
    lines.append(f"  MAML time grows faster than FOMAML's ({t_maml / t_fo:.1f}x per step): "
                 f"{_verdict(t_maml > t_fo)}")
    return lines


def _fits(frame: pd.DataFrame):
    ok = frame[frame.status == "ok"]
    delta_min = ok.delta.min()
    for row, spec in ROWS.items():
        g = ok[ok.row == row]
        at = g[g.delta == delta_min].sort_values("kappa")
        fit = {"row": row, "spec": spec, "cells": at}
        if len(at) >= 2:
            fit["compute_exp"] = fit_exponent(at.kappa, at.compute_grads)
            fit["memory_exp"] = fit_exponent(at.kappa, at.graph_bytes)
            fit["compute_ok"] = abs(fit["compute_exp"] - spec.compute_exponent) \
                <= EXPONENT_TOLERANCE
            fit["memory_ok"] = abs(fit["memory_exp"] - spec.memory_exponent) <= EXPONENT_TOLERANCE
            if spec.peak_exponent is not None and "peak_bytes" in at:
                fit["peak_exp"] = fit_exponent(at.kappa, at.peak_bytes)
                fit["peak_ok"] = abs(fit["peak_exp"] - spec.peak_exponent) <= EXPONENT_TOLERANCE
        top = g[g.kappa == g.kappa.max()].sort_values("delta")
        if len(top) >= 3:
            fit["per_decade"], fit["r2"] = fit_log_delta(top.delta, top.compute_grads)
        yield fit


def table1_verdicts(frame: pd.DataFrame) -> list[str]:
    lines = []
    for f in _fits(frame):
        spec = f["spec"]
        if "compute_exp" not in f:
            lines.append(f"  {spec.label}: fewer than two kappas reached the target")
            continue
        lines.append(f"  {spec.label}: compute ~ kappa^{f['compute_exp']:.2f} (theory "
                     f"{spec.compute_exponent:g}) {_verdict(f['compute_ok'])}; memory ~ kappa^"
                     f"{f['memory_exp']:.2f} (theory {spec.memory_exponent:g}) "
                     f"{_verdict(f['memory_ok'])}" + (
                         f"; peak live bytes ~ kappa^{f['peak_exp']:.2f} (theory "
                         f"{spec.peak_exponent:g}) {_verdict(f['peak_ok'])}"
                         if "peak_exp" in f else ""))
    return lines


THEORY = {"maml_gd": ("κ log(D/δ)", "Mem(∇L̂)·κ log(D/δ)"),
          "maml_agd": ("√κ log(D/δ)", "Mem(∇L̂)·√κ log(D/δ)"),
          "truncated_gd": ("κ log(D/δ)", "Mem(∇L̂)·κ log(1/ε)"),
          "imaml": ("√κ log(D/δ)", "Mem(∇L̂)"),
          "maml_ckpt_gd": ("κ log(D/δ) (one more forward pass)",
                           "Mem(∇L̂)·√(κ log(D/δ)) + √(κ log(D/δ)) parameter copies"),
          "maml_mixed_gd": ("κ log(D/δ) (a product per step)",
                            "Mem(∇L̂) in graphs + κ log(D/δ) parameter copies")}
"""Table 1 of the paper: (compute, memory) to reach a meta-gradient error delta."""


def _table1_header(ok: pd.DataFrame, kappas, delta_min) -> list[str]:
    first = ok.iloc[0]
    return ["# Table 1, measured", "",
            f"Synthetic linear regression, dim {int(first['dim'])}, lam {first['lam']:g}, "
            f"{first['dtype']} on {first['device']} ({first['device_name']}, "
            f"{int(first['threads'])} threads), torch {first['torch_version']}, commit "
            f"{first['git_commit']}. Error: relative l2 error "
            "against the exact d/dθ L_test(Alg*(θ)) (scipy, float64). Compute: gradients of "
            "L_train plus Hessian-vector products at their measured cost in gradients "
            f"({', '.join(f'κ={k:g}: {ok[ok.kappa == k].hvp_in_grads.iloc[0]:.2f}' for k in kappas)}). "
            "Memory: peak bytes the autograd graph holds (tensors saved for backward; each "
            "unrolled step keeps the residual of its loss, as a network keeps activations). "
            "The low-memory MAMLs also keep plain parameter vectors outside any graph (the "
            "checkpoints, the iterates): those count in the peak of live tensor bytes, whose "
            "exponent is fitted for them as well.",
            "", "Truncated backprop keeps k of the K steps. With lam > 0 the step j from the "
            "end contributes lr·lam·(I − lr·(H + lam I))^j to the Jacobian, so the truncation "
            "error falls at the rate of the inner error: at equal δ it needs k ≈ K (theory: "
            "κ log(1/ε) against κ log(D/δ), the same order).", "",
            f"## Cost to reach δ = {delta_min:g}", "",
            "| algorithm | theory: compute | theory: memory | "
            + " | ".join(f"κ={k:g}: compute / graph bytes / error" for k in kappas) + " |",
            "|---|---|---|" + "---|" * len(kappas)]


def _cost_rows(fits, kappas) -> list[str]:
    out = []
    for f in fits:
        cells = f["cells"].set_index("kappa")
        row = [f["spec"].label, *THEORY[f["row"]]]
        for k in kappas:
            if k in cells.index:
                c = cells.loc[k]
                budget = f"K={int(c.inner_steps)}"
                if not pd.isna(c["cg_steps"]):
                    budget += f", CG {int(c['cg_steps'])}"
                if not pd.isna(c["truncate"]):
                    budget += f", k={int(c['truncate'])}"
                row.append(f"{c.compute_grads:.0f} ({budget}) / {int(c.graph_bytes)} / "
                           f"{c.error:.1e}")
            else:
                row.append("not reached")
        out.append("| " + " | ".join(row) + " |")
    return out


def _fit_rows(fits) -> list[str]:
    out = ["", f"## Fitted against theory (tolerance ±{EXPONENT_TOLERANCE} on exponents)", "",
           "| algorithm | compute exponent of κ: theory / measured / verdict | memory exponent "
           "of κ: theory / measured / verdict | compute per decade of 1/δ at the largest κ "
           "(R² of a line in log(1/δ)) |", "|---|---|---|---|"]
    for f in fits:
        spec = f["spec"]
        if "compute_exp" not in f:
            out.append(f"| {spec.label} | not enough cells | | |")
            continue
        decade = (f"{f['per_decade']:.0f} grads (R² {f['r2']:.3f})" if "per_decade" in f
                  else "needs three δ")
        peak = (f"; peak live bytes {spec.peak_exponent:g} / {f['peak_exp']:.2f} / "
                f"{_verdict(f['peak_ok'])}" if "peak_exp" in f else "")
        out.append(f"| {spec.label} | {spec.compute_exponent:g} / {f['compute_exp']:.2f} / "
                   f"{_verdict(f['compute_ok'])} | {spec.memory_exponent:g} / "
                   f"{f['memory_exp']:.2f} / {_verdict(f['memory_ok'])}{peak} | {decade} |")
    return out


def table1_markdown(frame: pd.DataFrame) -> str:
    ok = frame[frame.status == "ok"]
    kappas = sorted(ok.kappa.unique())
    fits = _fits(frame)
    out = _table1_header(ok, kappas, ok.delta.min()) + _cost_rows(fits, kappas) + _fit_rows(fits)
    missing = frame[frame.status != "ok"]
    if len(missing):
        out += ["", "Cells that did not reach their target: " + "; ".join(
            f"{r.row} κ={r.kappa:g} δ={r.delta:g}: {r.note}" for r in missing.itertuples())]
    return "\n".join(out) + "\n"


def linear_solvers(frame: pd.DataFrame) -> list[str]:
    """Products with A each linear solver needs for a meta-gradient within VANISHED."""
    lines, reach = [], {}
    lo, hi = frame.lambda_min.iloc[0], frame.lambda_max.iloc[0]
    for (name, step), g in frame.groupby(["linear_solver", "step"], dropna=False):
        label = name if name == "cg" else f"neumann (step {step:.3g})"
        g = g.sort_values("products")
        hit = g[g.rel_error < VANISHED]
        reach[label] = int(hit.products.iloc[0]) if len(hit) else None
        rate = (max(abs(1 - step * lo), abs(1 - step * hi)) if name == "neumann"
                else (np.sqrt(hi / lo) - 1) / (np.sqrt(hi / lo) + 1))
        lines.append(f"  [kappa {hi / lo:.3g}] {label}: rate {rate:.4f} per product; error "
                     f"{g.rel_error.iloc[-1]:.1e} after {int(g.products.iloc[-1])} products; "
                     f"below {VANISHED:g} from "
                     + (f"{reach[label]} products" if reach[label] else "never in this range"))
    cg = reach.pop("cg", None)
    fewer = cg is not None and all(v is None or cg < v for v in reach.values())
    lines.append(f"    CG reaches {VANISHED:g} in fewer products than the Neumann series: "
                 f"{_verdict(fewer)}")
    return lines


# Targets of the low-memory MAMLs against backprop ("maml") at one K, measured in one run:
# (method, K, largest peak ratio, largest time ratio).
FRONTIER_TARGETS = [("maml-mixed", 16, 1 / 6, 1.2), ("maml-checkpoint", 16, 1 / 2, 1.5),
                    ("maml-checkpoint", 64, 1 / 4, 1.5)]
EXACT = ("maml", "maml-checkpoint", "maml-mixed")


def frontier(frame: pd.DataFrame) -> list[str]:
    """The paper's memory claim restated against the exact low-memory MAMLs, from the rows."""
    cost = frame[(frame.workload == "cnn") & (frame.status == "ok")]
    if not {"maml", "imaml"} <= set(cost.method):
        return ["  the frontier's claims need maml and imaml in the rows: not checked"]
    peak = cost.pivot_table(index="inner_steps", columns="method", values="peak_bytes")
    time_ = cost.pivot_table(index="inner_steps", columns="method", values="time_s")
    ks = list(peak.index)
    lines = []
    for m, k, peak_max, time_max in FRONTIER_TARGETS:
        if m in peak and k in ks:
            p, t = peak.loc[k, m] / peak.loc[k, "maml"], time_.loc[k, m] / time_.loc[k, "maml"]
            lines.append(f"  {m} at K = {k}: peak {p:.3f} of maml's (target <= {peak_max:.3g}), "
                         f"time {t:.2f}x (target <= {time_max:g}x): "
                         f"{_verdict(p <= peak_max and t <= time_max)}")
    for m in EXACT:
        if m not in peak:
            continue
        above = [k for k in ks if peak.loc[k, m] > peak.loc[k, "imaml"]]
        when = f"from K = {above[0]}" if above else f"at no K up to {ks[-1]}"
        lines.append(f"  {m}'s peak passes iMAML's {when}; at K = {ks[-1]} it is "
                     f"{peak.loc[ks[-1], m] / peak.loc[ks[-1], 'imaml']:.2f}x iMAML's, in "
                     f"{time_.loc[ks[-1], m] / time_.loc[ks[-1], 'imaml']:.2f}x its time")
    if {"maml-mixed", "fomaml"} <= set(time_.columns):
        extra = [(k, time_.loc[k, "maml-mixed"] - time_.loc[k, "maml"],
                  time_.loc[k, "fomaml"]) for k in (16, ks[-1]) if k in ks]
        lines.append("  maml-mixed's time over backprop's: " + "; ".join(
            f"{d:.2f} s more at K = {k}, where FOMAML's whole meta-gradient takes {f:.2f} s"
            for k, d, f in extra) + " (mixed mode runs the inner loop once without a graph "
            "and then, per step, a gradient with its graph and one product: backprop's work "
            "plus FOMAML's inner loop)")
    if "maml-mixed" in peak and len(ks) >= 2:
        n_params = cost.n_params.iloc[0]
        vector = n_params * np.dtype(cost.dtype.iloc[0]).itemsize
        slope, _ = _slope(cost[cost.method == "maml-mixed"].sort_values("inner_steps"),
                          "peak_bytes")
        graph_slope, _ = _slope(cost[cost.method == "maml"].sort_values("inner_steps"),
                                "peak_bytes")
        constant = slope <= 1.5 * vector
        lines.append(f"  maml-mixed's peak grows {slope / 2**20:.2f} MiB per inner step = "
                     f"{slope / vector:.2f} parameter vectors ({vector / 2**20:.2f} MiB each), "
                     f"backprop's {graph_slope / 2**20:.1f} MiB = one step's graph")
        lines.append(f"  iMAML's memory advantage over exact MAML shrinks to the K stored "
                     f"iterates (at most 1.5 parameter vectors per step): "
                     f"{_verdict(constant)}" + (
                         f"; at K = {ks[-1]} exact MAML in mixed mode needs "
                         f"{peak.loc[ks[-1], 'maml-mixed'] / peak.loc[ks[-1], 'imaml']:.2f}x "
                         f"iMAML's memory, where backprop needs "
                         f"{peak.loc[ks[-1], 'maml'] / peak.loc[ks[-1], 'imaml']:.1f}x"))
    return lines
