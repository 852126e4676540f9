"""Triton kernels for channel_affine: y = A x + c over the channels of every pixel (contract: csrc/kernels.h).

ActNorm and the invertible 1x1 conv are folded by the caller into one C x C matrix A (and bias c), so a
Glow step's linear part is a single read and a single write of x.

Tiling: channels are padded only to the next multiple of 16 (C16). Every channel block is 16, 32 or 64 wide and
divides C16, and the reduction loops run cdiv(C, block) steps with a runtime bound, so no tile does work beyond
C16 (C = 48 runs 3 blocks of 16, not one of 64) and nothing depends on C as a compile-time constant.
    _mix_kernel     y[n, I, P] = A[I, :] x[n, :, P] (+ c[I]): one program per (sample, pixel tile, output
                    block I), looping over input blocks. The backward's dx = A^T dy is the same kernel with A's
                    strides swapped.
    _outer_kernel   dA_part[k, I, J] = sum_p dy[I, p] x[J, p] and dc_part[k, I] over chunk k's pixels: one
                    program per (chunk, I, J) block, so its accumulator is at most [64, 64] whatever C is.
    _reduce_kernel  dA += sum_k dA_part[k], dc += sum_k dc_part[k], each entry in row order.
dx and dA in separate kernels cost one extra read of dy, but keep every program's registers bounded at C = 256.
Each program id is decoded from grid axis 0 (up to 2^31 - 1 programs), the fastest index being the channel block,
so the programs that share a tile of x or dy run together and re-read it from L2.

Precision: accumulation is float32 (float64 for float64 inputs). float32 dots run on tensor cores with
input_precision="tf32x3" (each operand split into tf32 hi + lo, three MMAs: about float32 accuracy; plain tf32
would give ~1e-3 errors). Half inputs are upcast for the dots with A (exact: their mantissas fit in tf32), and
dA = dy x^T takes them as they are (16-bit products are exact in the float32 accumulator). float64 uses "ieee".
The interpreter runs every tl.dot in full precision, so the precision is checked in the compiled IR
(flowkern.ops.gpu_compile), not by the interpreter tests.
The backward writes per-chunk partials of dA and dc to the caller's scratch, each element by exactly one program,
then sums them in a fixed order into dA, dc (no atomics): bitwise deterministic.

The launchers take the op's params (the fields of ChannelAffineParams in csrc/kernels.h, tensors as tensors) and
fill the outputs the caller allocated, like the C++ and CUDA kernels.
"""
import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

MAX_CHANNELS = 256  # tested limit; registers no longer grow with C (channel blocks <= 64), the scratch grows as C^2


def _block(c16, cap):
    """Largest of cap, cap/2, ..., 16 dividing c16 (a multiple of 16): a channel block with no padding past C16."""
    b = cap
    while c16 % b:
        b //= 2
    return b


