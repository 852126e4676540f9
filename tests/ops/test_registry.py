"""The torch.library registrations (ops/registry.py): opcheck on every op, and torch.compile of a FlowStep."""
import pytest
import torch

import flowkern
from flowkern.ops import registry


def _opcheck_args(name):
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    A = torch.randn(6, 6, dtype=torch.float64, requires_grad=True)
    c = torch.randn(6, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    dld = torch.randn(2, dtype=torch.float64)
    return {"channel_affine_fwd": (x, A, c, "cpu"),
            "channel_affine_bwd": (x.detach(), dy, A.detach(), "cpu"),
            "affine_coupling_fwd": (x, h, True, "sigmoid", "cpu"),
            "affine_coupling_inv": (x, h, True, "sigmoid", "cpu"),
            "affine_coupling_bwd": (x.detach(), h.detach(), dy, dld, True, "sigmoid", "cpu")}[name]


@pytest.mark.parametrize("name", sorted(registry.OPS))
def test_every_registered_op_passes_opcheck(name):
    torch.library.opcheck(registry.OPS[name], _opcheck_args(name))


@pytest.mark.parametrize("name", ["affine_coupling_fwd", "affine_coupling_inv", "affine_coupling_bwd"])
def test_the_exp_scale_coupling_passes_opcheck(name):
    args = tuple("exp" if a == "sigmoid" else a for a in _opcheck_args(name))
    torch.library.opcheck(registry.OPS[name], args)


def test_every_kernel_has_a_registered_op():
    assert set(registry.OPS) == {"channel_affine_fwd", "channel_affine_bwd", "affine_coupling_fwd",
                                 "affine_coupling_inv", "affine_coupling_bwd"}
    for name in registry.OPS:
        assert hasattr(flowkern._ext._C.cpu, name), name


def _random_step():
    """A FlowStep off its identity init, ActNorm initialised, in eval mode."""
    step = flowkern.FlowStep(6, hidden=16).eval()
    with torch.no_grad():
        for p in step.parameters():
            p.add_(0.05 * torch.randn_like(p))
    step.actnorm.mark_initialized()
    return step


def test_flowstep_compiles_fullgraph_without_breaks():
    torch._dynamo.reset()
    step = _random_step()
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
    assert "flowkern.channel_affine_fwd.default" in targets and "flowkern.affine_coupling_fwd.default" in targets


def test_flowstep_compiles_fullgraph_without_grad():
    """Sampling and evaluation compile too: without grad the eager step uses its cached parameter-derived tensors,
    which a traced call must not touch (their cache key reads version counters)."""
    torch._dynamo.reset()
    step = _random_step()
    x = torch.randn(2, 6, 8, 8)
    flowkern.set_backend("auto")
    with torch.no_grad():
        y_e, ld_e = step(x)
        y_c, ld_c = torch.compile(step, fullgraph=True, backend="aot_eager")(x)
        x_c, ld_inv = torch.compile(step.inverse, fullgraph=True, backend="aot_eager")(y_e)
    torch.testing.assert_close(y_c, y_e, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ld_c, ld_e, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(x_c, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ld_inv, -ld_e, atol=1e-5, rtol=1e-6)
