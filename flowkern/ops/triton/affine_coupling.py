"""Triton kernels for affine_coupling, the Glow coupling's elementwise tail (contract: csrc/kernels.h).

x = [x_a, x_b] over channels (Ca passthrough, Cb = C - Ca transformed); h is the coupling network's output,
[h_t, h_s] (2*Cb channels) when affine, h_t alone (Cb channels) when additive; s = sigmoid(h_s + 2), or with
EXP_SCALE s = exp(h_s) (h_s is then the log-scale itself).
  fwd: y_a = x_a, y_b = (x_b + h_t) * s        inv: x_a = y_a, x_b = y_b / s - h_t
Each kernel also copies the passthrough half, so every element is read once and written once (no torch.cat).

fwd/inv: one program per chunk k of sample n's flattened Cb*HW block (grid (nk, B)); it writes that chunk's
sum of log s to ld_part[n, k] once, without atomics, so the log-determinant is bitwise deterministic.
Math runs in float32 (float64 for float64 inputs).

The launchers take the op's params (the fields of AffineCouplingParams in csrc/kernels.h, tensors as tensors) and
fill the outputs the caller allocated, like the C++ and CUDA kernels.
"""
import torch
import triton
import triton.language as tl

BLOCK = 1024  # elements per step; elementwise and memory-bound, so large blocks (and few interpreter programs)


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def _sigmoid_parts(u):
    """s = sigmoid(u), 1 - s, 1 / s and log s for the forward, inverse and backward alike. With e = exp(-|u|) in
    (0, 1] nothing overflows and nothing cancels: s = 1/(1+e) or e/(1+e), 1 - s the other one."""
    e = tl.exp(-tl.abs(u))
    r = 1.0 / (1.0 + e)
    pos = u >= 0
    s = tl.where(pos, r, e * r)
    one_minus_s = tl.where(pos, e * r, r)
    inv_s = tl.where(pos, 1.0 + e, (1.0 + e) / e)
    log_s = tl.minimum(u, 0.0) - tl.log(1.0 + e)
    return s, one_minus_s, inv_s, log_s


@triton.jit
def _scale_parts(h, EXP_SCALE: tl.constexpr):
    """s, d(log s)/d(h), 1 / s and log s of the coupling's scale from the network's h_s."""
    if EXP_SCALE:
        return tl.exp(h), tl.full(h.shape, 1.0, h.dtype), tl.exp(-h), h
    else:
        return _sigmoid_parts(h + 2.0)


