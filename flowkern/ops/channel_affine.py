"""channel_affine: y = A x + c over the channels of every pixel, the fused form of ActNorm + invertible 1x1 conv.

One read of x and one write of y per pass, the C x C matrix held on chip. The backward reads x and dy once, writes dx
once, and reduces dA = sum dy x^T and dc = sum dy in the kernel, in two fixed-order stages (deterministic, no
atomics): partial sums over pixel ranges, then their sum.

    channel_affine_ref   the pure-torch reference (a 1x1 conv)
    channel_affine_fwd   kernel forward: allocates y, launches (registered as flowkern::channel_affine_fwd)
    channel_affine_bwd   kernel backward: dx, dA, dc (registered as flowkern::channel_affine_bwd); its twin in
                         torch ops, channel_affine_bwd_ref, serves double backward
    channel_affine       the public op: checks, backend choice, autograd
Kernels: csrc/cpu/channel_affine.cpp, csrc/cuda/channel_affine.cu, flowkern/ops/triton/channel_affine.py.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from flowkern import _ext
from flowkern.ops.checks import acc_dtype, cdiv, check_nchw, check_same_device, check_shape, no_autocast, round_up
from flowkern.ops import dispatch
from flowkern.ops.dispatch import FusedOp, launch, pick_backend, triton_kernels


def channel_affine_ref(x: Tensor, A: Tensor, c: Optional[Tensor] = None) -> Tensor:
    """y[n, i, p] = c[i] + sum_j A[i, j] x[n, j, p]; x (B, C, H, W), A (C, C), c (C,) or None."""
    with no_autocast(x):  # flow math stays in x's precision, as in the kernels
        return F.conv2d(x, A.to(x.dtype)[:, :, None, None], None if c is None else c.to(x.dtype))


def max_channels(backend: str) -> Optional[int]:
    """Largest C the backend's kernel takes: the GPU kernels hold the C x C matrix on chip."""
    if backend == "cuda":
        return _ext._C.cuda_max_channels
    if backend == "triton":
        return triton_kernels("channel_affine").MAX_CHANNELS
    return None


def pixel_chunk(backend: str, B: int, HW: int) -> int:
    """Pixels per partial sum of the backward (CPU and Triton). A function of the shape only, so the reduction order
    (and hence the result, bit for bit) never depends on the thread count, timing or GPU."""
    if backend == "cpu":
        return _ext._C.cpu.pixel_chunk  # csrc/kernels.h: kCpuPixelChunk
    return max(256, round_up(cdiv(B * HW, 512), 256))  # GPU: ~512 programs in flight


def partial_rows(backend: str, B: int, HW: int, chunk: int) -> int:
    """Rows of the GPU backward's scratch: one per chunk of a launch (Triton), or the CUDA kernel's fixed count."""
    if backend == "cuda":
        return _ext._C.cuda_bwd_parts
    return min(B, dispatch.MAX_LAUNCH_BATCH) * cdiv(HW, chunk)


def channel_affine_fwd(x: Tensor, A: Tensor, c: Optional[Tensor], backend: str) -> Tensor:
    """Kernel forward on validated arguments: x NCHW-contiguous, A and c contiguous in acc_dtype(x.dtype)."""
    B, C, H, W = x.shape
    y = torch.empty_like(x)
    if y.numel():
        launch("channel_affine_fwd", backend, x=x, A=A, c=c, y=y, B=B, C=C, HW=H * W)
    return y


def channel_affine_bwd(x: Tensor, dy: Tensor, A: Tensor, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """Kernel backward: (dx, dA, dc) for y = A x + c."""
    B, C, H, W = x.shape
    dx = torch.empty_like(x)
    dA, dc = A.new_zeros(C, C), A.new_zeros(C)  # the kernels accumulate into them
    if not x.numel():
        return dx, dA, dc
    chunk = pixel_chunk(backend, B, H * W)
    dA_part = dc_part = parts = None
    if backend != "cpu":  # the CPU kernel keeps its partials in its own memory
        parts = partial_rows(backend, B, H * W, chunk)
        dA_part, dc_part = A.new_empty(parts, C, C), A.new_empty(parts, C)
    launch("channel_affine_bwd", backend, x=x, dy=dy, A=A, dx=dx, dA=dA, dc=dc, dA_part=dA_part, dc_part=dc_part,
           B=B, C=C, HW=H * W, chunk=chunk, parts=parts or 0)
    return dx, dA, dc


def channel_affine_bwd_ref(x: Tensor, dy: Tensor, A: Tensor, backend: str = "torch") -> Tuple[Tensor, Tensor, Tensor]:
    """channel_affine_bwd in differentiable torch ops (for double backward)."""
    with no_autocast(x):
        dx = F.conv2d(dy, A.t().to(dy.dtype)[:, :, None, None])  # dx[j] = sum_i A[i, j] dy[i]
        dA = torch.einsum("nihw,njhw->ij", dy.to(A.dtype), x.to(A.dtype))
    return dx, dA, dy.to(A.dtype).sum((0, 2, 3))


def _setup_context(ctx, inputs, output):
    x, A, c, backend = inputs
    ctx.save_for_backward(x, A)
    ctx.backend = backend
    ctx.has_c = c is not None


def _backward(ctx, dy, bwd):
    x, A = ctx.saved_tensors
    dx, dA, dc = bwd(x, dy.contiguous(), A, ctx.backend)
    return dx, dA, (dc if ctx.has_c else None), None


channel_affine_bwd_op = FusedOp(channel_affine_bwd, reference=channel_affine_bwd_ref)
channel_affine_fwd_op = FusedOp(channel_affine_fwd, _setup_context, _backward, bwd=channel_affine_bwd_op)


def channel_affine(x: Tensor, A: Tensor, c: Optional[Tensor] = None) -> Tensor:
    """y[n, :, p] = A @ x[n, :, p] + c for every pixel p, on the selected backend.

    x: (B, C, H, W) float32/float64 (float16/bfloat16 on GPU backends); A: (C, C); c: (C,) or None.
    Non-contiguous or channels_last x is made NCHW-contiguous first; the result is NCHW-contiguous.
    Differentiable in x, A and c.
    """
    check_nchw(x, "channel_affine")
    C = x.shape[1]
    check_shape("channel_affine", "A", A, (C, C), f" for x with {C} channels")
    if c is not None:
        check_shape("channel_affine", "c", c, (C,))
    check_same_device("channel_affine", x=x, A=A, c=c)
    backend = pick_backend(x, max_channels, inputs=(x, A, c))
    if backend == "torch":
        return channel_affine_ref(x, A, c)
    acc = acc_dtype(x.dtype)
    return channel_affine_fwd_op(x.contiguous(), A.to(acc).contiguous(),
                                 None if c is None else c.to(acc).contiguous(), backend)
