"""Claim checks on constructed results: a verdict follows the numbers, both ways."""
import numpy as np
import pandas as pd

from suite import claims

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
