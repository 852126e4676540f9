"""VideoFlow: likelihood structure, sampling/likelihood agreement, memory-saving modes, ablation options."""
import dataclasses
import math

import pytest
import torch

import flowkern
from flowkern.models import VIDEOFLOW_CONFIGS, VideoFlow
from flowkern.memory import saved_tensor_bytes

TINY = VIDEOFLOW_CONFIGS["tiny"]


def model(dtype=torch.float32, **kw):
    torch.manual_seed(0)
    m = VideoFlow(dataclasses.replace(TINY, **kw)).to(dtype)
    with torch.no_grad():  # leave the (near-identity) init: random weights make the prior non-trivial
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for mod in m.modules():
        if isinstance(mod, flowkern.ActNorm2d):
            mod.mark_initialized()
    return m


def video(B=2, T=5, dtype=torch.float32):
    return (torch.rand(B, T, 3, 16, 16, dtype=dtype) - 0.5)


def test_log_prob_shapes_and_every_parameter_learns():
    m = model()
    v = video()
    lp = m.log_prob_frames(v)
    assert lp.shape == (2, 5) and torch.isfinite(lp).all()
    (-lp.mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    assert torch.allclose(m.log_prob(v), lp.sum(1))


@pytest.mark.parametrize("pad_context", [False, True])
def test_prior_is_causal(pad_context):
    """log p(x_t | x_<t) must not change when a later frame changes, and must change when an earlier one does."""
    m = model(pad_context=pad_context).eval()
    v = video()
    lp = m.log_prob_frames(v)
    w = v.clone()
    w[:, 3] = torch.rand_like(w[:, 3]) - 0.5
    lp2 = m.log_prob_frames(w)
    assert torch.allclose(lp[:, :3], lp2[:, :3], atol=1e-4)
    assert not torch.allclose(lp[:, 4], lp2[:, 4], atol=1e-3)  # frame 4 looks back at frame 3


@pytest.mark.parametrize("advect", [0, 3])
@pytest.mark.parametrize("given", [2, 1])
@pytest.mark.parametrize("pad_context", [False, True])
def test_generation_uses_the_likelihood_prior(pad_context, given, advect):
    """At temperature 0 every sampled latent is its prior mean: re-encoding the generated frames must give latents
    equal to the means that the likelihood computes for them (same prior in both directions), also for a frame
    sampled after fewer than n latents (pad_context: a zero-padded window)."""
    m = model(torch.float64, pad_context=pad_context, advect=advect).eval()
    ctx = video(T=given, dtype=torch.float64)
    gen = m.generate(ctx, 5 - given, temperature=0.0)
    assert gen.shape == (2, 5, 3, 16, 16) and torch.equal(gen[:, :given], ctx)
    zs, hs, _ = m.glow.encode_levels(gen.flatten(0, 1))
    for level, z in enumerate(zs):
        z = z.view(2, 5, *z.shape[1:])
        h = hs[level].view(2, 5, *hs[level].shape[1:]) if level < len(hs) else None
        mean, _ = m._level_prior(level, z, h)
        assert torch.allclose(z[:, given:], mean[:, given:], atol=1e-8), level


def test_unconditional_sampling_and_temperature():
    m = model().eval()
    a = m.generate(None, 3, temperature=0.0, batch_size=2)
    b = m.generate(None, 3, temperature=0.0, batch_size=2)
    assert a.shape == (2, 3, 3, 16, 16) and torch.equal(a, b)
    c = m.generate(None, 3, temperature=1.0, batch_size=2)
    assert not torch.equal(a, c)


def test_generation_warns_when_the_inverse_diverges():
    """A sampled latent far off the training distribution blows up the affine inverse: generate must say so
    (the written videos would otherwise show NaN frames as silent black)."""
    import warnings
    m = model().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a healthy model samples without a warning
        m.generate(None, 2, temperature=0.5, batch_size=2)
    with torch.no_grad():
        m.first_priors[-1].mean.fill_(3e38)  # the top latent of the first frame at float32's edge
    with pytest.warns(RuntimeWarning, match=r"2 of 2 videos have non-finite frames \(first at frame 0\)"):
        v = m.generate(None, 2, temperature=0.0, batch_size=2)
    assert not torch.isfinite(v[:, 0]).all()


def test_memory_saving_modes_give_the_same_gradients():
    """Reversible flow + checkpointed prior must not change the math (float64)."""
    v = video(dtype=torch.float64)
    grads = []
    for rev, ck in ((False, False), (True, True)):
        m = model(torch.float64, reversible=rev, checkpoint_prior=ck)
        lp = m.log_prob_frames(v).sum()
        grads.append([lp.detach()] + list(torch.autograd.grad(lp, list(m.parameters()))))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-11)


