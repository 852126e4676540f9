"""The Glow affine coupling's elementwise tail, fused, with its log-determinant.

Given x (B, C, H, W) and the coupling network's output h (computed from the passthrough half x_a = x[:, :Ca],
Ca = C // 2), with Cb = C - Ca:
    affine:   h = (h_t, h_s) along channels (Cb each),  s = sigmoid(h_s + 2)
              y = (x_a, (x_b + h_t) * s),   logdet[n] = sum log s   over sample n
    additive: h has Cb channels,  y = (x_a, x_b + h),  logdet = 0
The kernels read x and h once and write y once at channel offsets (no split/cat copies), reduce the logdet
per sample without atomics (bitwise reproducible), and the backward folds the logdet's gradient in.

Naming: affine_coupling / affine_coupling_inverse (dispatched) and *_ref (pure torch).
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from flowkern import _ext
from flowkern.ops import _common as K


# ---------------------------------------------------------------------------------------------- references
def _halves(t: Tensor, ca: int):
    return t[:, :ca], t[:, ca:]


def affine_coupling_ref(x: Tensor, h: Tensor, affine: bool = True) -> Tuple[Tensor, Tensor]:
    """Pure-torch reference of affine_coupling: returns (y, logdet (B,))."""
    ca = x.shape[1] // 2
    xa, xb = _halves(x, ca)
    h = h.to(x.dtype)
    acc = K.acc_dtype(x.dtype)
    if not affine:
        return torch.cat([xa, xb + h], 1), x.new_zeros(x.shape[0], dtype=acc)
    cb = xb.shape[1]
    ht, hs = h[:, :cb], h[:, cb:]
    u = hs + 2.0
    yb = (xb + ht) * torch.sigmoid(u)
    return torch.cat([xa, yb], 1), F.logsigmoid(u.to(acc)).sum(dim=(1, 2, 3))


def affine_coupling_inverse_ref(y: Tensor, h: Tensor, affine: bool = True) -> Tuple[Tensor, Tensor]:
    """Pure-torch reference of affine_coupling_inverse: returns (x, logdet (B,)) = (x, -forward logdet)."""
    ca = y.shape[1] // 2
    ya, yb = _halves(y, ca)
    h = h.to(y.dtype)
    acc = K.acc_dtype(y.dtype)
    if not affine:
        return torch.cat([ya, yb - h], 1), y.new_zeros(y.shape[0], dtype=acc)
    cb = yb.shape[1]
    ht, hs = h[:, :cb], h[:, cb:]
    u = hs + 2.0
    xb = yb * (1.0 + torch.exp(-u)) - ht  # yb / sigmoid(u)
    return torch.cat([ya, xb], 1), -F.logsigmoid(u.to(acc)).sum(dim=(1, 2, 3))


# ---------------------------------------------------------------------------------------------- custom ops
def _launch_fwd_or_inv(name: str, inp: Tensor, h: Tensor, affine: bool, backend: str):
    B, C, H, W = inp.shape
    ca = C // 2
    E = (C - ca) * H * W
    out = torch.empty_like(inp)
    acc = K.acc_dtype(inp.dtype)
    if inp.numel() == 0:
        return out, inp.new_zeros(B, dtype=acc)
    chunk = K.element_chunk(backend, B, E)
    if backend in ("cpu", "cuda"):
        ld_part = torch.empty(B, K.cdiv(E, chunk), dtype=acc, device=inp.device) if affine else None
        args = (K.code(inp.dtype), inp.data_ptr(), h.data_ptr(), out.data_ptr(), K.ptr(ld_part), B, C, ca, H * W,
                affine, chunk)
        if backend == "cpu":
            _ext.check(getattr(_ext._C.cpu, name)(*args, K.threads()), name, "cpu")
        else:
            with torch.cuda.device(inp.device):
                rc = getattr(_ext._C.cuda, name)(*args, K.stream(inp))
            _ext.check(rc, name, "cuda")
    elif backend == "triton":
        from flowkern.ops.triton import coupling as tk
        with K.device_guard(inp):
            out, ld_part = getattr(tk, name)(inp, h, ca, affine, chunk)
    else:
        raise ValueError(f"{name}: no kernel for backend {backend!r}")
    ld = ld_part.sum(1) if affine else inp.new_zeros(B, dtype=acc)
    return out, ld


def _coupling_fwd_impl(x: Tensor, h: Tensor, affine: bool, backend: str) -> Tuple[Tensor, Tensor]:
    return _launch_fwd_or_inv("coupling_fwd", x, h, affine, backend)


def _coupling_inv_impl(y: Tensor, h: Tensor, affine: bool, backend: str) -> Tuple[Tensor, Tensor]:
    x, ld = _launch_fwd_or_inv("coupling_inv", y, h, affine, backend)
    return x, -ld


def _coupling_bwd_impl(y: Tensor, h: Tensor, dy: Tensor, dld: Tensor, affine: bool,
                       backend: str) -> Tuple[Tensor, Tensor]:
    B, C, H, W = y.shape
    dx, dh = torch.empty_like(y), torch.empty_like(h)
    if y.numel() == 0:
        return dx, dh
    if backend in ("cpu", "cuda"):
        args = (K.code(y.dtype), y.data_ptr(), h.data_ptr(), dy.data_ptr(), dld.data_ptr(), dx.data_ptr(),
                dh.data_ptr(), B, C, C // 2, H * W, affine)
        if backend == "cpu":
            _ext.check(_ext._C.cpu.coupling_bwd(*args, K.threads()), "coupling_bwd", "cpu")
        else:
            with torch.cuda.device(y.device):
                rc = _ext._C.cuda.coupling_bwd(*args, K.stream(y))
            _ext.check(rc, "coupling_bwd", "cuda")
    elif backend == "triton":
        from flowkern.ops.triton import coupling as tk
        with K.device_guard(y):
            dx, dh = tk.coupling_bwd(y, h, dy, dld, C // 2, affine)
    else:
        raise ValueError(f"coupling_bwd: no kernel for backend {backend!r}")
    return dx, dh


# Registered ops: what torch.compile sees (fake impls give shapes; autograd formulas as below).
_coupling_fwd_op = torch.library.custom_op("flowkern::coupling_fwd", mutates_args=())(_coupling_fwd_impl)
_coupling_inv_op = torch.library.custom_op("flowkern::coupling_inv", mutates_args=())(_coupling_inv_impl)
_coupling_bwd_op = torch.library.custom_op("flowkern::coupling_bwd", mutates_args=())(_coupling_bwd_impl)


@_coupling_fwd_op.register_fake
def _(x, h, affine, backend):
    return torch.empty_like(x), x.new_empty(x.shape[0], dtype=K.acc_dtype(x.dtype))


@_coupling_inv_op.register_fake
def _(y, h, affine, backend):
    return torch.empty_like(y), y.new_empty(y.shape[0], dtype=K.acc_dtype(y.dtype))


@_coupling_bwd_op.register_fake
def _(y, h, dy, dld, affine, backend):
    return torch.empty_like(y), torch.empty_like(h)


def _fwd_setup(ctx, inputs, output):
    x, h, affine, backend = inputs
    ctx.save_for_backward(output[0], h)  # y and h suffice: (x_b + h_t) * s * (1 - s) = y_b * (1 - s)
    ctx.affine, ctx.backend = affine, backend


def _fwd_backward(ctx, dy, dld, bwd=_coupling_bwd_op):
    y, h = ctx.saved_tensors
    dx, dh = bwd(y, h, dy.contiguous(), dld.contiguous(), ctx.affine, ctx.backend)
    return dx, dh, None, None


def _inv_setup(ctx, inputs, output):
    y, h, affine, backend = inputs
    ctx.save_for_backward(output[0], h)
    ctx.affine = affine


def _inv_backward(ctx, dx, dld):
    # The inverse is used for sampling and reconstruction; its gradient is plain torch (not fused).
    x, h = ctx.saved_tensors
    ca = x.shape[1] // 2
    xa_grad, xb_grad = dx[:, :ca], dx[:, ca:]
    if not ctx.affine:
        return dx, -xb_grad, None, None
    cb = xb_grad.shape[1]
    ht, hs = h[:, :cb], h[:, cb:]
    s = torch.sigmoid(hs + 2.0)
    t = x[:, ca:] + ht  # = y_b / s
    dy = torch.cat([xa_grad, xb_grad / s], 1)
    dhs = -(1.0 - s) * (xb_grad * t + dld.view(-1, 1, 1, 1).to(t.dtype))
    return dy, torch.cat([-xb_grad, dhs], 1), None, None


_coupling_fwd_op.register_autograd(_fwd_backward, setup_context=_fwd_setup)
_coupling_inv_op.register_autograd(_inv_backward, setup_context=_inv_setup)


class _CouplingFwdFn(torch.autograd.Function):
    """Eager fast path: same impl and backward as the registered op, without custom_op's dispatch cost."""

    @staticmethod
    def forward(ctx, x, h, affine, backend):
        out = _coupling_fwd_impl(x, h, affine, backend)
        _fwd_setup(ctx, (x, h, affine, backend), out)
        return out

    @staticmethod
    def backward(ctx, dy, dld):
        return _fwd_backward(ctx, dy, dld, bwd=_coupling_bwd_impl)


