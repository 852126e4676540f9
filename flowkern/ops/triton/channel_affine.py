"""Triton kernels for channel_affine: y = A x + c over the channels of every pixel (csrc/kernels.h).

ActNorm and the invertible 1x1 conv are folded by the caller into one C x C matrix A (and bias c), so a
Glow step's linear part is a single read and a single write of x. A program owns one sample and a block
of pixels with all C channels, so the channel mix is one tl.dot of the [C, C] matrix with a [C, P] tile.

Accumulation is float32 (float64 for float64 inputs); half inputs are upcast before the dot, which runs
with input_precision="ieee" because the reference is an exact float32 conv, not TF32.
The backward writes per-chunk partials of dA and dc, each by exactly one program (no atomics), so the
result is bitwise deterministic; the caller sums them.
"""
import torch
import triton
import triton.language as tl


def _block_sizes(C):
    # tl.dot needs every dimension >= 16; keep the [BLOCK_C, BLOCK_P] tile (and A) within registers' reach.
    block_c = max(16, triton.next_power_of_2(C))
    assert block_c <= 256, f"channel_affine supports C <= 256, got {C}"
    block_p = 64 if block_c <= 64 else 32
    num_warps = 4 if block_c <= 64 else 8
    return block_c, block_p, num_warps


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@triton.jit
def _channel_affine_fwd_kernel(
    x_ptr, A_ptr, c_ptr, y_ptr,
    C, HW,
    HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    pid_p = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)  # int64: n*C*HW may exceed 2^31
    acc_ty = A_ptr.dtype.element_ty     # A is float32, or float64 for float64 inputs

    offs_c = tl.arange(0, BLOCK_C)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_c = offs_c < C
    mask = mask_c[:, None] & (offs_p < HW)[None, :]
    offs = offs_c.to(tl.int64)[:, None] * HW + offs_p[None, :]
    x_ptr += n * C * HW
    y_ptr += n * C * HW

    # Padded rows/cols are zero in both A and x, so they add nothing to the dot.
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    A = tl.load(A_ptr + offs_c[:, None] * C + offs_c[None, :], mask=mask_c[:, None] & mask_c[None, :], other=0.0)
    y = tl.dot(A, x, input_precision="ieee")
    if HAS_BIAS:
        y += tl.load(c_ptr + offs_c, mask=mask_c, other=0.0)[:, None]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def channel_affine_fwd(x, A, c):
    assert x.dim() == 4 and x.is_contiguous()
    B, C, H, W = x.shape
    HW = H * W
    assert A.shape == (C, C) and A.dtype == _acc_dtype(x.dtype) and A.is_contiguous()
    assert c is None or (c.shape == (C,) and c.dtype == A.dtype and c.is_contiguous())
    y = torch.empty_like(x)
    if y.numel() == 0:
        return y
    BLOCK_C, BLOCK_P, num_warps = _block_sizes(C)
    grid = (triton.cdiv(HW, BLOCK_P), B)
    _channel_affine_fwd_kernel[grid](
        x, A, c, y, C, HW,
        HAS_BIAS=c is not None, BLOCK_C=BLOCK_C, BLOCK_P=BLOCK_P, num_warps=num_warps,
    )
    return y


@triton.jit
def _channel_affine_bwd_kernel(
    x_ptr, dy_ptr, A_ptr, dx_ptr, dA_part_ptr, dc_part_ptr,
    C, HW, chunk, nq,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # One program per chunk k = (n, q): pixels [q*chunk, min((q+1)*chunk, HW)) of sample n.
    q = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1).to(tl.int64)
    k = n * nq + q
    acc_ty = A_ptr.dtype.element_ty

    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    mask_cc = mask_c[:, None] & mask_c[None, :]
    row = offs_c.to(tl.int64)[:, None] * HW
    x_ptr += n * C * HW
    dy_ptr += n * C * HW
    dx_ptr += n * C * HW

    At = tl.trans(tl.load(A_ptr + offs_c[:, None] * C + offs_c[None, :], mask=mask_cc, other=0.0))
    dA = tl.zeros([BLOCK_C, BLOCK_C], dtype=acc_ty)
    dc = tl.zeros([BLOCK_C], dtype=acc_ty)
    p_start = q * chunk
    p_end = tl.minimum(p_start + chunk, HW)
    for off in range(0, chunk, BLOCK_P):
        offs_p = p_start + off + tl.arange(0, BLOCK_P)
        mask = mask_c[:, None] & (offs_p < p_end)[None, :]
        offs = row + offs_p[None, :]
        # Masked entries load as 0 and so contribute nothing to dA, dc.
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        dx = tl.dot(At, dy, input_precision="ieee")
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dA = tl.dot(dy, tl.trans(x), dA, input_precision="ieee")
        dc += tl.sum(dy, 1)

    # Each partial is written once, by this program alone: deterministic without atomics.
    tl.store(dA_part_ptr + k * C * C + offs_c[:, None] * C + offs_c[None, :], dA, mask=mask_cc)
    tl.store(dc_part_ptr + k * C + offs_c, dc, mask=mask_c)


def channel_affine_bwd(x, dy, A, chunk):
    assert x.dim() == 4 and x.is_contiguous() and dy.shape == x.shape and dy.dtype == x.dtype and dy.is_contiguous()
    B, C, H, W = x.shape
    HW = H * W
    assert A.shape == (C, C) and A.dtype == _acc_dtype(x.dtype) and A.is_contiguous()
    assert chunk >= 1
    nq = triton.cdiv(HW, chunk)
    dx = torch.empty_like(x)
    dA_part = torch.empty((B * nq, C, C), device=x.device, dtype=A.dtype)
    dc_part = torch.empty((B * nq, C), device=x.device, dtype=A.dtype)
    if x.numel() == 0:
        return dx, dA_part, dc_part
    BLOCK_C, BLOCK_P, num_warps = _block_sizes(C)
    # Any chunk works (the tail of each chunk is masked); multiples of BLOCK_P waste no lanes.
    grid = (nq, B)
    _channel_affine_bwd_kernel[grid](
        x, dy, A, dx, dA_part, dc_part, C, HW, chunk, nq,
        BLOCK_C=BLOCK_C, BLOCK_P=BLOCK_P, num_warps=num_warps,
    )
    return dx, dA_part, dc_part
