"""Sweeps: grids of meta-gradient computations measured for error, time and memory.

    imaml-suite sweeps error --help     method x inner steps x CG steps x kappa (synthetic)
    imaml-suite sweeps cost --help      method x inner steps (synthetic or the 4-layer CNN)
    imaml-suite sweeps hvp-cost --help  one Hessian-vector product in units of one gradient

Each point is one row of a tidy CSV (``suite.harness.results``): measured once under the memory
meters (which also serves as warm-up), then timed ``repeats`` times, interleaved with the
other points of the same kappa and inner steps. A rerun skips finished rows; a CUDA
out-of-memory is a row with status ``oom`` and the sweep goes on. Under
``torchrun --nproc_per_node N`` the rows are shared among the processes and rank 0 writes.
The command line is ``suite.experiments.sweeps_cli``.
"""
from __future__ import annotations

import itertools
import sys
import traceback
from pathlib import Path

import torch
from tqdm import tqdm

import synthetic

from suite.core.curvature import gauss_newton_at
from suite.core.hvp import HVP_PRODUCTS, hvp_at
from suite.core.linalg import SolveBreakdown
from suite.core.methods import meta_gradient, meta_gradient_batch
from suite.core.registry import get_method, get_solver
from suite.core.solvers import GD
from suite.core.validation import check_int
from suite.harness import cli
from suite.harness.distributed import World
from suite.harness.measure import measure_memory, time_calls
from suite.harness.results import PROVENANCE, ResultsStore, provenance
from suite.harness.workloads import cnn_tasks, synthetic_workload
from suite.models.conv4 import BATCHNORMS, resolve_batchnorm

KEY = ["workload", "method", "solver", "inner_steps", "cg_steps", "truncate", "kappa", "lam",
       "lr", "dim", "n_train", "n_way", "k_shot", "meta_batch", "device", "dtype", "seed"]
RESULTS = ["rel_error", "time_s", "time_iqr_s", "peak_bytes", "graph_bytes", "cuda_peak_bytes",
           "nvml_used_bytes", "nvml_process_bytes"]
COUNTS = ["n_params", "grad_evals", "hvps", "cg_iterations", "cg_residual", "repeats"]
COLUMNS = (KEY + RESULTS + COUNTS + ["batchnorm"] + [c for c in PROVENANCE if c not in KEY]
           + ["world_size", "status", "note"])
DTYPES = {"float32": torch.float32, "float64": torch.float64}
PAPER_METHODS = ("maml", "fomaml", "truncated", "imaml")   # the paper's Figure 2
_WORKLOADS: dict = {}


def make_solver(name: str, steps: int, lr: float, kappa: float | None = None):
    """The registered solver ``name`` for a point: ``steps`` and ``lr`` (where it takes one);
    a solver with a ``kappa`` option (Nesterov AGD's momentum) gets the point's kappa."""
    spec = get_solver(name)
    options = {"kappa": kappa} if kappa and any(o.name == "kappa" for o in spec.options) else {}
    return spec.make(steps, lr if spec.takes_lr else None, **options)


def method_options(method: str, cfg: dict) -> dict:
    """The method's options that a point sets: those swept along a column (``Option.axis``:
    cg_steps, truncate)."""
    return {o.name: cfg[o.axis] for o in get_method(method).options
            if o.axis and cfg.get(o.axis) is not None}


def workload(cfg: dict):
    """(tasks, theta, exact meta-gradient or None) for a point, cached across points."""
    device, dtype = torch.device(cfg["device"]), DTYPES[cfg["dtype"]]
    if cfg["workload"] == "synthetic":
        key = ("synthetic", cfg["dim"], cfg.get("n_train"), cfg["kappa"], cfg["lam"],
               cfg["meta_batch"], cfg["seed"], dtype, device)
        if key not in _WORKLOADS:
            w = synthetic_workload(dim=cfg["dim"], n_train=cfg.get("n_train"), kappa=cfg["kappa"],
                                   lam=cfg["lam"],
                                   n_tasks=cfg["meta_batch"], seed=cfg["seed"], dtype=dtype,
                                   device=device)
            _WORKLOADS[key] = (w.tasks, w.theta, w.exact())
    elif cfg["workload"] == "cnn":
        key = ("cnn", cfg["n_way"], cfg["k_shot"], cfg["meta_batch"], cfg["seed"], dtype, device)
        if key not in _WORKLOADS:
            tasks, theta = cnn_tasks(n_way=cfg["n_way"], k_shot=cfg["k_shot"],
                                     n_tasks=cfg["meta_batch"], seed=cfg["seed"], dtype=dtype,
                                     device=device)
            _WORKLOADS[key] = (tasks, theta, None)
    else:
        raise ValueError(f"workload must be 'synthetic' or 'cnn', got {cfg['workload']!r}")
    return _WORKLOADS[key]


