"""actnorm_invconv: ActNorm followed by the invertible 1x1 conv, as one per-pixel affine map.

    actnorm_invconv(x, s, b, W) = W diag(s) (x + b)   per pixel,   logdet = H*W*(sum log|s| + log|det W|)

On the GPU backends it runs channel_affine's kernels (ops/channel_affine.py) with A = W diag(s) and c = A b formed in
torch ops; on the CPU its own kernels (csrc/cpu/actnorm_invconv.cpp) form A, c, the logdet and the parameter gradients
around channel_affine's, one call per pass (at Glow-step sizes a dozen small torch ops cost as much as the pass).
Either way a Glow step's linear part is one read and one write of x. Inverse: x = A^-1 y - b. An eager CPU call
(forward, its autograd node, backward) enters through flowkern._C_eager when that is built (ops/eager.py).

    actnorm_invconv_ref       the unfused pure-torch reference
    actnorm_invconv           the public op (forward), actnorm_invconv_inverse its inverse,
                              actnorm_invconv_backward its backward from the input (for reversible backprop)
    ActNormInvConvFunction    eager training path: kernel, algebra and gradients in one autograd node

The LU parametrisation (Glow's LU 1x1 conv, W = P L U with L, U and log|det W| = sum log_s from learned factors) has
the same op from the layers' own parameters, so that a training step forms s = exp(log_scale) and W nowhere else:
actnorm_invconv_lu (forward), actnorm_invconv_lu_backward (from the input), actnorm_invconv_lu_ref (reference) and
lu_weight (W with its gradient in closed form, for the GPU backends and InvConv1x1LU). On the CPU the kernel forms
everything, gradients included; on the GPU backends s and W are formed in torch ops around actnorm_invconv.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from flowkern.ops import eager
from flowkern.ops.channel_affine import (channel_affine, channel_affine_bwd, channel_affine_bwd_ref, channel_affine_fwd,
                                         channel_affine_fwd_op, channel_affine_ref, max_channels, pixel_chunk)
from flowkern.ops.checks import acc_dtype, check_nchw, check_same_device, check_shape, needs_grad, no_autocast
from flowkern.ops.dispatch import launch, pick_backend


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
    if logdet_w is not None and (m := eager.fast(x)) is not None:
        try:
            if (out := m.actnorm_invconv(x, s, b, W, logdet_w)) is not None:
                return out
        except (RuntimeError, TypeError):
            pass  # malformed: the checks below name the problem
    _check("actnorm_invconv", x, s, b, W)
    backend = pick_backend(x, max_channels, inputs=(x, s, b, W, logdet_w))
    if backend == "torch":
        return actnorm_invconv_ref(x, s, b, W, logdet_w)
    if logdet_w is None:  # float64 slogdet: stable for ill-conditioned W
        logdet_w = torch.linalg.slogdet(W.double())[1]
    if backend == "cpu" and (m := eager.module(x)) is not None and \
            (out := m.actnorm_invconv(x.contiguous(), s, b, W, logdet_w)) is not None:
        return out
    if needs_grad(x, s, b, W, logdet_w) and not torch.compiler.is_compiling():
        return ActNormInvConvFunction.apply(x.contiguous(), s, b, W, logdet_w, backend)
    if backend == "cpu" and not torch.compiler.is_compiling():
        return _cpu_fwd(x.contiguous(), s, b, W, logdet_w)
    acc = acc_dtype(x.dtype)  # torch.compile traces these ops and the registered channel_affine op
    with no_autocast(x):  # the flow's algebra stays fp32 under autocast
        A = (W.to(acc) * s.to(acc)).contiguous()  # W diag(s); the product keeps W's layout, the kernel needs rows
        y = channel_affine_fwd_op(x.contiguous(), A, (A @ b.to(acc)).contiguous(), backend)
    return y, _logdet(x, s, W, logdet_w)


def _acc(t: Tensor, acc: torch.dtype) -> Tensor:
    return t if t.dtype == acc and t.is_contiguous() else t.to(acc).contiguous()


# The CPU kernels' passes. Their callers run without autograd recording (no grad needed, inside an autograd.Function,
# or on detached parameters): the parameters go to the kernel as they are, or converted, never detached (an op each).
def _cpu_fwd(x: Tensor, s: Tensor, b: Tensor, W: Tensor, logdet_w: Tensor) -> Tuple[Tensor, Tensor]:
    """The CPU kernel's forward: the parameter algebra and the pass over x in one call
    (csrc/cpu/actnorm_invconv.cpp)."""
    B, C, H, W_ = x.shape
    acc = acc_dtype(x.dtype)
    if not x.numel():
        return torch.empty_like(x), _logdet(x, s, W, logdet_w)
    y, ld = torch.empty_like(x), x.new_empty(B, dtype=acc)
    launch("actnorm_invconv_fwd", "cpu", x=x, s=_acc(s, acc), b=_acc(b, acc), W=_acc(W, acc),
           ldw=_acc(logdet_w, acc), y=y, ld=ld, B=B, C=C, HW=H * W_)
    return y, ld


def _cpu_bwd(x: Tensor, dy: Optional[Tensor], dld: Optional[Tensor], s: Tensor, b: Tensor, W: Tensor):
    """The CPU kernel's backward from the input: (dx or None, ds, db, dW, dlogdet_w), see _backward."""
    B, C, H, W_ = x.shape
    acc = acc_dtype(x.dtype)
    # the kernel accumulates into ds, db, dW, dlogdet_w
    ds, db, dW, g = x.new_zeros(C, dtype=acc), x.new_zeros(C, dtype=acc), x.new_zeros(C, C, dtype=acc), \
        x.new_zeros((), dtype=acc)
    dx = None if dy is None else torch.empty_like(x)
    launch("actnorm_invconv_bwd", "cpu", x=x, s=_acc(s, acc), b=_acc(b, acc), W=_acc(W, acc), dy=dy,
           dld=None if dld is None else _acc(dld, acc), dx=dx, ds=ds, db=db, dW=dW, dldw=g, B=B, C=C, HW=H * W_,
           chunk=pixel_chunk("cpu", B, H * W_))
    return dx, ds, db, dW, g


