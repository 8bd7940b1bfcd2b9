"""Broken meta-gradient code, each with one fault seen in the wild, for trying suite.verify
(tests/test_verify.py checks that each is diagnosed by name):

    imaml-suite verify examples/verify/broken.py:maml_first_order --claims maml
"""
import torch
from torch.func import functional_call

from examples.verify import plain
from examples.verify.plain import _loss


def maml_first_order(model, support, query, *, steps, lr, lam):
    """create_graph=True forgotten: the inner gradients are constants."""
    names, theta = zip(*model.named_parameters())
    phi = list(theta)
    for _ in range(steps):
        loss = _loss(model, names, phi, *support) + lam / 2 * sum(
            ((p - t) ** 2).sum() for p, t in zip(phi, theta))
        grads = torch.autograd.grad(loss, phi)          # no create_graph
        phi = [p - lr * g for p, g in zip(phi, grads)]
    return torch.autograd.grad(_loss(model, names, phi, *query), theta)


def maml_one_step_short(model, support, query, *, steps, lr, lam):
    return plain.maml(model, support, query, steps=steps - 1, lr=lr, lam=lam)


def maml_query_at_theta(model, support, query, *, steps, lr, lam):
    """Adapts, then takes the query loss at the original parameters."""
    names, theta = zip(*model.named_parameters())
    plain.maml(model, support, query, steps=steps, lr=lr, lam=lam)
    return torch.autograd.grad(_loss(model, names, list(theta), *query), theta)


def maml_without_prox(model, support, query, *, steps, lr, lam):
    return plain.maml(model, support, query, steps=steps, lr=lr, lam=0.0)


def maml_sign_flipped(model, support, query, *, steps, lr, lam):
    return [-g for g in plain.maml(model, support, query, steps=steps, lr=lr, lam=lam)]


def imaml_forgets_lam(model, support, query, *, steps, lr, lam):
    """Returns u = (H + lam I)^-1 v: the factor lam of g = lam u is dropped."""
    return [g / lam for g in plain.imaml(model, support, query, steps=steps, lr=lr, lam=lam)]


def maml_in_place(model, support, query, *, steps, lr, lam):
    """Correct gradients, but the model's parameters are changed afterwards."""
    grads = plain.maml(model, support, query, steps=steps, lr=lr, lam=lam)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    return grads


def flat_maml(task, theta, *, lam, solver):
    import suite
    return suite.meta_gradient("maml", task, theta, lam=lam, solver=solver)


def flat_fomaml(task, theta, *, lam, solver):
    import suite
    return suite.meta_gradient("fomaml", task, theta, lam=lam, solver=solver).grad


def maml_mse(model, support, query, *, steps, lr, lam):
    """plain.maml with the mean squared error (for --loss mse)."""
    import torch.nn.functional as F
    names, theta = zip(*model.named_parameters())
    phi = list(theta)
    f = lambda ps, x, y: F.mse_loss(functional_call(model, dict(zip(names, ps)), (x,)), y)  # noqa
    for _ in range(steps):
        loss = f(phi, *support) + lam / 2 * sum(((p - t) ** 2).sum() for p, t in zip(phi, theta))
        phi = [p - lr * g for p, g in zip(phi, torch.autograd.grad(loss, phi, create_graph=True))]
    return torch.autograd.grad(f(phi, *query), theta)
