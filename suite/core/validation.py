"""Argument validation for the core, in one place: every message names the parameter and the
allowed range exactly as it is checked (a ``ValueError`` or ``TypeError``; command lines turn
them into usage errors in ``suite.harness.cli``)."""
from __future__ import annotations

import math

import numpy as np
import torch


def check_int(name: str, value, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum \
            or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
    return int(value)


def describe_range(low: float, high: float, low_open: bool, high_open: bool) -> str:
    if math.isinf(high):
        return f"a finite number {'>' if low_open else '>='} {low:g}"
    return (f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")


def check_float(name: str, value, low: float, high: float = math.inf, *,
                low_open: bool = True, high_open: bool = False) -> float:
    """``value`` as a float if it is a finite real number in the stated range."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    ok = (math.isfinite(value) and (value > low if low_open else value >= low)
          and (value < high if high_open else value <= high))
    if not ok:
        raise ValueError(f"{name} must be {describe_range(low, high, low_open, high_open)}, "
                         f"got {value!r}")
    return value


def check_lam(lam, theta: torch.Tensor, *, positive: bool) -> "float | torch.Tensor":
    """The proximal strength: a number (returned as a float) or a 1-D tensor of theta's shape,
    dtype and device (a per-parameter prox, returned detached); every entry finite and > 0
    when ``positive`` (Lemma 1), else >= 0. A 0-dim tensor counts as a number."""
    if not torch.is_tensor(lam):
        return check_float("lam", lam, 0.0, low_open=positive)
    if lam.ndim == 0:
        return check_float("lam", float(lam), 0.0, low_open=positive)
    if lam.shape != theta.shape:
        raise ValueError(f"lam must be a number or a tensor of theta's shape "
                         f"{tuple(theta.shape)}, got shape {tuple(lam.shape)}")
    if lam.dtype != theta.dtype or lam.device != theta.device:
        raise TypeError(f"lam is {lam.dtype} on {lam.device} but theta is {theta.dtype} on "
                        f"{theta.device}; pass lam.to(theta)")
    lam = lam.detach()
    bad = ~torch.isfinite(lam) | ((lam <= 0) if positive else (lam < 0))
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"every entry of lam must be a finite number {'>' if positive else '>='}"
                         f" 0; lam[{i}] = {float(lam[i])!r} ({int(bad.sum())} such entries)")
    return lam


def check_finite(name: str, tensor: torch.Tensor) -> None:
    if not torch.is_tensor(tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or Inf; every entry must be finite")


def check_scalar(name: str, value) -> torch.Tensor:
    """``value`` if it is a 0-dim tensor (a loss), else a message naming ``name``."""
    if not torch.is_tensor(value) or value.ndim != 0:
        shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
        raise ValueError(f"{name} must return a scalar (0-dim) tensor, got {shape}; reduce "
                         "the loss, e.g. with .mean()")
    return value
