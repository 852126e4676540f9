"""actnorm_invconv: ActNorm followed by the invertible 1x1 conv, as one per-pixel affine map.

    actnorm_invconv(x, s, b, W) = W diag(s) (x + b)   per pixel,   logdet = H*W*(sum log|s| + log|det W|)

It has no kernel of its own: it runs channel_affine (ops/channel_affine.py) with A = W diag(s) and c = A b, so a Glow
step's linear part is one read and one write of x. Inverse: x = A^-1 y - b.

    actnorm_invconv_ref       the unfused pure-torch reference
    actnorm_invconv           the public op (forward), actnorm_invconv_inverse its inverse
    ActNormInvConvFunction    eager training path: kernel, algebra and gradients in one autograd node
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from flowkern.ops.channel_affine import (channel_affine, channel_affine_bwd, channel_affine_bwd_ref, channel_affine_fwd,
                                         channel_affine_fwd_op, channel_affine_ref, max_channels)
from flowkern.ops.checks import acc_dtype, check_nchw, check_same_device, check_shape, needs_grad, no_autocast
from flowkern.ops.dispatch import pick_backend


def actnorm_invconv_ref(x: Tensor, s: Tensor, b: Tensor, W: Tensor,
                        logdet_w: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """The unfused reference: ActNorm (x + b) * s, then the 1x1 conv W, in x's dtype. Returns (y, logdet (B,))."""
    h = (x + b.to(x.dtype).view(1, -1, 1, 1)) * s.to(x.dtype).view(1, -1, 1, 1)
    with no_autocast(x):
        y = F.conv2d(h, W.to(h.dtype)[:, :, None, None])
    return y, _logdet(x, s, W, logdet_w)


def _logdet(x: Tensor, s: Tensor, W: Tensor, logdet_w: Optional[Tensor] = None) -> Tensor:
    if logdet_w is None:  # float64 slogdet: stable for ill-conditioned W
        logdet_w = torch.linalg.slogdet(W.double())[1]
    ld = (x.shape[2] * x.shape[3]) * (s.abs().log().sum() + logdet_w)
    acc = acc_dtype(x.dtype)
    return (ld if ld.dtype == acc else ld.to(acc)).expand(x.shape[0])


def _check(op: str, x: Tensor, s: Tensor, b: Tensor, W: Tensor) -> None:
    check_nchw(x, op)
    C = x.shape[1]
    for name, t, shape in (("s", s, (C,)), ("b", b, (C,)), ("W", W, (C, C))):
        check_shape(op, name, t, shape, f" for x with {C} channels")
    check_same_device(op, x=x, s=s, b=b, W=W)


def actnorm_invconv(x: Tensor, s: Tensor, b: Tensor, W: Tensor,
                    logdet_w: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Fused ActNorm + invertible 1x1 conv: y = W diag(s) (x + b) per pixel.

    x (B, C, H, W); s, b (C,); W (C, C); logdet_w: log|det W| if already known (LU: sum log|diag U|),
    else computed with a float64 slogdet. Returns (y, logdet (B,)), logdet = H*W*(sum log|s| + log|det W|).
    """
    _check("actnorm_invconv", x, s, b, W)
    backend = pick_backend(x, max_channels)
    if backend == "torch":
        return actnorm_invconv_ref(x, s, b, W, logdet_w)
    if logdet_w is None:  # float64 slogdet: stable for ill-conditioned W
        logdet_w = torch.linalg.slogdet(W.double())[1]
    if needs_grad(x, s, b, W, logdet_w) and not torch.compiler.is_compiling():
        return ActNormInvConvFunction.apply(x.contiguous(), s, b, W, logdet_w, backend)
    acc = acc_dtype(x.dtype)  # torch.compile traces these ops and the registered channel_affine op
    with no_autocast(x):  # the flow's algebra stays fp32 under autocast
        A = (W.to(acc) * s.to(acc)[None, :]).contiguous()
        y = channel_affine_fwd_op(x.contiguous(), A, (A @ b.to(acc)).contiguous(), backend)
    return y, _logdet(x, s, W, logdet_w)


class ActNormInvConvFunction(torch.autograd.Function):
    """Eager actnorm_invconv in one autograd node: the kernel, A = W diag(s), c = A b and the logdet forward, and
    their gradients in closed form in backward. At Glow sizes on CPU the per-call work around the kernel is as large
    as the kernel itself; one node keeps it smaller."""

    @staticmethod
    def forward(ctx, x, s, b, W, logdet_w, backend):
        acc = acc_dtype(x.dtype)
        with no_autocast(x):  # the flow's algebra stays in fp32 (or fp64) under autocast
            s_, b_, W_ = s.to(acc), b.to(acc), W.to(acc)
            A = (W_ * s_[None, :]).contiguous()
            y = channel_affine_fwd(x, A, A @ b_, backend)
            ld = _logdet(x, s_, W_, logdet_w).contiguous()
        ctx.save_for_backward(x, s, b, W, A)
        ctx.backend = backend
        ctx.dtypes = (s.dtype, b.dtype, W.dtype, logdet_w.dtype)
        ctx.set_materialize_grads(False)  # a loss without y must not cost a kernel pass over zeros
        return y, ld

    @staticmethod
    def backward(ctx, dy, dld):
        x, s, b, W, A = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx = ds = db = dW = dldw = None
        acc = A.dtype
        s, b, W = s.to(acc), b.to(acc), W.to(acc)
        # grad mode is on here only under create_graph=True (double backward): then A is rebuilt from the inputs and
        # the kernel's backward replaced by its torch twin, so autograd can differentiate this backward again
        differentiable = torch.is_grad_enabled()
        bwd = channel_affine_bwd_ref if differentiable else channel_affine_bwd
        with no_autocast(x):
            if differentiable:
                A = W * s[None, :]
            if dy is not None:
                dx, dA, dc = bwd(x, dy.contiguous(), A, ctx.backend)
                dA = torch.addr(dA, dc, b)  # c = A b adds dc b^T
            else:
                dA, dc = A.new_zeros(A.shape), A.new_zeros(A.shape[0])
            # d loss / d (log-determinant per pixel)
            g = (x.shape[2] * x.shape[3]) * (dld.sum().to(A.dtype) if dld is not None else A.new_zeros(()))
            if need[1]:
                ds = ((dA * W).sum(0) + g / s).to(ctx.dtypes[0])  # A = W diag(s); logdet has log|s|
            if need[2]:
                db = (A.t() @ dc).to(ctx.dtypes[1])
            if need[3]:
                dW = (dA * s[None, :]).to(ctx.dtypes[2])
            if need[4]:
                dldw = g.to(ctx.dtypes[3])
        return (dx if need[0] else None), ds, db, dW, dldw, None


def actnorm_invconv_inverse(y: Tensor, s: Tensor, b: Tensor, W: Tensor, logdet_w: Optional[Tensor] = None,
                            W_inv: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Inverse of actnorm_invconv: x = diag(1/s) W^-1 y - b. Returns (x, logdet (B,)) with logdet = -forward's.

    W_inv: W^-1 if already known; else inverted in float64 (stable for ill-conditioned W).
    """
    _check("actnorm_invconv_inverse", y, s, b, W)
    if W_inv is None:
        W_inv = torch.linalg.inv(W.double()).to(W.dtype)
    A_inv = W_inv / s[:, None]
    if pick_backend(y, max_channels) == "torch":
        x = channel_affine_ref(y, A_inv) - b.view(1, -1, 1, 1).to(y.dtype)
    else:
        x = channel_affine(y, A_inv, -b)
    return x, -_logdet(y, s, W, logdet_w)