def _prepare(cfg: dict, threads: int, repeats: int):
    """(row with the configuration and provenance, the call computing the meta-gradient,
    the dict its result lands in)."""
    tasks, theta, exact = workload(cfg)
    row = dict(cfg, n_params=theta.numel(), repeats=repeats,
               **provenance(device=cfg["device"], dtype=cfg["dtype"], threads=threads,
                            seed=cfg["seed"]))
    if cfg["workload"] == "cnn":  # the CNN's BatchNorm: cnn_tasks' "auto" for this device
        row["batchnorm"] = resolve_batchnorm("auto", cfg["device"])
    solver = make_solver(cfg["solver"], cfg["inner_steps"], cfg["lr"], cfg.get("kappa") or None)
    options = method_options(cfg["method"], cfg)
    out = {"exact": exact}

    def call():
        out["result"] = meta_gradient_batch(cfg["method"], tasks, theta, lam=cfg["lam"],
                                            solver=solver, **options)
    return row, call, out


def _finish_row(row: dict, out: dict) -> dict:
    stats = out["result"].stats
    row.update(grad_evals=stats.grad_evals, hvps=stats.hvps, cg_iterations=stats.cg_iterations,
               cg_residual=stats.cg_residual, status="ok")
    if out["exact"] is not None:
        row["rel_error"] = synthetic.relative_error(out["result"].grad.cpu().numpy(),
                                                    out["exact"])
    return row


def run_points(cfgs: list[dict], *, repeats: int, threads: int, memory: bool = True
               ) -> list[dict]:
    """Measure configurations together: memory one by one, then their times interleaved
    (``time_calls``), so that a drift of a shared machine hits all of them alike and their
    ratios hold. Returns one full row per configuration (status ok, oom, cg_breakdown).

    ``memory=False`` skips the meters and ``repeats=0`` the timing (their columns stay
    empty: not measured); each meta-gradient is then computed once, for its error.
    """
    rows, calls = [], {}
    for i, cfg in enumerate(cfgs):
        row, call, out = _prepare(cfg, threads, repeats)
        try:
            if memory:
                mem = measure_memory(call, cfg["device"])
                row.update(peak_bytes=mem.peak_bytes, graph_bytes=mem.graph_bytes,
                           cuda_peak_bytes=mem.cuda_peak_bytes,
                           nvml_used_bytes=mem.nvml_used_bytes,
                           nvml_process_bytes=mem.nvml_process_bytes, note=mem.memory_note)
            else:
                call()
                row["note"] = "memory not measured"
        except torch.cuda.OutOfMemoryError as err:
            torch.cuda.empty_cache()
            rows.append(dict(row, status="oom", note=str(err).splitlines()[0]))
            continue
        except SolveBreakdown as err:
            rows.append(dict(row, status="cg_breakdown", note=str(err)))
            continue
        rows.append(_finish_row(row, out))
        calls[i] = call
    if repeats and calls:
        timings = time_calls(calls, repeats=repeats, threads=threads, warmup=0)
        for i, t in timings.items():
            rows[i].update(time_s=t.median_s, time_iqr_s=t.iqr_s)
    return rows


