"""Task-batched meta-gradients: MAML, FOMAML and iMAML over a whole meta-batch at once.

The tasks of a meta-batch share a model and theta and differ in their data, stacked along a
leading task axis: support (B, N*K, ...) and query (B, N*Q, ...). ``torch.func.vmap`` maps
the per-task computation over that axis, so each layer runs once on all tasks' data
(convolutions become grouped convolutions) instead of B times. Results equal the per-task
loop of ``suite.meta_gradient`` up to float rounding; the returned gradient is the mean.

Inner loop: ``steps`` of GD at ``lr`` on G = L_train + lam/2 |phi - theta|^2 from theta.
Each registered method with a batched form (``suite.Method.batched``: here ``maml``,
``fomaml`` and ``imaml``) is one function ``form(bt, theta, *, lam, steps, lr, chunk_size,
stats, **options)`` returning the mean direction; iMAML's CG runs on all tasks together
(``solve_implicit`` with one row per task), its Hessian products forward-over-reverse.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vmap

from suite.core.curvature import Curvature, gauss_newton_at
from suite.core.linalg import solve_implicit
from suite.core.methods import MetaGradient, Stats
from suite.core.validation import check_finite, check_int, check_lam
from suite.core.tasks import ModuleTask


class BatchedTasks:
    """A meta-batch of tasks on one module, data stacked along a leading task axis."""

    def __init__(self, module, support, query, loss=F.cross_entropy):
        self.module, self.loss = module, loss
        (self.xs, self.ys), (self.xq, self.yq) = support, query
        if not (self.xs.shape[0] == self.ys.shape[0] == self.xq.shape[0] == self.yq.shape[0]):
            raise ValueError("support and query must have the same number of tasks "
                             "(their leading dimension)")
        # Shapes and names of the flat parameter vector, as in ModuleTask.
        self._layout = ModuleTask(module, (self.xs[0], self.ys[0]), (self.xq[0], self.yq[0]),
                                  loss)

    @classmethod
    def stack(cls, tasks: list[ModuleTask]) -> "BatchedTasks":
        """Stack ModuleTasks of one module (same shapes) into a meta-batch."""
        if not tasks or any(t.module is not tasks[0].module for t in tasks):
            raise ValueError("tasks must be a non-empty list of ModuleTasks on the same module")
        cat = lambda i, j: torch.stack([(t.support, t.query)[i][j] for t in tasks])  # noqa: E731
        return cls(tasks[0].module, (cat(0, 0), cat(0, 1)), (cat(1, 0), cat(1, 1)),
                   tasks[0].loss)

    def outputs(self, phi, x):
        return functional_call(self.module, self._layout.unflatten(phi), (x,))

    def task_loss(self, phi, x, y):
        return self.loss(self.outputs(phi, x), y)


def _inner_gd(bt: BatchedTasks, theta, xs, ys, *, lam, steps, lr):
    """``GD(steps, lr)`` on G written with torch.func so that it maps over tasks (the
    per-task path's ``InnerProblem.grad`` uses torch.autograd, which vmap cannot enter)."""
    phi = theta
    for _ in range(steps):
        phi = phi - lr * (grad(bt.task_loss)(phi, xs, ys) + lam * (phi - theta))
    return phi


def batched_meta_gradient(method, bt: BatchedTasks, theta: torch.Tensor, *, lam,
                          steps: int, lr: float, chunk_size: int | None = None,
                          **options) -> MetaGradient:
    """The mean meta-gradient over the meta-batch (see the module docstring) by a registered
    method with a batched form (``Method.batched``), with the work counted as
    ``meta_gradient_batch`` counts it (per task, summed) in ``stats``. Options are the
    method's own, checked against its declared ranges.

    ``chunk_size`` tasks at a time (``torch.func.vmap``'s own option; default: all at once)
    trades time for memory: MAML holds the graphs of one chunk, not of the whole meta-batch.
    """
    from suite.core.registry import METHODS, get_method
    from suite.core.solvers import GD
    spec = get_method(method)
    if spec.batched is None:
        raise ValueError(f"method {spec.name!r} has no batched form; methods with one: "
                         f"{sorted(m for m, s in METHODS.items() if s.batched)}")
    solver = GD(steps, lr)   # the batched inner loop, checked as the per-task one is
    lam = check_lam(lam, theta, positive=spec.needs_positive_lam)
    options = spec.check_options(options, solver)
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    start = time.perf_counter()
    n_tasks = bt.xs.shape[0]
    stats = Stats(inner_steps=steps * n_tasks, grad_evals=steps * n_tasks)
    g = spec.batched(bt, theta.detach(), lam=lam, steps=solver.steps, lr=solver.lr,
                     chunk_size=chunk_size, stats=stats, **options)
    stats.wall_time_s = time.perf_counter() - start
    check_finite("the batched meta-gradient (a non-finite result is never returned)", g)
    return MetaGradient(g.detach(), stats)


def _inner_fn(bt, lam, steps, lr):
    return lambda th, xs, ys: _inner_gd(bt, th, xs, ys, lam=lam, steps=steps, lr=lr)


def maml(bt, theta, *, lam, steps, lr, chunk_size, stats):
    """Backprop through the K steps, per task (the batched form of ``"maml"``)."""
    inner = _inner_fn(bt, lam, steps, lr)

    def one(th, xs, ys, xq, yq):
        return grad(lambda t: bt.task_loss(inner(t, xs, ys), xq, yq))(th)
    stats.hvps = steps * bt.xs.shape[0]
    return vmap(one, in_dims=(None, 0, 0, 0, 0), chunk_size=chunk_size)(
        theta, bt.xs, bt.ys, bt.xq, bt.yq).mean(0)


def maml_mixed(bt, theta, *, lam, steps, lr, chunk_size, stats, hvp="auto"):
    """The batched form of ``"maml-mixed"``: every task's iterates kept (B x (K + 1) vectors,
    no graph), each step's VJP v - lr (H v + lam v) by a forward-over-reverse product mapped
    over the tasks: one step's product at a time instead of every task's unrolled graph.
    vmap cannot keep a reverse graph per task, so ``hvp`` has no effect here."""
    inner_step = lambda p, xs, ys: p - lr * (grad(bt.task_loss)(p, xs, ys)   # noqa: E731
                                             + lam * (p - theta))
    phis = [theta.expand(bt.xs.shape[0], -1)]
    for _ in range(steps):
        phis.append(vmap(inner_step, chunk_size=chunk_size)(phis[-1], bt.xs, bt.ys).detach())
    v = vmap(grad(bt.task_loss), chunk_size=chunk_size)(phis.pop(), bt.xq, bt.yq)
    g_theta = torch.zeros_like(v)

    def hvp_one(p, u, xs, ys):
        return jvp(lambda q: grad(bt.task_loss)(q, xs, ys), (p,), (u,))[1]
    for phi in reversed(phis):
        g_theta = g_theta + lr * lam * v
        v = v - lr * (vmap(hvp_one, chunk_size=chunk_size)(phi, v, bt.xs, bt.ys) + lam * v)
        del phi
    stats.hvps = steps * bt.xs.shape[0]
    stats.grad_evals += steps * bt.xs.shape[0]   # each product's gradient
    return (g_theta + v).mean(0)


def _adapted(bt, theta, lam, steps, lr, chunk_size):
    """(phi per task, grad L_test at each phi)."""
    phi = vmap(_inner_fn(bt, lam, steps, lr), in_dims=(None, 0, 0),
               chunk_size=chunk_size)(theta, bt.xs, bt.ys).detach()
    return phi, vmap(grad(bt.task_loss), chunk_size=chunk_size)(phi, bt.xq, bt.yq)


def fomaml(bt, theta, *, lam, steps, lr, chunk_size, stats):
    """grad L_test at each task's phi (the batched form of ``"fomaml"``)."""
    return _adapted(bt, theta, lam, steps, lr, chunk_size)[1].mean(0)


def imaml(bt, theta, *, lam, steps, lr, chunk_size, stats, cg_steps=5, cg_tol=None,
          curvature="hessian", on_breakdown="raise", linear_solver="cg", neumann_step=None,
          hvp="auto"):
    """The batched form of ``"imaml"``: one solve with a row per task. Its products are
    always forward-over-reverse (vmap cannot keep a reverse graph per task), so ``hvp`` has
    no effect here; the result is the same product."""
    phi, v = _adapted(bt, theta, lam, steps, lr, chunk_size)
    n_tasks = bt.xs.shape[0]
    curvature = Curvature.parse(curvature)

    def product(p, u, xs, ys):
        if curvature.needs_outputs:
            return gauss_newton_at(lambda q: bt.outputs(q, xs), lambda o: bt.loss(o, ys), p,
                                   with_grad=False)[1](u)
        return jvp(lambda q: grad(bt.task_loss)(q, xs, ys), (p,), (u,))[1]

    products = 0

    def batch_product(U):
        nonlocal products
        products += 1
        return vmap(product, chunk_size=chunk_size)(phi, U, bt.xs, bt.ys)

    matvec, scale = curvature.system(batch_product, lam)
    solve = solve_implicit(matvec, v, scale=scale, max_iter=cg_steps, tol=cg_tol,
                           on_breakdown=on_breakdown, linear_solver=linear_solver,
                           step=neumann_step)
    stats.grad_evals += n_tasks           # the gradient whose graph gives the products
    stats.hvps, stats.cg_iterations = products * n_tasks, solve.iterations * n_tasks
    stats.cg_residual, stats.cg_converged = solve.residual, solve.converged
    stats.cg_policy, stats.cg_fallbacks = on_breakdown, solve.fallback
    stats.cg_breakdowns = int(solve.row_breakdown.sum())
    stats.cg_breakdown_iteration = solve.breakdown_iteration
    stats.cg_min_curvature = solve.min_curvature
    return solve.x.mean(0)