class ActNormInvConvFunction(torch.autograd.Function):
    """Eager actnorm_invconv in one autograd node: the kernel, A = W diag(s), c = A b and the logdet forward, and
    their gradients in closed form in backward. At Glow sizes on CPU the per-call work around the kernel is as large
    as the kernel itself; one node keeps it smaller."""

    @staticmethod
    def forward(ctx, x, s, b, W, logdet_w, backend):
        acc = acc_dtype(x.dtype)
        if backend == "cpu":  # algebra and pass in one kernel call
            y, ld = _cpu_fwd(x, s, b, W, logdet_w)
            A = None
        else:
            with no_autocast(x):  # the flow's algebra stays in fp32 (or fp64) under autocast
                s_, b_, W_ = s.to(acc), b.to(acc), W.to(acc)
                A = (W_ * s_).contiguous()  # W diag(s); the product keeps W's layout, the kernel needs rows
                y = channel_affine_fwd(x, A, A @ b_, backend)
                ld = _logdet(x, s_, W_, logdet_w)
        ctx.save_for_backward(x, s, b, W, A)
        ctx.backend = backend
        ctx.dtypes = (s.dtype, b.dtype, W.dtype, logdet_w.dtype)
        ctx.set_materialize_grads(False)  # a loss without y must not cost a kernel pass over zeros
        return y, ld

    @staticmethod
    def backward(ctx, dy, dld):
        x, s, b, W, A = ctx.saved_tensors
        # grad mode is on here only under create_graph=True (double backward): then A is rebuilt from the inputs and
        # the kernel's backward replaced by its torch twin, so autograd can differentiate this backward again
        differentiable = torch.is_grad_enabled()
        grads = _backward(x, dy, dld, s, b, W, None if differentiable else A, ctx.backend, differentiable)
        return grads[:1] + tuple(g.to(dt) if g is not None else None for g, dt in zip(grads[1:], ctx.dtypes)) + (None,)


