"""flowkern.compat.normflows.GlowBlock inside the real normflows models (MultiscaleFlow, NormalizingFlow,
ConditionalNormalizingFlow): training, exact inversion, log_det vs the brute-force Jacobian, and the same log_prob as
normflows' own GlowBlock given the same parameters."""
import copy

import pytest
import torch
from _helpers import randomize_

pytest.importorskip("normflows", reason="normflows is an optional test dependency (pip install normflows)")

import normflows as nf  # noqa: E402

from flowkern.compat.normflows import GlowBlock, convert_glow_blocks  # noqa: E402


def _randomize(model, scale=0.2):
    """randomize_, and normflows' own ActNorms marked initialised too."""
    randomize_(model, scale)
    for m in model.modules():
        if hasattr(m, "data_dep_init_done"):  # normflows' ActNorm
            m.data_dep_init_done = torch.tensor(1.0)
    return model


def _log_abs_det_brute(f, x):
    """log|det df/dx| from the full Jacobian of f (float64), for a batch of one; f may return a list of tensors."""
    def flat(v):
        out = f(v.view_as(x))
        return torch.cat([t.reshape(-1) for t in out]) if isinstance(out, (list, tuple)) else out.reshape(-1)
    J = torch.autograd.functional.jacobian(flat, x.reshape(-1))
    return torch.linalg.slogdet(J)[1]


