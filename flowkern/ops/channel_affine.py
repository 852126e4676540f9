"""ActNorm + invertible 1x1 convolution as one fused per-pixel affine map.

    actnorm_invconv(x, s, b, W) = W diag(s) (x + b)   per pixel,   logdet = H*W*(sum log|s| + log|det W|)

is computed as channel_affine(x, A, c) with A = W diag(s) and c = A b (the C x C algebra stays in torch, so
autograd gives ds, db, dW from the kernel's dA, dc). One read of x and one write of y per pass; the backward
reads x and dy once, writes dx once and reduces dA = sum dy x^T deterministically (per-chunk partials).
Inverse: x = A^-1 y - b.

Naming: channel_affine (fused op, dispatched) / channel_affine_ref (pure torch), and the same for
actnorm_invconv, actnorm_invconv_inverse.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from flowkern import _ext
from flowkern.ops import _common as K


# ---------------------------------------------------------------------------------------------- references
def channel_affine_ref(x: Tensor, A: Tensor, c: Optional[Tensor] = None) -> Tensor:
    """y[n, i, p] = c[i] + sum_j A[i, j] x[n, j, p]; x (B, C, H, W), A (C, C), c (C,) or None."""
    with K.no_autocast(x):  # flow math stays in x's precision, as in the kernels
        return F.conv2d(x, A.to(x.dtype)[:, :, None, None], None if c is None else c.to(x.dtype))


def actnorm_invconv_ref(x: Tensor, s: Tensor, b: Tensor, W: Tensor,
                        logdet_w: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """The unfused reference: ActNorm (x + b) * s, then the 1x1 conv W. Returns (y, logdet (B,))."""
    h = (x + b.view(1, -1, 1, 1)) * s.view(1, -1, 1, 1)
    with K.no_autocast(x):
        y = F.conv2d(h, W.to(h.dtype)[:, :, None, None])
    return y, _logdet(x, s, W, logdet_w)


def _logdet(x: Tensor, s: Tensor, W: Tensor, logdet_w: Optional[Tensor] = None) -> Tensor:
    if logdet_w is None:  # float64 slogdet: stable for ill-conditioned W
        logdet_w = torch.linalg.slogdet(W.double())[1]
    ld = (x.shape[2] * x.shape[3]) * (s.abs().log().sum() + logdet_w)
    acc = K.acc_dtype(x.dtype)
    return (ld if ld.dtype == acc else ld.to(acc)).expand(x.shape[0])


# ---------------------------------------------------------------------------------------------- custom ops
def _channel_affine_impl(x: Tensor, A: Tensor, c: Optional[Tensor], backend: str) -> Tensor:
    B, C, H, W = x.shape
    y = torch.empty_like(x)
    if y.numel() == 0:
        return y
    if backend == "cpu":
        rc = _ext._C.cpu.channel_affine_fwd(K.code(x.dtype), x.data_ptr(), A.data_ptr(), K.ptr(c), y.data_ptr(),
                                            B, C, H * W, K.threads())
        _ext.check(rc, "channel_affine_fwd", "cpu")
    elif backend == "cuda":
        with torch.cuda.device(x.device):
            rc = _ext._C.cuda.channel_affine_fwd(K.code(x.dtype), x.data_ptr(), A.data_ptr(), K.ptr(c),
                                                 y.data_ptr(), B, C, H * W, K.stream(x))
        _ext.check(rc, "channel_affine_fwd", "cuda")
    elif backend == "triton":
        from flowkern.ops.triton import channel_affine as tk
        with K.device_guard(x):
            y = tk.channel_affine_fwd(x, A, c)
    else:
        raise ValueError(f"channel_affine: no kernel for backend {backend!r}")
    return y


def _channel_affine_bwd_impl(x: Tensor, dy: Tensor, A: Tensor, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    B, C, H, W = x.shape
    acc = A.dtype
    dx = torch.empty_like(x)
    if x.numel() == 0:
        return dx, A.new_zeros(C, C), A.new_zeros(C)
    chunk = K.pixel_chunk(backend, B, H * W)
    nk = B * K.cdiv(H * W, chunk)
    if backend in ("cpu", "cuda"):
        dA_part = torch.empty(nk, C, C, dtype=acc, device=x.device)
        dc_part = torch.empty(nk, C, dtype=acc, device=x.device)
        args = (K.code(x.dtype), x.data_ptr(), dy.data_ptr(), A.data_ptr(), dx.data_ptr(), dA_part.data_ptr(),
                dc_part.data_ptr(), B, C, H * W, chunk)
        if backend == "cpu":
            _ext.check(_ext._C.cpu.channel_affine_bwd(*args, K.threads()), "channel_affine_bwd", "cpu")
        else:
            with torch.cuda.device(x.device):
                rc = _ext._C.cuda.channel_affine_bwd(*args, K.stream(x))
            _ext.check(rc, "channel_affine_bwd", "cuda")
    elif backend == "triton":
        from flowkern.ops.triton import channel_affine as tk
        with K.device_guard(x):
            dx, dA_part, dc_part = tk.channel_affine_bwd(x, dy, A, chunk)
    else:
        raise ValueError(f"channel_affine_bwd: no kernel for backend {backend!r}")
    # fixed-order sums of the per-chunk partials: deterministic
    return dx, dA_part.sum(0), dc_part.sum(0)


# Registered ops: what torch.compile sees (fake impls give shapes; the autograd formula calls the bwd op).
_channel_affine_op = torch.library.custom_op("flowkern::channel_affine", mutates_args=())(_channel_affine_impl)
_channel_affine_bwd_op = torch.library.custom_op("flowkern::channel_affine_bwd",
                                                 mutates_args=())(_channel_affine_bwd_impl)


@_channel_affine_op.register_fake
def _(x, A, c, backend):
    return torch.empty_like(x)


@_channel_affine_bwd_op.register_fake
def _(x, dy, A, backend):
    C = x.shape[1]
    return torch.empty_like(x), A.new_empty(C, C), A.new_empty(C)


def _backward(ctx, dy, bwd=_channel_affine_bwd_op):
    x, A = ctx.saved_tensors
    dx, dA, dc = bwd(x, dy.contiguous(), A, ctx.backend)
    return dx, dA, (dc if ctx.has_c else None), None


def _setup_context(ctx, inputs, output):
    x, A, c, backend = inputs
    ctx.save_for_backward(x, A)
    ctx.backend = backend
    ctx.has_c = c is not None


_channel_affine_op.register_autograd(_backward, setup_context=_setup_context)


class _ChannelAffineFn(torch.autograd.Function):
    """Eager fast path: the same impl and backward as the registered op, without custom_op's per-call dispatch
    cost (~50 us with autograd, measured on CPU), which would dominate at Glow-step sizes."""

    @staticmethod
    def forward(ctx, x, A, c, backend):
        _setup_context(ctx, (x, A, c, backend), None)
        return _channel_affine_impl(x, A, c, backend)

    @staticmethod
    def backward(ctx, dy):
        return _backward(ctx, dy, bwd=_channel_affine_bwd_impl)


def _run(x, A, c, backend):
    if torch.compiler.is_compiling():
        return _channel_affine_op(x, A, c, backend)
    if K.needs_grad(x, A, c):
        return _ChannelAffineFn.apply(x, A, c, backend)
    return _channel_affine_impl(x, A, c, backend)  # inference: no autograd node at all


# ---------------------------------------------------------------------------------------------- public API
def channel_affine(x: Tensor, A: Tensor, c: Optional[Tensor] = None) -> Tensor:
    """y[n, :, p] = A @ x[n, :, p] + c for every pixel p, on the selected backend.

    x: (B, C, H, W) float32/float64 (float16/bfloat16 on GPU backends); A: (C, C); c: (C,) or None.
    Non-contiguous or channels_last x is made NCHW-contiguous first; the result is NCHW-contiguous.
    Differentiable in x, A and c.
    """
    K.check_nchw(x, "channel_affine")
    C = x.shape[1]
    if A.shape != (C, C):
        raise ValueError(f"channel_affine: A must have shape ({C}, {C}) for x with {C} channels, "
                         f"got {tuple(A.shape)}")
    if c is not None and c.shape != (C,):
        raise ValueError(f"channel_affine: c must have shape ({C},), got {tuple(c.shape)}")
    K.check_same_device("channel_affine", x=x, A=A, c=c)
    backend = K.pick_backend(x, C)
    if backend == "torch":
        return channel_affine_ref(x, A, c)
    return _run_checked(x, A, c, backend)


def _run_checked(x, A, c, backend):
    """Launch on already-validated arguments: NCHW-contiguous data, matrices in the accumulation dtype."""
    acc = K.acc_dtype(x.dtype)
    return _run(x.contiguous(), A.to(acc).contiguous(), None if c is None else c.to(acc).contiguous(), backend)


def _check_params(op: str, x: Tensor, s: Tensor, b: Tensor, W: Tensor) -> None:
    K.check_nchw(x, op)
    C = x.shape[1]
    for name, t, shape in (("s", s, (C,)), ("b", b, (C,)), ("W", W, (C, C))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{op}: {name} must have shape {shape} for x with {C} channels, got {tuple(t.shape)}")
    K.check_same_device(op, x=x, s=s, b=b, W=W)


def actnorm_invconv(x: Tensor, s: Tensor, b: Tensor, W: Tensor,
                    logdet_w: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Fused ActNorm + invertible 1x1 conv: y = W diag(s) (x + b) per pixel.

    x (B, C, H, W); s, b (C,); W (C, C); logdet_w: log|det W| if already known (LU: sum log|diag U|),
    else computed with a float64 slogdet. Returns (y, logdet (B,)), logdet = H*W*(sum log|s| + log|det W|).
    """
    _check_params("actnorm_invconv", x, s, b, W)
    backend = K.pick_backend(x, x.shape[1])
    if backend == "torch":
        return actnorm_invconv_ref(x, s, b, W, logdet_w)
    if logdet_w is None:  # float64 slogdet: stable for ill-conditioned W
        logdet_w = torch.linalg.slogdet(W.double())[1]
    if K.needs_grad(x, s, b, W, logdet_w) and not torch.compiler.is_compiling():
        return _ActNormInvConvFn.apply(x.contiguous(), s, b, W, logdet_w, backend)
    A = W * s[None, :]
    with K.no_autocast(x):  # the flow's algebra stays fp32 under autocast
        c = A @ b
    return _run_checked(x, A, c, backend), _logdet(x, s, W, logdet_w)


