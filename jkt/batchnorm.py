"""BatchNorm with a fast double backward: the cost centre of Jacobian matching.

Jacobian matching back-propagates through an input gradient (double backpropagation). With the
student in train mode, the input gradient of a BatchNorm layer depends on the input through the
batch statistics, and PyTorch's generic double backward of ``native_batch_norm_backward`` was
40% of a VGG-4 Jacobian-matching step on the CPU (profiled: 120 of 300 ms).

Here the forward and the first backward are PyTorch's own kernels (bit-identical outputs and input
gradients); only the second backward is ours: a closed form with three per-channel sums and five fused
elementwise passes (derivation below, checked against ``torch.autograd.gradcheck`` in float64 and
against ``nn.BatchNorm2d`` in tests/test_performance.py).

Per channel, over its M = N*H*W elements, with r = 1/sqrt(var + eps), xh = (x - mean) r,
gbar = mean(gy), c = mean(gy xh), the first backward is
    gx = w r (gy - gbar - xh c),   gw = sum(gy xh) = M c,   gb = sum(gy) = M gbar.
For upstream gradients (a, aw, ab) on (gx, gw, gb), with A = sum(a), P = sum(a gy), Q = sum(a xh):
    d/dgy = w r (a - A/M - xh Q/M) + aw xh + ab
    d/dx  = -(w r^2 / M) [xh (P - gbar A - 3 c Q) + Q (gy - gbar) + c (M a - A)] + aw r (gy - gbar - xh c)
    d/dw  = r (P - gbar A - c Q)
"""
from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable


def _channel_view(t: torch.Tensor, dim: int) -> torch.Tensor:
    return t.view(1, -1, *([1] * (dim - 2)))


class _BatchNormBackward(torch.autograd.Function):
    """``(gx, gw, gb)`` of a train-mode BatchNorm as a function of ``(gy, x, w)``, with the closed-form backward."""

    @staticmethod
    def forward(ctx, gy, x, weight, mean, rstd, eps):
        mask = [True, weight is not None, weight is not None]
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(gy, x, weight, None, None, mean, rstd, True, eps, mask)
        if gw is None:  # no affine weight: the sums are still needed by the second backward
            dims = [0] + list(range(2, x.dim()))
            gw = (gy * ((x - _channel_view(mean, x.dim())) * _channel_view(rstd, x.dim()))).sum(dims)
            gb = gy.sum(dims)
        ctx.save_for_backward(gy, x, weight, mean, rstd, gw, gb)
        ctx.mark_non_differentiable(*(() if weight is not None else (gw, gb)))
        return gx, gw, gb

    @staticmethod
    @once_differentiable
    def backward(ctx, a, aw, ab):
        # Every result is (per-channel coefficient) * tensor + ..., with xh = r x - r mean expanded, so
        # each needs one fused addcmul pass per tensor term: 3 sums and 5 passes in all.
        gy, x, weight, mean, rstd, gw, gb = ctx.saved_tensors
        dim = x.dim()
        dims = [0] + list(range(2, dim))
        m = x.numel() // x.shape[1]
        r, w = rstd, (weight if weight is not None else torch.ones_like(rstd))
        gbar, c = gb / m, gw / m
        zero = torch.zeros_like(r)
        gy_a, gy_x, gy_1 = zero, zero, zero          # d/dgy = gy_a * a + gy_x * x + gy_1
        x_a, x_gy, x_x, x_1 = zero, zero, zero, zero  # d/dx  = x_a * a + x_gy * gy + x_x * x + x_1
        d_w = None
        if a is not None:
            big_a, p = a.sum(dims), (a * gy).sum(dims)
            q = r * ((a * x).sum(dims) - mean * big_a)
            wr = w * r
            gy_a, gy_x, gy_1 = wr, -wr * q / m * r, -wr * big_a / m + wr * q / m * r * mean
            k = -w * r * r / m
            e = p - gbar * big_a - 3 * c * q
            x_a, x_gy, x_x = k * c * m, k * q, k * e * r
            x_1 = -k * e * r * mean - k * q * gbar - k * c * big_a
            if ctx.needs_input_grad[2]:
                d_w = r * (p - gbar * big_a - c * q)
        if aw is not None and weight is not None:
            gy_x, gy_1 = gy_x + aw * r, gy_1 - aw * r * mean
            x_gy, x_x = x_gy + aw * r, x_x - aw * r * r * c
            x_1 = x_1 - aw * r * gbar + aw * r * r * c * mean
        if ab is not None and weight is not None:
            gy_1 = gy_1 + ab
        v = lambda t: _channel_view(t, dim)
        d_gy = torch.addcmul(v(gy_1), v(gy_x), x)
        if a is not None:
            d_gy.addcmul_(v(gy_a), a)
        d_x = torch.addcmul(v(x_1), v(x_x), x).addcmul_(v(x_gy), gy)
        if a is not None:
            d_x.addcmul_(v(x_a), a)
        return d_gy, d_x, d_w, None, None, None


