"""flowkern.compat.freia.GlowStep inside the real FrEIA containers (SequenceINN, GraphINN), mixed with FrEIA's own
modules: training, exact inversion, log-Jacobian vs the brute-force Jacobian, conditions, reversible backprop."""
import copy

import pytest
import torch
from _helpers import randomize_

pytest.importorskip("FrEIA", reason="FrEIA is an optional test dependency (pip install FrEIA)")

import FrEIA.framework as Ff  # noqa: E402
import FrEIA.modules as Fm  # noqa: E402

from flowkern.compat.freia import GlowStep  # noqa: E402


def _log_abs_det_brute(f, x):
    """log|det df/dx| per sample, from the full Jacobian of f (float64), for a batch of one."""
    J = torch.autograd.functional.jacobian(lambda v: f(v.view_as(x)).reshape(-1), x.reshape(-1))
    return torch.linalg.slogdet(J)[1]


def _sequence(C, H, W, hidden=8, cond_shapes=(), reversible=False):
    inn = Ff.SequenceINN(C, H, W)
    cond = {"cond": 0, "cond_shape": cond_shapes[0]} if cond_shapes else {}
    inn.append(GlowStep, hidden=hidden, **cond)
    inn.append(Fm.PermuteRandom, seed=0)
    inn.append(GlowStep, hidden=hidden, lu=False, steps=2, reversible=reversible, **cond)
    cond = {"cond": len(cond_shapes) - 1, "cond_shape": cond_shapes[-1]} if cond_shapes else {}
    inn.append(GlowStep, hidden=hidden, affine=False, **cond)
    return inn


def _graph(C, H, W, hidden=8, cond_shape=None):
    nodes = [Ff.InputNode(C, H, W, name="x")]
    cond = [Ff.ConditionNode(*cond_shape, name="c")] if cond_shape else []
    nodes.append(Ff.Node(nodes[-1], GlowStep, {"hidden": hidden}, conditions=cond))
    nodes.append(Ff.Node(nodes[-1], Fm.Split, {"n_sections": 2, "dim": 0}))
    split = nodes[-1]
    nodes.append(Ff.Node(split.out1, GlowStep, {"hidden": hidden}, conditions=cond))
    nodes.append(Ff.Node([split.out0, nodes[-1].out0], Fm.Concat, {"dim": 0}))
    nodes.append(Ff.Node(nodes[-1], Fm.PermuteRandom, {"seed": 1}))
    nodes.append(Ff.Node(nodes[-1], GlowStep, {"hidden": hidden, "steps": 2}, conditions=cond))
    nodes.append(Ff.OutputNode(nodes[-1], name="z"))
    return Ff.GraphINN(nodes + cond)


