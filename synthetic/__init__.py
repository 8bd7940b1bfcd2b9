"""Controlled-condition-number tasks with exact meta-gradients (numpy/scipy, float64).

Independent of ``suite``: these are the references the suite's methods are checked against.
"""
from .regression import (KAPPA_MAX, RegressionTask, agd_meta_gradient, agd_path,
                         exact_meta_gradient, gd_meta_gradient, gd_path, inner_solution,
                         make_meta_batch, make_task, prox_inner_solution, prox_meta_gradients,
                         relative_error, truncated_meta_gradient)
from .prior import bayes_lam, make_prior_tasks

__all__ = ["KAPPA_MAX", "RegressionTask", "make_task", "make_meta_batch", "inner_solution",
           "exact_meta_gradient", "gd_path", "gd_meta_gradient", "agd_path",
           "agd_meta_gradient", "truncated_meta_gradient", "relative_error",
           "prox_inner_solution", "prox_meta_gradients", "bayes_lam", "make_prior_tasks"]
