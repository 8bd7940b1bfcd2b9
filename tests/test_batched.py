"""Task-batched meta-gradients equal the per-task loop; batched CG equals per-row CG."""
import pytest
import torch

from suite import conjugate_gradient, meta_gradient_batch
from suite.core.batched import BatchedTasks, batched_meta_gradient
from suite.core.linalg import SolveBreakdown
from suite.core.solvers import GD
from suite.harness.workloads import cnn_tasks


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                    reason="needs a CUDA device"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("method,options", [
    ("maml", {}), ("fomaml", {}), ("imaml", {"cg_steps": 5}),
    ("imaml", {"cg_steps": 4, "curvature": "gauss-newton"}),
    ("imaml", {"cg_steps": 3, "curvature": "official", "linear_solver": "normal-cg"})])
def test_batched_equals_per_task_loop(method, options, device):
    # float64, so the two orders of summation agree to ~1e-15 relative; 1e-10 is a wide bound
    # that still catches any task mixed up or dropped (those change the result at O(1)).
    # On CUDA the grouped convolutions of vmap take other kernels than the loop's: still
    # float64 rounding, so the same bound.
    tasks, theta = cnn_tasks(n_way=5, k_shot=1, n_tasks=3, dtype=torch.float64, seed=1,
                             device=device)
    looped = meta_gradient_batch(method, tasks, theta, lam=10.0, solver=GD(3, 0.1), **options)
    batched = batched_meta_gradient(method, BatchedTasks.stack(tasks), theta, lam=10.0, steps=3,
                                    lr=0.1, **options)
    loop, got = looped.grad, batched.grad
    assert float((got - loop).norm() / loop.norm()) < 1e-10
    # The same work counted: vmap applies each CG product to every task's row, also to rows
    # that have converged, so it may count more products than the loop, never fewer.
    assert batched.stats.grad_evals == looped.stats.grad_evals
    assert batched.stats.inner_steps == looped.stats.inner_steps
    assert (batched.stats.hvps >= looped.stats.hvps if method == "imaml"
            else batched.stats.hvps == looped.stats.hvps)


def test_chunks_give_the_same_gradient_with_less_memory():
    from suite.harness.measure import measure_memory
    tasks, theta = cnn_tasks(n_way=5, k_shot=1, n_tasks=4, dtype=torch.float64, seed=2)
    bt = BatchedTasks.stack(tasks)
    for method, options in (("maml", {}), ("imaml", {"cg_steps": 3})):
        def fn(chunk, method=method, options=options):
            return batched_meta_gradient(method, bt, theta, lam=100.0, steps=2, lr=0.001,
                                         chunk_size=chunk, **options).grad
        whole, chunked = fn(None), fn(1)
        assert float((chunked - whole).norm() / whole.norm()) < 1e-10   # float64 rounding
        # Live bytes are exact integers: one task's graphs at a time must take less.
        assert (measure_memory(lambda: fn(1), track_graph=False).peak_bytes
                < measure_memory(lambda: fn(None), track_graph=False).peak_bytes)


def test_batched_arguments():
    tasks, theta = cnn_tasks(n_way=5, k_shot=1, n_tasks=2)
    bt = BatchedTasks.stack(tasks)
    with pytest.raises(ValueError, match="method"):
        batched_meta_gradient("truncated", bt, theta, lam=1.0, steps=1, lr=0.1)
    with pytest.raises(ValueError, match="lam must be a finite number > 0"):
        batched_meta_gradient("imaml", bt, theta, lam=0.0, steps=1, lr=0.1)
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        batched_meta_gradient("maml", bt, theta, lam=0.0, steps=1, lr=0.1, chunk_size=0)
    with pytest.raises(ValueError, match="same module"):
        other, _ = cnn_tasks(n_way=5, k_shot=1)
        BatchedTasks.stack([tasks[0], other[0]])


def test_batched_cg_solves_each_row():
    torch.manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    A = torch.stack([Q @ torch.diag(torch.logspace(0, k, 6, dtype=torch.float64)) @ Q.T
                     for k in (1, 2, 3)])
    b = torch.randn(3, 6, dtype=torch.float64)
    b[1] = 0.0                                       # a zero row is solved at once
    res = conjugate_gradient(lambda V: torch.einsum("bij,bj->bi", A, V), b, max_iter=30)
    for i in range(3):
        single = conjugate_gradient(lambda v: A[i] @ v, b[i], max_iter=30).x
        torch.testing.assert_close(res.x[i], single, rtol=1e-10, atol=1e-12)
    assert res.converged
    A[2] = -A[2]                                     # one indefinite row
    with pytest.raises(SolveBreakdown):
        conjugate_gradient(lambda V: torch.einsum("bij,bj->bi", A, V), b, max_iter=30)
    flagged = conjugate_gradient(lambda V: torch.einsum("bij,bj->bi", A, V), b, max_iter=30,
                                 on_breakdown="return")
    assert flagged.breakdown and not flagged.converged
    torch.testing.assert_close(flagged.x[0], res.x[0])   # other rows still solved
