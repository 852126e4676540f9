"""affine_coupling: the Glow coupling's elementwise tail, fused, with its log-determinant.

Given x (B, C, H, W) and the coupling network's output h (computed from the passthrough half x_a = x[:, :Ca],
Ca = C // 2), with Cb = C - Ca:
    affine:   h = (h_t, h_s) along channels (Cb each),  s = sigmoid(h_s + 2)  (scale="sigmoid", Glow's)
                                                        s = exp(h_s)          (scale="exp": h_s is the log-scale,
                                                                               e.g. a tanh-clamped one)
              y = (x_a, (x_b + h_t) * s),   logdet[n] = sum log s   over sample n
    additive: h has Cb channels,  y = (x_a, x_b + h),  logdet = 0
The kernels read x and h once and write y once at channel offsets (no split/cat copies), reduce the logdet per sample
without atomics (bitwise reproducible), and the backward folds the logdet's gradient in.

    affine_coupling_ref / affine_coupling_inverse_ref    the pure-torch references
    affine_coupling_fwd / _inv / _bwd                    kernel passes (registered as flowkern::affine_coupling_*)
    affine_coupling_bwd_ref                              the backward in torch ops, for double backward
    affine_coupling / affine_coupling_inverse            the public ops: checks, backend choice, autograd (an eager
                                                         CPU forward goes to flowkern._C_eager when built)
    affine_coupling_backward                             the backward from the output (for reversible backprop)
Kernels: csrc/cpu/affine_coupling.cpp, csrc/cuda/affine_coupling.cu, flowkern/ops/triton/affine_coupling.py.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from flowkern import _ext
from flowkern.ops import eager
from flowkern.ops.checks import acc_dtype, cdiv, check_nchw, check_same_device, round_up
from flowkern.ops.dispatch import FusedOp, launch, pick_backend


SCALES = ("sigmoid", "exp")


def _split(t: Tensor, h: Tensor, affine: bool, scale: str):
    """(t_a, t_b, h_t, u or None) for t = x or y: s = sigmoid(u), u = h_s + 2, or s = exp(u), u = h_s."""
    ca = t.shape[1] // 2
    cb = t.shape[1] - ca
    h = h.to(t.dtype)
    return t[:, :ca], t[:, ca:], h[:, :cb], (None if not affine else h[:, cb:] + 2.0 if scale == "sigmoid" else
                                             h[:, cb:])


def _scale(u: Tensor, scale: str) -> Tensor:
    return torch.sigmoid(u) if scale == "sigmoid" else torch.exp(u)


def _inverse_scale(u: Tensor, scale: str) -> Tensor:
    return 1.0 + torch.exp(-u) if scale == "sigmoid" else torch.exp(-u)  # 1 / sigmoid(u), 1 / exp(u)


def _dlog_scale(s: Tensor, scale: str):
    """d(log s)/du."""
    return 1.0 - s if scale == "sigmoid" else 1.0


def _ref_logdet(u: Optional[Tensor], t: Tensor, scale: str) -> Tensor:
    acc = acc_dtype(t.dtype)
    if u is None:
        return t.new_zeros(t.shape[0], dtype=acc)
    u = u.to(acc)
    return (F.logsigmoid(u) if scale == "sigmoid" else u).sum(dim=(1, 2, 3))


def affine_coupling_ref(x: Tensor, h: Tensor, affine: bool = True, scale: str = "sigmoid") -> Tuple[Tensor, Tensor]:
    """Pure-torch reference of affine_coupling: returns (y, logdet (B,))."""
    xa, xb, ht, u = _split(x, h, affine, scale)
    yb = xb + ht if u is None else (xb + ht) * _scale(u, scale)
    return torch.cat([xa, yb], 1), _ref_logdet(u, x, scale)


def affine_coupling_inverse_ref(y: Tensor, h: Tensor, affine: bool = True,
                                scale: str = "sigmoid") -> Tuple[Tensor, Tensor]:
    """Pure-torch reference of affine_coupling_inverse: returns (x, logdet (B,)) = (x, -forward logdet)."""
    ya, yb, ht, u = _split(y, h, affine, scale)
    xb = yb - ht if u is None else yb * _inverse_scale(u, scale) - ht
    return torch.cat([ya, xb], 1), -_ref_logdet(u, y, scale)


def element_chunk(backend: str, B: int, E: int) -> int:
    """Elements per logdet partial. A function of the shape only, so the reduction order (and hence the result, bit
    for bit) never depends on the thread count or timing."""
    if backend == "cpu":
        return _ext._C.cpu.coupling_chunk  # csrc/kernels.h: kCpuCouplingChunk
    return max(1024, round_up(cdiv(B * E, 1024), 1024))


def _fwd_or_inv(kernel: str, x: Tensor, y: Tensor, h: Tensor, affine: bool, scale: str, backend: str) -> Tensor:
    """Launch the forward (x -> y) or inverse (y -> x) kernel; returns the per-sample sum of log s."""
    B, C, H, W = x.shape
    ca = C // 2
    E = (C - ca) * H * W
    if not x.numel():
        return x.new_zeros(B, dtype=acc_dtype(x.dtype))
    chunk = element_chunk(backend, B, E)  # the kernels' work split too, additive or not
    if not affine:
        launch(kernel, backend, x=x, y=y, h=h, ld_part=None, B=B, C=C, Ca=ca, HW=H * W, chunk=chunk, affine=False,
               exp_scale=False)
        return x.new_zeros(B, dtype=acc_dtype(x.dtype))
    if backend == "cpu":  # the kernel sums each sample's partials itself, in chunk order: no reduction op after it
        ld = x.new_empty(B, dtype=acc_dtype(x.dtype))
        launch(kernel, backend, x=x, y=y, h=h, ld=ld, B=B, C=C, Ca=ca, HW=H * W, chunk=chunk, affine=True,
               exp_scale=scale == "exp")
        return ld
    ld_part = x.new_empty(B, cdiv(E, chunk), dtype=acc_dtype(x.dtype))
    launch(kernel, backend, x=x, y=y, h=h, ld_part=ld_part, B=B, C=C, Ca=ca, HW=H * W, chunk=chunk, affine=True,
           exp_scale=scale == "exp")
    return ld_part.sum(1)


def affine_coupling_fwd(x: Tensor, h: Tensor, affine: bool, scale: str, backend: str) -> Tuple[Tensor, Tensor]:
    y = torch.empty_like(x)
    return y, _fwd_or_inv("affine_coupling_fwd", x, y, h, affine, scale, backend)


def affine_coupling_inv(y: Tensor, h: Tensor, affine: bool, scale: str, backend: str) -> Tuple[Tensor, Tensor]:
    x = torch.empty_like(y)
    return x, -_fwd_or_inv("affine_coupling_inv", x, y, h, affine, scale, backend)


def affine_coupling_bwd(y: Tensor, h: Tensor, dy: Tensor, dld: Tensor, affine: bool, scale: str,
                        backend: str) -> Tuple[Tensor, Tensor]:
    """(dx, dh) from the forward's output y, h, and the gradients of y and of the logdet."""
    B, C, H, W = y.shape
    dx, dh = torch.empty_like(y), torch.empty_like(h)
    if y.numel():
        launch("affine_coupling_bwd", backend, y=y, h=h, dy=dy, dld=dld, dx=dx, dh=dh, B=B, C=C, Ca=C // 2,
               HW=H * W, affine=affine, exp_scale=scale == "exp")
    return dx, dh


