"""A roofline model of flowkern's fused ops at VideoFlow's shapes on an H100 SXM: bytes, FLOPs, predicted times.

No timing: everything follows from the shapes and from what the kernels read and write: the Triton kernels, which
"auto" picks on a GPU (flowkern/ops/triton/*.py and the torch code around them in flowkern/ops/*.py). A GPU run only
has to confirm it: the fused-op benchmark times these shapes on CUDA (fused_op_bench.SHAPES) and reports
`fraction_of_copy_bw`, to set against `copy_bw_fraction` here.

Shapes: VideoFlow "bair" (models/videoflow.py): 64x64 RGB frames; Glow squeezes to 12 channels at 32x32, splits
off half (6) and squeezes to 24 at 16x16, splits to 12 and squeezes to 48 at 8x8. B = 40 clips x 13 frames = 520.

Per (op, pass, level):
  min_MB      every input the result depends on read once, every output written once (the coupling's backward
              needs only y_b and h_s of y and h; the C x C parameters and per-sample logdets count too).
  impl_MB     the DRAM bytes the implementation moves: min_MB plus what the kernels read twice (channel_affine's
              backward computes dx and dA in two kernels, so dy is read twice), per-chunk partial sums written and
              re-read by their reduction, zero-filled accumulators and logdet buffers, and the C x C parameter algebra
              around actnorm_invconv's kernel. Each kernel starts from DRAM (an 8x8 level's tensors may still sit in
              the 50 MB L2 from the previous kernel: there the model is pessimistic).
  l2_reread_MB  re-reads a kernel arranges to be close in time, assumed to hit L2, not counted in impl_MB: channel
              blocks of one pixel tile re-reading it (C16 / block of them), every tile re-reading A.
  GFLOP       useful FLOPs, an FMA counted as 2: y = A x + c is 2 C^2 per pixel; its backward 2 C^2 (dx) +
              2 C^2 (dA) + C (dc). Elementwise coupling math counts every add/mul/select/exp/log/divide as 1
              (COUPLING_FLOPS_PER_ELEMENT, from the kernels' code).
  GFLOP_exec  what the kernels execute: tl.dot pads both channel dimensions to C16 = C rounded up to 16 (C = 12 and
              24 run as 16 and 32: 1.78x the MACs; 48 as 48), dc is summed once per column block, partials reduced.
  intensity   GFLOP_exec / impl bytes (FLOP per byte). Ridge points at 3.0 TB/s: fp32 22, tf32x3 55, tf32 165.
  *_us        predicted time = max(impl bytes / COPY_BANDWIDTH, compute time), the compute time at three peaks for
              the matrix products: fp32 (CUDA-core FMAs, as the CUDA kernels and an ieee tl.dot run them), tf32x3
              (three TF32 tensor-core MMAs per product, about fp32 accuracy: what the Triton kernels use for fp32,
              KERNEL_PEAK) and tf32 (one MMA: ~1e-3 relative error, too coarse for a flow's logdet; an upper bound).
              Elementwise and reduction FLOPs run at the fp32 peak in every column. fwd+bwd rows sum their passes
              (separate kernels, each bounded on its own).
  binds       which bound sets the predicted time at fp32 / tf32x3 / tf32: mem or compute.
  copy_bw_fraction  impl bytes / predicted time at KERNEL_PEAK / COPY_BANDWIDTH: the fraction of copy bandwidth the
              kernels stream at when they meet their roofline; 1.0 = memory bound.
  peak_needed  compute time at KERNEL_PEAK / memory time: the fraction of that peak the kernels must sustain for
              memory to stay the bound (fp32_peak_needed: the same for an FMA kernel; near or above 1, as at the
              8x8 level, an FMA kernel is compute bound: why the Triton kernels use tf32x3).
  launches    GPU kernels the pass launches. Not in the predicted time: at ~2-5 us each on an eager stream they
              matter at the 8x8 level, whose whole pass is predicted at a few microseconds.
Assumptions: fp32 inputs (DTYPE_BYTES), fp32 accumulators and partials; peaks are dense throughput with no
occupancy loss, and tf32x3's operand splitting (a few CUDA-core ops per loaded element) is left out.
"""
import math

