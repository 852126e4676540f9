"""The Recurrent Flow Network: the ELBO's terms, the thesis's bits/dim, causality, reversible levels, sampling."""
import dataclasses
import math

import pytest
import torch
from _helpers import randomize_

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


def test_frame_t_never_reads_later_frames():
    """The ELBO term of frame t (prior, posterior, flow) depends on x_1..x_t only: no gradient from x_{>t}."""
    m = _model().eval()
    video = _clip(T=5).requires_grad_(True)
    terms = m.log_prob_frames(video)  # frames 2..5
    for k in range(terms.shape[1]):
        t = k + 1  # the frame this term scores
        g, = torch.autograd.grad(terms[:, k].sum(), video, retain_graph=True)
        assert not g[:, t + 1:].any(), t  # (empty for the last frame)
        assert g[:, t].abs().max() > 0 and g[:, t - 1].abs().max() > 0


@pytest.mark.parametrize("extractor", ["vgg", "dcgan"])
def test_reversible_levels_give_plain_autograds_gradients_in_float64(extractor):
    video = _clip()
    grads = {}
    for reversible in (False, True):
        m = _model(reversible=reversible, extractor=extractor).train()
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


def test_bad_configs_and_inputs_are_refused():
    with pytest.raises(ValueError, match="extractor must be one of"):
        RFNConfig(extractor="resnet")
    with pytest.raises(ValueError, match="multiple of 2 \\*\\* levels"):
        RFNConfig(image_size=20, levels=3)
    with pytest.raises(ValueError, match=r"expected a video of shape \(B, T >= 2, 1, 16, 16\)"):
        _model().elbo_terms(_clip(T=1))