def _train(inn, data, cond=None, steps=6, lr=5e-3):
    opt = torch.optim.Adam([p for p in inn.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        kw = {} if cond is None else {"c": cond}
        z, log_jac = inn(data, **kw)
        loss = (0.5 * z.pow(2).flatten(1).sum(1) - log_jac).mean() / data[0].numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _data(B, C, H, W):
    # correlated channels and a spatial pattern: something a Glow step can learn quickly
    base = torch.randn(B, 1, H, W)
    return torch.cat([base * (i + 1) + 0.1 * torch.randn(B, 1, H, W) for i in range(C)], 1) + 3.0


def test_glowstep_interface():
    m = GlowStep([(4, 6, 6)], hidden=8)
    assert m.output_dims([(4, 6, 6)]) == [(4, 6, 6)]
    assert len(m.steps) == 1 and m.context_channels == 0
    out, jac = m((torch.randn(2, 4, 6, 6),))
    assert isinstance(out, tuple) and out[0].shape == (2, 4, 6, 6) and jac.shape == (2,)
    assert GlowStep([(4, 6, 6)], [(3, 6, 6), (5,)], hidden=8).context_channels == 8
    with pytest.raises(ValueError, match="condition"):
        GlowStep([(4, 6, 6)], [(3, 5, 5)])  # spatial size must match the input's (FrEIA's convention)
    with pytest.raises(ValueError, match="images"):
        GlowStep([(16,)])
    with pytest.raises(ValueError, match="condition"):
        GlowStep([(4, 6, 6)], [(3, 6, 6)], hidden=8)((torch.randn(2, 4, 6, 6),))  # condition missing


def test_sequence_inn_trains_and_inverts():
    torch.manual_seed(0)
    inn = _sequence(4, 8, 8)
    x = _data(8, 4, 8, 8)
    losses = _train(inn, x)
    assert losses[-1] < losses[1] < losses[0], losses  # after the ActNorm-initialising first step too
    inn.eval()
    with torch.no_grad():
        z, jac = inn(x)
        x_rev, jac_rev = inn(z, rev=True)
    torch.testing.assert_close(x_rev, x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(jac_rev, -jac, rtol=1e-4, atol=1e-3)


def test_sequence_inn_log_jacobian_matches_brute_force():
    torch.manual_seed(1)
    inn = randomize_(_sequence(4, 2, 2), 0.2).double()
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    z, jac = inn(x)
    torch.testing.assert_close(jac, _log_abs_det_brute(lambda v: inn(v)[0], x).view(1), rtol=1e-9, atol=1e-9)
    x_rev, jac_rev = inn(z, rev=True)
    torch.testing.assert_close(x_rev, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(jac_rev, -jac, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(jac_rev, _log_abs_det_brute(lambda v: inn(v, rev=True)[0], z).view(1),
                               rtol=1e-9, atol=1e-9)


def test_graph_inn_trains_inverts_and_log_jacobian():
    torch.manual_seed(2)
    inn = _graph(4, 8, 8)
    x = _data(8, 4, 8, 8)
    losses = _train(inn, x)
    assert losses[-1] < losses[1] < losses[0], losses
    with torch.no_grad():
        z, jac = inn(x)
        x_rev, jac_rev = inn(z, rev=True)
    torch.testing.assert_close(x_rev, x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(jac_rev, -jac, rtol=1e-4, atol=1e-3)

    tiny = randomize_(_graph(4, 2, 2), 0.2).double()
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    _, jac = tiny(x)
    torch.testing.assert_close(jac, _log_abs_det_brute(lambda v: tiny(v)[0], x).view(1), rtol=1e-9, atol=1e-9)


def test_conditional_sequence_inn():
    torch.manual_seed(3)
    # an image condition (FrEIA's convention: the input's spatial size) and a vector one (broadcast over H x W)
    inn = _sequence(4, 8, 8, cond_shapes=[(2, 8, 8), (3,)])
    x = _data(8, 4, 8, 8)
    c = [x[:, :2] * 0.5 + 0.1 * torch.randn(8, 2, 8, 8), torch.randn(8, 3)]
    losses = _train(inn, x, c)
    assert losses[-1] < losses[1] < losses[0], losses
    with torch.no_grad():
        z, jac = inn(x, c=c)
        x_rev, jac_rev = inn(z, c=c, rev=True)
        z_other, _ = inn(x, c=[c[0] + 1.0, c[1]])
    torch.testing.assert_close(x_rev, x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(jac_rev, -jac, rtol=1e-4, atol=1e-3)
    assert not torch.allclose(z_other, z)  # the condition is used

    tiny = randomize_(_sequence(4, 2, 2, cond_shapes=[(2, 2, 2), (3,)]), 0.2).double()
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    c = [torch.randn(1, 2, 2, 2, dtype=torch.float64, requires_grad=True),
         torch.randn(1, 3, dtype=torch.float64, requires_grad=True)]
    z, jac = tiny(x, c=c)
    torch.testing.assert_close(jac, _log_abs_det_brute(lambda v: tiny(v, c=c)[0], x).view(1), rtol=1e-9, atol=1e-9)
    z.sum().backward()
    assert c[0].grad is not None and c[1].grad is not None and c[1].grad.abs().sum() > 0


def test_conditional_graph_inn():
    torch.manual_seed(4)
    tiny = randomize_(_graph(4, 2, 2, cond_shape=(3, 2, 2)), 0.2).double()
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    c = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    z, jac = tiny(x, c=[c])
    torch.testing.assert_close(jac, _log_abs_det_brute(lambda v: tiny(v, c=[c])[0], x).view(1),
                               rtol=1e-9, atol=1e-9)
    x_rev, _ = tiny(z, c=[c], rev=True)
    torch.testing.assert_close(x_rev, x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("conditional", [False, True], ids=["plain", "conditional"])
def test_reversible_block_gradients_match_plain(conditional):
    """reversible=True changes how backward is computed, not what: same loss and gradients as plain autograd."""
    torch.manual_seed(5)
    shapes = [(2, 4, 4), (3,)] if conditional else []
    plain = randomize_(_sequence(4, 4, 4, cond_shapes=shapes, reversible=False), 0.1).double()
    rev = copy.deepcopy(plain)
    for m in rev.modules():
        if isinstance(m, GlowStep):
            m.flow.reversible = True
    x = torch.randn(3, 4, 4, 4, dtype=torch.float64)
    c = [torch.randn(3, *s, dtype=torch.float64) for s in shapes]
    grads = []
    for model in (plain, rev):
        xs = x.clone().requires_grad_(True)
        cs = [t.clone().requires_grad_(True) for t in c]
        z, jac = model(xs, c=cs) if conditional else model(xs)
        (0.5 * z.pow(2).sum() - jac.sum()).backward()
        grads.append([xs.grad] + [t.grad for t in cs] + [p.grad for p in model.parameters() if p.requires_grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-10)
