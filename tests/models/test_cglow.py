"""CGlow (flowkern.models.cglow): exact inverses with context at every level, sampling through the likelihood's
context path, causality, the state chain's truncated backprop, labels, and reversible gradients."""
import dataclasses

import pytest
import torch
from _helpers import randomize_, rel_err

from flowkern.models.cglow import CONFIGS, VARIANTS, CGlow, CGlowConfig


def _model(variant="state_label", affine=False, reversible=False, **kw):
    torch.manual_seed(0)
    cfg = dataclasses.replace(CONFIGS["tiny"], variant=variant, affine=affine, reversible=reversible,
                              num_labels=3 if variant == "state_label" else 0, **kw)
    return randomize_(CGlow(cfg)).double().eval()


def _clip(B=2, T=4, size=8):
    return torch.rand(B, T, 3, size, size, dtype=torch.float64) - 0.5


def _labels(model, B=2):
    return torch.tensor([0, 2][:B]) if model.cfg.num_labels else None


@pytest.mark.parametrize("affine", [False, True], ids=["additive", "affine"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_inverse_of_forward_with_context_at_every_level(variant, affine):
    """The tail's and the head's inverse(forward(x, ctx), ctx) is x, for affine and additive couplings, level by
    level (the public code of the paper had a broken conditional affine reverse)."""
    m = _model(variant, affine)
    video, labels = _clip(), None
    labels = _labels(m)
    ctx, _ = m._tail_context(None, video[:, 0])
    for glow, c in ((m.tail, ctx), (m.head, m._head_context(labels))):
        zs, hs, ld = glow.encode_levels(video[:, 1], c)
        h = None
        for level in reversed(range(glow.levels)):  # each level's inverse on its own
            h, _ = glow.decode_level(level, zs[level], h, c)
            if level:
                assert rel_err(h, hs[level - 1]) < 1e-10, level
        assert rel_err(h, video[:, 1]) < 1e-10
        x2, ld_inv = glow.decode(zs, c)
        assert rel_err(x2, video[:, 1]) < 1e-10 and torch.allclose(ld_inv, -ld)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sampling_inverts_the_likelihoods_map(variant, monkeypatch):
    """A sampled frame, encoded with the context the likelihood uses for it, gives back exactly the latents the
    sampler drew (temperature * noise): sampling and likelihood share one context path."""
    m = _model(variant, affine=True)
    video, labels = _clip(T=2), None
    labels = _labels(m)
    t = 0.7
    sample = m.generate(video, 1, temperature=t, labels=labels, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    shapes = m.tail.latent_shapes(8, 8)
    eps = [torch.randn((2,) + s, dtype=torch.float64, generator=g) for s in shapes]
    seen = []
    real = m.tail.log_prob
    monkeypatch.setattr(m.tail, "log_prob", lambda x, c=None: seen.append(c) or real(x, c))
    m.log_prob_frames(sample, labels)
    zs, _ = m.tail.encode(sample[:, -1], seen[-1])
    for z, e in zip(zs, eps):  # encode returns standardised latents: eps scaled by the temperature
        assert rel_err(z, t * e) < 1e-9


@pytest.mark.parametrize("variant", VARIANTS)
def test_frame_likelihoods_are_causal(variant):
    m = _model(variant)
    video, labels = _clip(), None
    labels = _labels(m)
    lp = m.log_prob_frames(video, labels)
    later = video.clone()
    later[:, 2:] += 0.1 * torch.randn_like(later[:, 2:])
    lp2 = m.log_prob_frames(later, labels)
    assert torch.equal(lp[:, :2], lp2[:, :2])
    assert not torch.allclose(lp[:, 2:], lp2[:, 2:])
    reads_past = variant != "init"
    earlier = video.clone()
    earlier[:, 0] += 0.1
    assert torch.allclose(m.log_prob_frames(earlier, labels)[:, 1:], lp[:, 1:]) != reads_past


def test_state_chain_truncated_backprop():
    """With tbptt=1 the state is cut after every frame: frame 3's likelihood gets no gradient from frame 1 (it
    reaches frame 3 only through the state), and it does without truncation."""
    for tbptt, reaches in ((None, True), (1, False)):
        m = _model("state", tbptt=tbptt)
        video = _clip().requires_grad_(True)
        g, = torch.autograd.grad(m.log_prob_frames(video)[:, 2].sum(), video)
        assert bool(g[:, 0].abs().max() > 0) == reaches, tbptt
        assert g[:, 1].abs().max() > 0  # the previous frame is read directly


@pytest.mark.parametrize("variant, reversible", [("state", False), ("state_label", True), ("prev_frame", True)])
def test_backward_by_window_gives_the_gradients_of_the_whole_clip(variant, reversible):
    """Backward one tbptt window at a time accumulates exactly the gradients of the clip's summed log p (float64),
    and returns the same log p."""
    m = _model(variant, reversible=reversible, tbptt=2).train()
    video, labels = _clip(T=6), (torch.tensor([0, 2]) if variant == "state_label" else None)
    whole = m.log_prob_frames(video, labels)
    (-0.25 * whole.sum()).backward()
    want = {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}
    m.zero_grad(set_to_none=True)
    lp = m.backward_by_window(video, labels, weight=0.25)
    assert not lp.requires_grad and torch.allclose(lp, whole.detach(), rtol=1e-12, atol=1e-9)
    got = {k: p.grad for k, p in m.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys() and len(got) > 0
    for k in want:
        assert torch.allclose(got[k], want[k], rtol=1e-9, atol=1e-10), k


def test_truncated_backprop_by_window_bounds_a_training_steps_memory():
    """The real peak of a training step: without tbptt it grows with every frame (each frame's state chain and
    context stay alive until backward); backward by window keeps one window's worth, so 16 frames cost about what 8
    do."""
    from flowkern.models.cglow import training_step_peak
    base = dataclasses.replace(CONFIGS["tiny"], variant="state", num_labels=0, reversible=True)
    whole = [training_step_peak(base, 2, T, "cpu").peak_bytes for T in (8, 16)]
    windowed = [training_step_peak(dataclasses.replace(base, tbptt=2), 2, T, "cpu").peak_bytes for T in (8, 16)]
    frame = 2 * 3 * 8 * 8 * 4
    assert (whole[1] - whole[0]) / 8 > 10 * frame  # activations of the state chain, per frame
    assert (windowed[1] - windowed[0]) / 8 < 3 * frame  # the clip's frames themselves, and little else
    assert windowed[1] < whole[1]


def test_labels_reach_the_head_and_are_checked():
    m = _model("state_label")
    video = _clip()
    a = m.log_prob_frames(video, torch.tensor([0, 0]))
    b = m.log_prob_frames(video, torch.tensor([1, 1]))
    assert not torch.allclose(a[:, 0], b[:, 0]) and torch.equal(a[:, 1:], b[:, 1:])
    m.train()
    m.log_prob_frames(video, torch.tensor([0, 2])).sum().backward()
    grad = m.label_images.grad
    assert grad[0].abs().max() > 0 and grad[2].abs().max() > 0 and not grad[1].any()  # only the batch's labels
    with pytest.raises(ValueError, match="integer labels of shape"):
        m.log_prob_frames(video)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        m.log_prob_frames(video, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="takes no labels"):
        _model("state").log_prob_frames(video, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="variant must be one of"):
        CGlowConfig(variant="label")
    with pytest.raises(ValueError, match="needs num_labels > 0"):
        CGlowConfig(variant="state_label", num_labels=0)


def test_reversible_levels_match_plain_gradients():
    plain, rev = _model("state_label"), _model("state_label", reversible=True)
    rev.load_state_dict(plain.state_dict())
    video = _clip().requires_grad_(True)
    labels = torch.tensor([1, 2])
    outs = []
    for m in (plain, rev):
        m.train()
        lp = m.log_prob_frames(video, labels).sum()
        outs.append([lp.detach()] + list(torch.autograd.grad(lp, [video] + list(m.parameters()))))
    for a, b in zip(*outs):
        assert rel_err(a, b) <= 1e-10


def test_generate_from_scratch_and_shapes():
    m = _model("state_label")
    out = m.generate(None, 3, labels=torch.tensor([0, 1]), temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 3, 8, 8) and torch.isfinite(out).all()
    again = m.generate(None, 3, labels=torch.tensor([0, 1]), temperature=0.0)
    assert torch.equal(again, m.generate(None, 3, labels=torch.tensor([0, 1]), temperature=0.0))
    with pytest.raises(ValueError, match="give a context, labels or a batch_size"):
        _model("state").generate(None, 2)


def test_an_informative_label_lowers_held_out_first_frame_bits():
    """The paper's label images never learned (gradient norms ~1e-6; the label made frame 1 worse). Here, with the
    label = the object's colour (informative for the first frame), a short training of the head with the label beats
    the same training without it on held-out frames, and the label images get real gradients."""
    import flowkern
    from flowkern.models.data import StochasticMovement

    def frames(seed, n):
        ds = StochasticMovement(n, frames=1, size=8, seed=seed)
        return torch.stack([ds[i] for i in range(n)]), torch.tensor([ds.label(i, "color") for i in range(n)])

    (train, train_labels), (test, test_labels) = frames(0, 512), frames(1, 256)
    num_labels = StochasticMovement(1).num_labels("color")
    held_out, grad = {}, None
    for variant in ("state", "state_label"):
        torch.manual_seed(0)
        cfg = dataclasses.replace(CONFIGS["tiny"], variant=variant,
                                  num_labels=num_labels if variant == "state_label" else 0)
        m = CGlow(cfg)
        opt = torch.optim.Adam(m.parameters(), 2e-3)
        labels = (lambda idx: (train_labels[idx],)) if variant == "state_label" else (lambda idx: ())
        with torch.no_grad():  # ActNorm's data-dependent init
            m(flowkern.preprocess(train[:64], 8, generator=torch.Generator().manual_seed(0)), *labels(slice(0, 64)))
        for step in range(150):
            idx = torch.randint(0, 512, (32,), generator=torch.Generator().manual_seed(step))
            x = flowkern.preprocess(train[idx], 8, generator=torch.Generator().manual_seed(step))
            opt.zero_grad()
            (-m(x, *labels(idx)).mean() / m.frame_dims).backward()
            opt.step()
        if m.label_images is not None:
            grad = m.label_images.grad.norm().item()
        m.eval()
        with torch.no_grad():
            x = flowkern.preprocess(test, 8, generator=torch.Generator().manual_seed(9))
            extra = (test_labels,) if variant == "state_label" else ()
            held_out[variant] = m.bits_per_pixel_frames(x, *extra).mean().item()
    assert held_out["state_label"] < held_out["state"] - 0.3, held_out
    assert grad > 1e-3


def test_generate_warns_when_the_flows_inverse_diverges():
    """A sampled frame that is not finite is reported, never passed on silently (as VideoFlow.generate does)."""
    m = _model("state")
    with torch.no_grad():
        m.tail.top.conv.logs.fill_(30.0)  # the tail's prior std explodes: exp(3 * 30 * ...) overflows
        m.tail.top.conv.conv.bias.fill_(1.0)
    with pytest.warns(RuntimeWarning, match=r"CGlow.generate: 2 of 2 videos have non-finite frames \(first at frame 1\)"):
        m.generate(_clip(T=1), 1, temperature=1.0)