def _backward(x, dy, dld, s, b, W, A, backend, differentiable=False):
    """(dx, ds, db, dW, dlogdet_w) of y = W diag(s) (x + b) and logdet = H*W*(sum log|s| + log|det W|) from x, the
    gradients dy and dld (either may be None), in closed form around the channel_affine backward. A = W diag(s) if
    already formed. differentiable: torch ops only, so that autograd can differentiate the result again."""
    if backend == "cpu" and not differentiable and x.numel():
        return _cpu_bwd(x, None if dy is None else dy.contiguous(), dld, s, b, W)
    acc = acc_dtype(x.dtype)
    s, b, W = s.to(acc), b.to(acc), W.to(acc)
    with no_autocast(x):
        if A is None:  # the product keeps W's layout (a QR factor is column-major); the kernels read rows
            A = (W * s).contiguous()
        if dy is not None:
            bwd = channel_affine_bwd_ref if differentiable or backend == "torch" else channel_affine_bwd
            dx, dA, dc = bwd(x, dy.contiguous(), A, backend)
            dA = torch.addr(dA, dc, b)  # c = A b adds dc b^T
        else:
            dx, dA, dc = None, A.new_zeros(A.shape), A.new_zeros(A.shape[0])
        g = (x.shape[2] * x.shape[3]) * (dld.sum().to(acc) if dld is not None else A.new_zeros(()))  # per pixel
        ds = (dA * W).sum(0) + g / s  # A = W diag(s); the logdet has log|s|
        db = A.t() @ dc
        dW = dA * s
    return dx, ds, db, dW, g