# NVIDIA H100 Tensor Core GPU datasheet, H100 SXM5 column: FP32 67 TFLOPS; TF32 Tensor Core 989 TFLOPS *with
# sparsity*, i.e. 494.7 dense; HBM3 3.35 TB/s.
H100_FP32_FLOPS = 67e12
H100_TF32_FLOPS = 494.7e12
H100_TF32X3_FLOPS = H100_TF32_FLOPS / 3  # three TF32 MMAs (hi*hi + hi*lo + lo*hi) per fp32 product
H100_HBM_PEAK = 3.35e12
# What benchmarks/timing.copy_bandwidth measures on an H100 SXM (bytes read + bytes written by a 1 GiB
# device-to-device copy), ~90% of the HBM3 peak. Pass a GPU run's env["copy_bandwidth_GBps"] to run().
H100_COPY_BANDWIDTH = 3.0e12

DTYPE_BYTES = 4  # fp32 data
ACC_BYTES = 4  # fp32 accumulators, parameters, partials and logdets

# VideoFlow "bair": 64x64 RGB frames, Glow levels=3 (models/videoflow.py, flowkern/nn/glow.py); 40 clips x 13 frames
BATCH = 40 * 13
IN_CHANNELS, IMAGE_SIZE, LEVELS = 3, 64, 3

# Elementwise FLOPs per transformed element of the coupling kernels (flowkern/ops/triton/affine_coupling.py):
# u = h_s + 2 (1); _sigmoid_parts: exp(-|u|) (2), 1 + e (1), 1 / (1 + e) (1), select s or 1 - s (2);
# fwd: log s = min(u, 0) - log(1 + e) (3), (x_b + h_t) * s (2), logdet accumulate (1) -> 13
# inv: 1 / s = (1 + e) [/ e] (2), x_b * inv_s - h_t (2), log s (3) + accumulate (1) -> 14
# bwd: g = dy_b * s (1), dy_b * y_b + dld (2), * (1 - s) (1) -> 11 (unused parts are dead code)
COUPLING_FLOPS_PER_ELEMENT = {"fwd": 13, "inv": 14, "bwd": 11}


def videoflow_shapes(batch=BATCH, channels=IN_CHANNELS, size=IMAGE_SIZE, levels=LEVELS):
    """(B, C, H, W) at each Glow level: squeeze (C*4, H/2), then all but the last level split off half."""
    shapes, c, s = [], channels, size
    for level in range(levels):
        c, s = c * 4, s // 2
        shapes.append((batch, c, s, s))
        if level < levels - 1:
            c //= 2
    return shapes


