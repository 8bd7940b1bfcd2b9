"""BatchNorm with batch statistics whose double backward is written in closed form.

A Hessian-vector product on a BatchNorm network differentiates BatchNorm's backward. PyTorch's
own derivative of that backward (``NativeBatchNormBackwardBackward0``) takes about 35
elementwise passes per layer, which make it the largest share of a reverse HVP on the 4-layer
CNN (``imaml-suite sweeps hvp-cost``). Here the forward and the first backward are the
native kernels, and the backward's own vector-Jacobian product is the closed form below: three
per-channel reductions and two outputs, each a sum of per-channel multiples of ``a``, ``gy``,
``xhat`` and a constant.

Notation, per channel over its m = N*H*W elements: ``xhat = (x - mean) * rstd`` with
``rstd = 1/sqrt(var + eps)``; the backward maps ``gy`` to ``ggamma = <gy, xhat>``,
``gbeta = sum gy`` and ``gx = gamma rstd P(gy)``, ``P(u) = u - mean(u) - xhat mean(u xhat)``.
For cotangents (a, b, c) of (gx, ggamma, gbeta), J = <a, gx> + b ggamma + c gbeta:

- dJ/dgy    = gamma rstd P(a) + b xhat + c
- dJ/dgamma = rstd <a, P(gy)>
- dJ/dx     = rstd P(G) - rstd^2 gamma <a, P(gy)> xhat / m,
  with G = dJ/dxhat = alpha a + beta gy, alpha = -gamma rstd ggamma / m,
  beta = b - gamma rstd <a, xhat> / m (d xhat = rstd P(dx), d rstd = -rstd^2 mean(xhat dx)).

Forward mode (``jvp``, for forward-over-reverse products) is written the same way:
d xhat = rstd P(dx), d rstd = -rstd^2 mean(xhat dx), and the product rule on gx, ggamma, gbeta.
The closed forms use the saved mean and rstd as constants and account for their dependence on x
by hand; when the double backward is itself recorded (``create_graph``, or inside torch.func),
mean and rstd are recomputed from x so that a third derivative sees that dependence too.
"""
from __future__ import annotations

import torch
from torch import nn

_DIMS = (0, 2, 3)


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    return t[None, :, None, None]


def _sum(t: torch.Tensor) -> torch.Tensor:
    return t.sum(_DIMS, keepdim=True)


def _statistics(x, mean, invstd, eps):
    """(m, mean, rstd, xhat) per channel. Recorded by autograd (a later derivative is taken),
    mean and rstd are recomputed from x, otherwise the saved ones are used."""
    m = x.numel() // x.shape[1]
    if torch.is_grad_enabled() and x.requires_grad:
        mean = x.mean(_DIMS, keepdim=True)
        centred = x - mean
        rstd = torch.rsqrt(_sum(centred * centred) / m + eps)
        return m, mean, rstd, centred * rstd
    mean, rstd = _per_channel(mean), _per_channel(invstd)
    return m, mean, rstd, (x - mean).mul_(rstd)


