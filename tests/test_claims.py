"""Claim checks on constructed results: a verdict follows the numbers, both ways."""
import numpy as np
import pandas as pd

from suite.experiments import claims

STEPS = [1, 2, 4, 8]


def fig2b(maml_mem_per_step=2**20, imaml_mem=lambda k: 5 * 2**20, imaml_time_per_step=0.03):
    rows = []
    for k in STEPS:
        rows += [dict(method="maml", inner_steps=k, peak_bytes=2**20 + k * maml_mem_per_step,
                      time_s=0.1 * k, status="ok"),
                 dict(method="fomaml", inner_steps=k, peak_bytes=2**20, time_s=0.03 * k,
                      status="ok"),
                 dict(method="imaml", inner_steps=k, peak_bytes=imaml_mem(k),
                      time_s=0.5 + imaml_time_per_step * k, status="ok")]
    return pd.DataFrame(rows)


def verdicts(lines):
    return [line for line in lines if "HOLD" in line]


def test_figure2b_claims_hold_on_paper_like_numbers():
    lines = verdicts(claims.figure2b(fig2b()))
    assert lines and all(line.endswith("HOLDS") for line in lines)


def test_figure2b_claims_fail_when_the_numbers_do():
    growing = claims.figure2b(fig2b(imaml_mem=lambda k: (5 + k) * 2**20))
    assert any("imaml memory flat" in line and "DOES NOT HOLD" in line for line in growing)
    slow = claims.figure2b(fig2b(imaml_time_per_step=0.1))
    assert any("FOMAML + a constant" in line and "DOES NOT HOLD" in line for line in slow)


def test_figure2a_terminal_error_claim():
    rows = []
    for k in [10, 100, 1000]:
        maml = 10.0 ** -k ** 0.5
        rows += [dict(method="maml", inner_steps=k, cg_steps=np.nan, rel_error=maml),
                 dict(method="fomaml", inner_steps=k, cg_steps=np.nan, rel_error=0.5)]
        for cg, floor in ((2, 1e-2), (5, 1e-12)):
            rows.append(dict(method="imaml", inner_steps=k, cg_steps=cg,
                             rel_error=max(maml / 10, floor)))
    frame = pd.DataFrame(rows).assign(dim=10, n_train=4, kappa=1e3, status="ok")
    lines = verdicts(claims.figure2a(frame))
    assert all(line.endswith("HOLDS") for line in lines), lines
    worse = frame.copy()
    worse.loc[(worse.method == "imaml") & (worse.cg_steps == 5), "rel_error"] = 1e-3
    assert any("5 do not" in line and "DOES NOT HOLD" in line
               for line in claims.figure2a(worse))


def _solvers(cg_errors, neumann_errors):
    rows = []
    for name, step, errors in (("cg", np.nan, cg_errors), ("neumann", 0.01, neumann_errors)):
        for k, e in zip([10, 100, 1000], errors):
            rows.append(dict(linear_solver=name, step=step, products=k, rel_error=e,
                             lambda_min=1.0, lambda_max=100.0))
    return pd.DataFrame(rows)


def test_linear_solver_claim_follows_the_numbers():
    holds = claims.linear_solvers(_solvers([1e-3, 1e-12, 1e-14], [0.5, 0.3, 1e-5]))
    assert holds[-1].endswith("HOLDS") and "never in this range" in holds[1]
    fails = claims.linear_solvers(_solvers([1e-3, 1e-3, 1e-7], [0.5, 1e-7, 1e-9]))
    assert fails[-1].endswith("DOES NOT HOLD")
    assert "rate 0.9900" in fails[1]     # max |1 - 0.01 lambda| over [1, 100]


def test_neumann_figure_on_a_small_task(tmp_path, monkeypatch):
    from suite.experiments import figures
    monkeypatch.setitem(figures.DESTINATION, "root", tmp_path)   # what --out sets
    frame = figures.run_neumann(dict(kappa=10.0, dim=8, iterations=[1, 8, 30, 200]), "cpu")
    assert (tmp_path / "results" / "linear_solvers.csv").exists()
    cg = frame[frame.linear_solver == "cg"].set_index("iterations").rel_error
    # CG on an 8 x 8 SPD system is exact after at most 8 products (float64, kappa 10:
    # rounding ~1e-14); the best Neumann step contracts by (kappa-1)/(kappa+1) = 0.82 per
    # product, so after 30 products it is still above 0.82^30 / kappa ~ 3e-4 of the error.
    assert cg[8] < 1e-10
    best = frame[(frame.linear_solver == "neumann") & ~np.isclose(frame.step,
                                                                  1 / frame.lambda_max)]
    assert best.set_index("iterations").rel_error[30] > 1e-5
    assert best.set_index("iterations").rel_error[200] < 1e-10
    assert figures.plot_neumann(frame).exists()