def test_training_memory_grows_by_latents_not_activations():
    def saved(T, memory_saving):
        m = model(reversible=memory_saving, checkpoint_prior=memory_saving)
        v = video(B=1, T=T)
        return saved_tensor_bytes(lambda: m.log_prob_frames(v).sum())
    per_frame_plain = (saved(8, False) - saved(4, False)) / 4
    per_frame_saving = (saved(8, True) - saved(4, True)) / 4
    frame_bytes = 3 * 16 * 16 * 4
    assert per_frame_saving < 0.1 * per_frame_plain
    assert per_frame_saving <= 12 * frame_bytes  # a few latent-sized tensors per frame


@pytest.mark.parametrize("opts", [dict(skip=False), dict(gated=False), dict(dilations=(1,)), dict(affine=False),
                                  dict(context=1), dict(coupling_net="gatu"), dict(cond_kernel=3),
                                  dict(prior_channels=None), dict(advect=3), dict(advect=5, pad_context=True),
                                  dict(advect=3, advect_corr=True, pad_context=True),
                                  dict(advect=3, advect_corr=True, advect_mixture=True, pad_context=True)])
def test_ablation_options(opts):
    m = model(**opts)
    lp = m.log_prob_frames(video(T=4))
    assert torch.isfinite(lp).all()
    (-lp.mean()).backward()


def test_out_of_sequence_scoring_matches_bits_per_pixel():
    m = model().eval()
    v = video(T=5)
    with torch.no_grad():
        oos = m.out_of_sequence_bpp(v[:, :2], v[:, 2:])
        direct = flowkern.bits_per_dim(m.log_prob_frames(v[:, :3])[:, 2], m.frame_dims, TINY.n_bits)
    assert oos.shape == (2, 3)
    assert torch.allclose(oos[:, 0], direct, atol=1e-4)


def test_bad_video_shape_is_refused():
    with pytest.raises(ValueError, match=r"\(B, T, 3, 16, 16\)"):
        model().log_prob_frames(torch.rand(2, 3, 16, 16))


def test_a_one_latent_window_uses_one_temporal_tap():
    """With n = 1 the prior's convs are 1x3x3 (a second tap would only ever see padding); with n = 2 they are
    2x3x3 and the older latent matters."""
    one = model(context=1)
    branch = one.priors[0].blocks[0].branches[0]
    assert branch.conv1.weight.shape[2] == 1 and branch.conv3.weight.shape[2] == 1
    two = model(context=2).eval()
    assert two.priors[0].blocks[0].branches[0].conv1.weight.shape[2] == 2
    v = video(T=3)
    w = v.clone()
    w[:, 0] = torch.rand_like(w[:, 0]) - 0.5
    with torch.no_grad():
        assert not torch.allclose(two.log_prob_frames(v)[:, 2], two.log_prob_frames(w)[:, 2], atol=1e-3)


def test_zero_initialised_3x3_conditioning():
    """cond_kernel=3: the reference's zero-initialised 3x3 conv on h; the prior starts unconditioned on h and the
    conv still learns."""
    torch.manual_seed(0)
    m = VideoFlow(dataclasses.replace(TINY, cond_kernel=3))
    prior = m.priors[0]
    assert prior.cond.kernel_size == (3, 3) and not prior.cond.weight.any()
    prev = torch.randn(2, TINY.context, *m.latent_shapes[0])
    h = torch.randn(2, prior.cond.in_channels, *m.latent_shapes[0][1:])
    with torch.no_grad():  # past the zero-initialised output layer, so gradients reach the conditioning conv
        for p in prior.out.parameters():
            p.add_(0.05 * torch.randn_like(p))
    mean, logs = prior(prev, h)
    assert torch.equal(mean, prior(prev, 5 * h)[0])
    (mean.square().sum() + logs.sum()).backward()
    assert prior.cond.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="cond_kernel 1 or 3"):
        VideoFlow(dataclasses.replace(TINY, cond_kernel=5))


def test_pad_context_predicts_frame_two_with_the_prior_network():
    """pad_context: frame 2 (one previous latent, n = 2) comes from the prior network over [0, z_1], so it reads
    frame 1; without it, from the first-frame prior, which does not."""
    v = video(T=3)
    w = v.clone()
    w[:, 0] = torch.rand_like(w[:, 0]) - 0.5
    for pad, reads_frame_one in ((True, True), (False, False)):
        m = model(pad_context=pad).eval()
        assert m.first_conditioned == (1 if pad else 2)
        with torch.no_grad():
            a, b = m.log_prob_frames(v)[:, 1], m.log_prob_frames(w)[:, 1]
        assert (not torch.allclose(a, b, atol=1e-3)) == reads_frame_one


