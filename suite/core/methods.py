"""Meta-gradient methods: one function each, one signature, one entry point.

Every method takes ``(task, theta, *, lam, solver, lam_grad, **options)`` and returns a
``MetaGradient`` whose ``grad`` estimates d/dtheta L_test(Alg(theta)), where Alg runs
``solver`` on G(phi) = L_train(phi) + lam/2 |phi - theta|^2 from phi_0 = theta. ``lam`` is a
number or a vector of theta's shape (G's prox is then 1/2 sum_i lam_i (phi_i - theta_i)^2);
with ``lam_grad`` the result also carries d/dlam L_test(Alg(theta, lam)).

Work is counted in the paper's unit, gradients of the training loss (``grad_evals``), plus
Hessian-vector products (``hvps``): a CG iteration costs one, and so does backpropagating
through one unrolled solver step (a vector-Jacobian product of a gradient step). Each
method also takes one gradient of the test loss, not counted.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields

import torch

from suite.core.validation import check_finite, check_lam, check_scalar
from suite.core.hvp import HVP_PRODUCTS, hvp_product
from suite.core.registry import METHODS, Method, Option, get_method, register_method
from suite.core.solvers import InnerProblem, run_solver
from suite.core.tasks import Task, num_parameters

EXACT_MAX_DIM = 4096
"""Largest parameter count for ``"exact"`` (it forms the dense Hessian: d^2 entries)."""


def _stat(default, combine: str):
    return field(default=default, metadata={"combine": combine})


def _finite(values):
    return [v for v in values if v is not None and not math.isnan(v)]


_COMBINE = {
    "sum": sum,
    "max": lambda vs: max(_finite(vs), default=math.nan),
    "min": lambda vs: min(_finite(vs), default=math.nan),
    "mean": lambda vs: sum(_finite(vs)) / len(_finite(vs)) if _finite(vs) else math.nan,
    "first-int": lambda vs: min((v for v in vs if v is not None), default=None),
    "all": lambda vs: (all(v for v in vs if v is not None)
                       if any(v is not None for v in vs) else None),
    "same": lambda vs: vs[0] if len(set(vs)) == 1 else "mixed",
}


@dataclass
class Stats:
    """Work counts and diagnostics of one meta-gradient; ``Stats.combine`` merges those of
    a meta-batch field by field, each by the rule it declares (sum, max, min, mean, ...)."""

    inner_steps: int = _stat(0, "sum")
    grad_evals: int = _stat(0, "sum")
    hvps: int = _stat(0, "sum")
    loss_evals: int = _stat(0, "sum")
    cg_iterations: int = _stat(0, "sum")          # of the meta-gradient's solve (iMAML)
    inner_cg_iterations: int = _stat(0, "sum")    # of the inner solver's own CG (Newton-CG)
    cg_residual: float = _stat(math.nan, "max")   # final relative residual (iMAML)
    cg_converged: bool | None = _stat(None, "all")
    cg_policy: str = _stat("", "same")            # the breakdown policy that ran (iMAML)
    cg_breakdowns: int = _stat(0, "sum")          # tasks whose solve met p^T A p <= 0
    cg_breakdown_iteration: int | None = _stat(None, "first-int")   # earliest such iteration
    cg_min_curvature: float = _stat(math.nan, "min")  # smallest p^T A p / |p|^2 met
    cg_fallbacks: int = _stat(0, "sum")           # tasks given the first-order direction
    inner_converged: bool | None = _stat(None, "all")
    inner_message: str = _stat("", "same")
    inner_stationarity: float = _stat(math.nan, "mean")  # |grad G(phi)| / |grad G(theta)|
    wall_time_s: float = _stat(0.0, "sum")

    @property
    def cg_breakdown(self) -> bool:
        return self.cg_breakdowns > 0

    @classmethod
    def combine(cls, parts: list["Stats"]) -> "Stats":
        return cls(**{f.name: _COMBINE[f.metadata["combine"]]([getattr(p, f.name) for p in parts])
                      for f in fields(cls)})


@dataclass
class MetaGradient:
    grad: torch.Tensor
    stats: Stats = field(default_factory=Stats)
    phi: torch.Tensor | None = None   # the adapted parameters (None for a meta-batch)
    lam_grad: float | torch.Tensor | None = None   # d/dlam, lam's type (when asked for)


def lam_result(lam, g: torch.Tensor | None, like: torch.Tensor):
    """d/dlam in lam's own form: a float for a number (the sum over parameters, since the
    scalar prox is the vector one with every entry equal), a tensor for a vector."""
    g = torch.zeros_like(like) if g is None else g.detach()
    return float(g.sum()) if not torch.is_tensor(lam) else g


def test_gradient(task, phi: torch.Tensor) -> torch.Tensor:
    phi = phi.detach().requires_grad_(True)
    with torch.enable_grad():
        g, = torch.autograd.grad(check_scalar("task.test_loss(phi)", task.test_loss(phi)), phi)
    check_finite("grad L_test at the adapted parameters (is the test loss finite?)", g)
    return g


def run_inner(problem: InnerProblem, solver, stats: Stats, unroll: int = 0):
    result = run_solver(solver, problem, unroll=unroll)
    stats.inner_steps = result.steps
    stats.inner_converged = result.converged
    stats.inner_message = result.message
    stats.inner_cg_iterations = result.cg_iterations
    return result.phi


def _unrolled(task, theta, lam, solver, unroll: int, lam_grad: bool) -> MetaGradient:
    stats = Stats()
    theta_leaf = theta.detach().requires_grad_(True)
    # a scalar lam as the constant vector, so that d/dlam is summed as for a vector
    lam_leaf = (torch.full_like(theta, lam) if not torch.is_tensor(lam) else lam.clone()
                ).requires_grad_(True) if lam_grad else lam
    problem = InnerProblem(task, theta_leaf, lam_leaf)
    leaves = (theta_leaf, lam_leaf) if lam_grad else (theta_leaf,)
    with torch.enable_grad():
        phi = run_inner(problem, solver, stats, unroll=unroll)
        loss = task.test_loss(phi)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    stats.grad_evals, stats.loss_evals = problem.grad_evals, problem.loss_evals
    stats.hvps = unroll
    grad = torch.zeros_like(theta) if grads[0] is None else grads[0]
    return MetaGradient(grad, stats, phi.detach(),
                        lam_result(lam, grads[1], theta) if lam_grad else None)


def maml(task, theta, *, lam, solver, lam_grad=False):
    """Backpropagation through every step of the (differentiable) solver."""
    return _unrolled(task, theta, lam, solver, solver.steps, lam_grad)


def truncated(task, theta, *, lam, solver, truncate, memory="graph", lam_grad=False):
    """Backpropagation through the last ``truncate`` steps only (Shaban et al. 2019).

    The iterate before them is treated as a constant; ``truncate = steps`` is ``maml``.
    theta then reaches the result only through the proximal term lam (phi - theta) of the
    kept steps: with lam = 0 and truncate < steps the meta-gradient is exactly zero.
    ``memory``: "graph" keeps the kept steps' graphs (as ``maml``); "checkpoint" and
    "mixed" take the same gradient as ``maml-checkpoint`` and ``maml-mixed`` do (the same
    code, over the last ``truncate`` steps).
    """
    if memory == "graph":
        return _unrolled(task, theta, lam, solver, truncate, lam_grad)
    if memory == "checkpoint":
        segment = math.ceil(truncate / math.ceil(math.sqrt(truncate)))
        run = low_memory.backprop(task, theta, lam, solver, unroll=truncate, segment=segment,
                                  lam_grad=lam_grad)
    else:
        run = low_memory.mixed(task, theta, lam, solver, unroll=truncate,
                               product_at=hvp_product("auto", theta.device), lam_grad=lam_grad)
    return _low_memory(run, theta, lam, truncate, lam_grad)


def _low_memory(run, theta, lam, unroll: int, lam_grad: bool) -> MetaGradient:
    bw, fwd, result, phi = run
    stats = Stats(inner_steps=result.steps, inner_converged=result.converged,
                  inner_message=result.message,
                  grad_evals=fwd.grad_evals + bw.problem.grad_evals,
                  loss_evals=fwd.loss_evals + bw.problem.loss_evals, hvps=unroll)
    return MetaGradient(bw.g_theta, stats, phi,
                        lam_result(lam, bw.g_lam, theta) if lam_grad else None)


def maml_checkpoint(task, theta, *, lam, solver, segments=None, lam_grad=False):
    """MAML's meta-gradient by gradient checkpointing through the inner loop: the state is
    kept at the start of each of ``segments`` segments (default ceil(sqrt K)); the backward
    pass recomputes one segment's graph at a time. Memory O(K/s + s) steps' graphs."""
    segments = segments or math.ceil(math.sqrt(solver.steps))
    segment = math.ceil(solver.steps / segments)
    run = low_memory.backprop(task, theta, lam, solver, unroll=solver.steps, segment=segment,
                          lam_grad=lam_grad)
    return _low_memory(run, theta, lam, solver.steps, lam_grad)


def maml_mixed(task, theta, *, lam, solver, hvp="auto", lam_grad=False):
    """MAML's meta-gradient by mixed-mode differentiation (MixFlow-MG): the K + 1 iterates
    are kept (vectors, no graph) and each step's vector-Jacobian product is taken as a
    Hessian-vector product at its iterate, by ``hvp`` ("forward" over reverse, "reverse":
    one step's graph at a time; "auto": ``FASTEST_HVP`` for the device)."""
    run = low_memory.mixed(task, theta, lam, solver, unroll=solver.steps,
                       product_at=hvp_product(hvp, theta.device), lam_grad=lam_grad)
    return _low_memory(run, theta, lam, solver.steps, lam_grad)


def fomaml(task, theta, *, lam, solver, lam_grad=False):
    """First-order MAML: dphi/dtheta taken as I, so the meta-gradient is grad L_test(phi)."""
    stats, phi = _adapted(task, theta, lam, solver)
    return MetaGradient(test_gradient(task, phi), stats, phi)


def reptile(task, theta, *, lam, solver, lam_grad=False):
    """Reptile's direction (Nichol et al. 2018): theta - phi after the inner loop, handed to
    the outer step as a gradient would be (theta <- theta - eps (theta - phi)). Not a
    gradient of the test loss: the test loss is not used."""
    stats, phi = _adapted(task, theta, lam, solver)
    return MetaGradient(theta.detach() - phi, stats, phi)


def _adapted(task, theta, lam, solver):
    """(stats, phi): the inner solver run without a graph, its work counted."""
    stats = Stats()
    problem = InnerProblem(task, theta.detach(), lam)
    phi = run_inner(problem, solver, stats).detach()
    stats.grad_evals, stats.hvps, stats.loss_evals = (
        problem.grad_evals, problem.hvps, problem.loss_evals)
    return stats, phi


# They build on MetaGradient, Stats and the helpers above.
from suite.core import batched, implicit, unroll as low_memory  # noqa: E402


for _method in (
    Method(name="maml", fn=maml, doc=maml.__doc__, needs_differentiable_solver=True,
           exact_for="unroll", lam_grad=True, batched=batched.maml),
    Method(name="truncated", fn=truncated, doc=truncated.__doc__, lam_grad=True,
           needs_differentiable_solver=True, exact_for="truncated",
           options=(Option("truncate", "int", None, "the last steps backpropagated through",
                           low=1, axis="truncate", at_most_steps=True),
                    Option("memory", "choice", "graph", "how the kept steps are "
                           "differentiated: their graphs, checkpointed, or mixed mode",
                           choices=("graph", "checkpoint", "mixed")))),
    Method(name="maml-checkpoint", fn=maml_checkpoint, doc=maml_checkpoint.__doc__,
           needs_differentiable_solver=True, exact_for="unroll", lam_grad=True,
           options=(Option("segments", "int", None, "segments of the inner loop, each "
                           "recomputed in the backward pass (None: ceil(sqrt K))", low=1,
                           none_ok=True, at_most_steps=True),)),
    Method(name="maml-mixed", fn=maml_mixed, doc=maml_mixed.__doc__,
           needs_differentiable_solver=True, exact_for="unroll", lam_grad=True,
           batched=batched.maml_mixed,
           options=(Option("hvp", "choice", "auto", "each step's Hessian-vector product",
                           choices=("auto",) + tuple(HVP_PRODUCTS)),)),
    Method(name="fomaml", fn=fomaml, doc=fomaml.__doc__, exact_for="first-order",
           batched=batched.fomaml),
    Method(name="imaml", fn=implicit.imaml, doc=implicit.imaml.__doc__, needs_positive_lam=True, lam_grad=True,
           batched=batched.imaml,
           exact_for="implicit", options=implicit.OPTIONS, converged_options={"cg_steps": 64}),
    Method(name="exact", fn=implicit.exact, doc=implicit.exact.__doc__, needs_positive_lam=True, lam_grad=True,
           exact_for="implicit", needs_dense=True, needs_solver=False,
           options=(Option("max_newton", "int", 100, "Newton steps at most", low=1),)),
    Method(name="reptile", fn=reptile, doc=reptile.__doc__, exact_for="reptile"),
):
    register_method(_method)


def _validate(spec: Method, task, theta, lam, solver, options: dict):
    """(lam, options) checked once, from the method's declared needs and option ranges."""
    missing = [a for a in ("train_loss", "test_loss") if not callable(getattr(task, a, None))]
    if missing or not isinstance(task, Task):   # isinstance alone checks presence, not calls
        raise TypeError(f"task must have a callable {missing[0]}(phi) (the suite.Task "
                        f"protocol); got {type(task).__name__}")
    check_finite("theta", theta)
    if not theta.is_floating_point() or theta.ndim != 1:
        raise ValueError(f"theta must be a 1-D floating-point tensor, got dtype {theta.dtype} "
                         f"and shape {tuple(theta.shape)}")
    n = num_parameters(task)
    if n is not None and theta.numel() != n:
        raise ValueError(f"theta must have {n} entries (the task's parameter count), "
                         f"got {theta.numel()}")
    dtype, device = getattr(task, "dtype", None), getattr(task, "device", None)
    if dtype is not None and theta.dtype != dtype:
        raise TypeError(f"theta is {theta.dtype} but the task computes in {dtype}; pass "
                        f"theta.to({dtype}) (or build the task in {theta.dtype})")
    if device is not None and theta.device != torch.device(device):
        raise ValueError(f"theta is on {theta.device} but the task is on {device}; pass "
                         f"theta.to('{device}')")
    # Lemma 1 needs lam > 0; the unrolled methods also take lam = 0 (plain MAML).
    lam = check_lam(lam, theta, positive=spec.needs_positive_lam)
    if spec.needs_solver:
        if not callable(getattr(solver, "solve", None)):
            raise TypeError(f"solver must be an inner solver from suite.core.solvers (with .solve), "
                            f"got {solver!r}")
        spec.check_solver(solver)
    missing = [o for o in spec.options if o.default is None and not o.none_ok
               and o.name not in options]
    if missing:
        raise TypeError(f"method {spec.name!r} needs option {missing[0].describe()}")
    return lam, spec.check_options(options, solver)


def meta_gradient(method, task, theta: torch.Tensor, *, lam: float, solver=None,
                  **options) -> MetaGradient:
    """The meta-gradient of ``task`` at ``theta`` by ``method`` (a name of ``METHODS``, or a
    ``suite.Method``), with that method's options (``METHODS[name].options``, each checked
    against its declared range before any work).

    ``lam``: a number, or a 1-D tensor of theta's shape (a per-parameter prox). The result's
    ``lam_grad`` (a float for a number, a tensor for a vector) is computed when
    ``lam_grad=True`` or ``lam`` is a tensor that requires grad. ``stats.wall_time_s`` covers
    the whole computation.
    """
    spec = get_method(method)
    wants = bool(options.pop("lam_grad", False)) or (torch.is_tensor(lam) and lam.requires_grad)
    if wants and not spec.lam_grad:
        raise ValueError(f"lam_grad: method {spec.name!r} has no gradient in lam ("
                         f"{'it is exact for ' + spec.exact_for}); use one of "
                         f"{sorted(m for m, s in METHODS.items() if s.lam_grad)}")
    lam, options = _validate(spec, task, theta, lam, solver, options)
    start = time.perf_counter()
    if wants:   # a method that gives no gradient in lam need not take the keyword
        options["lam_grad"] = True
    result = spec.fn(task, theta, lam=lam, solver=solver, **options)
    if not isinstance(result, MetaGradient):
        raise TypeError(f"method {spec.name!r} returned {type(result).__name__}, not a "
                        "suite.MetaGradient")
    result.stats.wall_time_s = time.perf_counter() - start
    check_finite(f"the {spec.name!r} meta-gradient (a non-finite result is never returned)",
                 result.grad)
    result.grad = result.grad.detach()
    if wants:
        check_finite(f"the {spec.name!r} gradient in lam",
                     torch.as_tensor(result.lam_grad, dtype=theta.dtype))
    return result


def meta_gradient_batch(method, tasks, theta: torch.Tensor, *, lam: float, solver=None,
                        **options) -> MetaGradient:
    """The average meta-gradient over a meta-batch; counts and wall time are summed.
    ``solver`` is one solver for every task, or a sequence of one per task (see
    ``suite.core.solvers.for_tasks``)."""
    tasks = list(tasks)
    if not tasks:
        raise ValueError("tasks must be a non-empty sequence of tasks")
    solvers = list(solver) if isinstance(solver, (list, tuple)) else [solver] * len(tasks)
    if len(solvers) != len(tasks):
        raise ValueError(f"solver: {len(solvers)} solvers for {len(tasks)} tasks")
    results = [meta_gradient(method, t, theta, lam=lam, solver=s, **options)
               for t, s in zip(tasks, solvers)]
    grad = torch.stack([r.grad for r in results]).mean(0)
    lam_grads = [r.lam_grad for r in results]
    lam_grad = (None if lam_grads[0] is None else sum(lam_grads) / len(lam_grads))
    return MetaGradient(grad, Stats.combine([r.stats for r in results]), lam_grad=lam_grad)