def actnorm_invconv_backward(x: Tensor, dy: Tensor, dlogdet: Optional[Tensor], s: Tensor, b: Tensor,
                             W: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The backward of actnorm_invconv from its input x, without running its forward: (dx, ds, db, dW, dlogdet_w)
    for upstream gradients dy of y and dlogdet (B,) of the logdet. Reversible backprop rebuilds x by inversion and
    needs only this. Not differentiable again."""
    _check("actnorm_invconv_backward", x, s, b, W)
    backend = pick_backend(x, max_channels)
    return _backward(x.contiguous(), dy, dlogdet, s.detach(), b.detach(), W.detach(), None, backend)


def actnorm_invconv_inverse(y: Tensor, s: Tensor, b: Tensor, W: Tensor, logdet_w: Optional[Tensor] = None,
                            W_inv: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Inverse of actnorm_invconv: x = diag(1/s) W^-1 y - b. Returns (x, logdet (B,)) with logdet = -forward's.

    W_inv: W^-1 if already known; else inverted in float64 (stable for ill-conditioned W).
    """
    _check("actnorm_invconv_inverse", y, s, b, W)
    if W_inv is None:
        W_inv = torch.linalg.inv(W.double()).to(W.dtype)
    A_inv = W_inv / s[:, None]
    if pick_backend(y, max_channels, inputs=(y, s, b, W, logdet_w, W_inv)) == "torch":
        x = channel_affine_ref(y, A_inv) - b.view(1, -1, 1, 1).to(y.dtype)
    else:
        x = channel_affine(y, A_inv, -b)
    return x, -_logdet(y, s, W, logdet_w)


# ---------------------------------------------------------------------------------------------- LU parametrisation
def _lu_factors(lower: Tensor, upper: Tensor, log_s: Tensor, sign: Tensor):
    """(L, U, d): L = I + strict lower part of lower, U = strict upper part of upper + diag(d), d = sign e^log_s."""
    d = sign * torch.exp(log_s)
    L = torch.tril(lower, -1)
    L.diagonal().add_(1.0)  # unit diagonal, in place on tril's fresh output: no identity matrix per call
    return L, torch.triu(upper, 1) + torch.diag(d), d


class LUWeight(torch.autograd.Function):
    """W = P L U (see _lu_factors) as one autograd node with its gradient in closed form: autograd's generic path
    through the masks, the exp and two matrix products dispatches about twice the ops, each a host-side cost of its
    own (kernel launches on a GPU).
    dW -> M = P^T dW:  d lower = strict lower part of M U^T,  dU = L^T M:  d upper = its strict upper part,
    d log_s = diag(dU) * sign e^log_s. The masked-out entries of `lower` and `upper` get zero gradient.
    Under create_graph=True the backward forms L, U and d again from the factors, so that second derivatives see
    W's dependence on them (the ones saved in forward carry no graph)."""

    @staticmethod
    def forward(ctx, lower, upper, log_s, P, sign):
        L, U, d = _lu_factors(lower, upper, log_s, sign)
        ctx.save_for_backward(lower, upper, log_s, P, sign, L, U, d)
        return P @ (L @ U)

    @staticmethod
    def backward(ctx, dW):
        lower, upper, log_s, P, sign, L, U, d = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: L, U, d as functions of the factors
            L, U, d = _lu_factors(lower, upper, log_s, sign)
        M = P.t() @ dW
        dU = L.t() @ M
        return torch.tril(M @ U.t(), -1), torch.triu(dU, 1), torch.diagonal(dU) * d, None, None


def lu_weight(lower: Tensor, upper: Tensor, log_s: Tensor, P: Tensor, sign: Tensor) -> Tensor:
    """The LU conv's weight W = P (I + strict lower part of lower) (strict upper part of upper + diag(sign e^log_s))."""
    return LUWeight.apply(lower, upper, log_s, P, sign)


def actnorm_invconv_lu_ref(x: Tensor, log_scale: Tensor, bias: Tensor, lower: Tensor, upper: Tensor, log_s: Tensor,
                           P: Tensor, sign: Tensor) -> Tuple[Tensor, Tensor]:
    """The unfused reference of actnorm_invconv_lu, in plain torch ops (autograd differentiates it, twice too)."""
    C = lower.shape[0]
    L = torch.tril(lower, -1) + torch.eye(C, dtype=lower.dtype, device=lower.device)
    U = torch.triu(upper, 1) + torch.diag(sign.to(log_s.dtype) * log_s.exp())
    W = P.to(L.dtype) @ L @ U
    y, _ = actnorm_invconv_ref(x, log_scale.exp(), bias, W, log_s.sum())
    ld = (x.shape[2] * x.shape[3]) * (log_scale.sum() + log_s.sum())  # log|s| = log_scale exactly
    return y, ld.to(acc_dtype(x.dtype)).expand(x.shape[0])


_LU_NAMES = ("log_scale", "bias", "lower", "upper", "log_s", "P", "sign")


def _check_lu(op: str, x: Tensor, *params: Tensor) -> None:
    check_nchw(x, op)
    C = x.shape[1]
    for name, t in zip(_LU_NAMES, params):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        check_shape(op, name, t, (C, C) if name in ("lower", "upper", "P") else (C,), f" for x with {C} channels")
    check_same_device(op, x=x, **dict(zip(_LU_NAMES, params)))


def _lu_refused(op: str, P: Tensor) -> None:
    """After an LU-parametrised CPU kernel refused its arguments: its one refusal at valid sizes (code 2) is a P that
    is not a permutation matrix, reported as that."""
    ok = ((P == 0) | (P == 1)).all() and (P.sum(0) == 1).all() and (P.sum(1) == 1).all()
    if not ok:
        raise ValueError(f"{op}: P must be a permutation matrix (a single 1 in every row and column, zeros "
                         "elsewhere)") from None


def _lu_launch(op: str, kernel: str, **params) -> None:
    """launch() of an LU-parametrised CPU kernel, a refused P reported as that."""
    try:
        launch(kernel, "cpu", **params)
    except RuntimeError:
        _lu_refused(op, params["P"])
        raise


def _lu_kernel_params(acc, log_scale, lower, upper, log_s, P, sign) -> dict:
    return dict(log_scale=_acc(log_scale, acc), lower=_acc(lower, acc), upper=_acc(upper, acc),
                log_s=_acc(log_s, acc), sign=_acc(sign, acc), P=_acc(P, acc))


def _cpu_lu_fwd(x, log_scale, b, lower, upper, log_s, P, sign) -> Tuple[Tensor, Tensor]:
    """The CPU kernel's forward from the layers' parameters: s, W, A, c, the logdet and the pass in one call."""
    B, C, H, W_ = x.shape
    acc = acc_dtype(x.dtype)
    if not x.numel():
        return torch.empty_like(x), ((H * W_) * (log_scale.sum() + log_s.sum())).to(acc).expand(B)
    y, ld = torch.empty_like(x), x.new_empty(B, dtype=acc)
    lu = _lu_kernel_params(acc, log_scale, lower, upper, log_s, P, sign)
    _lu_launch("actnorm_invconv_lu", "actnorm_invconv_fwd", x=x, b=_acc(b, acc), y=y, ld=ld, B=B, C=C,
               HW=H * W_, **lu)
    return y, ld


def _cpu_lu_bwd(x, dy, dld, log_scale, b, lower, upper, log_s, P, sign):
    """The CPU kernel's backward from the input: (dx or None, dlog_scale, dbias, dlower, dupper, dlog_s)."""
    B, C, H, W_ = x.shape
    acc = acc_dtype(x.dtype)
    grads = [x.new_zeros(shape, dtype=acc) for shape in ((C,), (C,), (C, C), (C, C), (C,))]  # the kernel adds to them
    dx = None if dy is None else torch.empty_like(x)
    lu = _lu_kernel_params(acc, log_scale, lower, upper, log_s, P, sign)
    _lu_launch("actnorm_invconv_lu_backward", "actnorm_invconv_bwd", x=x, b=_acc(b, acc), dy=dy,
               dld=None if dld is None else _acc(dld, acc), dx=dx, dlog_scale=grads[0], db=grads[1],
               dlower=grads[2], dupper=grads[3], dlog_s=grads[4], B=B, C=C, HW=H * W_,
               chunk=pixel_chunk("cpu", B, H * W_), **lu)
    return (dx, *grads)


def lu_double_backward(x, params, dy, dld, wanted):
    """The LU node's gradients under create_graph=True: the reference differentiated on the saved inputs, so the
    returned gradients carry their own graph. wanted: which of x and the first five parameters need one."""
    ins = [x] + list(params[:5])
    y, ld = actnorm_invconv_lu_ref(x, *params)
    outs = [(o, g) for o, g in ((y, dy), (ld, dld)) if g is not None]
    got = iter(torch.autograd.grad([o for o, _ in outs], [t for t, w in zip(ins, wanted) if w],
                                   [g for _, g in outs], create_graph=True, allow_unused=True))
    return tuple(next(got) if w else None for w in wanted) + (None, None)


class ActNormInvConvLUFunction(torch.autograd.Function):
    """Eager actnorm_invconv_lu on the CPU in one autograd node: the kernel forms every derived tensor forward and
    every parameter gradient backward. Under create_graph=True (double backward) the reference is differentiated
    instead, on the saved inputs, so the returned gradients carry their own graph."""

    @staticmethod
    def forward(ctx, x, log_scale, b, lower, upper, log_s, P, sign):
        ctx.save_for_backward(x, log_scale, b, lower, upper, log_s, P, sign)
        ctx.set_materialize_grads(False)  # a loss without y must not cost a kernel pass over zeros
        return _cpu_lu_fwd(x, log_scale, b, lower, upper, log_s, P, sign)

    @staticmethod
    def backward(ctx, dy, dld):
        x, *params = ctx.saved_tensors
        wanted = ctx.needs_input_grad[:6]
        if torch.is_grad_enabled():
            return lu_double_backward(x, params, dy, dld, wanted)
        grads = _cpu_lu_bwd(x, None if dy is None else dy.contiguous(), dld, *params)
        return tuple(g.to(t.dtype) if w and g is not None else None
                     for g, t, w in zip(grads, [x] + params[:5], wanted)) + (None, None)


def actnorm_invconv_lu(x: Tensor, log_scale: Tensor, bias: Tensor, lower: Tensor, upper: Tensor, log_s: Tensor,
                       P: Tensor, sign: Tensor) -> Tuple[Tensor, Tensor]:
    """Fused ActNorm + LU-parametrised invertible 1x1 conv from the layers' parameters: y = W diag(s) (x + b) with
    s = exp(log_scale) and W = P L U, L = I + strict lower part of `lower`, U = strict upper part of `upper` +
    diag(sign e^log_s) (ActNorm2d's log_scale and bias, InvConv1x1LU's lower, upper, log_s, P and sign_s).
    Returns (y, logdet (B,)), logdet = H*W*(sum log_scale + sum log_s). P must be a permutation matrix."""
    params = (log_scale, bias, lower, upper, log_s, P, sign)
    if (m := eager.fast(x)) is not None:
        try:
            if (out := m.actnorm_invconv_lu(x, *params)) is not None:
                return out
        except (RuntimeError, TypeError):
            pass  # malformed (a shape, an argument's type, P): the checks below name the problem
    _check_lu("actnorm_invconv_lu", x, *params)
    backend = pick_backend(x, max_channels, inputs=(x, *params))
    if backend == "torch":
        with no_autocast(x):  # W must be exact for the inverse to match
            return actnorm_invconv_lu_ref(x, *params)
    if backend != "cpu" or torch.compiler.is_compiling():
        with no_autocast(x):
            W = lu_weight(lower, upper, log_s, P, sign)
            return actnorm_invconv(x, log_scale.exp(), bias, W, log_s.sum())
    if (m := eager.module(x)) is not None:
        try:
            out = m.actnorm_invconv_lu(x.contiguous(), *params)
        except RuntimeError:
            _lu_refused("actnorm_invconv_lu", P)
            raise
        if out is not None:
            return out
    if needs_grad(x, *params):
        return ActNormInvConvLUFunction.apply(x.contiguous(), *params)
    return _cpu_lu_fwd(x.contiguous(), *params)


def actnorm_invconv_lu_backward(x: Tensor, dy: Optional[Tensor], dlogdet: Optional[Tensor], log_scale: Tensor,
                                bias: Tensor, lower: Tensor, upper: Tensor, log_s: Tensor, P: Tensor,
                                sign: Tensor) -> Tuple[Optional[Tensor], Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The backward of actnorm_invconv_lu from its input x, without its forward (reversible backprop): (dx,
    dlog_scale, dbias, dlower, dupper, dlog_s) for upstream gradients dy of y and dlogdet (B,) of the logdet (either
    may be None). Gradients in the accumulation dtype. Not differentiable again."""
    params = (log_scale, bias, lower, upper, log_s, P, sign)
    _check_lu("actnorm_invconv_lu_backward", x, *params)
    backend = pick_backend(x, max_channels)
    if backend == "cpu" and x.numel():  # the kernel reads the parameters' data: nothing for autograd to record
        return _cpu_lu_bwd(x.contiguous(), None if dy is None else dy.contiguous(), dlogdet, *params)
    acc = acc_dtype(x.dtype)
    log_scale, bias, lower, upper, log_s, P, sign = (t.detach() for t in params)
    with torch.enable_grad():  # s and W through their own algebra, then autograd down to the factors
        factors = [t.to(acc).requires_grad_(True) for t in (log_scale, lower, upper, log_s)]
        s = factors[0].exp()
        W = lu_weight(factors[1], factors[2], factors[3], P.to(acc), sign.to(acc))
        ldw = factors[3].sum()
    dx, ds, db, dW, g = _backward(x.contiguous(), dy, dlogdet, s.detach(), bias, W.detach(), None, backend)
    dls, dl, du, dlogs = torch.autograd.grad([s, W, ldw], factors, [ds, dW, g])
    return dx, dls, db, dl, du, dlogs
