"""pytest-benchmark benchmarks of every method, on synthetic tasks and the 20-way 5-shot CNN.

Plain ``pytest`` runs each once as a check (benchmarks disabled, see conftest.py);
``pytest --benchmark-only`` times them. Each records its relative error (where the exact
answer is known), peak bytes, and gradient / HVP counts in ``extra_info``.
"""
import pytest
import torch

import synthetic
from suite import meta_gradient
from suite.harness.measure import measure_memory
from suite.core.solvers import GD
from suite.harness.workloads import cnn_tasks, synthetic_workload

SYN = dict(dim=20, kappa=100.0, lam=1.0, steps=300)
# Bounds that the exact answers imply at these settings (kappa 100, lr 1/100, 300 steps):
# MAML and truncated(k=K) lose (1 - 1/100)^300 ~ 5e-2 of the slowest mode; iMAML with 20 CG
# steps on a 20-dim problem reaches its inner-solve error; FOMAML is biased (order 1).
SYN_CASES = {"maml": ({}, 0.1), "truncated": ({"truncate": 300}, 0.1),
             "fomaml": ({}, None), "imaml": ({"cg_steps": 20}, 0.1)}
CNN_STEPS, CNN_LAM = 5, 10.0   # lam 10: random images at init have curvature below -2


@pytest.fixture(scope="module")
def syn():
    return synthetic_workload(dim=SYN["dim"], kappa=SYN["kappa"], lam=SYN["lam"], seed=0)


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    tasks, theta = cnn_tasks(n_way=20, k_shot=5)
    return tasks[0], theta


def record(benchmark, result, fn, device="cpu"):
    mem = measure_memory(fn, device)
    benchmark.extra_info.update(peak_bytes=mem.peak_bytes, graph_bytes=mem.graph_bytes,
                                grad_evals=result.stats.grad_evals, hvps=result.stats.hvps,
                                cg_iterations=result.stats.cg_iterations)


@pytest.mark.parametrize("method", list(SYN_CASES))
def test_bench_synthetic(benchmark, syn, method):
    options, bound = SYN_CASES[method]
    solver = GD(SYN["steps"], 1 / syn.smoothness)

    def fn():
        return meta_gradient(method, syn.tasks[0], syn.theta, lam=SYN["lam"], solver=solver,
                             **options)
    result = benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    error = synthetic.relative_error(result.grad.numpy(), syn.exact())
    benchmark.extra_info["rel_error"] = error
    record(benchmark, result, fn)
    ref, theta = syn.references[0], syn.theta.numpy()
    if method == "fomaml":
        # FOMAML's error is its bias at phi_K: grad L_test(phi_K) against the exact
        # meta-gradient, both in closed form (float64: agreement to ~1e-12).
        phi_K, _ = synthetic.gd_path(ref, theta, solver.steps, solver.lr)
        bias = synthetic.relative_error(ref.test_grad(phi_K), syn.exact())
        assert error == pytest.approx(bias, rel=1e-10)
    else:
        assert error < bound
    if method in ("maml", "truncated"):   # k = K: both are backprop through all 300 steps
        target = synthetic.gd_meta_gradient(ref, theta, solver.steps, solver.lr)
        assert synthetic.relative_error(result.grad.numpy(), target) < 1e-10


@pytest.mark.parametrize("method,options", [("maml", {}), ("fomaml", {}),
                                            ("truncated", {"truncate": 2}),
                                            ("imaml", {"cg_steps": 5})])
def test_bench_cnn_20way_5shot(benchmark, cnn, method, options):
    task, theta = cnn

    def fn():
        return meta_gradient(method, task, theta, lam=CNN_LAM, solver=GD(CNN_STEPS, 0.1),
                             **options)
    result = benchmark.pedantic(fn, rounds=3, warmup_rounds=1)
    record(benchmark, result, fn)
    assert torch.isfinite(result.grad).all() and result.grad.shape == theta.shape
    # The work each method does on K = 5 steps, exactly: K training gradients; a backward
    # pass through each kept step (MAML 5, truncated 2), iMAML's CG products (<= 5) and the
    # one gradient whose graph gives them.
    s = result.stats
    expected = {"maml": (5, 5), "fomaml": (5, 0), "truncated": (5, 2), "imaml": (6, None)}
    grads, hvps = expected[method]
    assert s.grad_evals == grads and (hvps is None or s.hvps == hvps)
    if method == "imaml":
        assert 1 <= s.hvps == s.cg_iterations <= 5
    # Memory ranks as Figure 2b says: FOMAML (no graph) < iMAML (about two gradient graphs)
    # < MAML (five unrolled steps); the peaks are exact integers, the same on every run.
    peaks = cnn_peaks(task, theta)
    assert peaks["fomaml"] < peaks["imaml"] < peaks["maml"]


_PEAKS = {}


def cnn_peaks(task, theta):
    """Peak live bytes of each method on the CNN at K = 5 (computed once per session)."""
    if not _PEAKS:
        for method, options in (("maml", {}), ("fomaml", {}), ("imaml", {"cg_steps": 5})):
            _PEAKS[method] = measure_memory(lambda: meta_gradient(
                method, task, theta, lam=CNN_LAM, solver=GD(CNN_STEPS, 0.1), **options),
                track_graph=False).peak_bytes
    return _PEAKS


META_BATCH = {   # device: (n_way, k_shot, tasks, methods); CUDA: the batching targets' setting
    "cpu": (5, 1, 8, ["maml"]),
    "cuda": (20, 5, 16, ["maml", "fomaml", "imaml"]),
}
META_BATCH_CASES = [
    pytest.param(device, method, impl, marks=pytest.mark.skipif(
        device == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"))
    for device, (*_, methods) in META_BATCH.items() for method in methods
    for impl in ("loop", "vmap", "vmap-chunk2")]


@pytest.mark.parametrize("device,method,impl", META_BATCH_CASES)
def test_bench_meta_batch(benchmark, device, method, impl):
    """Per-task loop against torch.func.vmap over a meta-batch, all tasks at once or two at a
    time (chunk_size=2): 5-way 1-shot, 8 tasks on a CPU; 20-way 5-shot, 16 tasks on CUDA.
    ``imaml-suite peers`` adds higher and torchopt."""
    from suite import meta_gradient_batch
    from suite.core.batched import BatchedTasks, batched_meta_gradient
    n_way, k_shot, n_tasks, _ = META_BATCH[device]
    tasks, theta = cnn_tasks(n_way=n_way, k_shot=k_shot, n_tasks=n_tasks, device=device)
    bt = BatchedTasks.stack(tasks)
    lam, steps = (CNN_LAM, CNN_STEPS) if method == "imaml" else (0.0, 3)
    options = {"cg_steps": 5} if method == "imaml" else {}
    fns = {"loop": lambda: meta_gradient_batch(method, tasks, theta, lam=lam,
                                               solver=GD(steps, 0.1), **options).grad,
           "vmap": lambda: batched_meta_gradient(method, bt, theta, lam=lam, steps=steps,
                                                 lr=0.1, **options).grad,
           "vmap-chunk2": lambda: batched_meta_gradient(method, bt, theta, lam=lam, steps=steps,
                                                        lr=0.1, chunk_size=2, **options).grad}
    grad = benchmark.pedantic(fns[impl], rounds=3, warmup_rounds=1)
    mem = measure_memory(fns[impl], device, track_graph=False)
    benchmark.extra_info.update(peak_bytes=mem.peak_bytes, cuda_peak_bytes=mem.cuda_peak_bytes)
    assert torch.isfinite(grad).all() and grad.shape == theta.shape
