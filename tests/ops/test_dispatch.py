"""Backend choice and kernel launch (ops/dispatch.py, flowkern.backend): determinism, empty inputs, bad inputs."""
import os

import pytest
import torch
from _helpers import kernel_backends

import flowkern
from flowkern import ops
from flowkern.ops import dispatch


@pytest.mark.parametrize("backend,device", kernel_backends())
def test_bitwise_deterministic(backend, device):
    x = torch.randn(3, 12, 33, 31, device=device, requires_grad=True)
    A = torch.randn(12, 12, device=device, requires_grad=True)
    c = torch.randn(12, device=device, requires_grad=True)
    h = torch.randn(3, 12, 33, 31, device=device, requires_grad=True)

    def once():
        with flowkern.use_backend(backend):
            y = ops.channel_affine(x, A, c)
            z, ld = ops.affine_coupling(y, h)
        loss = (z * torch.linspace(-1, 1, z.numel(), device=device).view_as(z)).sum() + ld.sum()
        return [z.detach(), ld.detach()] + list(torch.autograd.grad(loss, [x, A, c, h]))

    for a, b in zip(once(), once()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["cpu", "auto"])
def test_empty_batch(backend):
    x = torch.randn(0, 4, 3, 3, requires_grad=True)
    with flowkern.use_backend(backend):
        y = ops.channel_affine(x, torch.randn(4, 4), torch.randn(4))
        z, ld = ops.affine_coupling(y, torch.randn(0, 4, 3, 3))
    assert z.shape == (0, 4, 3, 3) and ld.shape == (0,)
    z.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("bad,exc,match", [
    (lambda: ops.channel_affine(torch.randn(2, 3, 4), torch.randn(3, 3)), ValueError, "4-D"),
    (lambda: ops.channel_affine(torch.randn(2, 3, 4, 4), torch.randn(4, 4)), ValueError, r"A must have shape \(3, 3\)"),
    (lambda: ops.channel_affine(torch.randn(2, 3, 4, 4), torch.randn(3, 3), torch.randn(2)), ValueError, "c must"),
    (lambda: ops.channel_affine(torch.ones(2, 3, 4, 4, dtype=torch.int32), torch.randn(3, 3)), TypeError,
     "floating-point"),
    (lambda: ops.channel_affine(torch.randn(2, 3, 4, 4), torch.randn(3, 3, device="meta")), ValueError,
     "one device"),
    (lambda: ops.affine_coupling(torch.randn(2, 4, 3, 3), torch.randn(2, 3, 3, 3)), ValueError, "h must have shape"),
    (lambda: ops.affine_coupling(torch.randn(2, 1, 3, 3), torch.randn(2, 2, 3, 3)), ValueError, "at least 2"),
    (lambda: ops.affine_coupling(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3, device="meta")), ValueError,
     "one device"),
    (lambda: ops.actnorm_invconv(torch.randn(1, 3, 2, 2), torch.ones(2), torch.zeros(3), torch.eye(3)), ValueError,
     r"s must have shape \(3,\)"),
    (lambda: ops.actnorm_invconv(torch.randn(1, 3, 2, 2), torch.ones(3), torch.zeros(3), torch.eye(2)), ValueError,
     r"W must have shape \(3, 3\)"),
    (lambda: ops.actnorm_invconv_inverse(torch.randn(1, 3, 2, 2), torch.ones(3), torch.zeros(3),
                                         torch.eye(3, device="meta")), ValueError, "one device"),
    (lambda: ops.channel_affine([[1.0]], torch.eye(1)), TypeError, "x must be a torch.Tensor"),
    (lambda: ops.affine_coupling(torch.randn(2, 4, 3, 3), torch.ones(2, 4, 3, 3, dtype=torch.int64)), TypeError,
     "h must be a floating-point tensor"),
    (lambda: ops.affine_coupling(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), affine=False), ValueError,
     r"h must have shape \(2, 2, 3, 3\).*additive"),
    (lambda: ops.affine_coupling_inverse(torch.randn(2, 5, 3, 3), torch.randn(2, 5, 3, 3)), ValueError,
     r"h must have shape \(2, 6, 3, 3\)"),
])
def test_bad_inputs_raise_clear_errors(bad, exc, match):
    with pytest.raises(exc, match=match):
        bad()


def test_forced_backend_refuses_what_it_cannot_run():
    x = torch.randn(1, 4, 2, 2, dtype=torch.bfloat16)
    with flowkern.use_backend("cpu"), pytest.raises(TypeError, match="float32 and float64"):
        ops.channel_affine(x, torch.eye(4))
    with flowkern.use_backend("auto"):  # auto falls back to the reference for dtypes the CPU kernels lack
        y = ops.channel_affine(x, torch.eye(4))
    assert torch.equal(y, x)
    if not torch.cuda.is_available():
        with flowkern.use_backend("cuda"), pytest.raises((RuntimeError, ValueError), match="cuda"):
            ops.channel_affine(torch.randn(1, 4, 2, 2), torch.eye(4))


