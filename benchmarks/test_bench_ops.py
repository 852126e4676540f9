"""pytest-benchmark hooks for the fused-op benchmarks: `pytest benchmarks/ --benchmark-only`.
Each (op, shape, pass) is timed for the eager reference and for flowkern, grouped so pytest-benchmark shows them side
by side. The suite in run.py adds torch.compile baselines, ratios and plots."""
import pytest
import torch

import bench_actnorm_invconv
import bench_actnorm_invconv_lu
import bench_affine_coupling
import bench_channel_affine
import flowkern
from fused_op_bench import SHAPES, fwd, fwd_bwd

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OPS = {"channel_affine": bench_channel_affine, "actnorm_invconv": bench_actnorm_invconv,
       "actnorm_invconv_lu": bench_actnorm_invconv_lu, "affine_coupling": bench_affine_coupling}


@pytest.mark.parametrize("impl", ["eager", "flowkern"])
@pytest.mark.parametrize("pass_name", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape", SHAPES[DEVICE], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("op", list(OPS))
def test_op(benchmark, op, shape, pass_name, impl):
    inputs, ref, fused, _, _ = OPS[op].case(shape, DEVICE, torch.float32)
    outs = ref(*inputs)
    grads = [torch.randn_like(o) for o in (outs if isinstance(outs, tuple) else (outs,))]
    fn = ref if impl == "eager" else fused
    run = fwd(fn, inputs) if pass_name == "fwd" else fwd_bwd(fn, inputs, grads)
    benchmark.group = f"{op} {'x'.join(map(str, shape))} {pass_name}"
    with flowkern.use_backend("torch" if impl == "eager" else "auto"):
        if DEVICE == "cuda":
            benchmark(lambda: (run(), torch.cuda.synchronize()))
        else:
            benchmark(run)