def test_advect_moves_every_channel_by_its_samples_kernel():
    """advect with a one-hot kernel is a shift (border replicated); each sample gets its own kernel; a spread kernel
    is the same weighted sum of shifts."""
    from flowkern.models.videoflow import advect
    torch.manual_seed(0)
    z = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    k = torch.zeros(2, 3, 3, dtype=torch.float64)
    k[0, 1, 2] = 1.0  # out(p) = z(p + (0, 1)): the content moves one pixel left
    k[1, 0, 1] = 1.0  # out(p) = z(p + (-1, 0)): one pixel down
    out = advect(z, k)
    assert torch.equal(out[0, :, :, :-1], z[0, :, :, 1:]) and torch.equal(out[0, :, :, -1], z[0, :, :, -1])
    assert torch.equal(out[1, :, 1:], z[1, :, :-1]) and torch.equal(out[1, :, 0], z[1, :, 0])
    mix = 0.25 * k + 0.75 * torch.flip(k, (0,))
    assert torch.allclose(advect(z, mix), 0.25 * out + 0.75 * advect(z, torch.flip(k, (0,))))


def test_advect_prior_starts_near_the_skip_and_learns_its_kernel():
    """advect > 0: at init the kernel is the same for every clip with 3/4 at the centre; the mean is the advected
    last latent (+ delta, zero at init); the kernel's conv gets gradients; level kernels never exceed the level."""
    torch.manual_seed(0)
    m = VideoFlow(dataclasses.replace(TINY, advect=5))
    assert [p.advect_logits.out_channels for p in m.priors] == [25, 9]  # 8x8, then 4x4: a 3x3 kernel
    prior = m.priors[0]
    prev = torch.randn(2, TINY.context, *m.latent_shapes[0])
    h = torch.randn(2, prior.cond.in_channels, *m.latent_shapes[0][1:])
    mean, _ = prior(prev, h)
    from flowkern.models.videoflow import advect
    kernel = torch.full((2, 5, 5), 0.25 / 24)
    kernel[:, 2, 2] = 0.75
    assert torch.allclose(mean, advect(prev[:, -1], kernel), atol=1e-6)
    with torch.no_grad():
        for p in prior.out.parameters():
            p.add_(0.05 * torch.randn_like(p))
    mean, logs = prior(prev, h)
    ((mean - prev[:, -1].roll(1, -1)).square().sum() + logs.sum()).backward()
    assert prior.advect_logits.weight.grad.abs().sum() > 0
    for bad in (dict(advect=4), dict(advect=-1), dict(advect=3, skip=False)):
        with pytest.raises(ValueError, match="advect must be 0"):
            dataclasses.replace(TINY, **bad)
    for bad in (dict(advect_corr=True), dict(advect=3, advect_corr=True, context=1)):
        with pytest.raises(ValueError, match="advect_corr needs"):
            dataclasses.replace(TINY, **bad)


def test_offset_correlation_finds_the_move_that_advect_repeats():
    """A blob moved by d between two latents: the correlation peaks at the tap whose advection moves it by d again
    (constant velocity), and is zero against a flat (zero-padded) latent."""
    from flowkern.models.videoflow import advect, offset_correlation
    torch.manual_seed(0)
    z0 = torch.full((2, 3, 12, 12), 0.3, dtype=torch.float64)
    z0[:, :, 4:7, 5:7] += torch.rand(2, 3, 3, 2, dtype=torch.float64) + 1.0
    moves = [(1, -2), (0, 1)]
    z1 = torch.stack([z0[i].roll(d, (-2, -1)) for i, d in enumerate(moves)])
    corr = offset_correlation(z0, z1, 5)
    assert corr.shape == (2, 25) and corr.max() <= 1 + 1e-9
    kernel = torch.nn.functional.one_hot(corr.argmax(1), 25).view(2, 5, 5).to(z1.dtype)
    z2 = advect(z1, kernel)
    for i, d in enumerate(moves):
        assert torch.allclose(z2[i], z1[i].roll(d, (-2, -1)))
    assert torch.equal(offset_correlation(torch.zeros_like(z0), z1, 5), torch.zeros(2, 25, dtype=z1.dtype))