def _config(C, dtype):
    """Block sizes for C channels of `dtype` input: (fwd (BLOCK_I, BLOCK_K, BLOCK_P, warps),
    dA (BLOCK_I, BLOCK_J, BLOCK_P, warps)). The fwd config also serves dx = A^T dy.

    Channel blocks are the widest of 64, 32, 16 that divide C16 (fewer re-reads of x and dy); tl.dot needs every
    dimension >= 16. BLOCK_K = 16 and, for the [64, 64] dA accumulator, 16-pixel steps (32-wide blocks for float64)
    keep the tf32x3 operand splits small: every config compiles without spills on sm_90 and sm_80, at least 2 blocks
    per SM (flowkern.ops.gpu_compile, tests/ops/test_gpu_compile.py).
    """
    c16 = -(-C // 16) * 16
    fwd = (_block(c16, 64), 16, 64, 4)
    b = _block(c16, 32 if dtype == torch.float64 else 64)
    dA = (b, b, 16 if b == 64 else 32, 4)
    return fwd, dA


def _precision(dtype):
    """Input precision of the float32 (or float64) dots: tensor cores at float32 accuracy, see the docstring."""
    return "ieee" if dtype == torch.float64 else "tf32x3"


def _upcast(dtype, interpreted=None):
    """Whether the dA dot upcasts its operands. Only for bfloat16 under the interpreter: triton 3.9's interpreter
    holds bfloat16 as uint16 and its tl.dot multiplies the bit patterns. Same products either way (exact in float32);
    compiled kernels keep the native bfloat16 MMA."""
    if interpreted is None:
        interpreted = _INTERPRETED
    return interpreted and dtype == torch.bfloat16


@triton.jit
def _range(start, BLOCK: tl.constexpr, limit):
    """Offsets start + [0, BLOCK) and their mask (offset < limit)."""
    offs = start + tl.arange(0, BLOCK)
    return offs, offs < limit


@triton.jit
def _tile_ptrs(ptr, rows, cols, row_stride, col_stride, row_mask, col_mask):
    """Pointers to the [rows, cols] tile of a strided matrix, and its mask (padded entries are masked out)."""
    return ptr + rows[:, None] * row_stride + cols[None, :] * col_stride, row_mask[:, None] & col_mask[None, :]


@triton.jit
def _mix_kernel(
    x_ptr, A_ptr, c_ptr, y_ptr,
    C, HW, n_tiles, stride_ai, stride_ak,
    HAS_BIAS: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # Program (n, tile, ib) owns y[n, I, P]: output channels I = [ib*BLOCK_I, +BLOCK_I), pixels P of the tile.
    pid = tl.program_id(0)
    n_i = tl.cdiv(C, BLOCK_I)
    ib = pid % n_i
    tile = (pid // n_i) % n_tiles
    n = (pid // n_i // n_tiles).to(tl.int64)  # int64: n*C*HW may exceed 2^31 (offsets within a sample do not)
    acc_ty = A_ptr.dtype.element_ty            # A is float32, or float64 for float64 inputs
    offs_i, mask_i = _range(ib * BLOCK_I, BLOCK_I, C)
    offs_p, mask_p = _range(tile * BLOCK_P, BLOCK_P, HW)
    x_ptr += n * C * HW
    y_ptr += n * C * HW

    acc = tl.zeros([BLOCK_I, BLOCK_P], dtype=acc_ty)
    for k0 in range(0, C, BLOCK_K):  # BLOCK_K divides C16: no step is all padding
        offs_k, mask_k = _range(k0, BLOCK_K, C)
        x, x_mask = _tile_ptrs(x_ptr, offs_k, offs_p, HW, 1, mask_k, mask_p)
        A, A_mask = _tile_ptrs(A_ptr, offs_i, offs_k, stride_ai, stride_ak, mask_i, mask_k)
        # Padded rows/cols load as 0 and add nothing. Half x is upcast: exact in tf32, so tf32x3 stays accurate.
        acc = tl.dot(tl.load(A, mask=A_mask, other=0.0), tl.load(x, mask=x_mask, other=0.0).to(acc_ty), acc,
                     input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(c_ptr + offs_i, mask=mask_i, other=0.0)[:, None]
    y, y_mask = _tile_ptrs(y_ptr, offs_i, offs_p, HW, 1, mask_i, mask_p)
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=y_mask)


def _grid_size(p, *factors):
    n = p.B
    for f in factors:
        n *= f
    if n >= 2**31:
        raise ValueError(f"channel_affine (triton): {n} programs exceed the grid limit 2^31 - 1")
    return (n,)


def _check_limits(p):
    if p.C * p.HW >= 2**31:
        raise ValueError(f"channel_affine (triton): offsets within one sample are int32, C*H*W = {p.C * p.HW}")


def _mix(x, A, c, y, p, transpose):
    """y = A x + c (A^T x when transpose) with the fwd config."""
    (BLOCK_I, BLOCK_K, BLOCK_P, num_warps), _ = _config(p.C, x.dtype)
    n_tiles = triton.cdiv(p.HW, BLOCK_P)
    strides = (1, p.C) if transpose else (p.C, 1)
    _mix_kernel[_grid_size(p, n_tiles, triton.cdiv(p.C, BLOCK_I))](
        x, A, c, y, p.C, p.HW, n_tiles, *strides,
        HAS_BIAS=c is not None, BLOCK_I=BLOCK_I, BLOCK_K=BLOCK_K, BLOCK_P=BLOCK_P,
        PRECISION=_precision(x.dtype), num_warps=num_warps,
    )


def channel_affine_fwd(p):
    """y = A x + c. p: x, A, c (or None), y (output), B, C, HW."""
    _check_limits(p)
    _mix(p.x, p.A, p.c, p.y, p, transpose=False)


@triton.jit
def _outer_kernel(
    x_ptr, dy_ptr, dA_part_ptr, dc_part_ptr,
    C, HW, chunk, nq,
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_P: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    # Program (k, ib, jb): chunk k = n*nq + q (pixels [q*chunk, min((q+1)*chunk, HW)) of sample n), rows
    # I = [ib*BLOCK_I, +BLOCK_I) and columns J = [jb*BLOCK_J, +BLOCK_J) of dA_part[k]; it alone writes them.
    pid = tl.program_id(0)
    n_i = tl.cdiv(C, BLOCK_I)
    n_j = tl.cdiv(C, BLOCK_J)
    jb = pid % n_j
    ib = (pid // n_j) % n_i
    k = pid // n_j // n_i
    q = k % nq
    sample = (k // nq).to(tl.int64) * C * HW
    acc_ty = dA_part_ptr.dtype.element_ty
    offs_i, mask_i = _range(ib * BLOCK_I, BLOCK_I, C)
    offs_j, mask_j = _range(jb * BLOCK_J, BLOCK_J, C)

    dA = tl.zeros([BLOCK_I, BLOCK_J], dtype=acc_ty)
    dc = tl.zeros([BLOCK_I], dtype=acc_ty)
    p_start = q * chunk
    p_end = tl.minimum(p_start + chunk, HW)
    for p0 in range(p_start, p_end, BLOCK_P):  # the last chunk stops at HW, not at its nominal end
        offs_p, mask_p = _range(p0, BLOCK_P, p_end)
        # Masked entries load as 0 and so contribute nothing to dA, dc.
        dy, dy_mask = _tile_ptrs(dy_ptr + sample, offs_i, offs_p, HW, 1, mask_i, mask_p)
        dy = tl.load(dy, mask=dy_mask, other=0.0)
        x, x_mask = _tile_ptrs(x_ptr + sample, offs_j, offs_p, HW, 1, mask_j, mask_p)
        x = tl.load(x, mask=x_mask, other=0.0)
        # Half operands as they are: their products are exact in the float32 accumulator (precision applies to
        # float32 operands only). UPCAST: see _upcast.
        if UPCAST:
            dy = dy.to(acc_ty)
            x = x.to(acc_ty)
        dA = tl.dot(dy, tl.trans(x), dA, input_precision=PRECISION)
        dc += tl.sum(dy.to(acc_ty), 1)

    dA_ptrs, dA_mask = _tile_ptrs(dA_part_ptr + k.to(tl.int64) * C * C, offs_i, offs_j, C, 1, mask_i, mask_j)
    tl.store(dA_ptrs, dA, mask=dA_mask)
    if jb == 0:  # every column block computes the same dc; the first one writes it
        tl.store(dc_part_ptr + k.to(tl.int64) * C + offs_i, dc, mask=mask_i)


@triton.jit
def _reduce_kernel(dA_part_ptr, dc_part_ptr, dA_ptr, dc_ptr, C, rows, BLOCK: tl.constexpr):
    # Stage 2: entry e of [dA | dc] adds its partials in row order (fixed order: deterministic) into dA or dc.
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    CC = C * C
    is_dA = offs < CC
    in_dc = (offs >= CC) & (offs < CC + C)
    dc_offs = tl.where(in_dc, offs - CC, 0)
    acc = tl.zeros([BLOCK], dtype=dA_ptr.dtype.element_ty)
    for _ in range(rows):  # the row pointers advance in 64 bits: rows * C * C may exceed 2^31
        acc += tl.load(dA_part_ptr + offs, mask=is_dA, other=0.0)
        acc += tl.load(dc_part_ptr + dc_offs, mask=in_dc, other=0.0)
        dA_part_ptr += CC
        dc_part_ptr += C
    tl.store(dA_ptr + offs, tl.load(dA_ptr + offs, mask=is_dA) + acc, mask=is_dA)
    tl.store(dc_ptr + dc_offs, tl.load(dc_ptr + dc_offs, mask=in_dc) + acc, mask=in_dc)


REDUCE_BLOCK = 256
_INTERPRETED = isinstance(_outer_kernel, InterpretedFunction)  # TRITON_INTERPRET=1 when this module was imported


def channel_affine_bwd(p):
    """dx = A^T dy, and dA += sum dy x^T, dc += sum dy in two fixed-order stages through the scratch dA_part,
    dc_part (row k = chunk (n, q), k = n*nq + q). p: x, dy, A, dx, dA, dc, dA_part, dc_part, B, C, HW, chunk."""
    _check_limits(p)
    _mix(p.dy, p.A, None, p.dx, p, transpose=True)  # dx[j] = sum_i A[i, j] dy[i]
    _, (BLOCK_I, BLOCK_J, BLOCK_P, num_warps) = _config(p.C, p.x.dtype)
    nq = triton.cdiv(p.HW, p.chunk)
    rows = p.B * nq
    if rows > p.dA_part.shape[0]:
        raise ValueError(f"channel_affine (triton): {rows} partial rows needed, the scratch has {p.dA_part.shape[0]}")
    # Stage 1: one partial row per chunk. Any chunk works (each chunk's tail is masked); multiples of BLOCK_P waste
    # no lanes.
    _outer_kernel[_grid_size(p, nq, triton.cdiv(p.C, BLOCK_I), triton.cdiv(p.C, BLOCK_J))](
        p.x, p.dy, p.dA_part, p.dc_part, p.C, p.HW, p.chunk, nq,
        BLOCK_I=BLOCK_I, BLOCK_J=BLOCK_J, BLOCK_P=BLOCK_P, PRECISION=_precision(p.x.dtype),
        UPCAST=_upcast(p.x.dtype), num_warps=num_warps,
    )
    # Stage 2: the rows summed in index order, added to dA and dc.
    _reduce_kernel[(triton.cdiv(p.C * p.C + p.C, REDUCE_BLOCK),)](
        p.dA_part, p.dc_part, p.dA, p.dc, p.C, rows, BLOCK=REDUCE_BLOCK)


def launch_configs():
    """Every compilation the launchers above can ask for (flowkern.ops.gpu_compile checks them for spills, dot
    precision and shared memory): each _config over C = 1..MAX_CHANNELS, each GPU input dtype, fwd with and without
    bias, dx (the fwd kernel without bias) and dA."""
    from flowkern.ops.checks import acc_dtype
    from flowkern.ops.gpu_compile import GPU_DTYPES, LaunchConfig, dtype_name, pointer_type

    for dtype in GPU_DTYPES:
        data, acc, name = pointer_type(dtype), pointer_type(acc_dtype(dtype)), dtype_name(dtype)
        prec = _precision(dtype)
        configs = sorted({_config(C, dtype) for C in range(1, MAX_CHANNELS + 1)})  # C matters only through these
        for fwd in sorted({fwd for fwd, _ in configs}):
            BLOCK_I, BLOCK_K, BLOCK_P, warps = fwd
            for has_bias in (True, False):
                yield LaunchConfig(
                    _mix_kernel,
                    {"x_ptr": data, "A_ptr": acc, "y_ptr": data, "C": "i32", "HW": "i32", "n_tiles": "i32",
                     "stride_ai": "i32", "stride_ak": "i32", **({"c_ptr": acc} if has_bias else {})},
                    {"HAS_BIAS": has_bias, "BLOCK_I": BLOCK_I, "BLOCK_K": BLOCK_K, "BLOCK_P": BLOCK_P,
                     "PRECISION": prec, **({} if has_bias else {"c_ptr": None})},
                    warps, None,
                    f"{name} I={BLOCK_I} K={BLOCK_K} P={BLOCK_P} w={warps}{' bias' if has_bias else ''}")
        for BLOCK_I, BLOCK_J, BLOCK_P, warps in sorted({dA for _, dA in configs}):
            yield LaunchConfig(
                _outer_kernel,
                {"x_ptr": data, "dy_ptr": data, "dA_part_ptr": acc, "dc_part_ptr": acc,
                 "C": "i32", "HW": "i32", "chunk": "i32", "nq": "i32"},
                {"BLOCK_I": BLOCK_I, "BLOCK_J": BLOCK_J, "BLOCK_P": BLOCK_P, "PRECISION": prec,
                 "UPCAST": _upcast(dtype, interpreted=False)},
                warps, None, f"{name} I={BLOCK_I} J={BLOCK_J} P={BLOCK_P} w={warps}")
        yield LaunchConfig(
            _reduce_kernel,
            {"dA_part_ptr": acc, "dc_part_ptr": acc, "dA_ptr": acc, "dc_ptr": acc, "C": "i32", "rows": "i32"},
            {"BLOCK": REDUCE_BLOCK}, None, None, f"{name} reduce BLOCK={REDUCE_BLOCK}")
