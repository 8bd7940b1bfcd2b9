"""Regression gate: recompute a fixed set of metrics and compare them with the committed
baselines in results/baselines/ (JSON with provenance).

    imaml-suite regress            # compare; exit 1 on any regression
    imaml-suite regress --update   # replace the baselines with this run's figures
    imaml-suite regress --add      # add the metrics the baseline lacks (a new method's)

Kinds of metric and their rule (``now`` fails when it is worse than the baseline by more):
- ``error``: relative meta-gradient error, float64 and deterministic; it may not exceed the
  baseline by more than 1% relative plus 1e-12 absolute (BLAS builds may reorder sums:
  ~1e-15 relative on the gradient, far inside the margin, while a lost term or an
  off-by-one step moves the error by orders of magnitude).
- ``bytes``: peak live bytes or graph bytes from the deterministic meter; may not exceed
  the baseline by more than 1%.
- ``ratio``: a time ratio measured in this run (e.g. iMAML / FOMAML); must stay within
  [baseline / 1.5, baseline x 1.5]: shared machines shift absolute times by 5-50%, ratios
  much less, and a real regression (an extra HVP per step, a graph kept by mistake)
  moves them by more. Absolute times are never gated.
- ``accuracy``: held-out Omniglot accuracy of each Table 2 recipe after a short training
  (``suite.experiments.learning``, about 6 minutes for all); must stay within the baseline's tolerance,
  3 sqrt(2) x the recipe's standard deviation across seeds at that length (``python -m
  suite.experiments.learning`` measures it into results/learning_seeds.csv; the reasoning is there).
  ``--skip-learning`` leaves it out.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

import synthetic

from suite.harness import cli, commands
from suite.harness.measure import measure_memory, time_calls
from suite.core.methods import meta_gradient
from suite.core.registry import METHODS
from suite.harness.results import provenance
from suite.core.solvers import GD
from suite.harness.workloads import cnn_tasks, synthetic_workload

BASELINE = Path(__file__).resolve().parents[2] / "results" / "baselines" / "regress.json"
ERROR_REL, ERROR_ABS, BYTES_REL, RATIO_BAND = 0.01, 1e-12, 0.01, 1.5


@dataclass
class Verdict:
    metric: str
    kind: str
    baseline: float | None
    now: float
    ok: bool
    rule: str


def compare(baseline: dict, now: dict) -> list[Verdict]:
    """One verdict per metric of ``now``; a metric missing from the baseline fails."""
    verdicts = []
    for name, m in now.items():
        kind, value = m["kind"], m["value"]
        base = baseline.get(name, {}).get("value")
        if base is None:
            verdicts.append(Verdict(name, kind, None, value, False, "no baseline (record it with --add, on purpose)"))
            continue
        if kind == "error":
            limit = base * (1 + ERROR_REL) + ERROR_ABS
            ok, rule = value <= limit, f"<= {limit:.3g}"
        elif kind == "bytes":
            limit = base * (1 + BYTES_REL)
            ok, rule = value <= limit, f"<= {limit:.0f}"
        elif kind == "ratio":
            lo, hi = base / RATIO_BAND, base * RATIO_BAND
            ok, rule = lo <= value <= hi, f"in [{lo:.2f}, {hi:.2f}]"
        elif kind == "accuracy":
            tol = baseline[name].get("tolerance")
            if tol is None:
                verdicts.append(Verdict(name, kind, base, value, False, "no tolerance: "
                                        "imaml-suite learning, then --update"))
                continue
            ok, rule = abs(value - base) <= tol, f"within ±{tol:.3f}"
        else:
            raise ValueError(f"unknown metric kind {kind!r} for {name}")
        verdicts.append(Verdict(name, kind, base, value, bool(ok and value == value), rule))
    return verdicts


GATE_AXES = {"truncate": 50, "cg_steps": 5}   # the swept options' values in the gate


def gate_runs(methods=None) -> list[tuple[str, str, dict]]:
    """(metric name, method, options): every registered method (plugins included; or those
    named in ``methods``) with its swept options at ``GATE_AXES``, plus iMAML with 20 CG
    steps."""
    runs = []
    for name, spec in METHODS.items():
        options = {o.name: GATE_AXES[o.axis] for o in spec.options if o.axis in GATE_AXES}
        runs.append((name, name, options))
    runs.append(("imaml_cg20", "imaml", {"cg_steps": 20}))
    return [r for r in runs if methods is None or r[1] in methods]


def measure(methods=None, learning: bool = True) -> dict:
    """The gated metrics (about half a minute on 2 CPU cores, and the learning check's six
    minutes with ``learning``); with ``methods``, only those methods' synthetic metrics
    (seconds: a new method's baselines)."""
    metrics: dict = {}

    def put(name, kind, value, tolerance=None):
        metrics[name] = {"kind": kind, "value": float(value)}
        if tolerance is not None:
            metrics[name]["tolerance"] = float(tolerance)

    w = synthetic_workload(dim=20, kappa=100.0, lam=1.0, seed=0)
    task, theta, exact = w.tasks[0], w.theta, w.exact()
    gd = GD(300, 1 / w.smoothness)
    for name, method, options in gate_runs(methods):
        fn = lambda: meta_gradient(method, task, theta, lam=1.0, solver=gd, **options)  # noqa: E731
        put(f"synthetic/{name}/rel_error", "error",
            synthetic.relative_error(fn().grad.numpy(), exact))
        mem = measure_memory(fn)
        put(f"synthetic/{name}/peak_bytes", "bytes", mem.peak_bytes)
        put(f"synthetic/{name}/graph_bytes", "bytes", mem.graph_bytes)
    if methods is not None:
        return metrics

    torch.manual_seed(0)
    tasks, theta = cnn_tasks(n_way=20, k_shot=5)
    cnn = {m: (lambda m=m, o=o: meta_gradient(m, tasks[0], theta, lam=10.0, solver=GD(4, 0.1),
                                              **o))
           for m, o in CNN_RUNS.items()}
    for name, fn in cnn.items():
        put(f"cnn20w5s/{name}/peak_bytes", "bytes", measure_memory(fn).peak_bytes)
    times = time_calls(cnn, repeats=5, warmup=1)
    for name in cnn:
        if name != "fomaml":
            put(f"cnn20w5s/time_ratio/{name.replace('-', '_')}_over_fomaml", "ratio",
                times[name].median_s / times["fomaml"].median_s)
    batched_memory(put)
    if learning:
        from suite.experiments.learning import gate_metrics
        gate_metrics(put)
    return metrics


CNN_RUNS = {"maml": {}, "fomaml": {}, "imaml": {"cg_steps": 5}, "maml-checkpoint": {},
            "maml-mixed": {}}
BATCH = 16


def batched_memory(put) -> None:
    """Peak bytes of the batched lean MAML (maml-mixed) for a meta-batch of ``BATCH`` tasks,
    and that peak over one task's (the target: at most BATCH + 1)."""
    from suite.core.batched import BatchedTasks, batched_meta_gradient
    torch.manual_seed(0)
    tasks, theta = cnn_tasks(n_way=20, k_shot=5, n_tasks=BATCH)
    one, many = BatchedTasks.stack(tasks[:1]), BatchedTasks.stack(tasks)
    peak = {}
    for name, bt in (("one", one), ("batch", many)):
        peak[name] = measure_memory(lambda bt=bt: batched_meta_gradient(
            "maml-mixed", bt, theta, lam=10.0, steps=4, lr=0.1), track_graph=False).peak_bytes
    put(f"cnn20w5s/batched{BATCH}/maml-mixed/peak_bytes", "bytes", peak["batch"])
    put(f"cnn20w5s/batched{BATCH}/maml-mixed/peak_over_one_task", "bytes",
        peak["batch"] / peak["one"])


def print_table(verdicts: list[Verdict]) -> None:
    print(f"{'metric':45s} {'baseline':>12s} {'now':>12s}  {'rule':22s} verdict")
    for v in verdicts:
        base = "-" if v.baseline is None else f"{v.baseline:.4g}"
        print(f"{v.metric:45s} {base:>12s} {v.now:12.4g}  {v.rule:22s} "
              f"{'ok' if v.ok else 'REGRESSION'}")


def main(argv=None) -> int:
    parser = cli.Parser(prog=commands.prog("regress"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true",
                        help="replace the committed baselines with this run's figures")
    parser.add_argument("--add", action="store_true",
                        help="add this run's metrics that the baseline lacks (a newly "
                        "registered method's), keeping every existing baseline")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=None,
                        help="gate (or --add) only these registered methods' synthetic "
                        "metrics (default: every metric)")
    parser.add_argument("--baseline", type=Path, default=BASELINE,
                        help="baseline JSON file (default: results/baselines/regress.json)")
    parser.add_argument("--skip-learning", action="store_true",
                        help="leave out the learning check (Omniglot, about 6 minutes)")
    args = parser.parse_args(argv)
    if not args.update and not args.baseline.exists():
        raise cli.UsageError(f"no baseline at {args.baseline}: run with --update once, on purpose")
    if args.update and args.add:
        parser.error("--update replaces every baseline, --add only adds missing ones: "
                     "choose one")
    if args.add and not args.baseline.exists():
        parser.error(f"--add: no baseline at {args.baseline} to add to (use --update once)")
    if args.update and args.methods:
        parser.error("--update replaces the whole baseline: it takes no --methods "
                     "(use --add --methods to record a new method's)")
    now = measure(args.methods, learning=not args.skip_learning)
    if args.update or args.add:
        prov = provenance(device="cpu", dtype="float64", threads=torch.get_num_threads(), seed=0)
        record = {"provenance": prov, "metrics": now}
        if args.add:
            record = json.loads(args.baseline.read_text())
            new = {k: v for k, v in now.items() if k not in record["metrics"]}
            record["metrics"].update(new)
            record.setdefault("added", []).append({"metrics": sorted(new), **prov})
        args.baseline.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.baseline.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(args.baseline)
        print(f"baselines written to {args.baseline}" + (
            f" ({len(new)} added: {', '.join(sorted(new)) or 'none'})" if args.add else ""))
        return 0
    baseline = json.loads(args.baseline.read_text())["metrics"]
    verdicts = compare(baseline, now)
    print_table(verdicts)
    failed = [v for v in verdicts if not v.ok]
    print(f"{len(verdicts) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog=commands.prog("regress")))
