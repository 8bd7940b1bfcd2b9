"""Calling the function under test in either form, and flattening what it returns into one
float64 vector (with notes on what it did that it should not: a None gradient, theta changed
in place).

- module form: ``fn(model, support, query, *, steps, lr, lam)`` returns gradients shaped like
  ``model.parameters()``;
- flat form: the suite's ``fn(task, theta, *, lam, solver)`` returns a tensor or a
  ``suite.MetaGradient``.
"""
from __future__ import annotations

import torch

from suite.core.solvers import GD

FORMS = ("module", "flat")


def flatten(out, model) -> tuple[torch.Tensor, list]:
    params, notes = list(model.parameters()), []
    if out is None:
        raise TypeError("the function returned None; it must return the gradients, one per "
                        "parameter of model.parameters()")
    if torch.is_tensor(out) and out.ndim == 1 and len(params) != 1:
        raise TypeError("the function returned one flat tensor; the module form returns a "
                        "sequence of gradients shaped like model.parameters() (--form flat "
                        "is the suite's flat protocol)")
    out = list(out)
    if len(out) != len(params):
        raise TypeError(f"the function returned {len(out)} gradients for "
                        f"{len(params)} parameters")
    flat = []
    for i, (g, p) in enumerate(zip(out, params)):
        if g is None:
            notes.append(f"gradient {i} is None (taken as zero)")
            g = torch.zeros_like(p)
        if tuple(g.shape) != tuple(p.shape):
            raise TypeError(f"gradient {i} has shape {tuple(g.shape)}, its parameter "
                            f"{tuple(p.shape)}")
        flat.append(g.detach().reshape(-1).to(torch.float64))
    return torch.cat(flat), notes


def make_caller(fn, form: str):
    """``call(problem, steps, lr, lam) -> (flat gradient, notes)`` for either form."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")

    def module_call(problem, steps, lr, lam):
        model = problem.fresh_model()
        before = [p.detach().clone() for p in model.parameters()]
        out = fn(model, problem.support, problem.query, steps=steps, lr=lr, lam=lam)
        g, notes = flatten(out, model)
        if any(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters())):
            notes.append("the function changed the model's parameters in place (theta must "
                         "be left as it was handed over)")
        return g, notes

    def flat_call(problem, steps, lr, lam):
        out = fn(problem.task(), problem.theta(), lam=lam, solver=GD(steps, lr))
        g = out if torch.is_tensor(out) else getattr(out, "grad", None)
        if not torch.is_tensor(g):
            raise TypeError("the flat form returns a tensor or a suite.MetaGradient, got "
                            f"{type(out).__name__}")
        return g.detach().reshape(-1).to(torch.float64), []
    return module_call if form == "module" else flat_call
