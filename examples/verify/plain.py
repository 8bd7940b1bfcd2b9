"""MAML and iMAML written in plain PyTorch, the way research code writes them, in the form
``suite.verify`` judges: fn(model, support, query, *, steps, lr, lam) -> gradients shaped like
model.parameters(). Try:

    imaml-suite verify examples/verify/plain.py:maml --claims maml
    imaml-suite verify examples/verify/plain.py:imaml --claims imaml
"""
import torch
import torch.nn.functional as F
from torch.func import functional_call


def _loss(model, names, params, x, y):
    return F.cross_entropy(functional_call(model, dict(zip(names, params)), (x,)), y)


def maml(model, support, query, *, steps, lr, lam):
    """Backprop through `steps` of GD on L_support + lam/2 |phi - theta|^2."""
    names, theta = zip(*model.named_parameters())
    phi = list(theta)
    for _ in range(steps):
        loss = _loss(model, names, phi, *support) + lam / 2 * sum(
            ((p - t) ** 2).sum() for p, t in zip(phi, theta))
        grads = torch.autograd.grad(loss, phi, create_graph=True)
        phi = [p - lr * g for p, g in zip(phi, grads)]
    return torch.autograd.grad(_loss(model, names, phi, *query), theta)


def imaml(model, support, query, *, steps, lr, lam, cg_steps=20):
    """GD on the regularised inner problem, then CG on (I + H/lam) g = grad L_query(phi)."""
    names, theta = zip(*model.named_parameters())
    theta = [t.detach() for t in theta]
    phi = [t.clone() for t in theta]
    for _ in range(steps):
        phi = [p.requires_grad_(True) for p in phi]
        grads = torch.autograd.grad(_loss(model, names, phi, *support), phi)
        phi = [(p - lr * (g + lam * (p - t))).detach() for p, g, t in zip(phi, grads, theta)]
    phi = [p.requires_grad_(True) for p in phi]
    v = torch.autograd.grad(_loss(model, names, phi, *query), phi)
    train_grads = torch.autograd.grad(_loss(model, names, phi, *support), phi,
                                      create_graph=True)
    flat = lambda ts: torch.cat([t.reshape(-1) for t in ts])   # noqa: E731

    def A(x):   # (I + H/lam) x
        parts = torch.split(x, [p.numel() for p in phi])
        hx = torch.autograd.grad(train_grads, phi, [q.view_as(p) for q, p in zip(parts, phi)],
                                 retain_graph=True)
        return x + flat(hx) / lam

    b = flat(v).detach()
    x, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), r @ r
    for _ in range(cg_steps):
        Ap = A(p)
        alpha = rr / (p @ Ap)
        x, r = x + alpha * p, r - alpha * Ap
        rr_next = r @ r
        if rr_next.sqrt() <= 1e-12 * b.norm():
            break
        p, rr = r + (rr_next / rr) * p, rr_next
    return [g.view_as(t) for g, t in zip(torch.split(x, [t.numel() for t in theta]), theta)]