class _CouplingInvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, h, affine, backend):
        out = _coupling_inv_impl(y, h, affine, backend)
        _inv_setup(ctx, (y, h, affine, backend), out)
        return out

    @staticmethod
    def backward(ctx, dx, dld):
        return _inv_backward(ctx, dx, dld)


def _run(fn, op, x, h, affine, backend):
    if torch.compiler.is_compiling():
        return op(x, h, affine, backend)
    if K.needs_grad(x, h):
        return fn.apply(x, h, affine, backend)
    return (_coupling_fwd_impl if fn is _CouplingFwdFn else _coupling_inv_impl)(x, h, affine, backend)


# ---------------------------------------------------------------------------------------------- public API
def _check(op: str, x: Tensor, h: Tensor, affine: bool) -> None:
    K.check_nchw(x, op)
    K.check_nchw(h, op, "h")
    B, C, H, W = x.shape
    if C < 2:
        raise ValueError(f"{op}: a coupling needs at least 2 channels, got {C}")
    cb = C - C // 2
    want = 2 * cb if affine else cb
    if h.shape != (B, want, H, W):
        raise ValueError(f"{op}: h must have shape {(B, want, H, W)} for x of shape {tuple(x.shape)} "
                         f"({'affine' if affine else 'additive'}: {want} = {'2*' if affine else ''}(C - C//2) "
                         f"channels), got {tuple(h.shape)}")
    K.check_same_device(op, x=x, h=h)


