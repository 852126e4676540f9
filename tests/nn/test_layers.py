"""Reference layers: invertibility, exact logdets (brute-force Jacobian), gradcheck, and Glow's failure modes.
Each test runs on the pure-torch reference and on the fused CPU kernels (backend 'auto' on CPU)."""
import math

import pytest
import torch
from _helpers import randomize_, rel_err

import flowkern
from flowkern import ops
from flowkern import (ActNorm2d, AffineCoupling, FlowStep, Glow, InvConv1x1, InvConv1x1LU, Split, Squeeze2d,
                      TopPrior)

BACKENDS = ["torch", "auto"]


def make(name, C, ctx=0):
    return {
        "actnorm": lambda: ActNorm2d(C),
        "invconv": lambda: InvConv1x1(C),
        "invconv_lu": lambda: InvConv1x1LU(C),
        "coupling": lambda: AffineCoupling(C, hidden=8, context_channels=ctx),
        "coupling_additive": lambda: AffineCoupling(C, hidden=8, context_channels=ctx, affine=False),
        "coupling_tanh": lambda: AffineCoupling(C, hidden=8, context_channels=ctx, scale="tanh"),
        "flowstep": lambda: FlowStep(C, hidden=8, context_channels=ctx),
        "flowstep_plain": lambda: FlowStep(C, hidden=8, context_channels=ctx, lu=False),
        "flowstep_tanh": lambda: FlowStep(C, hidden=8, context_channels=ctx, scale="tanh"),
        "squeeze": lambda: Squeeze2d(),
        "split": lambda: Split(C, context_channels=ctx),
        "top": lambda: TopPrior(C, context_channels=ctx),
    }[name]()


MODULES = ["actnorm", "invconv", "invconv_lu", "coupling", "coupling_additive", "coupling_tanh", "flowstep",
           "flowstep_plain", "flowstep_tanh", "squeeze", "split", "top"]
CONDITIONAL = {"coupling", "coupling_additive", "coupling_tanh", "flowstep", "flowstep_plain", "flowstep_tanh", "split",
               "top"}


def build(name, C, dtype, ctx=0):
    m = randomize_(make(name, C, ctx)).to(dtype).eval()
    return m


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("C", [4, 5, 12])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_inverse_roundtrip(backend, name, C, dtype, tol):
    flowkern.set_backend(backend)
    ctx_c = 3 if name in CONDITIONAL else 0
    m = build(name, C, dtype, ctx_c)
    x = torch.randn(3, C, 6, 10, dtype=dtype)
    ctx = torch.randn(3, ctx_c, 6, 10, dtype=dtype) if ctx_c else None
    y, ld = m(x, ctx)
    assert y.dtype == dtype and ld.shape == (3,)
    x2, ld_inv = m.inverse(y, ctx)
    assert rel_err(x2, x) <= tol
    # the logdet of the inverse direction is minus the forward's
    assert torch.allclose(ld_inv, -ld, rtol=tol * 10, atol=tol * 10)


