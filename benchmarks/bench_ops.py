"""Fused-op micro-benchmarks: flowkern vs the pure-torch reference (eager) and torch.compile of the reference,
forward and forward+backward, side by side in one process."""
import torch

import flowkern
from flowkern import ops

# (B, C, H, W) grids: the CPU targets of the kernels issue, and the GPU sizes of VideoFlow-like models
SHAPES = {
    "smoke": [(2, 6, 5, 7)],
    "cpu": [(16, 12, 32, 32), (4, 48, 16, 16)],
    "cuda": [(32, 12, 32, 32), (32, 24, 32, 32), (32, 48, 16, 16), (32, 96, 16, 16), (32, 24, 64, 64)],
}


def _actnorm_invconv_case(shape, device, dtype):
    B, C, H, W = shape
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    s = (torch.rand(C, device=device) + 0.5).requires_grad_(True)
    b = torch.randn(C, device=device, requires_grad=True)
    Wm = torch.linalg.qr(torch.randn(C, C, device=device))[0].requires_grad_(True)
    ldw = torch.zeros((), device=device)  # as a FlowStep with an LU conv passes sum(log|diag U|)
    inputs = (x, s, b, Wm, ldw)
    nbytes = 2 * x.numel() * x.element_size()  # one read of x, one write of y
    return inputs, ops.actnorm_invconv_ref, ops.actnorm_invconv, nbytes, 4 * x.numel() * x.element_size()


def _coupling_case(shape, device, dtype):
    B, C, H, W = shape
    cb = C - C // 2
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    h = torch.randn(B, 2 * cb, H, W, device=device, dtype=dtype, requires_grad=True)
    e = x.element_size()
    fwd_bytes = (2 * x.numel() + h.numel()) * e  # read x, h; write y
    bwd_bytes = (3 * x.numel() + 2 * h.numel()) * e  # read y_b-ish, h_s, dy; write dx, dh (approx.)
    return (x, h), ops.affine_coupling_ref, ops.affine_coupling, fwd_bytes, fwd_bytes + bwd_bytes


CASES = {"actnorm_invconv": _actnorm_invconv_case, "affine_coupling": _coupling_case}


def _fwd(fn, inputs):
    def run():
        with torch.no_grad():
            fn(*inputs)
    return run


def _fwd_bwd(fn, inputs, grads):
    leaves = [t for t in inputs if t.requires_grad]

    def run():
        outs = fn(*inputs)
        torch.autograd.backward(outs, grads)
        for t in leaves:
            t.grad = None
    return run


def _with_backend(name, fn):
    def run():
        with flowkern.use_backend(name):
            fn()
    return run


def _shapes(device, suite):
    return SHAPES["smoke" if suite == "smoke" else ("cuda" if device == "cuda" else "cpu")]


def run(device, timer, suite="quick", compile_baseline=True, progress=None, bandwidth=None):
    """Yield one result row per (op, shape, pass)."""
    dtype = torch.float32
    shapes = _shapes(device, suite)
    for op, make in CASES.items():
        for shape in shapes:
            inputs, ref, fused, fwd_bytes, fb_bytes = make(shape, device, dtype)
            outs = ref(*inputs)
            grads = [torch.randn_like(o) for o in outs]
            compiled = torch.compile(ref, dynamic=False) if compile_baseline else None
            for pass_name, wrap, nbytes in (("fwd", lambda f: _fwd(f, inputs), fwd_bytes),
                                            ("fwd+bwd", lambda f: _fwd_bwd(f, inputs, grads), fb_bytes)):
                candidates = {"eager": _with_backend("torch", wrap(ref)),
                              "flowkern": _with_backend("auto", wrap(fused))}
                if compiled is not None:
                    candidates["compiled"] = _with_backend("torch", wrap(compiled))
                t = timer(candidates)
                with flowkern.use_backend("auto"):
                    backend = flowkern.backend.resolve(inputs[0])
                t_fk = t["flowkern"]
                row = {"bench": "op", "op": op, "shape": "x".join(map(str, shape)), "pass": pass_name,
                       "backend": backend, "eager_ms": 1e3 * t["eager"], "flowkern_ms": 1e3 * t_fk,
                       "speedup_vs_eager": t["eager"] / t_fk}
                if compiled is not None:
                    row.update(compiled_ms=1e3 * t["compiled"], speedup_vs_compiled=t["compiled"] / t_fk)
                if device == "cuda":
                    row["flowkern_GBps"] = nbytes / t_fk / 1e9
                    if bandwidth:
                        row["fraction_of_copy_bw"] = nbytes / t_fk / bandwidth
                if progress is not None:
                    progress.update(1)
                yield row


def count(device, suite):
    return len(CASES) * len(_shapes(device, suite)) * 2