def _round_up(n, m):
    return -(-n // m) * m


def triton_channel_affine_tiles(C):
    """((fwd/dx) BLOCK_I, BLOCK_K, BLOCK_P, (dA) BLOCK_I, BLOCK_J, BLOCK_P) of the Triton channel_affine kernels for
    fp32: the kernel module's own rule where triton is installed (flowkern works without it)."""
    try:
        import torch
        from flowkern.ops.triton.channel_affine import _config
    except ImportError:
        return tiles_without_triton(C)
    (bi, bk, bp, _), (di, dj, dp, _) = _config(C, torch.float32)
    return bi, bk, bp, di, dj, dp


def tiles_without_triton(C):
    """The same rule as flowkern/ops/triton/channel_affine.py's _config, for a triton-less install: channel blocks
    of 64/32/16 that divide C rounded up to 16."""
    c16 = _round_up(C, 16)

    def block(cap):
        while c16 % cap:
            cap //= 2
        return cap
    b = block(64)
    return b, 16, 64, b, b, 16 if b == 64 else 32


def _pass(min_bytes, impl_bytes, flops, mma_flops, other_flops, launches, l2_bytes=0):
    """One pass. mma_flops may run on tensor cores; other_flops (elementwise, reductions) may not."""
    return dict(min_bytes=min_bytes, impl_bytes=impl_bytes, l2_bytes=l2_bytes, flops=flops, mma_flops=mma_flops,
                other_flops=other_flops, launches=launches)


def channel_affine_passes(shape):
    """{"fwd": ..., "bwd": ...} for y = A x + c per pixel (A C x C), as the Triton kernels run it: channels padded
    to C16 = C rounded up to 16 (both dimensions of every tl.dot), pixel tiles of BLOCK_P."""
    from flowkern.ops.channel_affine import pixel_chunk
    B, C, H, W = shape
    HW, e, a = H * W, DTYPE_BYTES, ACC_BYTES
    N, P = B * C * HW, B * HW
    params = (C * C + C) * a  # A and c, or dA and dc
    c16 = _round_up(C, 16)
    fwd_i, _, fwd_p, dA_i, dA_j, dA_p = triton_channel_affine_tiles(C)

    # fwd (_mix_kernel): read x, A, c; write y. Program (n, pixel tile, output block I): the C16/BLOCK_I programs of
    # a tile run together and re-read its x from L2; every tile's programs read all of A and c (L2).
    tiles = B * math.ceil(HW / fwd_p)
    n_i = c16 // fwd_i
    fwd_pixels = tiles * fwd_p
    mix_mma = 2 * c16 * c16 * fwd_pixels
    fwd = _pass(2 * N * e + params, 2 * N * e + params, 2 * C * C * P, mix_mma, c16 * fwd_pixels, 1,
                l2_bytes=(n_i - 1) * N * e + (tiles - 1) * params)

    # bwd: dx = A^T dy is the same _mix_kernel (reads dy, A; writes dx). _outer_kernel, one program per
    # (chunk, I block, J block), reads dy and x again (dy's second DRAM read; the I and J blocks of a chunk re-read
    # from L2) and writes per-chunk partials of dA and dc; a reduction reads them once and adds them into dA and dc,
    # which the caller zero-fills. Launches: 2 fills, dx, dA partials, their reduction.
    chunk = pixel_chunk("triton", B, HW)
    nq = math.ceil(HW / chunk)
    parts = B * nq
    n_di, n_dj = c16 // dA_i, c16 // dA_j
    outer_pixels = B * sum(_round_up(min(chunk, HW - q * chunk), dA_p) for q in range(nq))
    min_bwd = 3 * N * e + C * C * a + params  # read x, dy, A; write dx, dA, dc
    impl_bwd = (2 * N * e + C * C * a) + 2 * N * e + 2 * parts * params + 3 * params  # dx; dA partials; fill+add
    bwd = _pass(min_bwd, impl_bwd, 4 * C * C * P + C * P,
                mix_mma + 2 * c16 * c16 * outer_pixels,  # dx = A^T dy; dA = dy x^T
                n_dj * c16 * outer_pixels + parts * (C * C + C),  # dc (once per J block); reducing the partials
                5, l2_bytes=(n_i - 1) * N * e + (n_dj - 1) * N * e + (n_di - 1) * N * e + (tiles - 1) * C * C * a)
    return {"fwd": fwd, "bwd": bwd}


def actnorm_invconv_passes(shape):
    """actnorm_invconv = channel_affine's kernels with A = W diag(s), c = A b (ActNormInvConvFunction, the training
    path). What it adds: the C x C parameter algebra around the kernel and the (B,) logdet. fwd: W * s, A @ b,
    |s|, log, sum, + log|det W|, * HW, the logdet expanded to (B,) (8 launches, ~4 C^2 + 6 C floats moved).
    bwd: dA += dc b^T, HW * sum(dld), (dA * W).sum(0), g / s, +, A^T dc, dA * s (9 launches)."""
    B, C, H, W = shape
    a = ACC_BYTES
    inner = channel_affine_passes(shape)
    f, b = inner["fwd"], inner["bwd"]
    N = B * C * H * W * DTYPE_BYTES
    # fwd: inputs x, s, b, W and the scalar log|det W|; outputs y and the (B,) logdet. Floats the algebra reads
    # and writes: W*s 2C^2+C; A@b C^2+2C; |s| 2C; log 2C; sum C+1; + log|det W| 3; * HW 2; expand->(B,) B+1
    fwd_min = 2 * N + (C * C + 2 * C + 1 + B) * a
    fwd_algebra_bytes = (3 * C * C + 8 * C + 7 + B) * a
    fwd_algebra_flops = 3 * C * C + 3 * C + 2
    fwd = _pass(fwd_min, f["impl_bytes"] + fwd_algebra_bytes, f["flops"] + fwd_algebra_flops, f["mma_flops"],
                f["other_flops"] + fwd_algebra_flops, f["launches"] + 8, f["l2_bytes"])
    # bwd: inputs x, dy, dld (B,), s, b, W; outputs dx, ds, db, dW, dlogdet_w. The algebra after the kernel and
    # its partial sums: addr 2C^2+2C; sum(dld) B+1; * HW 2; dA*W 3C^2; sum(0) C^2+C; g/s 2C+1; + 3C; A^T dc
    # C^2+2C; dA*s 2C^2+C
    bwd_min = 3 * N + (2 * C * C + 4 * C + B + 1) * a
    bwd_algebra_bytes = (9 * C * C + 11 * C + B + 4) * a
    bwd_algebra_flops = 7 * C * C + 2 * C + B + 1
    bwd = _pass(bwd_min, b["impl_bytes"] + bwd_algebra_bytes, b["flops"] + bwd_algebra_flops, b["mma_flops"],
                b["other_flops"] + bwd_algebra_flops, b["launches"] + 9, b["l2_bytes"])
    return {"fwd": fwd, "bwd": bwd}


def affine_coupling_passes(shape):
    """{"fwd", "inv", "bwd"} of the affine coupling's tail: x (B, C, H, W), h (B, 2 Cb, H, W) = (h_t, h_s),
    Ca = C // 2 passthrough channels, Cb = C - Ca transformed; as the Triton kernels run it (the CUDA kernels move
    the same bytes, with one more launch for the passthrough copy)."""
    from flowkern.ops.affine_coupling import element_chunk
    B, C, H, W = shape
    HW, e, a = H * W, DTYPE_BYTES, ACC_BYTES
    ca = C // 2
    cb = C - ca
    N, Nb = B * C * HW, B * cb * HW  # all elements; transformed elements (= h_t's, = h_s's)
    nk = math.ceil(cb * HW / element_chunk("triton", B, cb * HW))
    # fwd/inv: read x (or y) and h, write y (or x) and the (B,) logdet. The kernel writes B * nk logdet partials,
    # a torch sum re-reads them; ld = x.new_zeros(B) is filled though the affine path only uses its dtype
    # (+1 launch). inv also negates the (B,) sum (+1 launch, 2 B floats).
    fb_min = 2 * N * e + 2 * Nb * e + B * a
    fb_impl = fb_min + 2 * B * nk * a + B * a
    passes = {}
    for name, extra_launches, extra_bytes in (("fwd", 0, 0), ("inv", 1, 2 * B * a)):
        flops = COUPLING_FLOPS_PER_ELEMENT[name] * Nb + B * (nk - 1)
        passes[name] = _pass(fb_min, fb_impl + extra_bytes, flops, 0, flops, 3 + extra_launches)
    # bwd: reads dy, y_b, h_s, dld; writes dx (dx_a = dy_a is a copy) and dh = (dh_t, dh_s). One launch.
    bwd_bytes = (N + Nb + Nb) * e + B * a + (N + 2 * Nb) * e
    flops = COUPLING_FLOPS_PER_ELEMENT["bwd"] * Nb
    passes["bwd"] = _pass(bwd_bytes, bwd_bytes, flops, 0, flops, 1)
    return passes


OPS = {"channel_affine": channel_affine_passes, "actnorm_invconv": actnorm_invconv_passes,
       "affine_coupling": affine_coupling_passes}
PEAKS = {"fp32": H100_FP32_FLOPS, "tf32x3": H100_TF32X3_FLOPS, "tf32": H100_TF32_FLOPS}
# The Triton kernels' fp32 dots: input_precision="tf32x3" (flowkern/ops/triton/channel_affine.py, _precision)
KERNEL_PEAK = "tf32x3"


def predict(p, bandwidth=H100_COPY_BANDWIDTH, peaks=PEAKS):
    """{peak name: (seconds, "mem" or "compute")} for one pass: max(memory time, compute time). Tensor-core peaks
    apply to the matrix-product FLOPs only; the rest run at the fp32 peak."""
    t_mem = p["impl_bytes"] / bandwidth
    out = {}
    for name, peak in peaks.items():
        t_compute = p["mma_flops"] / peak + p["other_flops"] / H100_FP32_FLOPS
        out[name] = (max(t_mem, t_compute), "mem" if t_mem >= t_compute else "compute")
    return out


def compute_s(p, peak):
    """Seconds of a pass's executed FLOPs with its matrix products at `peak` (a PEAKS key), the rest at fp32."""
    return p["mma_flops"] / PEAKS[peak] + p["other_flops"] / H100_FP32_FLOPS


def _combine(passes):
    return {k: sum(p[k] for p in passes) for k in passes[0]}


def row(op, pass_name, shape, p, bandwidth=H100_COPY_BANDWIDTH, parts=None):
    """One table row. parts: the passes a fwd+bwd row sums (each predicted on its own)."""
    preds = [predict(q, bandwidth) for q in (parts or [p])]
    t = {k: sum(pr[k][0] for pr in preds) for k in PEAKS}
    # per peak; a fwd+bwd row whose passes differ shows both in pass order, e.g. mem+compute
    binds = ["+".join(b) if len(set(b)) > 1 else b[0] for b in ([pr[k][1] for pr in preds] for k in PEAKS)]
    B, C, H, W = shape
    return {"bench": "roofline", "op": op, "pass": pass_name, "level": f"{H}x{W}",
            "shape": "x".join(map(str, shape)),
            "min_MB": p["min_bytes"] / 1e6, "impl_MB": p["impl_bytes"] / 1e6,
            "impl_over_min": p["impl_bytes"] / p["min_bytes"], "l2_reread_MB": p["l2_bytes"] / 1e6,
            "GFLOP": p["flops"] / 1e9, "GFLOP_exec": (p["mma_flops"] + p["other_flops"]) / 1e9,
            "intensity": (p["mma_flops"] + p["other_flops"]) / p["impl_bytes"],
            "mem_us": 1e6 * p["impl_bytes"] / bandwidth,
            "fp32_us": 1e6 * t["fp32"], "tf32x3_us": 1e6 * t["tf32x3"], "tf32_us": 1e6 * t["tf32"],
            "binds": " ".join(binds), "copy_bw_fraction": p["impl_bytes"] / bandwidth / t[KERNEL_PEAK],
            "peak_needed": sum(compute_s(q, KERNEL_PEAK) for q in (parts or [p])) / (p["impl_bytes"] / bandwidth),
            "fp32_peak_needed": sum(compute_s(q, "fp32") for q in (parts or [p])) / (p["impl_bytes"] / bandwidth),
            "launches": p["launches"]}


def run(shapes=None, bandwidth=H100_COPY_BANDWIDTH):
    """Rows (dicts) for every (op, pass, level), fwd+bwd rows included (as the fused-op benchmark times them)."""
    rows = []
    for op, passes_of in OPS.items():
        for shape in shapes or videoflow_shapes():
            passes = passes_of(shape)
            for name, p in passes.items():
                rows.append(row(op, name, shape, p, bandwidth))
            both = [passes["fwd"], passes["bwd"]]
            rows.append(row(op, "fwd+bwd", shape, _combine(both), bandwidth, parts=both))
    return rows


COLUMNS = ["op", "pass", "shape", "min_MB", "impl_MB", "impl_over_min", "l2_reread_MB", "GFLOP", "GFLOP_exec",
           "intensity", "mem_us", "fp32_us", "tf32x3_us", "tf32_us", "binds", "copy_bw_fraction", "peak_needed",
           "fp32_peak_needed", "launches"]


def markdown(rows=None, bandwidth=H100_COPY_BANDWIDTH):
    """The table with a header that states the model and its constants."""
    rows = rows if rows is not None else run(bandwidth=bandwidth)
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    head = [
        "# Roofline: flowkern's fused ops at VideoFlow bair shapes on an H100 SXM (model, no timing)",
        "",
        f"Generated by `python benchmarks/roofline.py` (benchmarks/roofline.py documents every count). Shapes: "
        f"the three Glow levels of VideoFlow bair (64x64 RGB, squeeze/split: 12 ch at 32x32, 24 at 16x16, 48 at "
        f"8x8), B = 40 clips x 13 frames = {BATCH}; fp32 data and accumulators.",
        "",
        f"Constants: copy bandwidth {bandwidth / 1e12:.2f} TB/s (read + write, as timing.copy_bandwidth measures "
        f"it on an H100 SXM; HBM3 peak {H100_HBM_PEAK / 1e12:.2f}); H100 SXM5 datasheet peaks: fp32 FMA "
        f"{H100_FP32_FLOPS / 1e12:.0f} TFLOP/s, TF32 tensor core {H100_TF32_FLOPS / 1e12:.0f} TFLOP/s dense, "
        f"tf32x3 (3 TF32 MMAs per product) {H100_TF32X3_FLOPS / 1e12:.0f} TFLOP/s. An FMA counts as 2 FLOPs.",
        "",
        "min_MB: each input read once, each output written once. impl_MB: DRAM bytes of the Triton kernels (the "
        "GPU default) and the torch ops around them (dy read twice by channel_affine's backward, partial sums "
        "written and re-read, zero fills, logdet buffers, parameter algebra); l2_reread_MB: re-reads assumed to hit "
        "L2. GFLOP: useful; GFLOP_exec: with tl.dot's padding of C to a multiple of 16. *_us = max(impl bytes / "
        "bandwidth, FLOPs / peak), tensor cores for the matrix products only; the Triton kernels run fp32 dots as "
        "tf32x3, the CUDA kernels (C <= 32) as fp32 FMAs. binds: mem or compute at fp32, tf32x3, tf32. "
        "copy_bw_fraction: impl bytes / tf32x3_us / bandwidth (a GPU run's `fraction_of_copy_bw` counts its own "
        "byte estimate, about min_MB, so expect it lower by impl_over_min). peak_needed / fp32_peak_needed: the "
        "fraction of the tf32x3 / fp32 peak the kernels must sustain to stay memory bound. launches: kernels per "
        "pass, not in the predicted time. fwd+bwd rows sum the passes.",
        "",
    ]
    cols = COLUMNS
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(head + lines) + "\n"


if __name__ == "__main__":
    import os
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "roofline-h100-videoflow-bair.md")
    text = markdown()
    print(text)
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}")
