"""Fused ops on every backend available here against the pure-torch reference.

Tolerances are relative Frobenius errors vs a float64 reference: float64 1e-12, float32 1e-5, half types 2e-2.
Triton runs through its CPU interpreter when there is no GPU; CUDA tests skip with the reason when there is none.
"""
import pytest
import torch
from _helpers import kernel_backends, rel_err

import flowkern
from flowkern import ops

SHAPES = [(1, 2, 3, 3), (3, 3, 5, 7), (2, 6, 4, 4), (2, 12, 8, 8), (2, 48, 4, 4), (1, 96, 3, 5)]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 2e-2}
DTYPES = {"cpu": [torch.float32, torch.float64],
          "triton": [torch.float32, torch.float64, torch.float16, torch.bfloat16],
          "cuda": [torch.float32, torch.float64, torch.float16, torch.bfloat16]}


def cases():
    for bk in kernel_backends():
        backend, device = bk.values
        for dtype in DTYPES[backend]:
            yield pytest.param(backend, device, dtype, marks=bk.marks, id=f"{bk.id}-{str(dtype)[6:]}")


def rand(*shape, dtype, device, requires_grad=False):
    return torch.randn(*shape, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_(requires_grad)


def run_with(backend, fn):
    with flowkern.use_backend(backend):
        return fn()


def check_close(got, ref64, dtype, what):
    err = rel_err(got.double().cpu(), ref64.double().cpu())
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g} > {TOL[dtype]:g}"


def grads(out_fn, inputs, seed_like):
    """Gradients of sum(out * R) (R fixed random weights per output) w.r.t. inputs."""
    outs = out_fn()
    loss = sum((o.double() * r).sum() for o, r in zip(outs, seed_like))
    return torch.autograd.grad(loss, inputs)


# ------------------------------------------------------------------------------------------- channel_affine
@pytest.mark.parametrize("backend,device,dtype", list(cases()))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_actnorm_invconv_fwd_inv_bwd(backend, device, dtype, shape):
    B, C, H, W = shape
    x = rand(*shape, dtype=dtype, device=device, requires_grad=True)
    s = (torch.rand(C, dtype=torch.float64) + 0.5).to(device).requires_grad_(True)
    b = rand(C, dtype=torch.float64, device=device, requires_grad=True)
    Wm = (torch.linalg.qr(torch.randn(C, C, dtype=torch.float64))[0] + 0.1 * torch.randn(C, C, dtype=torch.float64))
    Wm = Wm.to(device).requires_grad_(True)
    params = (s, b, Wm)
    pf = [p.float() if dtype != torch.float64 else p for p in params]

    y, ld = run_with(backend, lambda: ops.actnorm_invconv(x, *pf))
    x64 = x.detach().double().requires_grad_(True)
    p64 = [p.detach().clone().requires_grad_(True) for p in params]
    y_ref, ld_ref = ops.actnorm_invconv_ref(x64, *p64)
    check_close(y, y_ref, dtype, "y")
    check_close(ld, ld_ref, torch.float64 if dtype == torch.float64 else torch.float32, "logdet")
    assert y.dtype == dtype and y.is_contiguous()

    # backward: all grads (x, s, b, W), with the logdet in the loss
    R = [torch.randn(y.shape, dtype=torch.float64, device=device), torch.randn(B, dtype=torch.float64, device=device)]
    g = grads(lambda: run_with(backend, lambda: ops.actnorm_invconv(x, *[p.float() if dtype != torch.float64
                                                                         else p for p in params])), [x, *params], R)
    g_ref = grads(lambda: ops.actnorm_invconv_ref(x64, *p64), [x64, *p64], R)
    for name, a, r in zip(["dx", "ds", "db", "dW"], g, g_ref):
        check_close(a, r, dtype, name)

    # inverse
    x2, ld2 = run_with(backend, lambda: ops.actnorm_invconv_inverse(y.detach(), *[p.detach() for p in pf]))
    x2_ref = ops.actnorm_invconv_inverse(y_ref.detach(), *[p.detach() for p in p64])[0]
    cond = torch.linalg.cond(Wm.detach() * s.detach()).item()  # float32 inversion loses ~eps * cond(A)
    err = rel_err(x2.double().cpu(), x2_ref.double().cpu())
    assert err <= TOL[dtype] * max(1.0, cond), f"inverse: relative error {err:.3g}, cond(A) = {cond:.1f}"
    check_close(ld2, -ld_ref.detach(), torch.float32 if dtype != torch.float64 else dtype, "inverse logdet")


