"""Triton kernels for channel_affine: y = A x + c over the channels of every pixel (contract: csrc/kernels.h).

ActNorm and the invertible 1x1 conv are folded by the caller into one C x C matrix A (and bias c), so a
Glow step's linear part is a single read and a single write of x. A forward program owns one sample and a
block of pixels with all C channels; the channel mix is a tl.dot of A with the [C, P] tile of x.

Accumulation is float32 (float64 for float64 inputs); half inputs are upcast before the dot, which runs
with input_precision="ieee" because the reference is an exact float32 conv, not TF32.
The backward writes per-chunk partials of dA and dc, each element by exactly one program (no atomics), so
the result is bitwise deterministic; the caller sums them.

The launchers take the op's params (the fields of ChannelAffineParams in csrc/kernels.h, tensors as tensors) and
fill the outputs the caller allocated, like the C++ and CUDA kernels.
"""
import triton
import triton.language as tl

MAX_CHANNELS = 256  # the [BLOCK_C, BLOCK_P] tiles must fit in registers


def _config(C):
    """Block sizes for C channels: (BLOCK_C, fwd (BLOCK_K, BLOCK_P, warps), bwd (BLOCK_J, BLOCK_P, warps)).

    tl.dot needs every dimension >= 16. The ieee float32/float64 dot runs on FMAs and is register hungry;
    these sizes compile without register spills on sm_90 (checked with ptxas -v) for all input dtypes.
    """
    block_c = max(16, triton.next_power_of_2(C))
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


@triton.jit
def _range(start, BLOCK: tl.constexpr, limit):
    """Offsets start + [0, BLOCK) and their mask (offset < limit)."""
    offs = start + tl.arange(0, BLOCK)
    return offs, offs < limit


@triton.jit
def _tile_ptrs(ptr, rows, cols, row_stride, row_mask, col_mask):
    """Pointers to the [rows, cols] tile of a row-major matrix, and its mask (padded entries are masked out)."""
    return ptr + rows[:, None] * row_stride + cols[None, :], row_mask[:, None] & col_mask[None, :]


@triton.jit
def _channel_affine_fwd_kernel(
    x_ptr, A_ptr, c_ptr, y_ptr,
    C, HW,
    HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    n = tl.program_id(1).to(tl.int64)  # int64: n*C*HW may exceed 2^31 (offsets within a sample do not)
    acc_ty = A_ptr.dtype.element_ty     # A is float32, or float64 for float64 inputs
    offs_c, mask_c = _range(0, BLOCK_C, C)
    offs_p, mask_p = _range(tl.program_id(0) * BLOCK_P, BLOCK_P, HW)
    x_ptr += n * C * HW
    y_ptr += n * C * HW

    # All output channels at once, input channels in BLOCK_K slices: x is read exactly once, and the
    # A slice stays small enough for registers. Padded rows/cols load as 0 and add nothing.
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=acc_ty)
    for k0 in tl.static_range(0, BLOCK_C, BLOCK_K):
        offs_k, mask_k = _range(k0, BLOCK_K, C)
        x, x_mask = _tile_ptrs(x_ptr, offs_k, offs_p, HW, mask_k, mask_p)
        A, A_mask = _tile_ptrs(A_ptr, offs_c, offs_k, C, mask_c, mask_k)
        acc = tl.dot(tl.load(A, mask=A_mask, other=0.0), tl.load(x, mask=x_mask, other=0.0).to(acc_ty), acc,
                     input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(c_ptr + offs_c, mask=mask_c, other=0.0)[:, None]
    y, y_mask = _tile_ptrs(y_ptr, offs_c, offs_p, HW, mask_c, mask_p)
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=y_mask)


def _check_limits(p, chunks=1):
    if p.C * p.HW >= 2**31:
        raise ValueError(f"channel_affine (triton): offsets within one sample are int32, C*H*W = {p.C * p.HW}")
    if p.B >= 65536 or chunks >= 65536:
        raise ValueError(f"channel_affine (triton): grid axes are limited to 65535, got batch {p.B} and {chunks} "
                         "pixel chunks")