def affine_coupling(x: Tensor, h: Tensor, affine: bool = True) -> Tuple[Tensor, Tensor]:
    """Fused coupling forward. x (B, C, H, W); h (B, 2*(C - C//2) or C - C//2, H, W) from the coupling network
    applied to x[:, :C//2]. Returns (y, logdet (B,)); h is cast to x's dtype (autocast may give a bf16 h)."""
    _check("affine_coupling", x, h, affine)
    h = h.to(x.dtype)
    backend = K.pick_backend(x, x.shape[1])
    if backend == "torch":
        return affine_coupling_ref(x, h, affine)
    return _run(_CouplingFwdFn, _coupling_fwd_op, x.contiguous(), h.contiguous(), affine, backend)


def affine_coupling_inverse(y: Tensor, h: Tensor, affine: bool = True) -> Tuple[Tensor, Tensor]:
    """Fused coupling inverse: x_b = y_b / s - h_t (additive: y_b - h). h must be computed from y[:, :C//2]
    (equal to x[:, :C//2]). Returns (x, logdet (B,)) with logdet = -sum log s."""
    _check("affine_coupling_inverse", y, h, affine)
    h = h.to(y.dtype)
    backend = K.pick_backend(y, y.shape[1])
    if backend == "torch":
        return affine_coupling_inverse_ref(y, h, affine)
    return _run(_CouplingInvFn, _coupling_inv_op, y.contiguous(), h.contiguous(), affine, backend)