def multiscale(block, input_shape=(2, 8, 8), L=2, K=2, hidden=8):
    """normflows' Glow recipe (its README / examples/glow.ipynb): L levels of K blocks, Squeeze, Merge, Gaussian
    bases; block(channels, hidden) builds one block (nf.flows.GlowBlock or flowkern's)."""
    channels = input_shape[0]
    q0, merges, flows = [], [], []
    for i in range(L):
        flows.append([block(channels * 2 ** (L + 1 - i), hidden) for _ in range(K)] + [nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (channels * 2 ** (L - i), input_shape[1] // 2 ** (L - i), input_shape[2] // 2 ** (L - i))
        else:
            latent = (channels * 2 ** (L + 1), input_shape[1] // 2 ** L, input_shape[2] // 2 ** L)
        q0.append(nf.distributions.DiagGaussian(latent))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


def _data(B, C, H, W):
    base = torch.randn(B, 1, H, W)
    return torch.cat([base * (i + 1) + 0.1 * torch.randn(B, 1, H, W) for i in range(C)], 1) + 2.0


def _train(model, loss_fn, steps=6, lr=5e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_directions_and_log_det_of_one_block():
    """forward = latent -> data, inverse = data -> latent (normflows' convention), each with its own log|det|."""
    torch.manual_seed(0)
    block = _randomize(GlowBlock(4, 8)).double()
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    z, ld_inv = block.inverse(x)
    step = block.steps[0]
    torch.testing.assert_close(z, step(x)[0])  # data -> latent is flowkern's forward (the Glow step order)
    torch.testing.assert_close(ld_inv, _log_abs_det_brute(lambda v: block.inverse(v)[0], x).view(1),
                               rtol=1e-9, atol=1e-9)
    x_rec, ld_fwd = block(z)
    torch.testing.assert_close(x_rec, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld_fwd, -ld_inv, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld_fwd, _log_abs_det_brute(lambda v: block(v)[0], z).view(1), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="scale_map"):
        GlowBlock(4, 8, scale_map="exp")


def test_multiscale_trains_and_inverts():
    torch.manual_seed(1)
    model = multiscale(GlowBlock)
    x = _data(8, 2, 8, 8)
    losses = _train(model, lambda: model.forward_kld(x) / x[0].numel())
    assert losses[-1] < losses[1] < losses[0], losses
    with torch.no_grad():
        z, ld = model.inverse_and_log_det(x)
        x_rec, ld_fwd = model.forward_and_log_det(z)
    torch.testing.assert_close(x_rec, x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ld_fwd, -ld, rtol=1e-4, atol=1e-3)
    samples, log_q = model.sample(4)
    assert samples.shape == (4, 2, 8, 8) and torch.isfinite(log_q).all()


def test_multiscale_log_det_matches_brute_force():
    torch.manual_seed(2)
    model = _randomize(multiscale(GlowBlock, input_shape=(1, 4, 4))).double()
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    z, ld = model.inverse_and_log_det(x)
    torch.testing.assert_close(ld, _log_abs_det_brute(lambda v: model.inverse_and_log_det(v)[0], x).view(1),
                               rtol=1e-9, atol=1e-9)
    x_rec, ld_fwd = model.forward_and_log_det(z)
    torch.testing.assert_close(x_rec, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld_fwd, -ld, rtol=1e-10, atol=1e-10)
    # log_prob = log q0(z) + log|det dz/dx|
    log_q0 = sum(q.log_prob(zi) for q, zi in zip(model.q0, z))
    torch.testing.assert_close(model.log_prob(x, None), log_q0 + ld)


@pytest.mark.parametrize("scale,use_lu", [(True, True), (True, False), (False, True)],
                         ids=["affine-lu", "affine-plain", "additive-lu"])
def test_log_prob_equals_normflows_glowblock_with_same_parameters(scale, use_lu):
    torch.manual_seed(3)
    ref = multiscale(lambda c, h: nf.flows.GlowBlock(c, h, scale=scale, use_lu=use_lu)).double()
    x = _data(6, 2, 8, 8).double()
    ref.log_prob(x, None)  # normflows' ActNorm data-dependent init
    _randomize(ref, 0.1)
    ours = convert_glow_blocks(copy.deepcopy(ref))
    assert not any(isinstance(m, nf.flows.GlowBlock) for m in ours.modules())
    assert sum(isinstance(m, GlowBlock) for m in ours.modules()) == 4
    torch.testing.assert_close(ours.log_prob(x, None), ref.log_prob(x, None), rtol=1e-10, atol=1e-10)
    z, _ = ref.inverse_and_log_det(x)
    for a, b in zip(ours.forward_and_log_det(z), ref.forward_and_log_det(z)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_one_reversible_block_per_level_matches_normflows():
    """A level's K normflows blocks merged into one flowkern block of K steps, trained reversibly: same log_prob
    and the same gradients as plain autograd through normflows' own blocks."""
    torch.manual_seed(4)
    ref = multiscale(nf.flows.GlowBlock, K=3).double()
    x = _data(4, 2, 8, 8).double()
    ref.log_prob(x, None)
    _randomize(ref, 0.1)
    ours = copy.deepcopy(ref)
    for i, level in enumerate(ours.flows):
        merged = GlowBlock.from_normflows(*level[:-1], reversible=True)  # the level's blocks, Squeeze kept
        assert len(merged.steps) == 3 and merged.flow.reversible
        ours.flows[i] = torch.nn.ModuleList([merged, level[-1]])
    results = []
    for model in (ref, ours):
        xs = x.clone().requires_grad_(True)
        lp = model.log_prob(xs, None)
        (-lp.sum()).backward()
        results.append((lp.detach(), xs.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-8, atol=1e-10)
    # parameter gradients, through the parameter map (normflows' list order is latent -> data, flowkern's steps
    # data -> latent; ActNorm's s, t are minus flowkern's log_scale, bias)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)  # noqa: E731
    for ref_level, our_level in zip(ref.flows, ours.flows):
        for block, step in zip(ref_level[:-1], reversed(list(our_level[0].steps))):
            coupling, conv, actnorm = block.flows
            close(step.actnorm.log_scale.grad, -actnorm.s.grad.flatten())
            close(step.actnorm.bias.grad, -actnorm.t.grad.flatten())
            close(step.invconv.log_s.grad, conv.log_S.grad)
            close(step.invconv.lower.grad, torch.tril(conv.L.grad, -1))
            close(step.coupling.nn[0].weight.grad, coupling.flows[1].param_map.net[0].weight.grad)
    for q_ref, q_ours in zip(ref.q0, ours.q0):
        close(q_ours.loc.grad, q_ref.loc.grad)


def test_normalizing_flow_and_conditional():
    torch.manual_seed(5)
    # NormalizingFlow at one resolution
    flow = nf.NormalizingFlow(nf.distributions.DiagGaussian((4, 4, 4)), [GlowBlock(4, 8) for _ in range(2)])
    x = _data(16, 4, 4, 4)
    z, ld = flow.inverse_and_log_det(x)
    torch.testing.assert_close(flow.forward_and_log_det(z)[0], x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(flow.log_prob(x), flow.q0.log_prob(z) + ld)
    # ConditionalNormalizingFlow passes context= to every flow: an image context and a vector one
    for ctx in (x[:, :3] * 0.5, torch.randn(16, 3)):
        cflow = nf.ConditionalNormalizingFlow(nf.distributions.DiagGaussian((4, 4, 4)),
                                              [GlowBlock(4, 8, context_channels=3) for _ in range(2)])
        if ctx.dim() == 4:
            losses = _train(cflow, lambda: cflow.forward_kld(x, ctx) / x[0].numel())
            assert losses[-1] < losses[1] < losses[0], losses
        else:
            cflow.forward_kld(x, ctx)  # ActNorm init
            _randomize(cflow, 0.1)
        with torch.no_grad():
            z, ld = cflow.inverse_and_log_det(x, ctx)
            x_rec, ld_fwd = cflow.forward_and_log_det(z, ctx)
        torch.testing.assert_close(x_rec, x, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ld_fwd, -ld, rtol=1e-4, atol=1e-3)
        z_other, _ = cflow.inverse_and_log_det(x, ctx + 1.0)
        assert not torch.allclose(z_other, z)  # the context is used