def channel_affine_fwd(p):
    """y = A x + c. p: x, A, c (or None), y (output), B, C, HW."""
    _check_limits(p)
    BLOCK_C, (BLOCK_K, BLOCK_P, num_warps), _ = _config(p.C)
    _channel_affine_fwd_kernel[(triton.cdiv(p.HW, BLOCK_P), p.B)](
        p.x, p.A, p.c, p.y, p.C, p.HW,
        HAS_BIAS=p.c is not None, BLOCK_C=BLOCK_C, BLOCK_K=BLOCK_K, BLOCK_P=BLOCK_P, num_warps=num_warps,
    )


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
    offs_c, mask_c = _range(0, BLOCK_C, C)
    offs_j, mask_j = _range(jt * BLOCK_J, BLOCK_J, C)
    sample = n * C * HW

    At, At_mask = _tile_ptrs(A_ptr, offs_j, offs_c * C, 1, mask_j, mask_c)  # A^T[j, i] = A[i, j]
    At = tl.load(At, mask=At_mask, other=0.0)
    dA = tl.zeros([BLOCK_C, BLOCK_J], dtype=acc_ty)
    dc = tl.zeros([BLOCK_C], dtype=acc_ty)
    p_start = q * chunk
    p_end = tl.minimum(p_start + chunk, HW)
    for p0 in range(p_start, p_end, BLOCK_P):  # the last chunk stops at HW, not at its nominal end
        offs_p, mask_p = _range(p0, BLOCK_P, p_end)
        # Masked entries load as 0 and so contribute nothing to dA, dc.
        dy, dy_mask = _tile_ptrs(dy_ptr + sample, offs_c, offs_p, HW, mask_c, mask_p)
        dy = tl.load(dy, mask=dy_mask, other=0.0).to(acc_ty)
        x, x_mask = _tile_ptrs(x_ptr + sample, offs_j, offs_p, HW, mask_j, mask_p)
        x = tl.load(x, mask=x_mask, other=0.0).to(acc_ty)
        dx = tl.dot(At, dy, input_precision="ieee")  # dx[j, p] = sum_i A[i, j] dy[i, p]
        dx_ptrs, _ = _tile_ptrs(dx_ptr + sample, offs_j, offs_p, HW, mask_j, mask_p)
        tl.store(dx_ptrs, dx.to(dx_ptr.dtype.element_ty), mask=x_mask)
        dA = tl.dot(dy, tl.trans(x), dA, input_precision="ieee")
        dc += tl.sum(dy, 1)

    # Each partial element is written once, by this program alone: deterministic without atomics.
    dA_ptrs, dA_mask = _tile_ptrs(dA_part_ptr + k * C * C, offs_c, offs_j, C, mask_c, mask_j)
    tl.store(dA_ptrs, dA, mask=dA_mask)
    if jt == 0:  # every column tile computes the same dc; the first one writes it
        tl.store(dc_part_ptr + k * C + offs_c, dc, mask=mask_c)


def channel_affine_bwd(p):
    """dx = A^T dy and the per-chunk partials of dA, dc. p: x, dy, A, dx, dA_part, dc_part (outputs), B, C, HW, chunk."""
    nq = triton.cdiv(p.HW, p.chunk)
    _check_limits(p, nq)
    BLOCK_C, _, (BLOCK_J, BLOCK_P, num_warps) = _config(p.C)
    # Any chunk works (each chunk's tail is masked); multiples of BLOCK_P waste no lanes.
    _channel_affine_bwd_kernel[(triton.cdiv(p.C, BLOCK_J), nq, p.B)](
        p.x, p.dy, p.A, p.dx, p.dA_part, p.dc_part, p.C, p.HW, p.chunk, nq,
        BLOCK_C=BLOCK_C, BLOCK_J=BLOCK_J, BLOCK_P=BLOCK_P, num_warps=num_warps,
    )
