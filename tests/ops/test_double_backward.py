"""Second derivatives through the fused ops (Hessian-vector products, gradient penalties) on every kernel backend:
the eager backward switches to a differentiable formula when create_graph=True."""
import pytest
import torch
from _helpers import kernel_backends, randomize_

import flowkern
from flowkern import ops

CPU_BACKENDS = [p for p in kernel_backends() if p.values[1] == "cpu" or torch.cuda.is_available()]


def _inputs(device, *shapes):
    return [torch.randn(*s, dtype=torch.float64, device=device).requires_grad_(True) for s in shapes]


@pytest.mark.parametrize("backend,device", CPU_BACKENDS)
@pytest.mark.parametrize("op", ["channel_affine", "actnorm_invconv", "affine_coupling", "affine_coupling_inverse",
                                "additive_coupling", "exp_scale_coupling"])
def test_gradgradcheck(backend, device, op):
    if op == "channel_affine":
        args = _inputs(device, (2, 3, 3, 4), (3, 3), (3,))
        fn = ops.channel_affine
    elif op == "actnorm_invconv":
        x, b, W = _inputs(device, (2, 3, 3, 4), (3,), (3, 3))
        s = (torch.rand(3, dtype=torch.float64, device=device) + 0.5).requires_grad_(True)
        args, fn = [x, s, b, W], ops.actnorm_invconv
    else:
        affine = op != "additive_coupling"
        args = _inputs(device, (2, 5, 3, 2), (2, 6 if affine else 3, 3, 2))
        fwd = ops.affine_coupling_inverse if op == "affine_coupling_inverse" else ops.affine_coupling
        scale = "exp" if op == "exp_scale_coupling" else "sigmoid"
        fn = lambda x, h: fwd(x, h, affine, scale)  # noqa: E731
    with flowkern.use_backend(backend):
        assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("backend,device", CPU_BACKENDS)
def test_flowstep_hessian_vector_product_and_gradient_penalty_match_reference(backend, device):
    step = randomize_(flowkern.FlowStep(4, hidden=8, context_channels=2)).double().to(device)
    x, ctx = _inputs(device, (2, 4, 3, 3), (2, 2, 3, 3))
    params = list(step.parameters())
    v = [torch.randn_like(p) for p in params]

    def second_order(name):
        with flowkern.use_backend(name):
            y, ld = step(x, ctx)
            loss = (y ** 2).sum() - ld.sum()
            g = torch.autograd.grad(loss, params + [x], create_graph=True)
            hvp = torch.autograd.grad(g[:-1], params, v, retain_graph=True)  # Hessian-vector product
            penalty = torch.autograd.grad((g[-1] ** 2).sum(), params + [ctx])  # gradient penalty on the input
        return hvp + penalty

    for got, want in zip(second_order(backend), second_order("torch")):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
