"""affine_coupling (ops/affine_coupling.py) on every backend available here against its reference."""
import importlib

import pytest
import torch
from _helpers import OP_SHAPES, TOL, check_close, grads, kernel_backends, op_cases, rand, rel_err, run_with

import flowkern
from flowkern import ops

acm = importlib.import_module("flowkern.ops.affine_coupling")  # the module: flowkern.ops exports the functions


# the coupling's kinds: Glow's sigmoid scale, the exp scale of a given log-scale, additive
KINDS = pytest.mark.parametrize("affine,scale", [(True, "sigmoid"), (True, "exp"), (False, "sigmoid")],
                                ids=["affine", "affine-exp", "additive"])


@pytest.mark.parametrize("backend,device,dtype", list(op_cases()))
@pytest.mark.parametrize("shape", OP_SHAPES, ids=lambda s: "x".join(map(str, s)))
@KINDS
def test_affine_coupling_fwd_inv_bwd(backend, device, dtype, shape, affine, scale):
    B, C, H, W = shape
    cb = C - C // 2
    x = rand(*shape, dtype=dtype, device=device, requires_grad=True)
    h = rand(B, 2 * cb if affine else cb, H, W, dtype=dtype, device=device, requires_grad=True)
    y, ld = run_with(backend, lambda: ops.affine_coupling(x, h, affine, scale))
    x64, h64 = (t.detach().double().requires_grad_(True) for t in (x, h))
    y_ref, ld_ref = ops.affine_coupling_ref(x64, h64, affine, scale)
    check_close(y, y_ref, dtype, "y")
    assert ld.shape == (B,) and ld.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    if affine:
        check_close(ld, ld_ref, torch.float32 if dtype != torch.float64 else dtype, "logdet")
    else:
        assert torch.count_nonzero(ld) == 0

    R = [torch.randn(y.shape, dtype=torch.float64, device=device), torch.randn(B, dtype=torch.float64, device=device)]
    g = grads(lambda: run_with(backend, lambda: ops.affine_coupling(x, h, affine, scale)), [x, h], R)
    g_ref = grads(lambda: ops.affine_coupling_ref(x64, h64, affine, scale), [x64, h64], R)
    check_close(g[0], g_ref[0], dtype, "dx")
    check_close(g[1], g_ref[1], dtype, "dh")

    # inverse, and its (torch-formula) gradient
    yd = y.detach().requires_grad_(True)
    x2, ld2 = run_with(backend, lambda: ops.affine_coupling_inverse(yd, h, affine, scale))
    y64 = y_ref.detach().requires_grad_(True)
    x2_ref, ld2_ref = ops.affine_coupling_inverse_ref(y64, h64, affine, scale)
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


@pytest.mark.parametrize("backend,device,dtype", list(op_cases()))
@KINDS
def test_affine_coupling_backward_from_the_output(backend, device, dtype, affine, scale):
    """ops.affine_coupling_backward(y, h, dy, dlogdet) gives the reference's input gradients without x."""
    B, C, H, W = 2, 5, 3, 4
    cb = C - C // 2
    x64 = rand(B, C, H, W, dtype=torch.float64, device=device, requires_grad=True)
    h64 = rand(B, 2 * cb if affine else cb, H, W, dtype=torch.float64, device=device, requires_grad=True)
    dy, dld = rand(B, C, H, W, dtype=torch.float64, device=device), rand(B, dtype=torch.float64, device=device)
    y64, ld64 = ops.affine_coupling_ref(x64, h64, affine, scale)
    outs = [(y64, dy)] + ([(ld64, dld)] if affine else [])  # the additive logdet is a constant 0
    dx_ref, dh_ref = torch.autograd.grad([o for o, _ in outs], [x64, h64], [g for _, g in outs])
    y, h = y64.detach().to(dtype), h64.detach().to(dtype)
    dx, dh = run_with(backend, lambda: ops.affine_coupling_backward(y, h, dy.to(dtype), dld, affine, scale))
    assert dx.dtype == dh.dtype == dtype
    check_close(dx, dx_ref, dtype, "dx")
    check_close(dh, dh_ref, dtype, "dh")


def test_the_exp_scale_reference_is_its_definition():
    """scale="exp": y_b = (x_b + h_t) exp(h_s), logdet = sum h_s, written out here independently of the op file."""
    x, h = torch.randn(2, 5, 3, 4, dtype=torch.float64), torch.randn(2, 6, 3, 4, dtype=torch.float64)
    y, ld = ops.affine_coupling_ref(x, h, True, "exp")
    assert torch.equal(y[:, :2], x[:, :2])
    torch.testing.assert_close(y[:, 2:], (x[:, 2:] + h[:, :3]) * h[:, 3:].exp())
    torch.testing.assert_close(ld, h[:, 3:].sum(dim=(1, 2, 3)))
    x2, ld2 = ops.affine_coupling_inverse_ref(y, h, True, "exp")
    torch.testing.assert_close(x2, x)
    torch.testing.assert_close(ld2, -ld)


@pytest.mark.parametrize("op", [ops.affine_coupling, ops.affine_coupling_inverse])
def test_an_unknown_scale_is_refused_by_name(op):
    with pytest.raises(ValueError, match="scale must be one of"):
        op(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), True, "tanh")


@pytest.mark.skipif(not flowkern.native_available(), reason="the C++ extension is not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel", ["affine_coupling_fwd", "affine_coupling_inv"])
def test_cpu_kernel_sums_each_samples_partials_in_chunk_order(kernel, dtype):
    """The CPU kernels write the per-sample logdet themselves (no reduction op after the call): ld[n] is sample n's
    partials added in chunk order, whether or not the caller also asks for the partials, on any thread count."""
    from flowkern.ops.dispatch import launch
    B, C, H, W = 5, 7, 40, 45  # Cb * HW = 7200: two 4096-element chunks per sample, the second one partial
    x, h = torch.randn(B, C, H, W, dtype=dtype), torch.randn(B, 8, H, W, dtype=dtype)
    E, chunk = 4 * H * W, acm.element_chunk("cpu", B, 4 * H * W)
    nk = -(-E // chunk)
    assert nk == 2
    common = dict(x=x, y=torch.empty_like(x), h=h, B=B, C=C, Ca=3, HW=H * W, chunk=chunk, affine=True, exp_scale=False)
    parts, ld_both = torch.full((B, nk), float("nan"), dtype=dtype), torch.full((B,), float("nan"), dtype=dtype)
    launch(kernel, "cpu", **common, ld_part=parts, ld=ld_both)
    want = parts[:, 0].clone()
    for k in range(1, nk):
        want += parts[:, k]
    assert torch.equal(ld_both, want)
    assert rel_err(ld_both, h[:, 4:].double().add(2.0).sigmoid().log().sum((1, 2, 3))) < TOL[dtype] * 10
    threads = torch.get_num_threads()
    for n in (1, 2):
        torch.set_num_threads(n)
        try:
            ld_only = torch.full((B,), float("nan"), dtype=dtype)
            launch(kernel, "cpu", **common, ld=ld_only)
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(ld_only, ld_both)