class _ActNormInvConvFn(torch.autograd.Function):
    """Eager actnorm_invconv in one autograd node: the kernel, A = W diag(s), c = A b and the logdet forward, and
    their gradients in closed form in backward (torch.compile traces the separate ops instead). At Glow sizes on
    CPU the per-call work around the kernel is as large as the kernel itself; one node keeps it smaller."""

    @staticmethod
    def forward(ctx, x, s, b, W, logdet_w, backend):
        acc = K.acc_dtype(x.dtype)
        with K.no_autocast(x):  # the flow's algebra stays in fp32 (or fp64) under autocast
            s_, b_, W_ = s.to(acc), b.to(acc), W.to(acc)
            A = (W_ * s_[None, :]).contiguous()
            y = _channel_affine_impl(x, A, A @ b_, backend)
            ld = _logdet(x, s_, W_, logdet_w).contiguous()
        ctx.save_for_backward(x, s_, b_, W_, A)
        ctx.backend = backend
        ctx.dtypes = (s.dtype, b.dtype, W.dtype, logdet_w.dtype)
        ctx.set_materialize_grads(False)  # a loss without y must not cost a kernel pass over zeros
        return y, ld

    @staticmethod
    def backward(ctx, dy, dld):
        x, s, b, W, A = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx = ds = db = dW = dldw = None
        with K.no_autocast(x):
            if dy is not None:
                dx, dA, dc = _channel_affine_bwd_impl(x, dy.contiguous(), A, ctx.backend)
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
    _check_params("actnorm_invconv_inverse", y, s, b, W)
    if W_inv is None:
        W_inv = torch.linalg.inv(W.double()).to(W.dtype)
    A_inv = W_inv / s[:, None]
    backend = K.pick_backend(y, y.shape[1])
    if backend == "torch":
        x = channel_affine_ref(y, A_inv) - b.view(1, -1, 1, 1).to(y.dtype)
    else:
        x = _run_checked(y, A_inv, -b, backend)
    return x, -_logdet(y, s, W, logdet_w)
