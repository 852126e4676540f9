"""Triton kernels for the Glow coupling tail (csrc/kernels.h).

x = [x_a, x_b] over channels (Ca passthrough, Cb = C - Ca transformed); h is the coupling network's output,
[h_t, h_s] (2*Cb channels) when affine, h_t alone (Cb channels) when additive; s = sigmoid(h_s + 2).
  fwd: y_a = x_a, y_b = (x_b + h_t) * s        inv: x_a = y_a, x_b = y_b / s - h_t
Each kernel also copies the passthrough half, so every element is read once and written once (no torch.cat).

fwd/inv: one program per chunk k of sample n's flattened Cb*HW block (grid (nk, B)); it writes that chunk's
sum of log s to ld_part[n, k] once, without atomics, so the log-determinant is bitwise deterministic.
Math runs in float32 (float64 for float64 inputs).
"""
import torch
import triton
import triton.language as tl

BLOCK = 1024  # elements per step; elementwise and memory-bound, so large blocks (and few interpreter programs)


def _acc_dtypes(dtype):
    if dtype == torch.float64:
        return torch.float64, tl.float64
    return torch.float32, tl.float32


@triton.jit
def _sigmoid_parts(u):
    # With e = exp(-|u|) <= 1 nothing overflows: s, 1 - s and log s come without cancellation for any u.
    e = tl.exp(-tl.abs(u))
    r = 1.0 / (1.0 + e)
    pos = u >= 0
    s = tl.where(pos, r, e * r)
    one_minus_s = tl.where(pos, e * r, r)
    log_s = tl.minimum(u, 0.0) - tl.log(1.0 + e)
    return s, one_minus_s, log_s


