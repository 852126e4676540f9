"""The GPU baselines are fair: on CUDA every candidate is timed with TF32 off and the eager reference
once more with TF32 on; the settings are restored; on CPU nothing changes. Runs on CPU with a stand-in timer (the
TF32 switches exist in every torch build); no timing."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import fused_op_bench  # noqa: E402

sys.path.pop(0)


def _settings():
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def _recording_timer(seen):
    """A timer that records the TF32 settings each candidate runs under, and returns 1 s for each."""
    def timer(fns):
        for name, fn in fns.items():
            fn()
            seen.append((name, _settings()))
        return {name: 1.0 for name in fns}
    return timer


@pytest.mark.parametrize("before", [(True, False), (False, True)])
def test_cuda_times_tf32_off_and_eager_also_on(before):
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
    try:
        seen = []
        candidates = {"eager": lambda: None, "compiled": lambda: None, "flowkern": lambda: None}
        t = fused_op_bench.time_tf32_off(_recording_timer(seen), candidates, "cuda")
        assert set(t) == {"eager", "compiled", "flowkern", "eager_tf32"}
        assert seen == [("eager", (False, False)), ("compiled", (False, False)), ("flowkern", (False, False)),
                        ("eager", (True, True))]
        assert _settings() == before  # restored
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False  # torch's defaults


def test_cpu_is_unchanged():
    seen = []
    before = _settings()
    t = fused_op_bench.time_tf32_off(_recording_timer(seen), {"eager": lambda: None, "flowkern": lambda: None}, "cpu")
    assert set(t) == {"eager", "flowkern"} and seen == [("eager", before), ("flowkern", before)]


def test_settings_restored_when_a_candidate_raises():
    before = _settings()

    def boom():
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        fused_op_bench.time_tf32_off(_recording_timer([]), {"eager": boom}, "cuda")
    assert _settings() == before