class _BatchNorm(torch.autograd.Function):
    """(x, weight, bias, eps) -> (y, mean, invstd), batch statistics; mean and invstd are
    returned (non-differentiable) so that the backward can reuse them."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, eps):
        return torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, eps = inputs
        _, mean, invstd = output
        ctx.mark_non_differentiable(mean, invstd)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.save_for_forward(x, weight, mean, invstd)
        ctx.eps = eps

    @staticmethod
    def backward(ctx, gy, _gmean, _ginvstd):
        x, weight, mean, invstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: record the backward for its derivative
            gx, gweight, gbias = _BatchNormBackward.apply(gy, x, weight, mean, invstd, ctx.eps)
        else:
            gx, gweight, gbias = _BatchNormBackward.forward(gy, x, weight, mean, invstd, ctx.eps)
        return gx, gweight, gbias, None

    @staticmethod
    def jvp(ctx, dx, dweight, dbias, _deps):
        # dy = dgamma xhat + gamma rstd P(dx) + dbeta
        x, weight, mean, invstd = ctx.saved_tensors
        m, _, rstd, xhat = _statistics(x, mean, invstd, ctx.eps)
        weight = _per_channel(weight)
        s = weight * rstd
        k_xhat = torch.zeros_like(s) if dweight is None else _per_channel(dweight)
        const = torch.zeros_like(s) if dbias is None else _per_channel(dbias)
        if dx is None:
            return torch.addcmul(const.expand_as(x), xhat, k_xhat), None, None
        k_xhat = k_xhat - s * _sum(dx * xhat) / m
        dy = torch.addcmul((dx * s).add_(const - s * _sum(dx) / m), xhat, k_xhat)
        return dy, None, None


class _BatchNormBackward(torch.autograd.Function):
    """(gy, x, weight, mean, invstd, eps) -> (gx, gweight, gbias), the native backward; its
    own derivatives are the closed forms of the module docstring."""

    generate_vmap_rule = True

    @staticmethod
    def forward(gy, x, weight, mean, invstd, eps):
        return torch.ops.aten.native_batch_norm_backward(
            gy, x, weight, None, None, mean, invstd, True, eps, [True, True, True])

    @staticmethod
    def setup_context(ctx, inputs, output):
        gy, x, weight, mean, invstd, eps = inputs
        _, ggamma, gbeta = output
        ctx.save_for_backward(gy, x, weight, mean, invstd, ggamma, gbeta)
        ctx.save_for_forward(gy, x, weight, mean, invstd, ggamma, gbeta)
        ctx.eps = eps

    @staticmethod
    def backward(ctx, a, b, c):
        gy, x, weight, mean, invstd, ggamma, gbeta = ctx.saved_tensors
        # Few full-size passes: xhat, three reductions, and two outputs built as per-channel
        # multiples of a, gy and xhat plus a constant. addcmul's first operand is always
        # full-size (with a broadcast one it is about twice as slow on the CPU) and never
        # in place (torch.func.vmap has no batching rule for addcmul_).
        m, _, rstd, xhat = _statistics(x, mean, invstd, ctx.eps)
        weight, ggamma, gbeta = map(_per_channel, (weight, ggamma, gbeta))
        b, c = _per_channel(b), _per_channel(c)  # autograd materialises unused ones as zeros
        sum_a, a_xhat, a_gy = _sum(a), _sum(a * xhat), _sum(a * gy)
        s = weight * rstd
        a_pgy = a_gy - (sum_a * gbeta + a_xhat * ggamma) / m  # <a, P(gy)>
        d_weight = (rstd * a_pgy).flatten()
        d_gy = torch.addcmul((a * s).add_(c - s * sum_a / m), xhat, b - s * a_xhat / m)
        alpha = -s * ggamma / m
        beta = b - s * a_xhat / m
        sum_g = alpha * sum_a + beta * gbeta
        g_xhat = alpha * a_xhat + beta * ggamma
        d_x = torch.addcmul((a * (rstd * alpha)).sub_(rstd * sum_g / m), gy, rstd * beta)
        d_x = torch.addcmul(d_x, xhat, -(rstd * g_xhat + rstd * rstd * weight * a_pgy) / m)
        return d_gy, d_x, d_weight, None, None, None

    @staticmethod
    def jvp(ctx, dgy, dx, dweight, _dmean, _dinvstd, _deps):
        # gx = gamma rstd Q, Q = gy - gbeta/m - xhat ggamma/m; the product rule on each factor.
        gy, x, weight, mean, invstd, ggamma, gbeta = ctx.saved_tensors
        m, _, rstd, xhat = _statistics(x, mean, invstd, ctx.eps)
        weight, ggamma, gbeta = map(_per_channel, (weight, ggamma, gbeta))
        s = weight * rstd
        zero = torch.zeros_like(rstd)
        mean_dx, xhat_dx, gy_dx = ((_sum(dx) / m, _sum(dx * xhat) / m, _sum(gy * dx))
                                   if dx is not None else (zero, zero, zero))
        d_gbeta, gy_xhat = (_sum(dgy), _sum(dgy * xhat)) if dgy is not None else (zero, zero)
        d_rstd = -rstd * rstd * xhat_dx
        # <gy, d xhat> with d xhat = rstd (dx - mean(dx) - xhat mean(xhat dx))
        d_ggamma = gy_xhat + rstd * (gy_dx - gbeta * mean_dx - ggamma * xhat_dx)
        d_s = weight * d_rstd if dweight is None else _per_channel(dweight) * rstd + weight * d_rstd
        d_gx = (gy * d_s).add_(-d_s * gbeta / m - s * d_gbeta / m + s * rstd * ggamma / m * mean_dx)
        d_gx = torch.addcmul(d_gx, xhat, -d_s * ggamma / m + s * rstd * ggamma / m * xhat_dx
                             - s * d_ggamma / m)
        if dgy is not None:
            d_gx = torch.addcmul(d_gx, dgy, s)
        if dx is not None:
            d_gx = torch.addcmul(d_gx, dx, -s * rstd * ggamma / m)
        return d_gx, d_ggamma.flatten(), d_gbeta.flatten()

class ClosedFormBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with batch statistics (``track_running_stats=False``, affine): native
    forward and backward kernels, double backward in closed form (module docstring). The same
    function and derivatives as ``nn.BatchNorm2d`` (to float rounding), in reverse and
    forward mode and under ``torch.func`` transforms."""

    def __init__(self, num_features: int, **kwargs):
        super().__init__(num_features, track_running_stats=False, **kwargs)
        if not self.affine:
            raise ValueError("ClosedFormBatchNorm2d needs affine=True")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"ClosedFormBatchNorm2d expects (N, C, H, W) inputs, got {x.dim()} "
                             "dimensions")
        return _BatchNorm.apply(x, self.weight, self.bias, self.eps)[0]
