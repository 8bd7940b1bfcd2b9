"""Meta-gradient methods (MAML, FOMAML, truncated backprop, implicit MAML, Reptile) behind one
inner-solver interface, with the instruments to measure their accuracy and cost.

``METHODS`` and ``SOLVERS`` are the registries every dispatcher reads; a method from outside
is added with ``register_method`` or by an installed entry point in ``imaml_suite.methods``.
"""
from suite.core import solvers
from suite.core.curvature import CURVATURES, Curvature
from suite.core.linalg import (BREAKDOWN_POLICIES, LINEAR_SOLVERS, CGBreakdown, CGResult,
                               LinearSolveResult, SolveBreakdown, conjugate_gradient,
                               solve_implicit)
from suite.core.hvp import hvp_at
from suite.core.methods import (EXACT_MAX_DIM, MetaGradient, Stats, meta_gradient,
                                meta_gradient_batch)
from suite.core.registry import (EXACT_FOR, METHODS, SOLVERS, Method, Option, SolverSpec,
                                 get_method, get_solver, load_plugins, register_method,
                                 unregister_method)
from suite.core.tasks import LinearRegressionTask, ModuleTask, Task
from suite.core.adapt import adapt

PLUGINS = load_plugins()
"""Names of the methods registered from installed entry points at import."""

__all__ = ["solvers", "meta_gradient", "meta_gradient_batch", "adapt", "MetaGradient", "Stats",
           "METHODS", "SOLVERS", "Method", "Option", "SolverSpec", "EXACT_FOR",
           "register_method", "unregister_method", "get_method", "get_solver", "PLUGINS",
           "EXACT_MAX_DIM", "Task", "ModuleTask", "LinearRegressionTask",
           "conjugate_gradient", "LinearSolveResult", "SolveBreakdown", "hvp_at",
           "solve_implicit", "Curvature", "CURVATURES", "BREAKDOWN_POLICIES", "LINEAR_SOLVERS"]
