"""The op benchmarks' harness: it sets the flowkern backend once around a shape's timing (not per call), which is
right only because the references it times against are plain torch. Checked here on CPU with a stand-in timer;
no timing."""
import os
import sys

import pytest
import torch

import flowkern
from flowkern.ops import dispatch, eager

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import fused_op_bench  # noqa: E402
import run as bench_run  # noqa: E402

sys.path.pop(0)


@pytest.mark.parametrize("bench", bench_run.OP_BENCHMARKS, ids=lambda m: m.__name__)
def test_the_references_never_reach_flowkern(bench, monkeypatch):
    def refuse(*args, **kw):
        raise AssertionError("a reference reached flowkern")
    monkeypatch.setattr(dispatch, "_launch", refuse)
    monkeypatch.setattr(eager, "_module", None)
    for shape in fused_op_bench.SHAPES["smoke"]:
        inputs, ref, fused, _, _ = bench.case(shape, "cpu", torch.float64)
        outs = ref(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
        with pytest.raises(AssertionError, match="reached flowkern"):
            fused(*inputs)  # the same check catches the fused op


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_every_candidate_runs_under_the_benchmark_s_backend(backend):
    seen = []

    def timer(fns):
        for name, fn in fns.items():
            fn()
            seen.append((name, flowkern.backend.get_backend()))
        return {name: 1.0 for name in fns}
    bench = bench_run.OP_BENCHMARKS[-1]
    rows = list(fused_op_bench.run("op", bench.case, "cpu", timer, suite="smoke", compile_baseline=False,
                                   backend=backend))
    assert rows and {b for _, b in seen} == {backend} and flowkern.backend.get_backend() == "auto"
