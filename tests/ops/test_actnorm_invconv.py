"""actnorm_invconv (ops/actnorm_invconv.py) on every backend available here against its reference."""
import pytest
import torch
from _helpers import OP_SHAPES, TOL, check_close, grads, op_cases, rand, rel_err, run_with

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