def affine_coupling_bwd_ref(y: Tensor, h: Tensor, dy: Tensor, dld: Tensor, affine: bool, scale: str = "sigmoid",
                            backend: str = "torch") -> Tuple[Tensor, Tensor]:
    """affine_coupling_bwd in differentiable torch ops (for double backward)."""
    dya, dyb, _, u = _split(dy, h, affine, scale)
    if u is None:
        return dy.clone(), dyb  # dx is the caller's to modify
    s = _scale(u, scale)
    g = dyb * s
    dhs = (dyb * y[:, y.shape[1] // 2:] + dld.view(-1, 1, 1, 1).to(s.dtype)) * _dlog_scale(s, scale)
    return torch.cat([dya, g], 1), torch.cat([g, dhs], 1)


def _fwd_setup_context(ctx, inputs, output):
    x, h, affine, scale, backend = inputs
    ctx.save_for_backward(output[0], h)  # y and h suffice: d y_b / d u = (x_b + h_t) ds/du = y_b d(log s)/du
    ctx.affine, ctx.scale, ctx.backend = affine, scale, backend


def _fwd_backward(ctx, dy, dld, bwd):
    y, h = ctx.saved_tensors
    dx, dh = bwd(y, h, dy.contiguous(), dld.contiguous(), ctx.affine, ctx.scale, ctx.backend)
    return dx, dh, None, None, None


def _inv_setup_context(ctx, inputs, output):
    y, h, affine, scale, backend = inputs
    ctx.save_for_backward(output[0], h)
    ctx.affine, ctx.scale = affine, scale


def _inv_backward(ctx, dx, dld, bwd=None):
    # The inverse serves sampling and reconstruction; its gradient is plain torch (not fused).
    x, h = ctx.saved_tensors
    xa_grad, xb_grad = dx[:, :x.shape[1] // 2], dx[:, x.shape[1] // 2:]
    if not ctx.affine:
        return dx, -xb_grad, None, None, None
    _, xb, ht, u = _split(x, h, True, ctx.scale)
    s = _scale(u, ctx.scale)
    dy = torch.cat([xa_grad, xb_grad / s], 1)
    # x_b = y_b / s - h_t: d x_b / d u = -(x_b + h_t) d(log s)/du; the inverse's logdet is -sum log s
    dhs = -_dlog_scale(s, ctx.scale) * (xb_grad * (xb + ht) + dld.view(-1, 1, 1, 1).to(s.dtype))
    return dy, torch.cat([-xb_grad, dhs], 1), None, None, None


affine_coupling_bwd_op = FusedOp(affine_coupling_bwd, reference=affine_coupling_bwd_ref)
affine_coupling_fwd_op = FusedOp(affine_coupling_fwd, _fwd_setup_context, _fwd_backward, bwd=affine_coupling_bwd_op)
affine_coupling_inv_op = FusedOp(affine_coupling_inv, _inv_setup_context, _inv_backward)


def _check(op: str, x: Tensor, h: Tensor, affine: bool, scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(f"{op}: scale must be one of {SCALES}, got {scale!r}")
    check_nchw(x, op)
    check_nchw(h, op, "h")
    B, C, H, W = x.shape
    if C < 2:
        raise ValueError(f"{op}: a coupling needs at least 2 channels, got {C}")
    cb = C - C // 2
    want = 2 * cb if affine else cb
    if h.shape != (B, want, H, W):
        raise ValueError(f"{op}: h must have shape {(B, want, H, W)} for x of shape {tuple(x.shape)} "
                         f"({'affine' if affine else 'additive'}: {want} = {'2*' if affine else ''}(C - C//2) "
                         f"channels), got {tuple(h.shape)}")
    check_same_device(op, x=x, h=h)


def _run(op: str, fused: FusedOp, ref, t: Tensor, h: Tensor, affine: bool, scale: str) -> Tuple[Tensor, Tensor]:
    _check(op, t, h, affine, scale)
    h = h.to(t.dtype)  # autocast may give a bf16 h
    backend = pick_backend(t, inputs=(t, h))
    if backend == "torch":
        return ref(t, h, affine, scale)
    if fused is affine_coupling_fwd_op and backend == "cpu" and (m := eager.module(t)) is not None:
        if (out := m.affine_coupling(t.contiguous(), h.contiguous(), affine, scale)) is not None:
            return out
    return fused(t.contiguous(), h.contiguous(), affine, scale, backend)


def affine_coupling(x: Tensor, h: Tensor, affine: bool = True, scale: str = "sigmoid") -> Tuple[Tensor, Tensor]:
    """Fused coupling forward. x (B, C, H, W); h (B, 2*(C - C//2) or C - C//2, H, W) from the coupling network
    applied to x[:, :C//2]. scale: "sigmoid" (s = sigmoid(h_s + 2), Glow's) or "exp" (s = exp(h_s): h_s is the
    log-scale; bound it, e.g. with a tanh clamp, since nothing here does). Returns (y, logdet (B,)); h is cast to x's
    dtype."""
    if (m := eager.fast(x)) is not None:
        try:
            if (out := m.affine_coupling(x, h, affine, scale)) is not None:
                return out
        except (RuntimeError, TypeError):
            pass  # malformed: _run's checks name the problem
    return _run("affine_coupling", affine_coupling_fwd_op, affine_coupling_ref, x, h, affine, scale)


def affine_coupling_backward(y: Tensor, h: Tensor, dy: Tensor, dlogdet: Tensor, affine: bool = True,
                             scale: str = "sigmoid") -> Tuple[Tensor, Tensor]:
    """The backward of affine_coupling from its output y, without running its forward: (dx, dh) for upstream
    gradients dy of y and dlogdet (B,) of the logdet (dh in h's dtype). Reversible backprop has y, not x, and needs
    only this. Not differentiable again."""
    _check("affine_coupling_backward", y, h, affine, scale)
    hy = h.detach().to(y.dtype)
    dld = dlogdet.detach().to(acc_dtype(y.dtype))
    backend = pick_backend(y)
    if backend == "torch":
        dx, dh = affine_coupling_bwd_ref(y.detach(), hy, dy, dld, affine, scale)
    else:
        dx, dh = affine_coupling_bwd(y.contiguous(), hy.contiguous(), dy.contiguous(), dld.contiguous(), affine,
                                     scale, backend)
    return dx, dh.to(h.dtype)


def affine_coupling_inverse(y: Tensor, h: Tensor, affine: bool = True,
                            scale: str = "sigmoid") -> Tuple[Tensor, Tensor]:
    """Fused coupling inverse: x_b = y_b / s - h_t (additive: y_b - h). h must be computed from y[:, :C//2]
    (equal to x[:, :C//2]). Returns (x, logdet (B,)) with logdet = -sum log s."""
    return _run("affine_coupling_inverse", affine_coupling_inv_op, affine_coupling_inverse_ref, y, h, affine, scale)