@triton.jit
def _coupling_kernel(
    x_ptr, h_ptr, y_ptr, ld_part_ptr,
    C, Ca, HW, chunk, nk,
    ACC: tl.constexpr,
    AFFINE: tl.constexpr,
    INVERSE: tl.constexpr,
    EXP_SCALE: tl.constexpr,
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
        # Passthrough: element i of x_a, copied by the program that owns element i of x_b (Ca <= Cb, since
        # Ca = C // 2, so every element of x_a has an owner).
        mask_a = i < end_a
        tl.store(y_ptr + i, tl.load(x_ptr + i, mask=mask_a), mask=mask_a)

        mask_b = i < end_b
        xb = tl.load(x_ptr + na + i, mask=mask_b, other=0.0).to(ACC)
        ht = tl.load(h_ptr + i, mask=mask_b, other=0.0).to(ACC)
        if AFFINE:
            hs = tl.load(h_ptr + nb + i, mask=mask_b, other=0.0).to(ACC)
            s, _, inv_s, log_s = _scale_parts(hs, EXP_SCALE)
            if INVERSE:
                yb = xb * inv_s - ht
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
        tl.store(ld_part_ptr + n * nk + k, tl.sum(log_s_acc, 0))  # one writer per partial


def _launch_fwd_or_inv(p, inverse):
    inp, out = (p.y, p.x) if inverse else (p.x, p.y)
    nk = triton.cdiv((p.C - p.Ca) * p.HW, p.chunk)
    if p.B >= 65536:
        raise ValueError(f"affine_coupling (triton): batch {p.B} exceeds the grid limit 65535")
    _coupling_kernel[(nk, p.B)](
        inp, p.h, out, p.ld_part, p.C, p.Ca, p.HW, p.chunk, nk,
        ACC=_acc(inp.dtype), AFFINE=p.affine, INVERSE=inverse, EXP_SCALE=p.affine and p.exp_scale,
        BLOCK=min(BLOCK, triton.next_power_of_2(p.chunk)),
    )


def affine_coupling_fwd(p):
    """y = (x_a, (x_b + h_t) * s) and the logdet partials. p: x, h, y, ld_part (outputs), B, C, Ca, HW, chunk, affine,
    exp_scale."""
    _launch_fwd_or_inv(p, inverse=False)


def affine_coupling_inv(p):
    """x = (y_a, y_b / s - h_t) and the logdet partials. p: y, h, x, ld_part (outputs), B, C, Ca, HW, chunk, affine,
    exp_scale."""
    _launch_fwd_or_inv(p, inverse=True)


@triton.jit
def _coupling_bwd_kernel(
    y_ptr, h_ptr, dy_ptr, dld_ptr, dx_ptr, dh_ptr,
    C, Ca, HW,
    ACC: tl.constexpr,
    AFFINE: tl.constexpr,
    EXP_SCALE: tl.constexpr,
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
        hs = tl.load(h_ptr + nb + i, mask=mask_b, other=0.0).to(ACC)
        s, dlog_s, _, _ = _scale_parts(hs, EXP_SCALE)
        g = dyb * s  # dx_b = dh_t
        tl.store(dx_ptr + na + i, g.to(dx_ptr.dtype.element_ty), mask=mask_b)
        tl.store(dh_ptr + i, g.to(dh_ptr.dtype.element_ty), mask=mask_b)
        # d y_b / d h_s = y_b d(log s)/d(h_s), and d(log s)/d(h_s) is 1 - s (sigmoid) or 1 (exp)
        gs = dyb * tl.load(y_ptr + na + i, mask=mask_b, other=0.0).to(ACC)
        if HAS_DLD:
            gs += tl.load(dld_ptr + n)
        tl.store(dh_ptr + nb + i, (gs * dlog_s).to(dh_ptr.dtype.element_ty), mask=mask_b)
    else:
        dyb = tl.load(dy_ptr + na + i, mask=mask_b)
        tl.store(dx_ptr + na + i, dyb, mask=mask_b)
        tl.store(dh_ptr + i, dyb, mask=mask_b)


def affine_coupling_bwd(p):
    """dx, dh from y, h, dy, dld. p: y, h, dy, dld (or None), dx, dh (outputs), B, C, Ca, HW, affine, exp_scale."""
    has_dld = p.affine and p.dld is not None  # the additive coupling has no log-determinant
    if p.B >= 65536:
        raise ValueError(f"affine_coupling (triton): batch {p.B} exceeds the grid limit 65535")
    _coupling_bwd_kernel[(triton.cdiv((p.C - p.Ca) * p.HW, BLOCK), p.B)](
        p.y, p.h, p.dy, p.dld if has_dld else None, p.dx, p.dh, p.C, p.Ca, p.HW,
        ACC=_acc(p.y.dtype), AFFINE=p.affine, EXP_SCALE=p.affine and p.exp_scale, HAS_DLD=has_dld, BLOCK=BLOCK,
    )


def launch_configs():
    """Every compilation the launchers above can ask for (flowkern.ops.gpu_compile checks them for spills and shared
    memory): each GPU input dtype, affine (sigmoid or exp scale) or additive, forward or inverse, with or without
    dlogdet. C and the shape matter only through the fwd/inv BLOCK, min(BLOCK, next_power_of_2(chunk)) for every
    chunk the op can pick."""
    from flowkern.ops.affine_coupling import element_chunk
    from flowkern.ops.checks import acc_dtype
    from flowkern.ops.gpu_compile import GPU_DTYPES, LaunchConfig, dtype_name, pointer_type

    # chunk >= element_chunk's minimum, any size above it; BLOCK caps the block.
    blocks = {min(BLOCK, triton.next_power_of_2(element_chunk("triton", 1, 1)))}
    while max(blocks) < BLOCK:
        blocks.add(max(blocks) * 2)
    for dtype in GPU_DTYPES:
        data, acc, name = pointer_type(dtype), pointer_type(acc_dtype(dtype)), dtype_name(dtype)
        for affine, exp_scale in ((True, False), (True, True), (False, False)):
            kind = ("exp-scale affine" if exp_scale else "affine") if affine else "additive"
            for inverse in (False, True):
                for block in sorted(blocks):
                    yield LaunchConfig(
                        _coupling_kernel,
                        {"x_ptr": data, "h_ptr": data, "y_ptr": data, "C": "i32", "Ca": "i32", "HW": "i32",
                         "chunk": "i32", "nk": "i32", **({"ld_part_ptr": acc} if affine else {})},
                        {"ACC": _acc(dtype), "AFFINE": affine, "INVERSE": inverse, "EXP_SCALE": exp_scale,
                         "BLOCK": block, **({} if affine else {"ld_part_ptr": None})},
                        None, None,  # Triton's default warps and stages: the launchers pass none
                        f"{name} {kind} {'inv' if inverse else 'fwd'} BLOCK={block}")
            for has_dld in ((True, False) if affine else (False,)):
                yield LaunchConfig(
                    _coupling_bwd_kernel,
                    {"y_ptr": data, "h_ptr": data, "dy_ptr": data, "dx_ptr": data, "dh_ptr": data,
                     "C": "i32", "Ca": "i32", "HW": "i32", **({"dld_ptr": acc} if has_dld else {})},
                    {"ACC": _acc(dtype), "AFFINE": affine, "EXP_SCALE": exp_scale, "HAS_DLD": has_dld,
                     "BLOCK": BLOCK, **({} if has_dld else {"dld_ptr": None})},
                    None, None,
                    f"{name} {kind} bwd{' dld' if has_dld else ''} BLOCK={BLOCK}")