def _is_batched(t: torch.Tensor) -> bool:
    """Is ``t`` a vmap BatchedTensor (torch.func.vmap, or the legacy vmap that ``is_grads_batched`` uses)?"""
    return "Batched" in str(torch._C._dispatch_keys(t))


def _composite_backward(gy, x, weight, eps):
    """The first backward written with differentiable ops (the statistics recomputed from ``x``): slower,
    but every transform (vmap, double backward) sees through it."""
    dims = [0] + list(range(2, x.dim()))
    v = lambda t: _channel_view(t, x.dim())
    rstd = torch.rsqrt(x.var(dims, unbiased=False, keepdim=True) + eps)
    xh = (x - x.mean(dims, keepdim=True)) * rstd
    gb, gw = gy.sum(dims), (gy * xh).sum(dims)
    m = x.numel() // x.shape[1]
    gx = rstd * (gy - v(gb) / m - xh * v(gw) / m)
    return (gx if weight is None else v(weight) * gx), gw, gb


class _BatchNormTrain(torch.autograd.Function):
    """Train-mode BatchNorm: PyTorch's forward (running statistics updated in place) and first backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        out, mean, rstd = torch.native_batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.eps, ctx.has_bias = eps, bias is not None
        return out

    @staticmethod
    def backward(ctx, gy):
        x, weight, mean, rstd = ctx.saved_tensors
        if _is_batched(gy):  # under vmap (is_grads_batched, torch.func): the composite form, which vmap handles
            gx, gw, gb = _composite_backward(gy, x, weight, ctx.eps)
        else:
            gx, gw, gb = _BatchNormBackward.apply(gy, x, weight, mean, rstd, ctx.eps)
        if weight is None:
            gw = None
        return gx, gw, gb if ctx.has_bias else None, None, None, None, None


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters, buffers and state dict) whose train-mode double backward is fast.

    Eval mode, ``track_running_stats=False``, momentum=None (cumulative averages) and torch.func transforms
    use PyTorch's path; under ``is_grads_batched`` the second backward is the (slower) composite form."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.track_running_stats and self.momentum is not None) or \
                torch._C._are_functorch_transforms_active() or _is_batched(x):
            return super().forward(x)  # torch.func transforms: PyTorch's layer, which they support
        self._check_input_dim(x)
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        return _BatchNormTrain.apply(x, self.weight, self.bias, self.running_mean, self.running_var,
                                     self.momentum, self.eps)



def use_fast_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` (in place, and returned) with every ``nn.BatchNorm2d`` replaced by :class:`BatchNorm2d`, keeping
    its parameters, buffers and settings: the same outputs and gradients, a faster Jacobian-matching step."""
    for name, child in list(model.named_children()):
        if type(child) is nn.BatchNorm2d:
            fast = BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats,
                               device=child.weight.device if child.affine else None,
                               dtype=child.weight.dtype if child.affine else None)
            fast.load_state_dict(child.state_dict())
            fast.train(child.training)
            setattr(model, name, fast)
        else:
            use_fast_batchnorm(child)
    return model