def run_sweep(configs: list[dict], out: Path, *, repeats: int = 3, threads: int | None = None,
              memory: bool = True, progress: bool = True, desc: str = "sweep",
              interleave: tuple[str, ...] = (), world: World = World()) -> ResultsStore:
    """Run every configuration not already finished in ``out``; write after each group.

    Configurations that agree on the ``interleave`` columns (e.g. ``("inner_steps",)``: every
    method at one step count) are timed together, interleaved, so that their time ratios
    come from one run; without it each is timed alone. With several processes (``world``)
    each rank measures its share of the groups, round by round, and rank 0 writes every
    round's rows into the one CSV (so an interrupted run still resumes).
    """
    check_int("repeats", repeats)
    threads = torch.get_num_threads() if threads is None else check_int("threads", threads, 1)
    store = ResultsStore(out, KEY, RESULTS)
    todo = [c for c in configs if not store.done(c)]
    if progress and world.main and len(todo) < len(configs):
        print(f"{out}: {len(configs) - len(todo)} of {len(configs)} points already done",
              file=sys.stderr)
    groups: dict[tuple, list[dict]] = {}
    for i, c in enumerate(todo):
        groups.setdefault(tuple(c.get(k) for k in interleave) if interleave else (i,), []).append(c)
    ordered = list(groups.values())
    finished = len(configs) - len(todo)
    cli.progress(f"{finished} of {len(configs)} points finished, kept in {out}")
    with tqdm(total=len(todo), desc=desc, disable=not (progress and world.main),
              unit="point") as bar:
        for start in range(0, len(ordered), world.size):
            mine = start + world.rank
            rows = _measure_group(ordered[mine], repeats, threads, memory) \
                if mine < len(ordered) else []
            for part in world.gather(rows):
                if world.main:
                    for row in part:
                        store.add({c: row.get(c) for c in COLUMNS} | {"world_size": world.size})
                bar.update(len(part))
                finished += len(part)
            cli.progress(f"{finished} of {len(configs)} points finished, kept in {out}")
    return store


def _measure_group(group, repeats, threads, memory) -> list[dict]:
    try:
        return run_points(group, repeats=repeats, threads=threads, memory=memory)
    except Exception as err:  # recorded and retried on the next run, never a fake number
        tqdm.write(f"error at {group}: {err}", file=sys.stderr)
        note = traceback.format_exception_only(err)[-1].strip()
        return [dict(c, status="error", note=note) for c in group]


def _point(**kw) -> dict:
    base = dict.fromkeys(KEY)
    base.update(workload="synthetic", solver="gd", lam=1.0, meta_batch=1, device="cpu",
                dtype="float64", seed=0)
    base.update(kw)
    return base


def method_points(methods, steps_list, cg_list, truncate_list, **common) -> list[dict]:
    """One point per registered method and inner steps, and per value of each sweep axis
    the method has an option on (``Option.axis``: the CG steps ``cg_list``, the truncations
    ``truncate_list``, capped at the step count where the option is)."""
    axes = {"cg_steps": cg_list, "truncate": truncate_list}
    points = []
    for method, steps in itertools.product(methods, steps_list):
        swept = [o for o in get_method(method).options if o.axis in axes]
        grids = [sorted({min(v, steps) if o.at_most_steps else v for v in axes[o.axis]})
                 for o in swept]
        for values in itertools.product(*grids):
            points.append(_point(method=method, inner_steps=steps, **common,
                                 **{o.axis: v for o, v in zip(swept, values)}))
    return points


def error_points(*, methods, steps_list, cg_list, kappas, truncate_list=(10,), lam=1.0, dim=20,
                 n_train=None, meta_batch=1, solver="gd", device="cpu", dtype="float64",
                 seed=0) -> list[dict]:
    """Synthetic points with lr = 1/L (L = kappa * lam, the largest curvature of G);
    ``n_train`` defaults to 2 * dim (full-rank H), fewer is the few-shot regime."""
    points = []
    for kappa in kappas:
        points += method_points(methods, steps_list, cg_list, truncate_list, kappa=float(kappa),
                                lam=lam, lr=1 / (kappa * lam), dim=dim, n_train=n_train or 2 * dim,
                                meta_batch=meta_batch,
                                solver=solver, device=device, dtype=dtype, seed=seed)
    return points


def cost_points(*, workload, methods, steps_list, cg_list=(5,), truncate_list=(5,), lam=None,
                lr=None, kappa=100.0, dim=100, n_way=20, k_shot=5, meta_batch=1, device="cpu",
                dtype=None, seed=0, solver="gd") -> list[dict]:
    if workload == "cnn":
        # On random images at the random initialisation, G has negative curvature that
        # lam = 2 does not cover (CG breaks down); cost does not depend on lam, so 10 is used.
        common = dict(workload="cnn", lam=lam or 10.0, lr=lr or 0.1, n_way=n_way, k_shot=k_shot,
                      dtype=dtype or "float32")
    else:
        lam = lam or 1.0
        common = dict(workload="synthetic", lam=lam, lr=lr or 1 / (kappa * lam),
                      kappa=float(kappa), dim=dim, n_train=2 * dim, dtype=dtype or "float64")
    return method_points(methods, steps_list, cg_list, truncate_list, meta_batch=meta_batch,
                         device=device, seed=seed, solver=solver, **common)


