"""The task protocol, and ``ModuleTask`` which puts an ``nn.Module`` behind it.

A task is any object with ``train_loss(phi)`` and ``test_loss(phi)`` that return scalar
tensors for a flat 1-D parameter tensor ``phi``. Methods and solvers see nothing else, except
where an option needs more (and says so when a task lacks it):

- ``train_outputs(phi)`` and ``train_output_loss(outputs)``, with
  ``train_loss(phi) == train_output_loss(train_outputs(phi))``: the model's outputs on the
  training data, for the Gauss-Newton curvature (``OutputTask``);
- ``train_size`` and ``restricted(index)``, a task whose training data are the rows
  ``index`` of this one's: mini-batches for stochastic inner solvers (``suite.core.solvers.Adam``).
"""
from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from suite.core.validation import check_finite


@runtime_checkable
class Task(Protocol):
    def train_loss(self, phi: torch.Tensor) -> torch.Tensor: ...

    def test_loss(self, phi: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class OutputTask(Task, Protocol):
    def train_outputs(self, phi: torch.Tensor) -> torch.Tensor: ...

    def train_output_loss(self, outputs: torch.Tensor) -> torch.Tensor: ...


def _check_pair(name: str, pair) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise TypeError(f"{name} must be a pair (inputs, targets)")
    x, y = pair
    check_finite(f"{name}[0] (inputs)", x)
    check_finite(f"{name}[1] (targets)", y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: inputs and targets must have the same number of rows, "
                         f"got {x.shape[0]} and {y.shape[0]}")
    return x, y


class ModuleTask:
    """A task whose model is ``module``, evaluated at a flat parameter vector.

    ``phi`` is split into zero-copy views shaped like ``module.parameters()`` (in that
    order) and passed to ``torch.func.functional_call``; buffers are the module's own.
    """

    def __init__(self, module: nn.Module, support, query,
                 loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy):
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        self.support = _check_pair("support", support)
        self.query = _check_pair("query", query)
        self.loss = loss
        named = list(module.named_parameters())
        self._names = [n for n, _ in named]
        self._shapes = [p.shape for _, p in named]
        self._numels = [p.numel() for _, p in named]
        self.num_parameters = sum(self._numels)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def flat_parameters(self) -> torch.Tensor:
        """A copy of the module's parameters, flattened in ``module.parameters()`` order."""
        return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()]).clone()

    def unflatten(self, phi: torch.Tensor) -> dict[str, torch.Tensor]:
        if phi.ndim != 1 or phi.numel() != self.num_parameters:
            raise ValueError(f"phi must be a 1-D tensor of {self.num_parameters} entries "
                             f"(the module's parameter count), got shape {tuple(phi.shape)}")
        views = torch.split(phi, self._numels)
        return {n: v.view(s) for n, v, s in zip(self._names, views, self._shapes)}

    def outputs(self, phi: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, self.unflatten(phi), (x,))

    def _loss(self, phi: torch.Tensor, data) -> torch.Tensor:
        x, y = data
        return self.loss(self.outputs(phi, x), y)

    def train_outputs(self, phi: torch.Tensor) -> torch.Tensor:
        return self.outputs(phi, self.support[0])

    def train_output_loss(self, outputs: torch.Tensor) -> torch.Tensor:
        return self.loss(outputs, self.support[1])

    @property
    def train_size(self) -> int:
        return self.support[0].shape[0]

    def restricted(self, index) -> "ModuleTask":
        """The same task with the support rows ``index`` only (a mini-batch)."""
        x, y = self.support
        return ModuleTask(self.module, (x[index], y[index]), self.query, self.loss)

    def train_loss(self, phi: torch.Tensor) -> torch.Tensor:
        return self._loss(phi, self.support)

    def test_loss(self, phi: torch.Tensor) -> torch.Tensor:
        return self._loss(phi, self.query)


class LinearRegressionTask:
    """Squared loss |X phi - y|^2 / (2 n) on training and test data, in torch.

    The torch twin of ``synthetic.RegressionTask`` (which holds the numpy reference).
    """

    def __init__(self, X_train, y_train, X_test, y_test, *, dtype=torch.float64, device="cpu"):
        def as_tensor(name, a):
            t = torch.as_tensor(a, dtype=dtype, device=device)
            check_finite(name, t)
            return t
        self.X_train, self.y_train = as_tensor("X_train", X_train), as_tensor("y_train", y_train)
        self.X_test, self.y_test = as_tensor("X_test", X_test), as_tensor("y_test", y_test)
        for x, y, name in ((self.X_train, self.y_train, "train"), (self.X_test, self.y_test, "test")):
            if x.ndim != 2 or y.shape != (x.shape[0],):
                raise ValueError(f"{name} data must be X (n, d) and y (n,), got "
                                 f"{tuple(x.shape)} and {tuple(y.shape)}")
        if self.X_train.shape[1] != self.X_test.shape[1]:
            raise ValueError("X_train and X_test must have the same number of columns")
        self.num_parameters = self.X_train.shape[1]
        self.dtype, self.device = self.X_train.dtype, self.X_train.device

    @classmethod
    def from_synthetic(cls, task, **kwargs) -> "LinearRegressionTask":
        return cls(task.X_train, task.y_train, task.X_test, task.y_test, **kwargs)

    @staticmethod
    def _loss(X, y, phi):
        if phi.shape != (X.shape[1],):
            raise ValueError(f"phi must have shape ({X.shape[1]},), got {tuple(phi.shape)}")
        # |X phi - y|^2 / (2n) through the standard loss: its double backward keeps the
        # residual, so an unrolled step holds O(n) bytes as a network keeps activations.
        return 0.5 * F.mse_loss(X @ phi, y)

    def train_loss(self, phi):
        return self._loss(self.X_train, self.y_train, phi)

    def train_outputs(self, phi):
        return self.X_train @ phi

    def train_output_loss(self, outputs):
        return 0.5 * F.mse_loss(outputs, self.y_train)

    def test_loss(self, phi):
        return self._loss(self.X_test, self.y_test, phi)


def num_parameters(task) -> int | None:
    """The task's parameter count when it declares one (``num_parameters``), else None."""
    n = getattr(task, "num_parameters", None)
    return None if n is None else int(n)
