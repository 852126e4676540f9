"""actnorm_invconv (ops/actnorm_invconv.py) on every backend available here against its reference."""
import pytest
import torch
from _helpers import OP_SHAPES, TOL, check_close, grads, op_cases, rand, rel_err, run_with

import flowkern
from flowkern import ops


@pytest.mark.parametrize("backend,device,dtype", list(op_cases()))
@pytest.mark.parametrize("shape", OP_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_actnorm_invconv_fwd_inv_bwd(backend, device, dtype, shape):
    B, C, H, W = shape
    if backend == "cuda" and C > ops.max_channels("cuda"):
        with pytest.raises(ValueError, match="at most 32 channels"):
            run_with(backend, lambda: ops.actnorm_invconv(rand(*shape, dtype=dtype, device=device),
                                                          *[torch.ones(C, device=device)] * 2,
                                                          torch.eye(C, device=device)))
        pytest.skip("the CUDA channel_affine kernel takes C <= 32: larger C runs on the Triton tensor-core kernel "
                    "(the refusal is checked above)")
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


@pytest.mark.parametrize("backend,device,dtype", list(op_cases()))
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


@pytest.mark.parametrize("backend,device,dtype", list(op_cases()))
@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_actnorm_invconv_backward_from_the_input(backend, device, dtype, layout):
    """ops.actnorm_invconv_backward gives the reference's gradients (x, s, b, W, log|det W|) without a forward, also
    for a column-major W (a QR factor, as InvConv1x1's init used to be: the kernels read rows)."""
    B, C, H, W = 2, 5, 3, 4
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    x64 = rand(B, C, H, W, dtype=torch.float64, device=device, requires_grad=True)
    s64 = (torch.rand(C, dtype=torch.float64, device=device) + 0.5).requires_grad_(True)
    b64 = rand(C, dtype=torch.float64, device=device, requires_grad=True)
    W64 = rand(C, C, dtype=torch.float64, device=device)
    W64 = (W64 if layout == "rows" else W64.t().contiguous().t()).requires_grad_(True)
    ldw64 = torch.tensor(0.3, dtype=torch.float64, device=device, requires_grad=True)
    dy, dld = rand(B, C, H, W, dtype=torch.float64, device=device), rand(B, dtype=torch.float64, device=device)
    y, ld = ops.actnorm_invconv_ref(x64, s64, b64, W64, ldw64)
    want = torch.autograd.grad([y, ld], [x64, s64, b64, W64, ldw64], [dy, dld])
    got = run_with(backend, lambda: ops.actnorm_invconv_backward(x64.detach().to(dtype), dy.to(dtype), dld,
                                                                 *(t.detach().to(pdt) for t in (s64, b64, W64))))
    for name, a, r in zip(["dx", "ds", "db", "dW", "dlogdet_w"], got, want):
        check_close(a, r, dtype, name)


# ---------------------------------------------------------------------------------------------- LU parametrisation
def _lu_factors(C, device, dtype, requires_grad=True):
    """Random ActNorm + LU conv parameters (log_scale, bias, lower, upper, log_s, P, sign): non-zero everywhere,
    including the masked-out triangles (which must not matter), a random permutation and random signs."""
    g = torch.Generator().manual_seed(C)
    r = lambda *shape, scale=1.0: (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(device, dtype)  # noqa: E731
    P = torch.eye(C, dtype=torch.float64)[torch.randperm(C, generator=g)].to(device, dtype)
    sign = torch.where(torch.rand(C, generator=g) < 0.5, -1.0, 1.0).to(device, dtype)
    learned = [r(C, scale=0.3), r(C), r(C, C, scale=0.3), r(C, C, scale=0.3), r(C, scale=0.3)]
    return [t.requires_grad_(requires_grad) for t in learned] + [P, sign]


@pytest.mark.parametrize("backend,device,dtype", [c for c in op_cases() if c.values[2] in (torch.float32,
                                                                                         torch.float64)])
@pytest.mark.parametrize("shape", OP_SHAPES + [(2, 17, 3, 5)], ids=lambda s: "x".join(map(str, s)))
def test_actnorm_invconv_lu_matches_reference(backend, device, dtype, shape):
    """actnorm_invconv_lu (on the CPU: s, W, the logdet and every parameter gradient in the kernel) against the
    float64 reference: y, logdet, and the gradients of x and of every factor, with the logdet in the loss."""
    B, C, H, W = shape
    if backend == "cuda" and C > ops.max_channels("cuda"):
        pytest.skip("the CUDA channel_affine kernel takes C <= 32 (its refusal is tested for actnorm_invconv)")
    x = rand(*shape, dtype=dtype, device=device, requires_grad=True)
    params = _lu_factors(C, device, dtype)
    x64 = x.detach().double().requires_grad_(True)
    p64 = [p.detach().double().requires_grad_(p.requires_grad) for p in params]
    y, ld = run_with(backend, lambda: ops.actnorm_invconv_lu(x, *params))
    y_ref, ld_ref = ops.actnorm_invconv_lu_ref(x64, *p64)
    check_close(y, y_ref, dtype, "y")
    check_close(ld, ld_ref, dtype, "logdet")
    R = [torch.randn(y.shape, dtype=torch.float64, device=device), torch.randn(B, dtype=torch.float64, device=device)]
    g = grads(lambda: run_with(backend, lambda: ops.actnorm_invconv_lu(x, *params)), [x] + params[:5], R)
    g_ref = grads(lambda: ops.actnorm_invconv_lu_ref(x64, *p64), [x64] + p64[:5], R)
    for name, a, r in zip(["dx", "dlog_scale", "dbias", "dlower", "dupper", "dlog_s"], g, g_ref):
        check_close(a, r, dtype, name)
    # only the strict triangles are parameters of W: the rest gets exactly zero gradient
    assert not torch.triu(g[3]).any() and not torch.tril(g[4]).any()


@pytest.mark.parametrize("backend,device,dtype", [c for c in op_cases() if c.values[2] in (torch.float32,
                                                                                         torch.float64)])
@pytest.mark.parametrize("use", ["y", "logdet", "both"])
def test_actnorm_invconv_lu_backward_from_the_input(backend, device, dtype, use):
    """ops.actnorm_invconv_lu_backward (what reversible backprop calls) gives the reference's gradients without a
    forward, also when only y or only the logdet has an upstream gradient."""
    B, C, H, W = 3, 5, 3, 4
    x64 = rand(B, C, H, W, dtype=torch.float64, device=device, requires_grad=True)
    p64 = _lu_factors(C, device, torch.float64)
    dy = rand(B, C, H, W, dtype=torch.float64, device=device) if use != "logdet" else None
    dld = rand(B, dtype=torch.float64, device=device) if use != "y" else None
    y, ld = ops.actnorm_invconv_lu_ref(x64, *p64)
    outs = [(o, g) for o, g in ((y, dy), (ld, dld)) if g is not None]
    want = torch.autograd.grad([o for o, _ in outs], [x64] + p64[:5], [g for _, g in outs], allow_unused=True)
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    got = run_with(backend, lambda: ops.actnorm_invconv_lu_backward(
        x64.detach().to(dtype), None if dy is None else dy.to(dtype), dld, *(p.detach().to(pdt) for p in p64)))
    for name, a, r in zip(["dx", "dlog_scale", "dbias", "dlower", "dupper", "dlog_s"], got, want):
        if r is None or not r.abs().max():
            assert a is None or not a.abs().max(), name
        else:
            check_close(a, r, dtype, name)


@pytest.mark.parametrize("backend,device", [("cpu", "cpu"), ("torch", "cpu")])
def test_actnorm_invconv_lu_gradcheck_and_double_backward(backend, device):
    """float64 gradcheck and gradgradcheck of actnorm_invconv_lu (the CPU kernel's node differentiates its
    reference under create_graph=True), and of lu_weight, whose closed-form backward must stay differentiable."""
    x = rand(2, 4, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    params = _lu_factors(4, device, torch.float64)
    fn = lambda x, *learned: ops.actnorm_invconv_lu(x, *learned, *params[5:])  # noqa: E731
    with flowkern.use_backend(backend):
        assert torch.autograd.gradcheck(fn, [x] + params[:5])
        assert torch.autograd.gradgradcheck(fn, [x] + params[:5])
    w = lambda lower, upper, log_s: ops.lu_weight(lower, upper, log_s, *params[5:])  # noqa: E731
    assert torch.autograd.gradgradcheck(w, params[2:5])


def test_actnorm_invconv_lu_refuses_bad_arguments():
    x = rand(2, 4, 3, 3, dtype=torch.float32, device="cpu")
    params = _lu_factors(4, "cpu", torch.float32, requires_grad=False)
    not_perm = params[:5] + [params[5] * 2.0, params[6]]
    with flowkern.use_backend("cpu"):
        with pytest.raises(ValueError, match="P must be a permutation matrix"):
            ops.actnorm_invconv_lu(x, *not_perm)
        with pytest.raises(ValueError, match="P must be a permutation matrix"):
            ops.actnorm_invconv_lu_backward(x, x, None, *not_perm)
        with pytest.raises(ValueError, match=r"lower must have shape \(4, 4\)"):
            ops.actnorm_invconv_lu(x, params[0], params[1], params[2][:3], *params[3:])
        with pytest.raises(TypeError, match="sign must be a torch.Tensor"):
            ops.actnorm_invconv_lu(x, *params[:6], 1.0)


def test_actnorm_invconv_lu_batch_split(monkeypatch):
    """Above the launch limit the batch is split: per-sample outputs identical, parameter gradients add up."""
    from flowkern.ops import dispatch
    x = rand(5, 6, 3, 3, dtype=torch.float64, device="cpu")
    params = _lu_factors(6, "cpu", torch.float64, requires_grad=False)
    dy, dld = torch.randn_like(x), torch.randn(5, dtype=torch.float64)

    def passes():
        with flowkern.use_backend("cpu"):
            return (*ops.actnorm_invconv_lu(x, *params), *ops.actnorm_invconv_lu_backward(x, dy, dld, *params))
    whole = passes()
    monkeypatch.setattr(dispatch, "MAX_LAUNCH_BATCH", 2)
    for i, (a, b) in enumerate(zip(whole, passes())):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
