"""The paper's Table 1, measured: compute and memory to reach a meta-gradient error delta.

For each row (MAML with GD or Nesterov AGD and full backprop, truncated backprop with GD,
iMAML with AGD + CG) and each condition number kappa of a synthetic task, the smallest
budget whose meta-gradient is within relative error delta of the exact d/dtheta
L_test(Alg*(theta)) is found by doubling and then bisection to 5% (the error falls
geometrically in the budget, so this brackets the smallest budget). Compute is counted in
gradients of L_train with each Hessian-vector product at its cost measured in the same
run; memory is the bytes the autograd graph holds, and the peak of live tensor bytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import synthetic

from suite.harness.measure import measure_memory
from suite.core.methods import meta_gradient
from suite.harness.results import provenance
from suite.core.registry import get_method
from suite.experiments.sweeps import make_solver


@dataclass(frozen=True)
class Row:
    """A row: a registered method with a registered solver. The budget search follows the
    method's swept option (``Option.axis``): none, the inner steps alone; "truncate", the
    steps full backprop needs, then the fewest kept steps; "cg_steps", the linear-solve
    budget, then the inner steps."""

    label: str
    compute_exponent: float   # theory: compute ~ kappa^e log(D/delta)
    memory_exponent: float    # theory: graph bytes (saved for backward) ~ kappa^e (times logs)
    method: str = "maml"
    solver: str = "gd"
    peak_exponent: float | None = None   # theory: peak live bytes, where it differs

    @property
    def axis_option(self):
        return next((o for o in get_method(self.method).options if o.axis), None)


ROWS = {
    "maml_gd": Row("MAML (GD + full back-prop)", 1.0, 1.0, "maml", "gd"),
    "maml_agd": Row("MAML (Nesterov AGD + full back-prop)", 0.5, 0.5, "maml", "nesterov-agd"),
    "truncated_gd": Row("Truncated back-prop (GD)", 1.0, 1.0, "truncated", "gd"),
    "imaml": Row("Implicit MAML (AGD inner solve + CG)", 0.5, 0.0, "imaml", "nesterov-agd"),
    # K = O(kappa log) steps; sqrt(K) segments keep sqrt(K) states and one segment's graphs
    "maml_ckpt_gd": Row("MAML, checkpointed (GD, √K segments)", 1.0, 0.5, "maml-checkpoint",
                        "gd", 0.5),
    # every iterate kept (K parameter vectors), one step's graph at a time
    "maml_mixed_gd": Row("MAML, mixed mode (GD)", 1.0, 0.0, "maml-mixed", "gd", 1.0),
}
EXPONENT_TOLERANCE = 0.15


class NotReached(RuntimeError):
    pass


def smallest_budget(error_of, target: float, start: int, cap: int) -> int:
    """The smallest integer b (to 5%) with error_of(b) <= target, searched upwards from
    ``start`` by doubling, or downwards by bisection when ``start`` already reaches it."""
    lo, b = start - 1, min(max(start, 1), cap)
    if error_of(b) <= target:
        lo = 0
    while error_of(b) > target:
        if b >= cap:
            raise NotReached(f"error {target:g} not reached within {cap} steps")
        lo, b = b, min(2 * b, cap)
    hi = b
    while hi - lo > max(1, int(0.05 * hi)):
        mid = (lo + hi) // 2
        if error_of(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


class Evaluator:
    """Meta-gradient errors of the four rows on one synthetic workload, memoised."""

    def __init__(self, workload):
        self.w = workload
        self.task = workload.tasks[0]
        self.exact = synthetic.exact_meta_gradient(workload.references[0],
                                                   workload.theta.cpu().numpy())
        self.L = workload.smoothness
        self._cache: dict = {}

    def call(self, row: str, steps: int, axis_value: int = 0):
        """The row's meta-gradient at ``steps`` inner steps and ``axis_value`` on its axis."""
        if row not in ROWS:
            raise ValueError(f"row must be one of {sorted(ROWS)}, got {row!r}")
        spec = ROWS[row]
        solver = make_solver(spec.solver, steps, 1 / self.L, self.w.kappa)
        option = spec.axis_option
        options = {option.name: axis_value} if option is not None else {}
        return lambda: meta_gradient(spec.method, self.task, self.w.theta, lam=self.w.lam,
                                     solver=solver, **options)

    def error(self, row: str, steps: int, axis_value: int = 0) -> float:
        key = (row, steps, axis_value)
        if key not in self._cache:
            grad = self.call(row, steps, axis_value)().grad.cpu().numpy()
            self._cache[key] = synthetic.relative_error(grad, self.exact)
        return self._cache[key]


