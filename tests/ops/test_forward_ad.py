"""Forward-mode AD (torch.autograd.forward_ad, torch.func.jvp) through the public ops: the kernels have no
forward-mode formula, so an op given a dual tensor runs its reference, and its outputs carry the reference's
tangents. Before, every path (the C++ entries, the Python launches) dropped the tangent without a word."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import flowkern
from flowkern import ops
from flowkern.ops import eager

from _helpers import kernel_backends


def _rotation(C, g):
    return torch.linalg.qr(torch.randn(C, C, dtype=torch.float64, generator=g))[0]


def _cases(g):
    B, C, H, W = 2, 6, 3, 5
    x = torch.randn(B, C, H, W, dtype=torch.float64, generator=g)
    h = torch.randn(B, C, H, W, dtype=torch.float64, generator=g)
    s = torch.rand(C, dtype=torch.float64, generator=g) + 0.5
    b = torch.randn(C, dtype=torch.float64, generator=g)
    Wm = _rotation(C, g)
    def rand(*shape, scale=0.3):
        return scale * torch.randn(*shape, dtype=torch.float64, generator=g)
    lu = (rand(C), rand(C, scale=1.0), rand(C, C), rand(C, C), rand(C))  # log_scale, bias, lower, upper, log_s
    P = torch.eye(C, dtype=torch.float64)[torch.randperm(C, generator=g)]
    sign = torch.where(torch.rand(C, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    return {  # name: (function of the differentiable inputs, those inputs)
        "channel_affine": (lambda x, A, c: (ops.channel_affine(x, A, c),), (x, Wm * s, b)),
        "actnorm_invconv": (lambda x, s, b, W: ops.actnorm_invconv(x, s, b, W), (x, s, b, Wm)),
        "actnorm_invconv_logdet_w": (lambda x, s, b, W, l: ops.actnorm_invconv(x, s, b, W, l),
                                     (x, s, b, Wm, torch.zeros((), dtype=torch.float64))),
        "actnorm_invconv_inverse": (lambda y, s, b, W: ops.actnorm_invconv_inverse(y, s, b, W), (x, s, b, Wm)),
        "actnorm_invconv_lu": (lambda x, *p: ops.actnorm_invconv_lu(x, *p, P, sign), (x, *lu)),
        "affine_coupling": (lambda x, h: ops.affine_coupling(x, h), (x, h)),
        "affine_coupling_exp": (lambda x, h: ops.affine_coupling(x, 0.3 * h, scale="exp"), (x, h)),
        "affine_coupling_additive": (lambda x, h: ops.affine_coupling(x, h[:, :3], affine=False), (x, h)),
        "affine_coupling_inverse": (lambda y, h: ops.affine_coupling_inverse(y, h), (x, h)),
    }


def _jvp(fn, inputs, tangents):
    with fwAD.dual_level():
        outs = fn(*(fwAD.make_dual(t, d) for t, d in zip(inputs, tangents)))
        return [fwAD.unpack_dual(o) for o in outs]


@pytest.mark.parametrize("use_eager", [True, False], ids=["c_eager", "python"])
@pytest.mark.parametrize("backend,device", kernel_backends())
@pytest.mark.parametrize("case", list(_cases(torch.Generator().manual_seed(0))))
def test_forward_mode_ad_gives_the_reference_tangents(case, backend, device, use_eager, monkeypatch):
    monkeypatch.setattr(eager, "ENABLED", use_eager)
    g = torch.Generator().manual_seed(3)
    fn, inputs = _cases(g)[case]
    inputs = [t.to(device) for t in inputs]
    tangents = [torch.randn(t.shape, dtype=t.dtype, generator=g).to(device) for t in inputs]
    with flowkern.use_backend("torch"):
        want = _jvp(fn, inputs, tangents)
    with flowkern.use_backend(backend):
        got = _jvp(fn, inputs, tangents)
        plain = fn(*inputs)  # no dual level: the fused path, unchanged
    for w, o, p in zip(want, got, plain):
        if w.tangent is None:  # a constant output (the additive coupling's logdet)
            assert o.tangent is None or not o.tangent.any()
        else:
            assert o.tangent is not None, "the tangent was dropped"
            torch.testing.assert_close(o.tangent, w.tangent, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(o.primal, w.primal, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(p, w.primal, rtol=1e-9, atol=1e-10)


def test_func_jvp_through_a_glow_step():
    """torch.func.jvp of a whole FlowStep (ActNorm, LU 1x1 conv, affine coupling) equals the reference backend's."""
    torch.manual_seed(4)
    step = flowkern.nn.FlowStep(6, hidden=16).double()
    for p in step.parameters():
        p.data.normal_(0, 0.1)
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    t = torch.randn_like(x)
    with torch.no_grad():
        step(x)  # ActNorm's data-dependent init: an in-place write, not something to differentiate
    with flowkern.use_backend("torch"):
        want = torch.func.jvp(lambda v: step(v), (x,), (t,))
    got = torch.func.jvp(lambda v: step(v), (x,), (t,))
    for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