def _gradient_call(task, theta):
    """A call that computes one gradient of the task's training loss at theta (the unit)."""
    def call():
        phi = theta.detach().requires_grad_(True)
        torch.autograd.grad(task.train_loss(phi), phi)
    return call


def hvp_cost(task, theta, *, repeats: int = 5, threads: int | None = None) -> dict:
    """Time of one gradient of L_train, of one HVP on a kept gradient graph (what each CG
    iteration costs), and of building that graph (a gradient with create_graph)."""
    v = torch.randn_like(theta)
    _, hvp = hvp_at(task.train_loss, theta)
    t = time_calls({"grad": _gradient_call(task, theta), "hvp": lambda: hvp(v),
                    "graph": lambda: hvp_at(task.train_loss, theta)},
                   repeats=repeats, threads=threads, warmup=3)
    g, h, b = t["grad"], t["hvp"], t["graph"]
    return {"grad_s": g.median_s, "hvp_s": h.median_s, "grad_with_graph_s": b.median_s,
            "hvp_in_grads": h.median_s / g.median_s,
            "grad_with_graph_in_grads": b.median_s / g.median_s, "threads": g.threads}


def cnn_products(*, n_way: int, k_shot: int, device, repeats: int, threads: int | None,
                 steps: int = 16, cg_steps: int = 5, lam: float = 10.0,
                 lr: float = 0.1) -> list[dict]:
    """Every curvature product on the 4-layer CNN with each BatchNorm of ``BATCHNORMS``, in
    gradients of the native model's training loss, and iMAML's time per meta-gradient
    against first-order MAML's and its ideal (K + 2 + c C) / (K + 1), c the product's cost:
    all timed in one interleaved group."""
    fns = {}
    for bn in BATCHNORMS:
        tasks, theta = cnn_tasks(n_way=n_way, k_shot=k_shot, device=device, batchnorm=bn)
        task, v = tasks[0], torch.randn_like(theta)
        fns[(bn, "gradient")] = _gradient_call(task, theta)
        for name, product_at in HVP_PRODUCTS.items():
            _, product = product_at(task.train_loss, theta)
            fns[(bn, f"{name} HVP")] = lambda p=product, v=v: p(v)
        fns[(bn, "gradient with its graph")] = (
            lambda task=task, theta=theta: hvp_at(task.train_loss, theta))
        _, gn = gauss_newton_at(task.train_outputs, task.train_output_loss, theta)
        fns[(bn, "Gauss-Newton product")] = lambda p=gn, v=v: p(v)
        for method, options in (("fomaml", {}),
                                ("imaml", {"cg_steps": cg_steps, "hvp": "reverse"})):
            fns[(bn, method)] = (lambda m=method, o=options, task=task, theta=theta: meta_gradient(
                m, task, theta, lam=lam, solver=GD(steps, lr), **o))
    t = time_calls(fns, repeats=repeats, threads=threads, warmup=2)
    unit = t[("native", "gradient")].median_s
    rows = []
    for (bn, what), timing in t.items():
        rows.append({"batchnorm": bn, "what": what, "seconds": timing.median_s,
                     "iqr_s": timing.iqr_s, "in_native_gradients": timing.median_s / unit,
                     "in_own_gradients": timing.median_s / t[(bn, "gradient")].median_s})
    for bn in BATCHNORMS:
        c = t[(bn, "reverse HVP")].median_s / t[(bn, "gradient")].median_s
        ideal = (steps + 2 + c * cg_steps) / (steps + 1)
        measured = t[(bn, "imaml")].median_s / t[(bn, "fomaml")].median_s
        rows.append({"batchnorm": bn, "what": f"imaml / fomaml (K={steps}, C={cg_steps})",
                     "in_own_gradients": measured, "ideal": ideal,
                     "over_ideal": measured / ideal})
    prov = provenance(device=device, dtype="float32", threads=t[("native", "gradient")].threads,
                      seed=0)
    return [r | {"n_way": n_way, "k_shot": k_shot, "lam": lam, "lr": lr} | prov for r in rows]