@pytest.mark.parametrize("backend,device,dtype", list(cases()))
@pytest.mark.parametrize("use", ["y", "logdet", "both"])
def test_actnorm_invconv_given_logdet_and_partial_outputs(backend, device, dtype, use):
    """A known log|det W| (what an LU conv passes) gets its gradient too, and a loss that uses only y or only the
    logdet gives the reference's gradients (autograd hands the fused backward a None for the unused output)."""
    B, C, H, W = 2, 6, 5, 7
    x = rand(B, C, H, W, dtype=dtype, device=device, requires_grad=True)
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    s = (torch.rand(C, dtype=torch.float64) + 0.5).to(device=device, dtype=pdt).requires_grad_(True)
    b = rand(C, dtype=pdt, device=device, requires_grad=True)
    Wm = torch.linalg.qr(torch.randn(C, C, dtype=torch.float64))[0].to(device=device, dtype=pdt).requires_grad_(True)
    ldw = torch.tensor(0.3, dtype=pdt, device=device, requires_grad=True)
    inputs = [x, s, b, Wm, ldw]
    R = [torch.randn(B, C, H, W, dtype=torch.float64, device=device),
         torch.randn(B, dtype=torch.float64, device=device)]

    def loss(y, ld):
        return ((y.double() * R[0]).sum() if use != "logdet" else 0) + ((ld.double() * R[1]).sum() if use != "y" else 0)

    g = torch.autograd.grad(loss(*run_with(backend, lambda: ops.actnorm_invconv(*inputs))), inputs, allow_unused=True)
    ins64 = [t.detach().double().requires_grad_(True) for t in inputs]
    g_ref = torch.autograd.grad(loss(*ops.actnorm_invconv_ref(*ins64)), ins64, allow_unused=True)
    for name, a, r in zip(["dx", "ds", "db", "dW", "dlogdet_w"], g, g_ref):
        if r is None or not r.abs().max():  # this output's loss does not reach the input
            assert a is None or not a.abs().max(), name
        else:
            check_close(a, r, dtype, name)


@pytest.mark.parametrize("backend,device,dtype", list(cases()))
@pytest.mark.parametrize("with_bias", [True, False])
def test_channel_affine_large_pixels_multiple_chunks(backend, device, dtype, with_bias):
    """HW larger than one backward chunk and one tile, odd size: exercises the partial-sum path."""
    x = rand(2, 5, 37, 41, dtype=dtype, device=device, requires_grad=True)
    A = rand(5, 5, dtype=torch.float32 if dtype != torch.float64 else dtype, device=device, requires_grad=True)
    c = rand(5, dtype=A.dtype, device=device, requires_grad=True) if with_bias else None
    y = run_with(backend, lambda: ops.channel_affine(x, A, c))
    y_ref = ops.channel_affine_ref(x.detach().double(), A.detach().double(), None if c is None else c.detach().double())
    check_close(y, y_ref, dtype, "y")
    R = torch.randn(y.shape, dtype=torch.float64, device=device)
    inputs = [x, A] + ([c] if with_bias else [])
    g = torch.autograd.grad((y.double() * R).sum(), inputs)
    ins64 = [t.detach().double().requires_grad_(True) for t in inputs]
    y64 = ops.channel_affine_ref(ins64[0], ins64[1], ins64[2] if with_bias else None)
    g_ref = torch.autograd.grad((y64 * R).sum(), ins64)
    for a, r in zip(g, g_ref):
        check_close(a, r, dtype, "grad")


# ------------------------------------------------------------------------------------------- coupling
@pytest.mark.parametrize("backend,device,dtype", list(cases()))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "additive"])
def test_affine_coupling_fwd_inv_bwd(backend, device, dtype, shape, affine):
    B, C, H, W = shape
    cb = C - C // 2
    x = rand(*shape, dtype=dtype, device=device, requires_grad=True)
    h = rand(B, 2 * cb if affine else cb, H, W, dtype=dtype, device=device, requires_grad=True)
    y, ld = run_with(backend, lambda: ops.affine_coupling(x, h, affine))
    x64, h64 = (t.detach().double().requires_grad_(True) for t in (x, h))
    y_ref, ld_ref = ops.affine_coupling_ref(x64, h64, affine)
    check_close(y, y_ref, dtype, "y")
    assert ld.shape == (B,) and ld.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    if affine:
        check_close(ld, ld_ref, torch.float32 if dtype != torch.float64 else dtype, "logdet")
    else:
        assert torch.count_nonzero(ld) == 0

    R = [torch.randn(y.shape, dtype=torch.float64, device=device), torch.randn(B, dtype=torch.float64, device=device)]
    g = grads(lambda: run_with(backend, lambda: ops.affine_coupling(x, h, affine)), [x, h], R)
    g_ref = grads(lambda: ops.affine_coupling_ref(x64, h64, affine), [x64, h64], R)
    check_close(g[0], g_ref[0], dtype, "dx")
    check_close(g[1], g_ref[1], dtype, "dh")

    # inverse, and its (torch-formula) gradient
    yd = y.detach().requires_grad_(True)
    x2, ld2 = run_with(backend, lambda: ops.affine_coupling_inverse(yd, h, affine))
    y64 = y_ref.detach().requires_grad_(True)
    x2_ref, ld2_ref = ops.affine_coupling_inverse_ref(y64, h64, affine)
    check_close(x2, x2_ref, dtype, "inverse")
    if affine:
        check_close(ld2, ld2_ref, torch.float32 if dtype != torch.float64 else dtype, "inverse logdet")
    gi = torch.autograd.grad((x2.double() * R[0]).sum() + (ld2.double() * R[1]).sum(), [yd, h])
    gi_ref = torch.autograd.grad((x2_ref * R[0]).sum() + (ld2_ref * R[1]).sum(), [y64, h64])
    check_close(gi[0], gi_ref[0], dtype, "inverse dy")
    check_close(gi[1], gi_ref[1], dtype, "inverse dh")