def brute_force_logdet(fn, x):
    jac = torch.autograd.functional.jacobian(lambda v: fn(v.view_as(x)).flatten(), x.flatten())
    return torch.linalg.slogdet(jac)[1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("C", [2, 3, 4])
def test_logdet_matches_jacobian(backend, name, C):
    flowkern.set_backend(backend)
    ctx_c = 2 if name in CONDITIONAL else 0
    m = build(name, C, torch.float64, ctx_c)
    x = torch.randn(1, C, 2, 4, dtype=torch.float64)
    ctx = torch.randn(1, ctx_c, 2, 4, dtype=torch.float64) if ctx_c else None
    ld = m(x, ctx)[1]
    expected = brute_force_logdet(lambda v: m(v, ctx)[0], x)
    assert ld.item() == pytest.approx(expected.item(), abs=1e-9)
    y = m(x, ctx)[0]
    ld_inv = m.inverse(y, ctx)[1]
    expected_inv = brute_force_logdet(lambda v: m.inverse(v, ctx)[0], y.detach())
    assert ld_inv.item() == pytest.approx(expected_inv.item(), abs=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["actnorm", "invconv", "invconv_lu", "coupling", "coupling_additive",
                                  "coupling_tanh", "flowstep", "split", "top"])
def test_gradcheck_float64(backend, name):
    """Gradients of (y, logdet) w.r.t. the input, the context and every parameter, in float64."""
    flowkern.set_backend(backend)
    C, ctx_c = 3, (2 if name in CONDITIONAL else 0)
    m = build(name, C, torch.float64, ctx_c)
    params = {k: p.detach().clone().requires_grad_(True) for k, p in m.named_parameters()}
    keys = list(params)
    x = torch.randn(2, C, 3, 2, dtype=torch.float64, requires_grad=True)
    ctx = torch.randn(2, ctx_c, 3, 2, dtype=torch.float64, requires_grad=True) if ctx_c else None

    def fn(x, ctx, *ps):
        y, ld = torch.func.functional_call(m, dict(zip(keys, ps)), (x, ctx))
        return y, ld

    assert torch.autograd.gradcheck(fn, (x, ctx, *[params[k] for k in keys]), eps=1e-6, atol=1e-6)


def test_actnorm_data_init_gives_zero_mean_unit_variance():
    m = ActNorm2d(5).train()
    x = 3.0 + 2.5 * torch.randn(8, 5, 7, 9)
    y, _ = m(x)
    assert bool(m.initialized)
    mean = y.mean(dim=(0, 2, 3))
    std = y.std(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(mean, torch.zeros(5), atol=1e-5)
    assert torch.allclose(std, torch.ones(5), atol=1e-5)
    # the second batch does not re-initialise
    b0 = m.bias.detach().clone()
    m(torch.randn(8, 5, 7, 9))
    assert torch.equal(m.bias.detach(), b0)


def test_actnorm_zero_variance_channel_is_finite():
    m = ActNorm2d(3).train()
    x = torch.randn(4, 3, 5, 5)
    x[:, 1] = 7.0  # constant channel
    y, ld = m(x)
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    assert m.log_scale[1].item() == 0.0  # left at unit scale instead of 1/eps
    assert torch.allclose(y[:, 1], torch.zeros_like(y[:, 1]))


def test_actnorm_init_refuses_non_finite_batch():
    m = ActNorm2d(2).train()
    x = torch.randn(2, 2, 3, 3)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        m(x)


@pytest.mark.parametrize("offset,std", [(1e6, 0.01), (1e8, 1.0), (-3e7, 2e-3)])
def test_actnorm_init_is_numerically_stable(offset, std):
    """Large offsets, small spread (float64): E[x^2] - mean^2 cancelled to scales of 64 or 90 instead of 100, and
    called a channel of offset 1e8, std 1 constant."""
    m = ActNorm2d(2).double().train()
    x = offset + std * torch.randn(16, 2, 8, 8, dtype=torch.float64)
    want = x.transpose(0, 1).reshape(2, -1).std(1, unbiased=False)
    m(x)
    torch.testing.assert_close(m.scale(), 1.0 / want, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(-m.bias, x.mean((0, 2, 3)), rtol=1e-12, atol=0.0)


def test_actnorm_init_accepts_finite_batch_whose_squares_overflow():
    m = ActNorm2d(1).double().train()
    x = 1e200 * torch.randn(4, 1, 4, 4, dtype=torch.float64)  # x * x overflows float64
    y, ld = m(x)
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    torch.testing.assert_close(y.std(unbiased=False), torch.tensor(1.0, dtype=torch.float64))


def test_actnorm_init_refuses_an_empty_batch():
    with pytest.raises(ValueError, match="empty"):
        ActNorm2d(3).train()(torch.randn(0, 3, 4, 4))


def test_actnorm_initialized_buffer_is_the_truth():
    m = ActNorm2d(2).train()
    assert m.needs_init() and not m.is_initialized()
    m.initialized.fill_(True)  # set directly, not through mark_initialized: still seen
    assert m.is_initialized() and not m.needs_init()
    b0 = m.bias.detach().clone()
    m(torch.randn(2, 2, 3, 3) + 5)
    assert torch.equal(m.bias.detach(), b0)  # no data-dependent init ran
    m.mark_initialized(False)
    assert m.needs_init()
    m.load_state_dict({**m.state_dict(), "initialized": torch.tensor(True)})
    assert m.is_initialized()


def test_actnorm_initialized_flag_survives_state_dict():
    m = ActNorm2d(4).train()
    m(torch.randn(6, 4, 3, 3) * 5 + 1)
    sd = m.state_dict()
    assert "initialized" in sd and bool(sd["initialized"])
    fresh = ActNorm2d(4).train()
    fresh.load_state_dict(sd)
    before = fresh.bias.detach().clone()
    fresh(torch.randn(6, 4, 3, 3))  # must not re-initialise on this batch
    assert torch.equal(fresh.bias.detach(), before)


def test_glow_checkpoint_roundtrip_weights_only(tmp_path):
    g = Glow(3, levels=2, steps=2, hidden=8).train()
    x = torch.rand(4, 3, 8, 8) - 0.5
    g.log_prob(x)
    path = tmp_path / "g.pt"
    torch.save(g.state_dict(), path)
    g2 = Glow(3, levels=2, steps=2, hidden=8).train()
    g2.load_state_dict(torch.load(path, weights_only=True))
    assert g2.image_size == (8, 8)
    g.eval(), g2.eval()
    assert torch.allclose(g.log_prob(x), g2.log_prob(x))
    g2.train()
    g2.log_prob(torch.randn(4, 3, 8, 8) * 9)  # a loaded model is initialised: no data-dependent re-init
    g2.eval()
    assert torch.allclose(g.log_prob(x), g2.log_prob(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_plain_invconv_stable_when_ill_conditioned(backend):
    """A float32 W with condition number ~1e5: logdet and inverse go through float64."""
    flowkern.set_backend(backend)
    m = InvConv1x1(6)
    u, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    sv = torch.logspace(0, -5, 6, dtype=torch.float64)
    with torch.no_grad():
        m.W.copy_((u * sv) @ v.T)
    x = torch.randn(2, 6, 4, 4)
    y, ld = m(x)
    exact = 16 * torch.linalg.slogdet(m.W.detach().double())[1]
    assert ld[0].item() == pytest.approx(exact.item(), rel=1e-6)
    x2, _ = m.inverse(y)
    assert rel_err(x2.double(), x.double()) < 1e-2  # bounded by cond(W) * eps_f32, not blown up


def test_logdet_sign_both_directions():
    m = ActNorm2d(3).eval()
    with torch.no_grad():
        m.log_scale.fill_(torch.log(torch.tensor(2.0)))
    x = torch.randn(2, 3, 4, 5)
    y, ld = m(x)
    assert torch.allclose(y, 2 * x)
    assert torch.allclose(ld, torch.full((2,), 20 * 3 * torch.log(torch.tensor(2.0)).item()))
    assert torch.allclose(m.inverse(y)[1], -ld)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ctx_c", [0, 2])
def test_glow_encode_decode_exact_and_logdet(backend, ctx_c):
    flowkern.set_backend(backend)
    g = randomize_(Glow(2, levels=2, steps=2, hidden=8, context_channels=ctx_c)).double().eval()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    ctx = torch.randn(2, ctx_c, 4, 4, dtype=torch.float64) if ctx_c else None
    zs, ld = g.encode(x, ctx)
    assert [tuple(z.shape[1:]) for z in zs] == g.latent_shapes(4, 4) == [(4, 2, 2), (16, 1, 1)]
    x2, ld_inv = g.decode(zs, ctx)
    assert rel_err(x2, x) < 1e-10
    assert torch.allclose(ld_inv, -ld)
    # logdet of the whole map x -> latents against the brute-force Jacobian (one sample)
    x1 = x[:1]
    c1 = None if ctx is None else ctx[:1]
    expected = brute_force_logdet(lambda v: torch.cat([z.flatten(1) for z in g.encode(v, c1)[0]], 1), x1)
    assert g.encode(x1, c1)[1].item() == pytest.approx(expected.item(), abs=1e-8)
    # log_prob = sum log N(latents) + logdet
    lp = g.log_prob(x, ctx)
    assert torch.allclose(lp, ld + sum(flowkern.nn.standard_normal_logp(z) for z in zs))


@pytest.mark.parametrize("backend", BACKENDS)
def test_glow_context_pyramid(backend):
    """A context pyramid (one tensor per level at that level's resolution, e.g. a conditioning network's features):
    exact inverse, logdet against the brute-force Jacobian, every level's context reaching the likelihood, and
    reversible levels giving the plain gradients (float64), context gradients included."""
    flowkern.set_backend(backend)
    torch.manual_seed(0)
    g = randomize_(Glow(2, levels=2, steps=2, hidden=8, context_channels=(3, 5))).double().eval()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    ctx = [torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True),
           torch.randn(2, 5, 1, 1, dtype=torch.float64, requires_grad=True)]
    zs, ld = g.encode(x, ctx)
    x2, ld_inv = g.decode(zs, ctx)
    assert rel_err(x2, x) < 1e-10 and torch.allclose(ld_inv, -ld)
    c1 = [c[:1] for c in ctx]
    expected = brute_force_logdet(lambda v: torch.cat([z.flatten(1) for z in g.encode(v, c1)[0]], 1), x[:1])
    assert g.encode(x[:1], c1)[1].item() == pytest.approx(expected.item(), abs=1e-8)
    grads = torch.autograd.grad(g.log_prob(x, ctx).sum(), ctx)
    assert all(gr.abs().min() > 0 for gr in grads)  # every level, every context entry is read
    rev = Glow(2, levels=2, steps=2, hidden=8, context_channels=(3, 5), reversible=True).double().train()
    rev.load_state_dict(g.state_dict())
    g.train()
    xg = x.clone().requires_grad_(True)
    outs = []
    for model in (g, rev):
        lp = model.log_prob(xg, ctx).sum()
        outs.append([lp.detach()] + list(torch.autograd.grad(lp, [xg] + ctx + list(model.parameters()))))
    for a, b in zip(*outs):
        assert rel_err(a, b) <= 1e-10
    s = g.sample(2, temperature=0.5, context=[c.detach() for c in ctx])
    assert s.shape == (2, 2, 4, 4) and torch.isfinite(s).all()


def test_glow_context_pyramid_refuses_bad_contexts():
    g = Glow(2, levels=2, steps=1, hidden=8, context_channels=(3, 5))
    x = torch.randn(2, 2, 4, 4)
    with pytest.raises(ValueError, match="must be a list of 2 tensors"):
        g(x, torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="must be a list of 2 tensors"):
        g(x, [torch.randn(2, 3, 2, 2)])
    with pytest.raises(ValueError, match=r"level 1's context must have shape \(2, 5, 1, 1\)"):
        g(x, [torch.randn(2, 3, 2, 2), torch.randn(2, 4, 1, 1)])
    with pytest.raises(ValueError, match="one positive channel count per level"):
        Glow(2, levels=2, steps=1, hidden=8, context_channels=(3,))


def test_glow_sample_temperature_zero_is_deterministic():
    g = randomize_(Glow(3, levels=2, steps=2, hidden=8)).eval()
    a = g.sample(2, temperature=0.0, image_size=(8, 8))
    b = g.sample(2, temperature=0.0, image_size=(8, 8))
    assert a.shape == (2, 3, 8, 8) and torch.equal(a, b)
    c = g.sample(2, temperature=0.7, image_size=(8, 8))
    assert not torch.equal(a, c)


def test_glow_odd_channels_and_conditional_sampling():
    g = randomize_(Glow(1, levels=3, steps=1, hidden=8, context_channels=1), scale=0.01).eval()
    ctx = torch.randn(2, 1, 16, 16)
    s = g.sample(2, temperature=0.5, context=ctx)
    assert s.shape == (2, 1, 16, 16) and torch.isfinite(s).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_glow_overfits_tiny_dataset(backend):
    """A small Glow on 16 fixed 8x8 images: bits/dim must fall by a clear margin within 150 CPU steps."""
    flowkern.set_backend(backend)
    torch.manual_seed(1)
    data = torch.randint(0, 256, (16, 3, 8, 8))
    pattern = torch.linspace(0, 255, 8).view(1, 1, 1, 8)
    data = ((data * 0.2 + pattern * 0.8).round()).clamp(0, 255)  # structured, so there is something to learn
    g = Glow(3, levels=2, steps=4, hidden=32).train()
    opt = torch.optim.Adam(g.parameters(), lr=2e-3)
    D = 3 * 8 * 8

    def bpd():
        g.eval()
        with torch.no_grad():
            v = flowkern.bits_per_dim(g.log_prob(flowkern.preprocess(data, noise=False) + 0.5 / 256), D).mean()
        g.train()
        return v.item()

    g.log_prob(flowkern.preprocess(data))  # data-dependent init
    start = bpd()
    for _ in range(150):
        loss = -g.log_prob(flowkern.preprocess(data)).mean() / D
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = bpd()
    assert end < start - 1.0, (start, end)


@pytest.mark.parametrize("bad,exc,match", [
    (lambda: ActNorm2d(3)(torch.randn(2, 3, 4)), ValueError, "4-D"),
    (lambda: ActNorm2d(3)(torch.randn(2, 4, 4, 4)), ValueError, "expected 3 channels"),
    (lambda: ActNorm2d(3)(torch.zeros(2, 3, 4, 4, dtype=torch.int64)), TypeError, "floating-point"),
    (lambda: ActNorm2d(3)([1.0, 2.0]), TypeError, "expected a torch.Tensor"),
    (lambda: ActNorm2d(3).train()(torch.randn(0, 3, 4, 4)), ValueError, "non-empty first batch"),
    (lambda: ActNorm2d(1).train()(torch.tensor([[[[1.0, float("nan")]]]])), ValueError, "non-finite"),
    (lambda: InvConv1x1LU(3)(torch.randn(2, 5, 4, 4)), ValueError, "expected 3 channels"),
    (lambda: InvConv1x1(3)(torch.randn(2, 3, 4, 4, dtype=torch.float64)), TypeError,
     r"input dtype torch.float64 does not match the module's parameters \(torch.float32\)"),
    (lambda: FlowStep(4, 8)(torch.randn(2, 4, 4, 4, dtype=torch.float16)), TypeError, "does not match the module"),
    (lambda: Glow(3, 2, 1, 8)(torch.randn(1, 3, 8, 8, dtype=torch.float64)), TypeError, "does not match the module"),
    (lambda: AffineCoupling(1), ValueError, "at least 2 channels"),
    (lambda: AffineCoupling(4, 8, context_channels=2)(torch.randn(2, 4, 4, 4)), ValueError, "context tensor"),
    (lambda: AffineCoupling(4, 8, context_channels=2)(torch.randn(2, 4, 4, 4), torch.randn(2, 2, 3, 4)),
     ValueError, "context must have shape"),
    (lambda: AffineCoupling(4, 8)(torch.randn(2, 4, 4, 4), torch.randn(2, 2, 4, 4)), ValueError,
     "context_channels=0"),
    (lambda: Squeeze2d()(torch.randn(1, 2, 3, 4)), ValueError, "even height and width"),
    (lambda: Glow(3, 2, 1, 8)(torch.randn(1, 3, 6, 6)), ValueError, "divisible by 4"),
    (lambda: Glow(3, 2, 1, 8, context_channels=1)(torch.randn(1, 3, 8, 8)), ValueError, "context must have shape"),
    (lambda: Glow(3, 2, 1, 8).sample(1), ValueError, "image_size"),
    (lambda: flowkern.preprocess(torch.tensor([1.0, float("inf")])), ValueError, "non-finite"),
    (lambda: flowkern.preprocess(torch.tensor([300.0])), ValueError, r"\[0, 255\]"),
    (lambda: flowkern.preprocess(torch.tensor([3.0]), n_bits=9), ValueError, "n_bits must be in 1..8"),
    (lambda: flowkern.set_backend("gpu"), ValueError, "unknown flowkern backend"),
])
def test_bad_input_raises_clear_error(bad, exc, match):
    with pytest.raises(exc, match=match):
        bad()


def test_bits_per_dim_and_dequantization():
    x = torch.randint(0, 256, (2, 3, 4, 4))
    z = flowkern.preprocess(x, n_bits=5, noise=False)
    assert z.min() >= -0.5 and z.max() < 0.5
    assert torch.equal(flowkern.postprocess(z, n_bits=5), (x // 8 * 8).to(torch.uint8))
    noisy = flowkern.preprocess(x, n_bits=5)
    assert torch.equal(flowkern.postprocess(noisy, n_bits=5), (x // 8 * 8).to(torch.uint8))
    # a uniform density on [-0.5, 0.5]^D has log p = 0, so every n-bit bin has probability 2^-(n D): n bits/dim
    D = 48
    assert flowkern.bits_per_dim(torch.zeros(2), D, n_bits=5).tolist() == pytest.approx([5.0, 5.0])


def test_lu_weight_closed_form_gradient():
    """InvConv1x1LU's weight W = P L U is one autograd node with a closed-form backward: gradcheck in float64, and the
    same values and gradients as the masked formula through autograd (masked-out entries get zero gradient)."""
    m = randomize_(InvConv1x1LU(5).double(), scale=0.3)
    args = [p.detach().clone().requires_grad_(True) for p in (m.lower, m.upper, m.log_s)]

    def masked(lower, upper, log_s):
        L = lower * m.lower_mask + m.eye
        return m.P @ L @ (upper * m.lower_mask.T + torch.diag(m.sign_s * torch.exp(log_s)))

    fused = lambda a, b, c: ops.lu_weight(a, b, c, m.P, m.sign_s)  # noqa: E731
    assert torch.autograd.gradcheck(fused, args)
    R = torch.randn(5, 5, dtype=torch.float64)
    torch.testing.assert_close(fused(*args), masked(*args), rtol=0, atol=1e-15)
    for a, b in zip(torch.autograd.grad((fused(*args) * R).sum(), args),
                    torch.autograd.grad((masked(*args) * R).sum(), args)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("conditional", [False, True])
def test_softplus_prior_scale_starts_as_exp_inverts_and_is_softplus(conditional):
    """prior_scale="softplus": sigma = softplus(raw + log(e - 1)), equal to Glow's exp at init (raw 0); split and top
    priors invert exactly, and their logdet is -sum log sigma."""
    from flowkern.nn.split import Split, TopPrior, prior_log_std
    raw = torch.randn(50, dtype=torch.float64) * 3
    assert torch.allclose(prior_log_std(raw, "softplus").exp(),
                          torch.nn.functional.softplus(raw + math.log(math.e - 1)), rtol=1e-12)
    assert prior_log_std(torch.zeros(1), "softplus").abs().item() < 1e-7
    assert torch.isfinite(prior_log_std(torch.tensor([-1e4]), "softplus")).all()  # no log(0)
    ctx = 3 if conditional else 0
    c = torch.randn(2, ctx, 4, 4, dtype=torch.float64) if conditional else None
    for layer in (Split(6, ctx, scale="softplus"), TopPrior(6, ctx, scale="softplus")):
        layer = randomize_(layer).double()
        x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
        y, ld = layer(x, c)
        back, ld_inv = layer.inverse(y, c)
        assert torch.allclose(back, x, atol=1e-12) and torch.allclose(ld, -ld_inv, atol=1e-12)
        _, logs = layer.mean_logs(x[:, :3] if isinstance(layer, Split) else x, c)
        assert torch.allclose(ld, -logs.flatten(1).sum(1), atol=1e-12)
    with pytest.raises(ValueError, match="scale must be one of"):
        Split(6, scale="sigmoid")
    glow = flowkern.Glow(3, 2, 1, 8, prior_scale="softplus")
    assert glow.top.scale == "softplus" and all(s.scale == "softplus" for s in glow.splits)


def test_the_tanh_clamp_bounds_log_s_by_learned_scale_and_shift():
    """scale="tanh": log s = s_scale * tanh(h_s) + s_shift per channel, so a huge h_s saturates at s_scale + s_shift;
    s = 1 at init (zero-initialised network, s_scale 1, s_shift 0), where Glow's sigmoid gives sigmoid(2)."""
    m = AffineCoupling(4, hidden=8, scale="tanh").double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    y, ld = m(x)
    assert torch.equal(y, x) and not ld.any()
    with torch.no_grad():
        m.nn[-1].conv.bias.fill_(1e6)  # h_s = 1e6 * exp(3 * logs): tanh saturates at 1
        m.s_scale.copy_(torch.tensor([0.5, 2.0]).view(2, 1, 1))
        m.s_shift.copy_(torch.tensor([-1.0, 0.25]).view(2, 1, 1))
    y, ld = m(x)
    log_s = torch.tensor([-0.5, 2.25], dtype=torch.float64).view(1, 2, 1, 1)
    torch.testing.assert_close(y[:, 2:], (x[:, 2:] + m._h(x[:, :2], None)[:, :2]) * log_s.exp())
    torch.testing.assert_close(ld, torch.full((2,), 9 * (-0.5 + 2.25), dtype=torch.float64))
    assert "scale='tanh'" in repr(m)
    with pytest.raises(ValueError, match=r"scale must be one of \('sigmoid', 'tanh'\), got 'exp'"):
        AffineCoupling(4, scale="exp")
