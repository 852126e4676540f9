"""The roofline model (benchmarks/roofline.py): its shapes are VideoFlow's, its byte and FLOP counts follow the ops'
definitions and kernels, its predictions are the roofline of those counts. No timing."""
import importlib.util
import math
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32 = 4


def _load(name):
    path = os.path.join(ROOT, "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"flowkern_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


roofline = _load("roofline")
SHAPES = roofline.videoflow_shapes()


def test_shapes_are_videoflow_bairs_levels():
    sys.path.insert(0, ROOT)
    try:
        from models.videoflow import CONFIGS, VideoFlow
    finally:
        sys.path.remove(ROOT)
    cfg = CONFIGS["bair"]
    with torch.device("meta"):
        model = VideoFlow(cfg)
    size = cfg.image_size
    want = []
    for flow in model.glow.flows:
        size //= 2
        want.append((40 * 13, flow.steps[0].num_channels, size, size))
    assert SHAPES == want == [(520, 12, 32, 32), (520, 24, 16, 16), (520, 48, 8, 8)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_channel_affine_counts(shape):
    B, C, H, W = shape
    N, P = B * C * H * W, B * H * W
    p = roofline.channel_affine_passes(shape)
    params = (C * C + C) * F32  # A and c (fwd), dA and dc (bwd)
    assert p["fwd"]["min_bytes"] == 2 * N * F32 + params  # read x, write y
    assert p["fwd"]["impl_bytes"] == p["fwd"]["min_bytes"]  # one read, one write: nothing extra
    assert p["bwd"]["min_bytes"] == 3 * N * F32 + C * C * F32 + params  # read x, dy, A; write dx, dA, dc
    from flowkern.ops.channel_affine import pixel_chunk
    parts = B * math.ceil(H * W / pixel_chunk("triton", B, H * W))
    # dy read a second time (dx and dA are separate kernels), partials written and re-read, dA and dc zero-filled
    # then read and written by the reduction
    assert p["bwd"]["impl_bytes"] - p["bwd"]["min_bytes"] == N * F32 + 2 * parts * params + 2 * params
    assert p["fwd"]["flops"] == 2 * C * C * P
    assert p["bwd"]["flops"] == 4 * C * C * P + C * P
    for q in p.values():  # tl.dot pads C to a power of two >= 16: never less work than the math
        assert q["mma_flops"] + q["other_flops"] >= q["flops"]


def test_unpadded_channel_count_executes_the_useful_flops():
    shape = (8, 16, 16, 16)  # C = 16 and H*W a multiple of every pixel tile
    p = roofline.channel_affine_passes(shape)
    assert p["fwd"]["mma_flops"] == p["fwd"]["flops"]
    assert p["bwd"]["mma_flops"] == p["bwd"]["flops"] - 16 * 8 * 16 * 16  # all but dc's adds


def test_coupling_backward_reads_only_what_it_needs():
    B, C, H, W = SHAPES[0]
    cb = C - C // 2
    N, Nb = B * C * H * W, B * cb * H * W
    p = roofline.affine_coupling_passes(SHAPES[0])
    assert p["fwd"]["min_bytes"] == (2 * N + 2 * Nb) * F32 + B * F32  # x, h = (h_t, h_s), y, logdet
    # dy, y_b, h_s, dld in; dx, dh out: y_a and h_t do not enter the backward
    assert p["bwd"]["min_bytes"] == (N + 2 * Nb + N + 2 * Nb) * F32 + B * F32
    assert p["fwd"]["mma_flops"] == 0  # elementwise: no tensor-core FLOPs


def test_actnorm_invconv_is_channel_affine_plus_parameter_algebra():
    for shape in SHAPES:
        inner, outer = roofline.channel_affine_passes(shape), roofline.actnorm_invconv_passes(shape)
        for name in ("fwd", "bwd"):
            assert outer[name]["mma_flops"] == inner[name]["mma_flops"]
            extra = outer[name]["impl_bytes"] - inner[name]["impl_bytes"]
            assert 0 < extra < 0.01 * inner[name]["impl_bytes"]  # C x C algebra: under 1% of the bytes
            assert outer[name]["launches"] > inner[name]["launches"]  # but launches they will


def test_prediction_is_the_max_of_the_two_bounds():
    p = roofline.channel_affine_passes(SHAPES[-1])["bwd"]
    for bandwidth in (1e9, 3e12, 1e18):
        t_mem = p["impl_bytes"] / bandwidth
        for name, (t, bound) in roofline.predict(p, bandwidth).items():
            t_compute = p["mma_flops"] / roofline.PEAKS[name] + p["other_flops"] / roofline.H100_FP32_FLOPS
            assert t == pytest.approx(max(t_mem, t_compute))
            assert bound == ("mem" if t_mem >= t_compute else "compute")
    assert {b for _, b in roofline.predict(p, 1e9).values()} == {"mem"}
    assert {b for _, b in roofline.predict(p, 1e18).values()} == {"compute"}


def test_rows():
    rows = roofline.run()
    assert len(rows) == 3 * (3 + 3 + 4)  # levels x (fwd, bwd, fwd+bwd; the coupling also inv)
    by = {(r["op"], r["pass"], r["shape"]): r for r in rows}
    for r in rows:
        assert r["min_MB"] <= r["impl_MB"]
        times = [r["mem_us"], r["tf32_us"], r["tf32x3_us"], r["fp32_us"]]  # a faster peak is never slower
        assert times[0] > 0 and all(t0 <= t1 * (1 + 1e-12) for t0, t1 in zip(times, times[1:]))
        assert r["copy_bw_fraction"] == pytest.approx(r["mem_us"] / r["tf32x3_us"])  # the kernels' dots: tf32x3
        if r["pass"] == "fwd+bwd":  # separate kernels: times and bytes add up
            fwd, bwd = by[(r["op"], "fwd", r["shape"])], by[(r["op"], "bwd", r["shape"])]
            for k in ("impl_MB", "fp32_us", "tf32_us", "launches"):
                assert r[k] == pytest.approx(fwd[k] + bwd[k])
    text = roofline.markdown(rows)
    assert text.count("\n| ") == len(rows) + 1  # header row + one per row


def test_triton_less_tiles_match_the_triton_kernels():
    kernels = pytest.importorskip("flowkern.ops.triton.channel_affine")
    for C in (1, 12, 24, 48, 64, 100, 128, 256):
        (bi, bk, bp, _), (di, dj, dp, _) = kernels._config(C, torch.float32)
        assert roofline.tiles_without_triton(C) == (bi, bk, bp, di, dj, dp)


def test_run_py_has_a_roofline_section(tmp_path):
    run = _load("run")
    sections = run.main(["--suite", "smoke", "--device", "cpu", "--only", "roofline", "--out", str(tmp_path / "r")])
    assert len(sections) == 1 and len(next(iter(sections.values()))) == len(roofline.run())
