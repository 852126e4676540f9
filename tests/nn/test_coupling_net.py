"""The coupling networks: Glow's (ReLU), the VideoFlow reference's (ActNorm + gated activation units), the RFN
thesis's (ActNorm + ReLU)."""
import pytest
import torch
from _helpers import random_level

import flowkern
from flowkern.nn import coupling_network
from flowkern.nn.coupling import GatedUnit


def test_gatu_network_layout_and_zero_output_at_init():
    net = coupling_network(3, 8, 6, "gatu")
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Conv2d", "NetActNorm", "GatedUnit", "Conv2d", "NetActNorm", "GatedUnit", "ZeroConv2d"]
    assert net[0].out_channels == net[3].out_channels == 16 and net[3].in_channels == 8
    x = torch.randn(2, 3, 5, 5)
    assert not net(x).any()  # the zero-initialised last conv: the coupling starts as the identity
    a, b = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    assert torch.allclose(GatedUnit()(torch.cat([a, b], 1)), torch.tanh(a) * torch.sigmoid(b))


def test_unknown_network_is_refused():
    with pytest.raises(ValueError, match=r"expected kind one of \('glow', 'gatu', 'actnorm'\), got 'gelu'"):
        flowkern.FlowStep(4, 8, net="gelu")


def test_actnorm_network_layout_and_zero_output_at_init():
    net = coupling_network(3, 8, 6, "actnorm")
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Conv2d", "NetActNorm", "ReLU", "Conv2d", "NetActNorm", "ReLU", "ZeroConv2d"]
    assert net[0].kernel_size == (3, 3) and net[3].kernel_size == (1, 1) and net[3].in_channels == 8
    assert not net(torch.randn(2, 3, 5, 5)).any()


@pytest.mark.parametrize("net,scale", [("gatu", "sigmoid"), ("actnorm", "sigmoid"), ("actnorm", "tanh")])
def test_steps_invert_and_reversible_gradients_equal_plain_float64(net, scale):
    plain = random_level(6, 3, ctx=2, reversible=False, net=net, scale=scale)
    rev = random_level(6, 3, ctx=2, reversible=True, net=net, scale=scale)
    rev.load_state_dict(plain.state_dict())
    x = torch.randn(3, 6, 4, 6, dtype=torch.float64, requires_grad=True)
    ctx = torch.randn(3, 2, 4, 6, dtype=torch.float64)
    y, ld = plain(x, ctx)
    assert torch.allclose(plain.inverse(y, ctx)[0], x, atol=1e-10)
    R = torch.randn_like(y)
    grads = [torch.autograd.grad((m(x, ctx)[0] * R).sum() + m(x, ctx)[1].sum(), [x] + list(m.parameters()))
             for m in (plain, rev)]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-11)


def test_gatu_network_actnorm_initialises_from_data():
    step = flowkern.FlowStep(4, 8, net="gatu")
    x = torch.randn(16, 4, 6, 6) * 3 + 1
    with torch.no_grad():
        step(x)
    net = step.coupling.nn
    with torch.no_grad():
        h = net[1](net[0](step.invconv(step.actnorm(x)[0])[0][:, :2]))
    assert net[1].is_initialized() and net[4].is_initialized()
    assert torch.allclose(h.mean((0, 2, 3)), torch.zeros(16), atol=1e-4)
    assert torch.allclose(h.std((0, 2, 3)), torch.ones(16), atol=1e-2)
