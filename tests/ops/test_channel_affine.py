"""channel_affine (ops/channel_affine.py) on every backend available here against its reference."""
import pytest
import torch
from _helpers import check_close, op_cases, rand, run_with

import flowkern
from flowkern import ops


@pytest.mark.parametrize("backend,device,dtype", list(op_cases()))
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


@pytest.mark.parametrize("backend,device,dtype", [c for c in op_cases() if c.values[0] == "triton"])
@pytest.mark.parametrize("shape", [(2, 24, 3, 5), (1, 48, 17, 19), (2, 128, 3, 3), (1, 192, 5, 3), (1, 256, 3, 5)],
                         ids=lambda s: "x".join(map(str, s)))
def test_channel_affine_triton_channel_blocks(backend, device, dtype, shape):
    """The Triton kernels tile channels in blocks of 16/32/64 dividing C rounded up to 16 (C = 24, 48, 192 are not
    powers of two; 256 is the maximum), odd pixel counts; 1x48x17x19 spans two backward chunks."""
    C = shape[1]
    x = rand(*shape, dtype=dtype, device=device, requires_grad=True)
    adt = torch.float64 if dtype == torch.float64 else torch.float32
    A = (rand(C, C, dtype=adt, device=device) / C ** 0.5).requires_grad_(True)
    c = rand(C, dtype=adt, device=device, requires_grad=True)
    y = run_with(backend, lambda: ops.channel_affine(x, A, c))
    ins64 = [t.detach().double().requires_grad_(True) for t in (x, A, c)]
    y64 = ops.channel_affine_ref(*ins64)
    check_close(y, y64, dtype, "y")
    R = torch.randn(y.shape, dtype=torch.float64, device=device)
    g = torch.autograd.grad((y.double() * R).sum(), [x, A, c])
    g_ref = torch.autograd.grad((y64 * R).sum(), ins64)
    for name, a, r in zip(["dx", "dA", "dc"], g, g_ref):
        check_close(a, r, dtype, name)
