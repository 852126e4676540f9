"""pytest-benchmark hooks for the fused-op micro-benchmarks: `pytest benchmarks/ --benchmark-only`.
Each (op, shape, pass) is timed for the eager reference and for flowkern, grouped so pytest-benchmark shows them side
by side. The suite in run.py adds torch.compile baselines, ratios and plots."""
import pytest
import torch

import flowkern
from bench_ops import CASES, SHAPES, _fwd, _fwd_bwd

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES_HERE = SHAPES["cuda" if DEVICE == "cuda" else "cpu"]


@pytest.mark.parametrize("impl", ["eager", "flowkern"])
@pytest.mark.parametrize("pass_name", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape", SHAPES_HERE, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("op", list(CASES))
def test_op(benchmark, op, shape, pass_name, impl):
    inputs, ref, fused, _, _ = CASES[op](shape, DEVICE, torch.float32)
    grads = [torch.randn_like(o) for o in ref(*inputs)]
    fn = ref if impl == "eager" else fused
    run = _fwd(fn, inputs) if pass_name == "fwd" else _fwd_bwd(fn, inputs, grads)
    benchmark.group = f"{op} {'x'.join(map(str, shape))} {pass_name}"
    with flowkern.use_backend("torch" if impl == "eager" else "auto"):
        if DEVICE == "cuda":
            benchmark(lambda: (run(), torch.cuda.synchronize()))
        else:
            benchmark(run)
