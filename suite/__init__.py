"""Meta-gradient methods (MAML, FOMAML, truncated backprop, implicit MAML) behind one
inner-solver interface, with the instruments to measure their accuracy and cost."""
from . import solvers
from .curvature import CURVATURES, Curvature
from .linalg import (BREAKDOWN_POLICIES, LINEAR_SOLVERS, CGBreakdown, CGResult,
                     conjugate_gradient, hvp_at, solve_implicit)
from .methods import (EXACT_MAX_DIM, METHODS, MetaGradient, Stats, meta_gradient,
                      meta_gradient_batch)
from .tasks import LinearRegressionTask, ModuleTask, Task

__all__ = ["solvers", "meta_gradient", "meta_gradient_batch", "MetaGradient", "Stats",
           "METHODS", "EXACT_MAX_DIM", "Task", "ModuleTask", "LinearRegressionTask",
           "conjugate_gradient", "CGResult", "CGBreakdown", "hvp_at", "solve_implicit",
           "Curvature", "CURVATURES", "BREAKDOWN_POLICIES", "LINEAR_SOLVERS"]
