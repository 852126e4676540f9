"""Backend choice and kernel launch (ops/dispatch.py, flowkern.backend): determinism, empty inputs, bad inputs."""
import pytest
import torch
from _helpers import kernel_backends

import flowkern
from flowkern import ops


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
