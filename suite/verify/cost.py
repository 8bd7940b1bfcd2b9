"""Peak memory and time of the function under test against K, beside the suite's methods on
the same problem, and the growth of each fitted as a straight line in K."""
from __future__ import annotations

import numpy as np

from suite.harness.measure import measure_memory, time_calls
from suite.core.methods import meta_gradient
from suite.core.solvers import GD

STEPS = (1, 2, 4, 8, 16)
SUITE = {"maml": {}, "fomaml": {}, "imaml": {"cg_steps": 10, "on_breakdown": "keep"}}
LR, LAM = 0.1, 5.0   # the last setting's: a stable inner loop for every K
FLAT = 0.10   # growth over K = 1 ... 16 below this share of the K = 1 peak: flat


def _peak(fn) -> int:
    try:
        return measure_memory(fn).peak_bytes
    except RuntimeError:   # torch.func code refuses the graph meter's saved-tensor hooks
        return measure_memory(fn, track_graph=False).peak_bytes


def measure(call, problem, *, steps=STEPS, repeats: int = 3) -> dict:
    """{name: {"steps", "peak_bytes", "time_s"}} for "yours" (``call(steps, lr, lam)``) and
    each of ``SUITE``; every K's contenders are timed together, interleaved."""
    task, theta = problem.task(), problem.theta()
    rows = {name: {"steps": [], "peak_bytes": [], "time_s": []} for name in ["yours", *SUITE]}
    for k in steps:
        fns = {"yours": lambda k=k: call(k, LR, LAM)}
        for m, options in SUITE.items():
            fns[m] = (lambda m=m, k=k, o=options: meta_gradient(m, task, theta, lam=LAM,
                                                                solver=GD(k, LR), **o))
        times = time_calls(fns, repeats=repeats, warmup=1)
        for name, fn in fns.items():
            rows[name]["steps"].append(k)
            rows[name]["peak_bytes"].append(_peak(fn))
            rows[name]["time_s"].append(times[name].median_s)
    return rows


def growth(rows: dict) -> dict:
    """Per contender: bytes and seconds per inner step (least squares), and the growth of the
    peak over the K range relative to its K = 1 value."""
    out = {}
    for name, r in rows.items():
        k = np.asarray(r["steps"], float)
        peak, t = np.asarray(r["peak_bytes"], float), np.asarray(r["time_s"], float)
        out[name] = {"bytes_per_step": float(np.polyfit(k, peak, 1)[0]),
                     "s_per_step": float(np.polyfit(k, t, 1)[0]),
                     "peak_growth": float((peak.max() - peak[0]) / peak[0])}
    return out


def describe(fits: dict) -> str:
    """One sentence on how the function's memory grows, in units of the suite's MAML step."""
    yours, maml = fits["yours"], fits["maml"]
    if yours["peak_growth"] <= FLAT:
        return (f"memory is flat in K (peak grows {yours['peak_growth']:.0%} from K = 1 to "
                f"{STEPS[-1]}), like FOMAML and iMAML")
    ratio = yours["bytes_per_step"] / maml["bytes_per_step"] if maml["bytes_per_step"] else 0
    what = ("one unrolled step's graph per step" if 0.75 <= ratio <= 1.33 else
            f"{ratio:.2f} times the suite's unrolled step graph per step")
    return (f"memory grows by {what} ({yours['bytes_per_step'] / 1024:.1f} KiB per step; the "
            f"suite's MAML: {maml['bytes_per_step'] / 1024:.1f} KiB)")
