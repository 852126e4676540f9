"""The Recurrent Flow Network: the ELBO's terms, the thesis's bits/dim, causality, reversible levels, sampling."""
import dataclasses
import math

import pytest
import torch
from _helpers import randomize_

import flowkern

from flowkern.models.rfn import CONFIGS, RFN, RFNConfig, elbo_bits_per_dim, gaussian_kl


def _model(reversible=True, **kw):
    torch.manual_seed(0)
    return randomize_(RFN(dataclasses.replace(CONFIGS["tiny"], reversible=reversible, **kw))).double()


def _clip(B=2, T=4, size=16):
    torch.manual_seed(1)
    return torch.rand(B, T, 1, size, size, dtype=torch.float64) - 0.5


def test_kl_of_equal_gaussians_is_zero_and_matches_torch_distributions():
    m, s = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.rand(3, 2, 4, 4, dtype=torch.float64) + 0.1
    assert torch.equal(gaussian_kl(m, s, m, s), torch.zeros(3, dtype=torch.float64))
    m2, s2 = torch.randn_like(m), torch.rand_like(s) + 0.1
    want = torch.distributions.kl_divergence(torch.distributions.Normal(m, s), torch.distributions.Normal(m2, s2))
    assert torch.allclose(gaussian_kl(m, s, m2, s2), want.flatten(1).sum(1), rtol=1e-12)
    assert (gaussian_kl(m, s, m2, s2) > 0).all()


def test_bits_per_dim_is_kl_plus_nll_over_ln2_dims_and_predicted_frames():
    """A hand-computed case: D = 2 dims, 2 predicted frames, log p(x_t | .) = -1 and -3 nats, KL 0.5 each, 1-bit
    data: (KL + NLL) / (ln 2 * D * (T - 1)) = 5 / (4 ln 2) bits, plus the dequantization's 1 bit per dimension."""
    got = elbo_bits_per_dim(torch.tensor([[-1.0, -3.0]]), torch.tensor([[0.5, 0.5]]), frame_dims=2, n_bits=1)
    assert got.item() == pytest.approx(5 / (4 * math.log(2)) + 1.0, rel=1e-6)


def test_elbo_terms_and_beta():
    m = _model().eval()
    video = _clip()
    g = torch.Generator().manual_seed(3)
    log_px, kl = m.elbo_terms(video, g)
    assert log_px.shape == kl.shape == (2, 3) and (kl > 0).all()
    m.beta = 0.25
    again = m.log_prob_frames(video)  # eval mode: the noise of seed 0, the same on every call
    assert torch.equal(again, m.log_prob_frames(video))
    log_px0, kl0 = m.elbo_terms(video, torch.Generator().manual_seed(0))
    assert torch.allclose(again, log_px0 - 0.25 * kl0, rtol=1e-12)


def test_without_smoothing_frame_t_never_reads_later_frames():
    """The ELBO term of frame t (prior, posterior, flow) depends on x_1..x_t only: no gradient from x_{>t}."""
    m = _model(smoothing=False).eval()
    video = _clip(T=5).requires_grad_(True)
    terms = m.log_prob_frames(video)  # frames 2..5
    for k in range(terms.shape[1]):
        t = k + 1  # the frame this term scores
        g, = torch.autograd.grad(terms[:, k].sum(), video, retain_graph=True)
        assert not g[:, t + 1:].any(), t  # (empty for the last frame)
        assert g[:, t].abs().max() > 0 and g[:, t - 1].abs().max() > 0


def test_smoothing_lets_the_posterior_and_only_it_see_later_frames():
    """With smoothing the posterior of z_2 reads the whole clip (a backward ConvLSTM), so frame 2's KL has a gradient
    from the last frame; the prior never does: p(z_t | z_{t-1}, h_t) at z's given by the posterior is the same
    whatever the later frames are."""
    m = _model(smoothing=True).eval()
    video = _clip(T=5).requires_grad_(True)
    _, kl = m.elbo_terms(video, torch.Generator().manual_seed(0))
    g, = torch.autograd.grad(kl[:, 0].sum(), video)
    assert g[:, 4].abs().max() > 0
    feats, hs, smoothed, _ = m._encode(video)
    assert smoothed[0] is not None and m.smoother is not None
    changed = video.detach().clone()
    changed[:, 3:] = torch.rand_like(changed[:, 3:]) - 0.5
    _, hs2, smoothed2, _ = m._encode(changed)
    assert all(torch.equal(a, b) for a, b in zip(hs[:3], hs2[:3]))  # h_2..h_4 read x_1..x_3 only
    assert not torch.equal(smoothed[0], smoothed2[0])