def _mixture_prior(**kw):
    torch.manual_seed(0)
    m = VideoFlow(dataclasses.replace(TINY, advect=3, advect_mixture=True, **kw)).double()
    prior = m.priors[0]
    with torch.no_grad():
        for q in list(prior.out.parameters()) + list(prior.advect_logits.parameters()):
            q.add_(0.05 * torch.randn_like(q))
    shape = m.latent_shapes[0]
    prev = torch.randn(3, TINY.context, *shape, dtype=torch.float64)
    h = torch.randn(3, prior.cond.in_channels, *shape[1:], dtype=torch.float64)
    return m, prior, prev, h


def test_advect_mixture_likelihood_is_the_mixture_of_shifted_gaussians():
    """log p(z) = log sum_o pi_o N(z; shift_o(z_{t-1}) + delta, sigma), checked against each shift made with advect's
    one-hot kernels; the mean the module reports is the mixture's."""
    from flowkern.models.videoflow import advect, gaussian_logp
    m, prior, prev, h = _mixture_prior()
    z = torch.randn_like(prev[:, -1])
    feat, delta, logs = prior._head(prev, h)
    pi = prior.advect_kernel(feat, prev).flatten(1)
    comps = [advect(prev[:, -1], torch.nn.functional.one_hot(torch.tensor(o), 9).view(1, 3, 3).double().expand(3, 3, 3))
             + delta for o in range(9)]
    want = torch.logsumexp(torch.stack([pi[:, o].log() + gaussian_logp(z, c, logs) for o, c in enumerate(comps)], 1),
                           1)
    assert torch.allclose(prior.log_prob(z, prev, h), want, rtol=1e-12)
    mean, _ = prior(prev, h)
    assert torch.allclose(mean, sum(pi[:, o, None, None, None] * c for o, c in enumerate(comps)))


def test_advect_mixture_samples_pick_one_shift_with_its_weight():
    """A sample is one shifted copy (not a blend), drawn with its weight; at temperature 0 the most likely one."""
    from flowkern.models.videoflow import shifted_copies
    m, prior, prev, h = _mixture_prior()
    with torch.no_grad():
        nn_ = torch.nn
        nn_.init.zeros_(prior.advect_logits.weight)
        bias = torch.full((9,), -30.0, dtype=torch.float64)
        bias[1], bias[5] = math.log(0.7), math.log(0.3)
        prior.advect_logits.bias.copy_(bias - prior.advect_bias)
        N = 2000
        prev_n, h_n = prev[:1].expand(N, *prev.shape[1:]), h[:1].expand(N, *h.shape[1:])
        g = torch.Generator().manual_seed(3)
        z = prior.sample(prev_n, h_n, 1e-9, g)
        _, delta, _ = prior._head(prev[:1], h[:1])
        comps = shifted_copies(prev[:1, -1], 3)[0] + delta  # (9, C, H, W)
        which = torch.cdist(z.flatten(1), comps.flatten(1)).argmin(1)
        assert set(which.tolist()) == {1, 5}
        assert abs((which == 1).double().mean().item() - 0.7) < 0.04
        assert torch.allclose(prior.sample(prev[:1], h[:1], 0.0)[0], comps[1])


def test_mixture_logp_does_not_copy_z_and_logs_per_component():
    """The mixture's log-likelihood broadcasts z and logs over the K components: a forward + backward's real peak
    (PeakMemory: every tensor alive) stays near six copies of the K means (the inputs and their gradients included;
    nine when z and logs were expanded and flattened into K copies each), and its value is the per-component sum."""
    from flowkern.memory import PeakMemory
    from flowkern.models.videoflow import gaussian_logp, mixture_logp
    torch.manual_seed(0)
    N, K, C, H, W = 4, 25, 6, 16, 16
    z, means = torch.randn(N, C, H, W, requires_grad=True), torch.randn(N, K, C, H, W, requires_grad=True)
    logs = (0.1 * torch.randn(N, C, H, W)).requires_grad_(True)
    log_pi = torch.randn(N, K).log_softmax(1).requires_grad_(True)
    with PeakMemory(z, means, logs, log_pi) as mem:
        mixture_logp(z, means, logs, log_pi).sum().backward()
    assert mem.peak_bytes < 7 * means.numel() * means.element_size(), mem.breakdown()
    z64, m64, l64, p64 = (t.detach().double() for t in (z, means, logs, log_pi))
    want = torch.logsumexp(p64 + torch.stack([gaussian_logp(z64, m64[:, o], l64) for o in range(K)], 1), 1)
    assert torch.allclose(mixture_logp(z64, m64, l64, p64), want, rtol=1e-12)