@triton.jit
def _coupling_kernel(
    x_ptr, h_ptr, y_ptr, ld_part_ptr,
    C, Ca, HW, chunk, nk,
    ACC: tl.constexpr,
    AFFINE: tl.constexpr,
    INVERSE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # x -> y for the forward; for INVERSE, x_ptr holds y and y_ptr receives x.
    k = tl.program_id(0).to(tl.int64)  # int64: offsets may exceed 2^31
    n = tl.program_id(1).to(tl.int64)
    Cb = C - Ca
    na = Ca * HW  # passthrough elements per sample
    nb = Cb * HW  # transformed elements per sample (= the h_t block, and the h_s block)
    x_ptr += n * C * HW
    y_ptr += n * C * HW
    h_ptr += n * (2 * nb if AFFINE else nb)

    start = k * chunk
    end_a = tl.minimum(start + chunk, na)
    end_b = tl.minimum(start + chunk, nb)
    log_s_acc = tl.zeros([BLOCK], dtype=ACC)
    for i0 in range(start, tl.maximum(end_a, end_b), BLOCK):  # stop at the data's end, not the chunk's
        i = i0 + tl.arange(0, BLOCK)
        # Passthrough: element i of x_a, copied by the program that owns element i of x_b
        # (the grid is widened when Ca > Cb so that every element of x_a has an owner).
        mask_a = i < end_a
        tl.store(y_ptr + i, tl.load(x_ptr + i, mask=mask_a), mask=mask_a)

        mask_b = i < end_b
        xb = tl.load(x_ptr + na + i, mask=mask_b, other=0.0).to(ACC)
        ht = tl.load(h_ptr + i, mask=mask_b, other=0.0).to(ACC)
        if AFFINE:
            u = tl.load(h_ptr + nb + i, mask=mask_b, other=0.0).to(ACC) + 2.0
            s, _, log_s = _sigmoid_parts(u)
            if INVERSE:
                yb = xb * (1.0 + tl.exp(-u)) - ht  # y_b / s - h_t
            else:
                yb = (xb + ht) * s
            log_s_acc += tl.where(mask_b, log_s, 0.0)
        else:
            if INVERSE:
                yb = xb - ht
            else:
                yb = xb + ht
        tl.store(y_ptr + na + i, yb.to(y_ptr.dtype.element_ty), mask=mask_b)

    if AFFINE:
        # One writer per partial; programs past nk exist only to copy x_a.
        tl.store(ld_part_ptr + n * nk + k, tl.sum(log_s_acc, 0), mask=k < nk)


def _coupling(x, h, Ca, affine, chunk, inverse):
    assert x.dim() == 4 and x.is_contiguous() and h.is_contiguous() and h.dtype == x.dtype
    B, C, H, W = x.shape
    HW = H * W
    Cb = C - Ca
    assert 0 <= Ca < C and h.shape == (B, 2 * Cb if affine else Cb, H, W)
    assert chunk >= 1
    acc_torch, acc_tl = _acc_dtypes(x.dtype)
    nk = triton.cdiv(Cb * HW, chunk)
    y = torch.empty_like(x)
    ld_part = torch.empty((B, nk), device=x.device, dtype=acc_torch) if affine else None
    # Programs k >= nk (only when Ca > Cb) copy the rest of x_a and write no partial.
    n_prog = max(nk, triton.cdiv(Ca * HW, chunk))
    if B == 0 or n_prog == 0:
        return y, ld_part
    assert B < 65536, "grid axis 1 is limited to 65535"
    _coupling_kernel[(n_prog, B)](
        x, h, y, ld_part, C, Ca, HW, chunk, nk,
        ACC=acc_tl, AFFINE=affine, INVERSE=inverse, BLOCK=min(BLOCK, triton.next_power_of_2(chunk)),
    )
    return y, ld_part


def coupling_fwd(x, h, Ca, affine, chunk):
    return _coupling(x, h, Ca, affine, chunk, inverse=False)


def coupling_inv(y, h, Ca, affine, chunk):
    return _coupling(y, h, Ca, affine, chunk, inverse=True)


@triton.jit
def _coupling_bwd_kernel(
    y_ptr, h_ptr, dy_ptr, dld_ptr, dx_ptr, dh_ptr,
    C, Ca, HW,
    ACC: tl.constexpr,
    AFFINE: tl.constexpr,
    HAS_DLD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1).to(tl.int64)
    Cb = C - Ca
    na = Ca * HW
    nb = Cb * HW
    y_ptr += n * C * HW
    dy_ptr += n * C * HW
    dx_ptr += n * C * HW
    h_ptr += n * (2 * nb if AFFINE else nb)
    dh_ptr += n * (2 * nb if AFFINE else nb)

    i = pid * BLOCK + tl.arange(0, BLOCK)
    mask_a = i < na
    tl.store(dx_ptr + i, tl.load(dy_ptr + i, mask=mask_a), mask=mask_a)

    mask_b = i < nb
    if AFFINE:
        dyb = tl.load(dy_ptr + na + i, mask=mask_b, other=0.0).to(ACC)
        u = tl.load(h_ptr + nb + i, mask=mask_b, other=0.0).to(ACC) + 2.0
        s, one_minus_s, _ = _sigmoid_parts(u)
        g = dyb * s  # dx_b = dh_t
        tl.store(dx_ptr + na + i, g.to(dx_ptr.dtype.element_ty), mask=mask_b)
        tl.store(dh_ptr + i, g.to(dh_ptr.dtype.element_ty), mask=mask_b)
        # d y_b / d h_s = y_b (1 - s); d log s / d h_s = 1 - s
        gs = dyb * tl.load(y_ptr + na + i, mask=mask_b, other=0.0).to(ACC)
        if HAS_DLD:
            gs += tl.load(dld_ptr + n)
        tl.store(dh_ptr + nb + i, (gs * one_minus_s).to(dh_ptr.dtype.element_ty), mask=mask_b)
    else:
        dyb = tl.load(dy_ptr + na + i, mask=mask_b)
        tl.store(dx_ptr + na + i, dyb, mask=mask_b)
        tl.store(dh_ptr + i, dyb, mask=mask_b)


def coupling_bwd(y, h, dy, dld, Ca, affine):
    assert y.dim() == 4 and y.is_contiguous() and dy.shape == y.shape and dy.dtype == y.dtype and dy.is_contiguous()
    B, C, H, W = y.shape
    HW = H * W
    Cb = C - Ca
    assert 0 <= Ca < C and h.shape == (B, 2 * Cb if affine else Cb, H, W) and h.dtype == y.dtype and h.is_contiguous()
    acc_torch, acc_tl = _acc_dtypes(y.dtype)
    has_dld = affine and dld is not None  # the additive coupling has no log-determinant
    if has_dld:
        assert dld.shape == (B,) and dld.dtype == acc_torch and dld.is_contiguous()
    dx = torch.empty_like(y)
    dh = torch.empty_like(h)
    n_prog = triton.cdiv(max(Ca, Cb) * HW, BLOCK)
    if B == 0 or n_prog == 0:
        return dx, dh
    assert B < 65536, "grid axis 1 is limited to 65535"
    _coupling_bwd_kernel[(n_prog, B)](
        y, h, dy, dld if has_dld else None, dx, dh, C, Ca, HW,
        ACC=acc_tl, AFFINE=affine, HAS_DLD=has_dld, BLOCK=BLOCK,
    )
    return dx, dh
