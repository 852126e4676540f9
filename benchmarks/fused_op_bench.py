"""The harness every bench_<op>.py uses: flowkern vs the pure-torch reference (eager) and torch.compile of the
reference, forward and forward+backward, side by side in one process.

On CUDA every candidate runs with TF32 off, so fp32 convolutions and matmuls compute in fp32 as flowkern's kernels
do (cuDNN allows TF32 for convolutions by default); the eager reference is timed once more with TF32 on
(eager_tf32_ms, speedup_vs_eager_tf32), so both are reported. On CPU TF32 does not exist: nothing changes."""
import contextlib

import torch

import flowkern

# (B, C, H, W) grids: the CPU targets of the kernels, and the GPU sizes of VideoFlow-like models; the last three
# are VideoFlow bair's levels over 40 clips x 13 frames, the shapes benchmarks/roofline.py predicts
SHAPES = {
    "smoke": [(2, 6, 5, 7)],
    "cpu": [(16, 12, 32, 32), (4, 48, 16, 16)],
    "cuda": [(32, 12, 32, 32), (32, 24, 32, 32), (32, 48, 16, 16), (32, 96, 16, 16), (32, 24, 64, 64),
             (520, 12, 32, 32), (520, 24, 16, 16), (520, 48, 8, 8)],
}


def shapes(device, suite):
    return SHAPES["smoke" if suite == "smoke" else ("cuda" if device == "cuda" else "cpu")]


def fwd(fn, inputs):
    def run():
        with torch.no_grad():
            fn(*inputs)
    return run


def fwd_bwd(fn, inputs, grads):
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def run():
        outs = fn(*inputs)
        torch.autograd.backward(outs if isinstance(outs, tuple) else (outs,), grads)
        for t in leaves:
            t.grad = None
    return run


@contextlib.contextmanager
def tf32(enabled: bool):
    """cuDNN convolutions and CUDA matmuls with TF32 on or off for fp32 inputs; the previous settings restored."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def time_tf32_off(timer, candidates: dict, device: str, baseline: str = "eager") -> dict:
    """timer(candidates) ({name: seconds}). On CUDA with TF32 off, and `baseline` timed once more with TF32 on, as
    "<baseline>_tf32". The settings wrap the timer, not each call: switching them costs microseconds, as much as a
    fused op at the smallest shapes."""
    if device != "cuda":
        return timer(candidates)
    with tf32(False):  # torch.compile's first call (in the timer's warm-up) compiles under these settings too
        t = timer(candidates)
    with tf32(True):
        t[baseline + "_tf32"] = timer({baseline: candidates[baseline]})[baseline]
    return t


def run(op, case, device, timer, suite="quick", compile_baseline=True, progress=None, bandwidth=None, backend="auto",
        shape_list=None):
    """Yield one result row per (shape, pass) of `op`. case(shape, device, dtype) returns (inputs, reference, fused,
    bytes moved by the forward, bytes moved by forward + backward). backend: the flowkern backend to time ("auto", or a
    forced "cuda" / "triton" / "cpu"); shape_list: the shapes (default: the suite's)."""
    for shape in shape_list or shapes(device, suite):
        inputs, ref, fused, fwd_bytes, fb_bytes = case(shape, device, torch.float32)
        outs = ref(*inputs)
        grads = [torch.randn_like(o) for o in (outs if isinstance(outs, tuple) else (outs,))]
        compiled = torch.compile(ref, dynamic=False) if compile_baseline else None
        for pass_name, wrap, nbytes in (("fwd", lambda f: fwd(f, inputs), fwd_bytes),
                                        ("fwd+bwd", lambda f: fwd_bwd(f, inputs, grads), fb_bytes)):
            candidates = {"eager": wrap(ref), "flowkern": wrap(fused)}
            if compiled is not None:
                candidates["compiled"] = wrap(compiled)
            # One backend setting around the whole timing, not a context manager per call (~5% of a fused CPU
            # fwd+bwd at these sizes, as harness cost): the references are plain torch, they never consult it
            # (tests/test_bench_harness.py).
            with flowkern.use_backend(backend):
                t = time_tf32_off(timer, candidates, device)
                resolved = flowkern.backend.resolve(inputs[0])
            t_fk = t["flowkern"]
            row = {"bench": "op", "op": op, "shape": "x".join(map(str, shape)), "pass": pass_name,
                   "backend": resolved, "eager_ms": 1e3 * t["eager"], "flowkern_ms": 1e3 * t_fk,
                   "speedup_vs_eager": t["eager"] / t_fk}
            if compiled is not None:
                row.update(compiled_ms=1e3 * t["compiled"], speedup_vs_compiled=t["compiled"] / t_fk)
            if "eager_tf32" in t:
                row.update(eager_tf32_ms=1e3 * t["eager_tf32"], speedup_vs_eager_tf32=t["eager_tf32"] / t_fk)
            if device == "cuda":
                row["flowkern_GBps"] = nbytes / t_fk / 1e9
                if bandwidth:
                    row["fraction_of_copy_bw"] = nbytes / t_fk / bandwidth
            if progress is not None:
                progress.update(1)
            yield row


def count(device, suite):
    """Rows one op yields."""
    return len(shapes(device, suite)) * 2
