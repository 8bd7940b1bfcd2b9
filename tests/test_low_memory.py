"""maml-checkpoint and maml-mixed equal backprop through the unrolled steps ("maml") in float64:
for every differentiable registered solver, with and without the proximal term, with a vector
lam, on the synthetic quadratic and a tanh CNN, at K = 1 and at K not divisible by the segment
length; their gradient in lam too; the batched form equals the per-task loop.

Tolerance 1e-12: the three compute the same sums of the same products in a different order
(recomputed graphs, products at stored iterates), so they differ by float64 rounding, ~K eps
relative for a contraction over K steps (measured here: ~1e-16)."""
import pytest
import torch
from torch import nn

import suite
from suite import SOLVERS, meta_gradient
from suite.core.batched import BatchedTasks, batched_meta_gradient

TOL = 1e-12
LOW_MEMORY = [("maml-checkpoint", {}), ("maml-checkpoint", {"segments": 3}),
              ("maml-checkpoint", {"segments": 1}), ("maml-mixed", {"hvp": "reverse"}),
              ("maml-mixed", {"hvp": "forward"})]
DIFFERENTIABLE = [n for n, s in SOLVERS.items() if s.differentiable]


def _rel(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _solver(name, steps):
    spec = SOLVERS[name]
    return spec.make(steps, 0.1, **({"momentum": 0.5} if name == "nesterov-agd" else {}))


@pytest.fixture
def tanh_cnn():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)
                        ).double()
    x, xq = torch.randn(9, 1, 6, 6, dtype=torch.float64), torch.randn(6, 1, 6, 6,
                                                                       dtype=torch.float64)
    task = suite.ModuleTask(net, (x, torch.arange(9) % 3), (xq, torch.arange(6) % 3))
    return task, task.flat_parameters()


def test_the_low_memory_methods_are_registered_as_exact_unrolls():
    for name in ("maml-checkpoint", "maml-mixed"):
        spec = suite.METHODS[name]
        assert spec.exact_for == "unroll" and spec.needs_differentiable_solver and spec.lam_grad


@pytest.mark.parametrize("method, options", LOW_MEMORY)
@pytest.mark.parametrize("solver_name", DIFFERENTIABLE)
@pytest.mark.parametrize("which", ["quad", "cnn"])
@pytest.mark.parametrize("lam_kind", ["none", "scalar", "vector"])
@pytest.mark.parametrize("steps", [1, 7])
def test_equal_to_maml(method, options, solver_name, which, lam_kind, steps, quad, tanh_cnn):
    task, theta = (quad[1], quad[3]) if which == "quad" else tanh_cnn
    lam = {"none": 0.0, "scalar": 1.5,
           "vector": torch.linspace(0.5, 2.0, theta.numel(), dtype=torch.float64)}[lam_kind]
    wants = lam_kind != "none"
    solver = _solver(solver_name, steps)
    options = {k: min(v, steps) if k == "segments" else v for k, v in options.items()}
    want = meta_gradient("maml", task, theta, lam=lam, solver=solver, lam_grad=wants)
    if which == "quad" and options.get("hvp") == "forward":
        # the quadratic's loss is F.mse_loss, whose forward-over-reverse PyTorch gets wrong:
        # refused with the reason, never a wrong number
        with pytest.raises(RuntimeError, match="pytorch/pytorch#123996"):
            meta_gradient(method, task, theta, lam=lam, solver=solver, **options)
        return
    got = meta_gradient(method, task, theta, lam=lam, solver=solver, lam_grad=wants, **options)
    assert _rel(got.grad, want.grad) < TOL
    torch.testing.assert_close(got.phi, want.phi, rtol=0, atol=1e-15)
    if wants:
        assert _rel(got.lam_grad, want.lam_grad) < TOL
    assert got.stats.hvps == steps and got.stats.grad_evals == 2 * steps


def test_segments_beyond_the_steps_are_refused(quad):
    _, task, _, theta = quad
    with pytest.raises(ValueError, match="segments must be an integer in"):
        meta_gradient("maml-checkpoint", task, theta, lam=1.0, solver=_solver("gd", 4),
                      segments=5)


def test_mixed_mode_refuses_solvers_without_step_vjp(quad):
    from suite.core.solvers import GD

    class Plain(GD):   # a user's differentiable solver that does not declare its step's VJP
        step_vjp = None
    _, task, _, theta = quad
    with pytest.raises(ValueError, match="step_vjp"):
        meta_gradient("maml-mixed", task, theta, lam=1.0, solver=Plain(3, 0.1))
    # checkpointing needs only the solver's step: it runs
    meta_gradient("maml-checkpoint", task, theta, lam=1.0, solver=Plain(3, 0.1))


@pytest.mark.parametrize("lam", [0.0, 2.0])
def test_batched_mixed_equals_the_loop(tanh_cnn, lam):
    task, theta = tanh_cnn
    torch.manual_seed(1)
    tasks = [suite.ModuleTask(task.module, (torch.randn(9, 1, 6, 6, dtype=torch.float64),
                                            torch.arange(9) % 3),
                              (torch.randn(6, 1, 6, 6, dtype=torch.float64),
                               torch.arange(6) % 3)) for _ in range(4)]
    loop = suite.meta_gradient_batch("maml", tasks, theta, lam=lam, solver=_solver("gd", 5))
    batched = batched_meta_gradient("maml-mixed", BatchedTasks.stack(tasks), theta, lam=lam,
                                    steps=5, lr=0.1)
    assert _rel(batched.grad, loop.grad) < TOL


@pytest.mark.parametrize("memory", ["checkpoint", "mixed"])
@pytest.mark.parametrize("truncate", [1, 3, 7])
def test_truncated_backprop_in_the_low_memory_modes(tanh_cnn, memory, truncate):
    task, theta = tanh_cnn
    lam = torch.linspace(0.5, 2.0, theta.numel(), dtype=torch.float64)
    solver = _solver("gd", 7)
    want = meta_gradient("truncated", task, theta, lam=lam, solver=solver, truncate=truncate,
                         lam_grad=True)
    got = meta_gradient("truncated", task, theta, lam=lam, solver=solver, truncate=truncate,
                        memory=memory, lam_grad=True)
    assert _rel(got.grad, want.grad) < TOL and _rel(got.lam_grad, want.lam_grad) < TOL
