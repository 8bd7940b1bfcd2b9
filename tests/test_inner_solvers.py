"""Inner solvers added for the Omniglot recipes: Adam on mini-batches (Reptile) against
torch.optim.Adam, and the official code's pull-back GD against its definition and, unrolled,
against finite differences."""
import numpy as np
import pytest
import torch

from suite import meta_gradient
from suite.core.solvers import GD, Adam, InnerProblem, PullBackGD


@pytest.mark.parametrize("lam", [0.0, 0.7])
def test_adam_equals_torch_adam_with_beta1_zero(tanh_task, lam):
    task, theta = tanh_task
    phi = Adam(6, 1e-2, beta1=0.0, beta2=0.999).solve(InnerProblem(task, theta, lam)).phi
    ref = theta.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=1e-2, betas=(0.0, 0.999), eps=1e-8)
    for _ in range(6):
        opt.zero_grad()
        (task.train_loss(ref) + 0.5 * lam * (ref - theta).pow(2).sum()).backward()
        opt.step()
    # The same update formula in another order of operations: float64 rounding, ~1e-16.
    torch.testing.assert_close(phi, ref.detach(), rtol=1e-12, atol=1e-14)


def test_adam_minibatches_are_passes_over_shuffled_rows():
    solver = Adam(7, 1e-3, batch_size=4, rng=np.random.default_rng(1))
    batches = solver.batches(12)
    assert [len(b) for b in batches] == [4] * 7
    first_pass = sorted(i for b in batches[:3] for i in b)
    assert first_pass == list(range(12))           # every row once per pass
    again = Adam(7, 1e-3, batch_size=4, rng=np.random.default_rng(1)).batches(12)
    assert again == batches                          # the rng alone decides


def test_adam_refuses_what_it_cannot_do(tanh_task):
    task, theta = tanh_task
    with pytest.raises(ValueError, match="cannot be unrolled"):
        Adam(2, 1e-3).solve(InnerProblem(task, theta, 0.0), unroll=1)
    with pytest.raises(ValueError, match="beta1"):
        Adam(2, 1e-3, beta1=1.0)

    class NoBatches:
        def train_loss(self, phi):
            return phi.pow(2).sum()

        def test_loss(self, phi):
            return phi.sum()

    with pytest.raises(TypeError, match="train_size"):
        Adam(2, 1e-3, batch_size=2).solve(InnerProblem(NoBatches(), theta[:3], 0.0))


def test_pull_back_gd_is_gd_on_the_training_loss_then_one_prox_step(tanh_task):
    task, theta = tanh_task
    lam, lr = 2.0, 0.1
    got = PullBackGD(4, lr).solve(InnerProblem(task, theta, lam)).phi
    phi = theta.clone()
    for _ in range(4):
        phi = phi - lr * torch.func.grad(task.train_loss)(phi)
    phi = phi - lr * lam * (phi - theta)
    torch.testing.assert_close(got, phi, rtol=1e-14, atol=1e-15)


def test_maml_through_pull_back_gd_matches_finite_differences(tanh_task):
    task, theta = tanh_task
    solver = PullBackGD(3, 0.2)
    g = meta_gradient("maml", task, theta, lam=2.0, solver=solver).grad

    def outer(t):
        return float(task.test_loss(solver.solve(InnerProblem(task, t, 2.0)).phi))

    direction = torch.randn(theta.numel(), dtype=torch.float64,
                            generator=torch.Generator().manual_seed(3))
    h = 1e-5
    fd = (outer(theta + h * direction) - outer(theta - h * direction)) / (2 * h)
    # Central differences: truncation O(h^2) ~ 1e-10, rounding eps / h ~ 1e-11 (float64).
    assert float(g @ direction) == pytest.approx(fd, rel=1e-7, abs=1e-9)
    # Without the pull-back step it is plain GD with lam = 0, a different map of theta.
    plain = meta_gradient("maml", task, theta, lam=0.0, solver=GD(3, 0.2)).grad
    assert float((plain - g).norm()) > 1e-3 * float(g.norm())
