"""The registries: one per concept, read by every dispatcher.

``METHODS`` maps a name to a ``Method`` (its function, the options it takes with their types,
ranges and defaults, and what it needs and gives); ``SOLVERS`` maps a name to a ``SolverSpec``
(an inner solver's factory and its options). A method from outside the suite is added by
``register_method`` at run time, or by an installed package that declares an entry point in
the group ``imaml_suite.methods`` whose object is a ``Method`` (loaded on ``import suite``).

Invariant: every option a method receives has passed ``Method.check_options`` (its declared
type and range), and a method that ``needs_differentiable_solver`` never receives a solver
whose ``differentiable`` is false.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

from suite.core.validation import check_float, check_int, describe_range

ENTRY_POINT_GROUP = "imaml_suite.methods"

EXACT_FOR = {
    "implicit": "the implicit gradient (I + H/lam)^-1 grad L_test(phi) at phi = Alg*(theta) "
                "(Lemma 1; exact when the inner problem and the linear solve are converged)",
    "unroll": "the K-step unroll: backprop through every step of the inner solver",
    "truncated": "backprop through the last `truncate` steps of the inner solver",
    "first-order": "a biased direction: grad L_test(phi) at the adapted phi (dphi/dtheta = I)",
    "reptile": "a biased direction: Reptile's theta - phi over the inner loop (not a gradient)",
}
"""What a method's result is exactly, for each value of ``Method.exact_for``; the contract
test (tests/test_contract.py) holds one reference per entry."""


@dataclass(frozen=True)
class Option:
    """One option of a method or solver: its kind ("int", "float", "choice" or "any"), its
    default, its range (``low``/``high``, ``low_open``) or ``choices``; ``none_ok`` lets
    ``None`` through; ``check`` validates an "any" option (raises, or returns the value).

    ``axis``: the sweep column it is swept along ("cg_steps": a linear-solve budget,
    "truncate": a number of kept steps); ``at_most_steps``: capped by the inner solver's
    steps."""

    name: str
    kind: str
    default: Any = None
    doc: str = ""
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    choices: tuple = ()
    none_ok: bool = False
    check: Callable | None = None
    axis: str | None = None
    at_most_steps: bool = False

    def __post_init__(self):
        if self.kind not in ("int", "float", "choice", "any"):
            raise ValueError(f"Option {self.name!r}: kind must be int, float, choice or any, "
                             f"got {self.kind!r}")

    def validate(self, value, steps: int | None = None):
        if value is None and self.none_ok:
            return None
        if self.kind == "int":
            high = None if math.isinf(self.high) else int(self.high)
            if self.at_most_steps and steps is not None:
                high = steps if high is None else min(high, steps)
            value = check_int(self.name, value, minimum=int(max(self.low, -2**62)), maximum=high)
        elif self.kind == "float":
            value = check_float(self.name, value, self.low, self.high, low_open=self.low_open)
        elif self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{self.name} must be one of {list(self.choices)}, got {value!r}")
        elif self.check is not None:
            result = self.check(value)
            value = value if result is None else result
        return value

    def describe(self) -> str:
        if self.kind == "int":
            rng = f"integer >= {self.low:g}" if math.isinf(self.high) else \
                f"integer in [{self.low:g}, {self.high:g}]"
            rng += ", at most the inner steps" if self.at_most_steps else ""
        elif self.kind == "float":
            rng = describe_range(self.low, self.high, self.low_open, False)
        elif self.kind == "choice":
            rng = "one of " + ", ".join(map(str, self.choices))
        else:
            rng = "see the doc"
        default = "" if self.default is None and not self.none_ok else f", default {self.default!r}"
        return f"{self.name} ({rng}{default}){': ' + self.doc if self.doc else ''}"


@dataclass(frozen=True)
class Method:
    """A meta-gradient method: ``fn(task, theta, *, lam, solver, lam_grad=False, **options)
    -> MetaGradient``.

    ``needs_positive_lam``: lam > 0 (Lemma 1), else lam >= 0. ``needs_differentiable_solver``:
    backpropagates through the solver's steps. ``lam_grad``: can give d/dlam.
    ``batched``: the task-batched form ``fn(bt, theta, *, lam, steps, lr, chunk_size,
    **options)`` over ``suite.core.batched.BatchedTasks``, or None. ``exact_for``: a key of
    ``EXACT_FOR``. ``converged_options``: options under which ``exact_for`` holds on a small,
    well-conditioned problem (the contract test uses them). ``needs_dense``: forms the dense
    Hessian (small problems only)."""

    name: str
    fn: Callable
    options: tuple = ()
    doc: str = ""
    needs_positive_lam: bool = False
    needs_differentiable_solver: bool = False
    lam_grad: bool = False
    batched: Callable | None = None
    exact_for: str = "unroll"
    converged_options: dict = field(default_factory=dict)
    needs_dense: bool = False
    needs_solver: bool = True

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Method name must be a non-empty string, got {self.name!r}")
        if not callable(self.fn):
            raise TypeError(f"Method {self.name!r}: fn must be callable, got {self.fn!r}")
        if self.exact_for not in EXACT_FOR:
            raise ValueError(f"Method {self.name!r}: exact_for must be one of "
                             f"{sorted(EXACT_FOR)}, got {self.exact_for!r}")
        object.__setattr__(self, "options", tuple(self.options))
        for o in self.options:
            if not isinstance(o, Option):
                raise TypeError(f"Method {self.name!r}: options must be Option objects, got {o!r}")

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def defaults(self) -> dict:
        return {o.name: o.default for o in self.options}

    def check_options(self, options: dict, solver=None) -> dict:
        """``options`` validated against the declared ones (unknown names refused)."""
        unknown = sorted(set(options) - {o.name for o in self.options})
        if unknown:
            allowed = [o.name for o in self.options]
            raise TypeError(f"method {self.name!r} takes no option {unknown[0]!r}; its options: "
                            f"{allowed or 'none'}")
        steps = getattr(solver, "steps", None)
        return {k: self.option(k).validate(v, steps) for k, v in options.items()}

    def accepts(self, solver) -> bool:
        """Whether this method can run ``solver`` (by its declared capability)."""
        return not self.needs_differentiable_solver or bool(getattr(solver, "differentiable",
                                                                    False))

    def check_solver(self, solver) -> None:
        if not self.accepts(solver):
            raise ValueError(
                f"method {self.name!r} backpropagates through the solver's steps, but {solver!r} "
                f"is not differentiable; use one of "
                f"{[n for n, s in SOLVERS.items() if s.differentiable]}, or a method that "
                "accepts any solver (" + ", ".join(
                    m for m, spec in METHODS.items() if not spec.needs_differentiable_solver)
                + ")")

    def describe(self) -> str:
        needs = [w for w, on in (("lam > 0", self.needs_positive_lam),
                                 ("a differentiable solver", self.needs_differentiable_solver))
                 if on]
        lines = [f"{self.name}: {self.doc.splitlines()[0] if self.doc else ''}".rstrip(),
                 f"    exact for: {EXACT_FOR[self.exact_for]}",
                 f"    needs: {', '.join(needs) or 'nothing special'}; gradient in lam: "
                 f"{'yes' if self.lam_grad else 'no'}; batched form: "
                 f"{'yes' if self.batched else 'no'}"]
        lines += [f"    option {o.describe()}" for o in self.options]
        return "\n".join(lines)


@dataclass(frozen=True)
class SolverSpec:
    """An inner solver: ``factory(steps, lr, **options)`` (``lr`` None for those that take
    no step size), whether it can be unrolled, and its options."""

    name: str
    factory: Callable
    differentiable: bool
    options: tuple = ()
    doc: str = ""
    takes_lr: bool = True

    def make(self, steps: int, lr: float | None = None, **options):
        unknown = sorted(set(options) - {o.name for o in self.options})
        if unknown:
            raise TypeError(f"solver {self.name!r} takes no option {unknown[0]!r}; its options: "
                            f"{[o.name for o in self.options] or 'none'}")
        options = {k: next(o for o in self.options if o.name == k).validate(v)
                   for k, v in options.items()}
        if self.takes_lr:
            if lr is None:
                raise ValueError(f"solver {self.name!r} needs lr (its step size)")
            return self.factory(steps, lr, **options)
        return self.factory(steps, **options)


METHODS: dict[str, Method] = {}
SOLVERS: dict[str, SolverSpec] = {}


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to ``METHODS`` (every sweep, figure, gate and recipe then knows it by
    name). A name already taken is refused unless ``replace``."""
    if not isinstance(method, Method):
        raise TypeError(f"register_method takes a suite.Method, got {type(method).__name__}")
    if method.name in METHODS and not replace and METHODS[method.name] is not method:
        raise ValueError(f"a method named {method.name!r} is already registered "
                         "(pass replace=True to replace it)")
    METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    METHODS.pop(name, None)


def register_solver(spec: SolverSpec) -> SolverSpec:
    SOLVERS[spec.name] = spec
    return spec


def get_method(name) -> Method:
    if isinstance(name, Method):
        return name
    if not isinstance(name, str):
        raise TypeError(f"method must be a name, one of {sorted(METHODS)}, got {name!r}")
    if name not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name]


def get_solver(name: str) -> SolverSpec:
    if name not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {name!r}")
    return SOLVERS[name]


def load_plugins() -> list[str]:
    """Register the ``Method`` of every installed entry point in ``ENTRY_POINT_GROUP``; a
    broken plugin is reported as a warning naming it, and the suite still imports."""
    loaded = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            method = ep.load()
            if not isinstance(method, Method):
                raise TypeError(f"its object is a {type(method).__name__}, not a suite.Method")
            register_method(method, replace=True)
            loaded.append(method.name)
        except Exception as err:  # a broken third-party package must not break the suite
            warnings.warn(f"plugin entry point {ep.name!r} ({ep.value}) in group "
                          f"{ENTRY_POINT_GROUP!r} was not loaded: {err}", stacklevel=2)
    return loaded
