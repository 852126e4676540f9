"""Triton kernels for channel_affine: y = A x + c over the channels of every pixel (csrc/kernels.h).

ActNorm and the invertible 1x1 conv are folded by the caller into one C x C matrix A (and bias c), so a
Glow step's linear part is a single read and a single write of x. A forward program owns one sample and a
block of pixels with all C channels; the channel mix is a tl.dot of A with the [C, P] tile of x.

Accumulation is float32 (float64 for float64 inputs); half inputs are upcast before the dot, which runs
with input_precision="ieee" because the reference is an exact float32 conv, not TF32.
The backward writes per-chunk partials of dA and dc, each element by exactly one program (no atomics), so
the result is bitwise deterministic; the caller sums them.
"""
import torch
import triton
import triton.language as tl


def _config(C):
    """Block sizes for C channels: (BLOCK_C, fwd (BLOCK_K, BLOCK_P, warps), bwd (BLOCK_J, BLOCK_P, warps)).

    tl.dot needs every dimension >= 16. The ieee float32/float64 dot runs on FMAs and is register hungry;
    these sizes compile without register spills on sm_90 (checked with ptxas -v) for all input dtypes.
    """
    block_c = max(16, triton.next_power_of_2(C))
    assert block_c <= 256, f"channel_affine supports C <= 256, got {C}"
    if block_c <= 64:
        fwd = (16, 64, 4)
    elif block_c == 128:
        fwd = (16, 32, 8)
    else:
        fwd = (16, 16, 8)
    if block_c <= 32:
        bwd = (block_c, 32, 4)
    elif block_c == 64:
        bwd = (32, 32, 8)
    else:
        bwd = (16, 16, 8)
    return block_c, fwd, bwd


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@triton.jit
def _channel_affine_fwd_kernel(
    x_ptr, A_ptr, c_ptr, y_ptr,
    C, HW,
    HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    pid_p = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)  # int64: n*C*HW may exceed 2^31 (offsets within a sample do not)
    acc_ty = A_ptr.dtype.element_ty     # A is float32, or float64 for float64 inputs

    offs_c = tl.arange(0, BLOCK_C)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_c = offs_c < C
    mask_p = offs_p < HW
    x_ptr += n * C * HW
    y_ptr += n * C * HW

    # All output channels at once, input channels in BLOCK_K slices: x is read exactly once, and the
    # A slice stays small enough for registers. Padded rows/cols load as 0 and add nothing.
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=acc_ty)
    for k0 in tl.static_range(0, BLOCK_C, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < C
        x = tl.load(x_ptr + offs_k[:, None] * HW + offs_p[None, :], mask=mask_k[:, None] & mask_p[None, :],
                    other=0.0).to(acc_ty)
        A = tl.load(A_ptr + offs_c[:, None] * C + offs_k[None, :], mask=mask_c[:, None] & mask_k[None, :],
                    other=0.0)
        acc = tl.dot(A, x, acc, input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(c_ptr + offs_c, mask=mask_c, other=0.0)[:, None]
    tl.store(y_ptr + offs_c[:, None] * HW + offs_p[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask_c[:, None] & mask_p[None, :])


def channel_affine_fwd(x, A, c):
    assert x.dim() == 4 and x.is_contiguous()
    B, C, H, W = x.shape
    HW = H * W
    assert C * HW < 2**31, "offsets within one sample are int32"
    assert A.shape == (C, C) and A.dtype == _acc_dtype(x.dtype) and A.is_contiguous()
    assert c is None or (c.shape == (C,) and c.dtype == A.dtype and c.is_contiguous())
    y = torch.empty_like(x)
    if y.numel() == 0:
        return y
    BLOCK_C, (BLOCK_K, BLOCK_P, num_warps), _ = _config(C)
    grid = (triton.cdiv(HW, BLOCK_P), B)
    assert B < 65536, "grid axis 1 is limited to 65535"
    _channel_affine_fwd_kernel[grid](
        x, A, c, y, C, HW,
        HAS_BIAS=c is not None, BLOCK_C=BLOCK_C, BLOCK_K=BLOCK_K, BLOCK_P=BLOCK_P, num_warps=num_warps,
    )
    return y


@triton.jit
def _channel_affine_bwd_kernel(
    x_ptr, dy_ptr, A_ptr, dx_ptr, dA_part_ptr, dc_part_ptr,
    C, HW, chunk, nq,
    BLOCK_C: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # Program (jt, q, n): chunk k = n*nq + q (pixels [q*chunk, min((q+1)*chunk, HW)) of sample n) and input
    # channels J = [jt*BLOCK_J, (jt+1)*BLOCK_J). It owns dx[n, J, chunk] and dA_part[k, :, J]: a full
    # [C, C] accumulator would not fit in registers for large C. jt is the fastest grid axis so the
    # programs sharing a chunk's dy run together and re-read it from L2.
    jt = tl.program_id(0)
    q = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    k = n * nq + q
    acc_ty = A_ptr.dtype.element_ty

    offs_c = tl.arange(0, BLOCK_C)
    offs_j = jt * BLOCK_J + tl.arange(0, BLOCK_J)
    mask_c = offs_c < C
    mask_j = offs_j < C
    x_ptr += n * C * HW
    dy_ptr += n * C * HW
    dx_ptr += n * C * HW

    At = tl.load(A_ptr + offs_j[:, None] + offs_c[None, :] * C, mask=mask_j[:, None] & mask_c[None, :], other=0.0)
    dA = tl.zeros([BLOCK_C, BLOCK_J], dtype=acc_ty)
    dc = tl.zeros([BLOCK_C], dtype=acc_ty)
    p_start = q * chunk
    p_end = tl.minimum(p_start + chunk, HW)
    for p0 in range(p_start, p_end, BLOCK_P):  # the last chunk stops at HW, not at its nominal end
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < p_end
        mask_jp = mask_j[:, None] & mask_p[None, :]
        # Masked entries load as 0 and so contribute nothing to dA, dc.
        dy = tl.load(dy_ptr + offs_c[:, None] * HW + offs_p[None, :], mask=mask_c[:, None] & mask_p[None, :],
                     other=0.0).to(acc_ty)
        x = tl.load(x_ptr + offs_j[:, None] * HW + offs_p[None, :], mask=mask_jp, other=0.0).to(acc_ty)
        dx = tl.dot(At, dy, input_precision="ieee")  # dx[j, p] = sum_i A[i, j] dy[i, p]
        tl.store(dx_ptr + offs_j[:, None] * HW + offs_p[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask_jp)
        dA = tl.dot(dy, tl.trans(x), dA, input_precision="ieee")
        dc += tl.sum(dy, 1)

    # Each partial element is written once, by this program alone: deterministic without atomics.
    tl.store(dA_part_ptr + k * C * C + offs_c[:, None] * C + offs_j[None, :], dA,
             mask=mask_c[:, None] & mask_j[None, :])
    if jt == 0:  # every column tile computes the same dc; the first one writes it
        tl.store(dc_part_ptr + k * C + offs_c, dc, mask=mask_c)


def channel_affine_bwd(x, dy, A, chunk):
    assert x.dim() == 4 and x.is_contiguous() and dy.shape == x.shape and dy.dtype == x.dtype and dy.is_contiguous()
    B, C, H, W = x.shape
    HW = H * W
    assert C * HW < 2**31, "offsets within one sample are int32"
    assert A.shape == (C, C) and A.dtype == _acc_dtype(x.dtype) and A.is_contiguous()
    assert chunk >= 1
    nq = triton.cdiv(HW, chunk)
    dx = torch.empty_like(x)
    dA_part = torch.empty((B * nq, C, C), device=x.device, dtype=A.dtype)
    dc_part = torch.empty((B * nq, C), device=x.device, dtype=A.dtype)
    if x.numel() == 0:
        return dx, dA_part, dc_part
    BLOCK_C, _, (BLOCK_J, BLOCK_P, num_warps) = _config(C)
    # Any chunk works (each chunk's tail is masked); multiples of BLOCK_P waste no lanes.
    grid = (triton.cdiv(C, BLOCK_J), nq, B)
    assert nq < 65536 and B < 65536, "grid axes 1 and 2 are limited to 65535: use a larger chunk"
    _channel_affine_bwd_kernel[grid](
        x, dy, A, dx, dA_part, dc_part, C, HW, chunk, nq,
        BLOCK_C=BLOCK_C, BLOCK_J=BLOCK_J, BLOCK_P=BLOCK_P, num_warps=num_warps,
    )
    return dx, dA_part, dc_part