CG_EXTRA = 3   # CG counts beyond the smallest that iMAML's budget search also tries


def find_budget(ev: Evaluator, row: str, delta: float, cap: int, previous: dict | None,
                hvp_cost: float = 1.0):
    """(inner steps, axis value) reaching delta: the value on the row's option axis, the
    truncation (truncated) or the CG steps (iMAML), else 0. ``previous`` (the budget for a
    larger delta) seeds the search for the inner steps; the CG steps are searched from 1."""
    prev = previous or {}
    option = ROWS[row].axis_option
    if option is None:
        k = smallest_budget(lambda k: ev.error(row, k), delta, prev.get("steps", 1), cap)
        return k, 0
    if option.at_most_steps:
        # The inner solve takes the steps that the axis at its cap (truncate = steps: full
        # backprop) needs for delta, so delta is reachable; then the fewest kept steps.
        steps = smallest_budget(lambda k: ev.error(row, k, k), delta, prev.get("steps", 1),
                                cap)
        trunc = smallest_budget(lambda t: ev.error(row, steps, t), delta, steps, steps)
        return steps, trunc
    # iMAML: the fewest CG steps m0 that reach delta/2 with a tightly solved inner problem;
    # then, for m0 ... m0 + CG_EXTRA CG steps, the fewest inner AGD steps that reach delta,
    # and the cheapest pair. A CG count at the edge of delta/2 leaves almost none of delta to
    # the inner solve, so one CG step more can save most of the inner steps (measured at
    # kappa 1000, delta 1e-4: 22 CG steps need 1314 inner steps, 23 need 257).
    tight = int(40 * math.sqrt(ev.w.kappa)) + 50
    cg = smallest_budget(lambda m: ev.error(row, tight, m), delta / 2, 1, cap)
    pairs = []
    for m in range(cg, cg + CG_EXTRA + 1):
        try:
            k = smallest_budget(lambda k: ev.error(row, k, m), delta, prev.get("steps", 1), tight)
        except NotReached:
            continue
        pairs.append((k + 1 + hvp_cost * m, k, m))
    if not pairs:
        raise NotReached(f"error {delta:g} not reached within {tight} inner steps")
    _, steps, cg = min(pairs)
    return steps, cg


def measure_cell(ev: Evaluator, row: str, kappa: float, delta: float, hvp_in_grads: float,
                 *, cap: int, previous: dict | None, seed: int, threads: int,
                 memory: bool = True) -> dict:
    """One cell: the budget for ``delta``, its compute, and (``memory``) its bytes."""
    base = dict(row=row, algorithm=ROWS[row].label, kappa=kappa, delta=delta, lam=ev.w.lam,
                dim=ev.w.tasks[0].num_parameters, hvp_in_grads=hvp_in_grads,
                **provenance(device=ev.w.theta.device, dtype=ev.w.theta.dtype, threads=threads,
                             seed=seed))
    try:
        steps, axis_value = find_budget(ev, row, delta, cap, previous, hvp_in_grads)
    except NotReached as err:
        return dict(base, status="not_reached", note=str(err))
    fn = ev.call(row, steps, axis_value)
    result = fn()
    mem = measure_memory(fn, ev.w.theta.device) if memory else None
    stats = result.stats
    return dict(base, inner_steps=steps,
                **{axis: (axis_value if ROWS[row].axis_option is not None
                          and ROWS[row].axis_option.axis == axis else None)
                   for axis in ("truncate", "cg_steps")},
                grad_evals=stats.grad_evals, hvps=stats.hvps,
                compute_grads=stats.grad_evals + hvp_in_grads * stats.hvps,
                graph_bytes=mem.graph_bytes if mem else None,
                peak_bytes=mem.peak_bytes if mem else None,
                error=ev.error(row, steps, axis_value), status="ok",
                note="" if mem else "memory measured at the smallest delta only")


def fit_exponent(x, y) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def fit_log_delta(deltas, compute) -> tuple[float, float]:
    """compute = a + b log10(1/delta): returns (b, R^2)."""
    x = np.log10(1 / np.asarray(deltas, float))
    y = np.asarray(compute, float)
    b, a = np.polyfit(x, y, 1)
    residual = y - (a + b * x)
    total = ((y - y.mean()) ** 2).sum()
    return float(b), float(1 - (residual ** 2).sum() / total) if total > 0 else 1.0