@pytest.mark.parametrize("backend,device", kernel_backends())
def test_coupling_extreme_scales_stay_finite(backend, device):
    """h_s far out in both tails: sigmoid saturates, log-sigmoid must not become -inf or NaN."""
    x = torch.randn(2, 4, 3, 3, device=device)
    h = torch.randn(2, 4, 3, 3, device=device)
    h[:, 2:] = torch.tensor([-60.0, 60.0, -30.0]).repeat(2, 2, 3, 1)[..., :3].to(device)
    y, ld = run_with(backend, lambda: ops.affine_coupling(x, h))
    y_ref, ld_ref = ops.affine_coupling_ref(x.double(), h.double())
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    assert rel_err(ld.double().cpu(), ld_ref.cpu()) < 1e-6


# ------------------------------------------------------------------------------------------- determinism
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


# ------------------------------------------------------------------------------------------- torch.compile
def test_flowstep_compiles_fullgraph_without_breaks():
    torch._dynamo.reset()
    step = flowkern.FlowStep(6, hidden=16).eval()
    with torch.no_grad():
        for p in step.parameters():
            p.add_(0.05 * torch.randn_like(p))
    step.actnorm.initialized.fill_(True)
    step.actnorm._initialized = True
    x = torch.randn(2, 6, 8, 8, requires_grad=True)
    flowkern.set_backend("auto")  # CPU kernels
    y_e, ld_e = step(x)
    g_e = torch.autograd.grad(y_e.sum() + ld_e.sum(), [x] + list(step.parameters()))
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    y_c, ld_c = compiled(x)
    g_c = torch.autograd.grad(y_c.sum() + ld_c.sum(), [x] + list(step.parameters()))
    assert torch.allclose(y_c, y_e, atol=1e-6) and torch.allclose(ld_c, ld_e, atol=1e-5)
    for a, b in zip(g_c, g_e):
        assert torch.allclose(a, b, atol=1e-5)
    # the fused ops appear as single nodes of the captured graph
    graphs = []
    torch._dynamo.reset()
    torch.compile(step, fullgraph=True, backend=lambda gm, ex: graphs.append(gm) or gm.forward)(x)
    targets = {str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"}
    assert "flowkern.channel_affine.default" in targets and "flowkern.coupling_fwd.default" in targets


def test_custom_ops_pass_opcheck():
    x = torch.randn(2, 6, 5, 7, requires_grad=True)
    A = torch.randn(6, 6, requires_grad=True)
    c = torch.randn(6, requires_grad=True)
    h = torch.randn(2, 6, 5, 7, requires_grad=True)
    import importlib
    ac = importlib.import_module("flowkern.ops.affine_coupling")
    ca = importlib.import_module("flowkern.ops.channel_affine")
    torch.library.opcheck(ca._channel_affine_op, (x, A, c, "cpu"))
    torch.library.opcheck(ac._coupling_fwd_op, (x, h, True, "cpu"))
    torch.library.opcheck(ac._coupling_inv_op, (x, h, True, "cpu"))


# ------------------------------------------------------------------------------------------- bad inputs
def test_non_contiguous_and_channels_last_are_handled():
    x = torch.randn(2, 6, 5, 7)
    A, c = torch.randn(6, 6), torch.randn(6)
    ref = ops.channel_affine_ref(x, A, c)
    with flowkern.use_backend("cpu"):
        y1 = ops.channel_affine(x.to(memory_format=torch.channels_last), A, c)
        y2 = ops.channel_affine(x.transpose(2, 3).contiguous().transpose(2, 3), A, c)
        h = torch.randn(2, 6, 7, 5).transpose(2, 3)
        z, ld = ops.affine_coupling(x.to(memory_format=torch.channels_last), h)
    assert torch.allclose(y1, ref, atol=1e-5) and torch.allclose(y2, ref, atol=1e-5)
    z_ref, ld_ref = ops.affine_coupling_ref(x, h)
    assert torch.allclose(z, z_ref, atol=1e-5) and torch.allclose(ld, ld_ref, atol=1e-4)


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