def test_residual_posterior_centres_q_on_the_prior():
    """res_q: q's mean = p's mean + the posterior network's output; with that output zeroed, frame 2's KL is the std
    mismatch alone (it does not depend on the prior's mean; later frames' do, through z)."""
    m = _model(res_q=True, smoothing=False).eval()
    with torch.no_grad():
        last = m.posterior.net[-1]
        last.weight[:2].zero_()  # the mean channels (mean, raw std) = chunk(2)
        last.bias[:2].zero_()
    video = _clip()
    kl = m.elbo_terms(video, torch.Generator().manual_seed(0))[1]
    with torch.no_grad():
        m.prior.net[-1].bias[:2].add_(3.0)  # move the prior's mean: q moves with it
    assert torch.allclose(kl[:, 0], m.elbo_terms(video, torch.Generator().manual_seed(0))[1][:, 0], rtol=1e-10)
    plain = _model(res_q=False, smoothing=False).eval()
    plain.load_state_dict(m.state_dict())
    assert not torch.allclose(kl[:, 0], plain.elbo_terms(video, torch.Generator().manual_seed(0))[1][:, 0])


def test_latent_overshooting_adds_multi_step_kl_terms():
    """D = 1 is the plain KL; D = 3 averages in the 2- and 3-step priors from where the clip allows (frame 2 has no
    earlier posterior, so its KL is unchanged)."""
    m1 = _model(overshooting=1, smoothing=False).eval()
    m3 = _model(overshooting=3, smoothing=False).eval()
    m3.load_state_dict(m1.state_dict())
    video = _clip(T=5)
    kl1 = m1.elbo_terms(video, torch.Generator().manual_seed(0))[1]
    kl3 = m3.elbo_terms(video, torch.Generator().manual_seed(0))[1]
    assert torch.allclose(kl1[:, 0], kl3[:, 0], rtol=1e-12) and not torch.allclose(kl1[:, 1:], kl3[:, 1:])
    with pytest.raises(ValueError, match="overshooting is a number of steps"):
        RFNConfig(overshooting=0)


@pytest.mark.parametrize("extractor,coupling_scale", [("vgg", "sigmoid"), ("dcgan", "sigmoid"), ("vgg", "tanh")])
def test_reversible_levels_give_plain_autograds_gradients_in_float64(extractor, coupling_scale):
    video = _clip()
    grads = {}
    for reversible in (False, True):
        m = _model(reversible=reversible, extractor=extractor, coupling_scale=coupling_scale).train()
        couplings = [mod for mod in m.modules() if isinstance(mod, flowkern.AffineCoupling)]
        assert couplings and all(c.scale == coupling_scale for c in couplings)
        x = video.clone().requires_grad_(True)
        log_px, kl = m.elbo_terms(x, torch.Generator().manual_seed(5))
        (-(log_px - kl).mean()).backward()
        grads[reversible] = [x.grad] + [p.grad for p in m.parameters()]
    assert all(g is not None for g in grads[True])
    for a, b in zip(grads[False], grads[True]):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_generate_warms_up_on_the_context_then_samples():
    m = _model().eval()
    context = _clip(T=2)
    a = m.generate(context, 3, 0.7, generator=torch.Generator().manual_seed(0))
    b = m.generate(context, 3, 0.7, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 5, 1, 16, 16) and torch.equal(a, b) and torch.equal(a[:, :2], context)
    assert torch.isfinite(a).all() and not torch.equal(a[:, 2], a[:, 3])
    with pytest.raises(ValueError, match="at least one context frame"):
        m.generate(None, 2)


def test_generate_feeds_each_sampled_frame_back_as_a_picture():
    """A sample's far-out values (an inverse flow that expands) must not feed the next step: the extractor sees the
    frame clamped to the data's range; the returned frames are the samples as drawn."""
    m = _model().eval()
    seen = []
    m.extractor.register_forward_pre_hook(lambda mod, args: seen.append(args[0].abs().max().item()))
    m.flow.sample = lambda n, t, ctx, size, g: 100 * torch.ones(n, 1, *size, dtype=torch.float64)
    video = m.generate(_clip(T=2), 3, 0.7, generator=torch.Generator().manual_seed(0))
    assert (video[:, 2:] == 100).all() and max(seen) <= 0.5


def test_bad_configs_and_inputs_are_refused():
    with pytest.raises(ValueError, match="extractor must be one of"):
        RFNConfig(extractor="resnet")
    with pytest.raises(ValueError, match="coupling_scale must be one of"):
        RFNConfig(coupling_scale="exp")
    with pytest.raises(ValueError, match="multiple of 2 \\*\\* levels"):
        RFNConfig(image_size=20, levels=3)
    with pytest.raises(ValueError, match=r"expected a video of shape \(B, T >= 2, 1, 16, 16\)"):
        _model().elbo_terms(_clip(T=1))