def test_cuda_status_reports_a_reason():
    st = flowkern.cuda_status()
    assert set(st) == {"built", "archs", "available", "devices", "reason"}
    if not st["available"]:
        assert st["reason"]


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_outputs_keep_the_input_dtype(backend, dtype):
    """One rule for every op: data outputs in x's dtype, logdets in float64 for float64 data and float32 otherwise,
    whatever the parameters' dtype."""
    x = torch.randn(2, 4, 3, 3).to(dtype)
    s, b, W = torch.rand(4) + 0.5, torch.randn(4), torch.linalg.qr(torch.randn(4, 4))[0]
    h = torch.randn(2, 4, 3, 3).to(dtype)
    ld_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    with flowkern.use_backend(backend):
        outs = {"channel_affine": (ops.channel_affine(x, W, b), None),
                "actnorm_invconv": ops.actnorm_invconv(x, s, b, W),
                "actnorm_invconv_inverse": ops.actnorm_invconv_inverse(x, s, b, W),
                "affine_coupling": ops.affine_coupling(x, h),
                "affine_coupling_inverse": ops.affine_coupling_inverse(x, h)}
    for name, (y, ld) in outs.items():
        assert y.dtype == dtype, name
        assert ld is None or ld.dtype == ld_dtype, name


@pytest.mark.parametrize("value,ok", [("", True), ("  ", True), ("torch", True), ("CPU", True), ("gpu", False)])
def test_flowkern_backend_environment_variable(value, ok):
    import subprocess
    import sys
    env = {**os.environ, "FLOWKERN_BACKEND": value}
    r = subprocess.run([sys.executable, "-c", "import flowkern; print(flowkern.get_backend())"], env=env,
                       capture_output=True, text=True, cwd=os.path.dirname(__file__))
    if ok:
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == (value.strip().lower() or "auto")
    else:
        assert r.returncode != 0 and "FLOWKERN_BACKEND='gpu' is not a flowkern backend" in r.stderr


def _all_passes(backend, device, B, C=6, H=3, W=5, seed=0, dtype=torch.float32):
    """Outputs and gradients of every kernel pass (channel_affine fwd/bwd, affine_coupling fwd/inv/bwd,
    actnorm_invconv fwd/bwd) at batch B: [y, z, ld, back, ld_inv, u, ld_u, dx, dh, dA, dc, ds, db, dW]."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)  # noqa: E731
    x, h = r(B, C, H, W).requires_grad_(True), r(B, C, H, W).requires_grad_(True)
    A, c = r(C, C).requires_grad_(True), r(C).requires_grad_(True)
    s, b, Wm = (r(C).abs() + 0.5).requires_grad_(True), r(C).requires_grad_(True), r(C, C).requires_grad_(True)
    with flowkern.use_backend(backend):
        y = ops.channel_affine(x, A, c)
        z, ld = ops.affine_coupling(y, h)
        back, ld_inv = ops.affine_coupling_inverse(z.detach(), h.detach())
        u, ld_u = ops.actnorm_invconv(z, s, b, Wm, torch.zeros((), device=device))
    loss = (u * r(*u.shape)).sum() + (ld * r(B)).sum() + (ld_u * r(B)).sum()
    return ([y.detach(), z.detach(), ld.detach(), back, ld_inv, u.detach(), ld_u.detach()]
            + list(torch.autograd.grad(loss, [x, h, A, c, s, b, Wm])))


@pytest.mark.parametrize("backend,device", kernel_backends())
def test_batches_above_the_launch_limit_are_split(backend, device, monkeypatch):
    # The split itself, at a size that runs anywhere: lower the limit to 2 samples per launch, so B = 5 takes three
    # launches. Per-sample outputs must be identical; dA, dc add up over launches (same sums, other grouping).
    whole = _all_passes(backend, device, B=5)
    calls = []
    real = dispatch._launch
    monkeypatch.setattr(dispatch, "_launch", lambda k, b, p: calls.append(p["B"]) or real(k, b, p))
    monkeypatch.setattr(dispatch, "MAX_LAUNCH_BATCH", 2)
    split = _all_passes(backend, device, B=5)
    assert calls and set(calls) == {2, 1}, calls
    for i, (a, b) in enumerate(zip(whole, split)):
        if i >= 9:  # dA, dc, ds, db, dW: sums over the batch, grouped by launch
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(a, b), i


def test_batch_above_65535_runs(monkeypatch):
    # A real batch past a GPU grid axis (65535), on the CPU kernels at the smallest size: two launches, same result
    # as the reference (float64: the parameter gradients sum 65537 samples, float32 rounding would blur a mismatch).
    B = 65537
    calls = []
    real = dispatch._launch
    monkeypatch.setattr(dispatch, "_launch", lambda k, b, p: calls.append(p["B"]) or real(k, b, p))
    got = _all_passes("cpu", "cpu", B=B, C=2, H=1, W=1, dtype=torch.float64)
    assert sorted(set(calls)) == [2, 65535]
    ref = _all_passes("torch", "cpu", B=B, C=2, H=1, W=1, dtype=torch.float64)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
