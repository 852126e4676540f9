"""flowkern.compat.rosinality against an independent oracle of rosinality/glow-pytorch's model.py
(tests/compat/rosinality_reference.py): state_dict layout, checkpoints loading and giving the same numbers, reverse,
ActNorm's init, gradients, reversible backprop (same gradients, less memory) and training."""
import copy
import importlib.util
import os

import pytest
import torch

import flowkern
from flowkern.compat import rosinality as fk
from flowkern.memory import peak_memory, saved_tensor_bytes

_spec = importlib.util.spec_from_file_location(
    "rosinality_reference", os.path.join(os.path.dirname(os.path.abspath(__file__)), "rosinality_reference.py"))
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

# (in_channel, height, width, n_flow, n_block, affine, conv_lu): odd final sizes and non-square images included
CONFIGS = [
    (3, 16, 16, 2, 2, True, True),
    (3, 16, 16, 2, 3, False, False),
    (3, 32, 32, 1, 4, True, False),
    (3, 32, 32, 1, 4, False, True),
    (1, 24, 16, 2, 3, True, False),  # top latent 3x2
    (2, 12, 20, 3, 2, False, True),  # top latent 3x5
]
FILTER = 16


def _id(cfg):
    c, h, w, k, L, affine, lu = cfg
    return f"c{c}-{h}x{w}-K{k}-L{L}-{'affine' if affine else 'additive'}-{'lu' if lu else 'plain'}"


def oracle_model(cfg, perturb=0.05, batch=4, dtype=torch.float32, seed=0):
    """A rosinality oracle Glow, ActNorm-initialised by one forward, its parameters moved off their (often identity)
    init; and the batch it was initialised on."""
    c, h, w, k, L, affine, lu = cfg
    torch.manual_seed(seed)
    model = ref.Glow(c, k, L, affine=affine, conv_lu=lu, filter_size=FILTER).to(dtype)
    x = torch.rand(batch, c, h, w, dtype=dtype) - 0.5
    with torch.no_grad():
        model(x)
        for p in model.parameters():
            p.add_(perturb * torch.randn_like(p))
    return model, x


def adapter_like(oracle, cfg, dtype=torch.float32, **kw):
    c, h, w, k, L, affine, lu = cfg
    model = fk.Glow(c, k, L, affine=affine, conv_lu=lu, filter_size=FILTER, **kw).to(dtype)
    model.load_state_dict(oracle.state_dict())
    return model


def assert_close(got, want, tol=1e-5, what=""):
    """max |got - want| <= tol * max(1, max |want|), same shape."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got.double() - want.double()).abs().max().item()
    scale = max(1.0, want.double().abs().max().item())
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} * {scale:.3g}"


def assert_outputs_close(got, want, tol=1e-5):
    (lp, ld, zs), (lp0, ld0, zs0) = got, want
    assert_close(lp, lp0, tol, "log_p_sum")
    assert_close(ld, ld0, tol, "logdet")
    assert len(zs) == len(zs0)
    for i, (z, z0) in enumerate(zip(zs, zs0)):
        assert_close(z, z0, tol, f"z_outs[{i}]")


def layout(model):
    return [(k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()]


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("conv_lu", [True, False])
def test_state_dict_keys_shapes_and_dtypes_equal_the_oracles(affine, conv_lu):
    for n_flow, n_block in ((1, 1), (2, 3)):
        assert layout(fk.Glow(3, n_flow, n_block, affine=affine, conv_lu=conv_lu, filter_size=FILTER)) == layout(
            ref.Glow(3, n_flow, n_block, affine=affine, conv_lu=conv_lu, filter_size=FILTER))
    # rosinality's own network size (filter 512) and the parts on their own
    assert layout(fk.Flow(12, affine=affine, conv_lu=conv_lu)) == layout(ref.Flow(12, affine=affine, conv_lu=conv_lu))
    for cls in ("ActNorm", "InvConv2d", "InvConv2dLU"):
        assert layout(getattr(fk, cls)(6)) == layout(getattr(ref, cls)(6))
    assert layout(fk.ZeroConv2d(4, 6)) == layout(ref.ZeroConv2d(4, 6))
    assert layout(fk.Block(3, 2, split=False, affine=affine, conv_lu=conv_lu, filter_size=FILTER)) == layout(
        ref.Block(3, 2, split=False, affine=affine, conv_lu=conv_lu, filter_size=FILTER))


@pytest.mark.parametrize("cfg", CONFIGS, ids=_id)
def test_oracle_checkpoint_loads_and_forward_matches(cfg):
    oracle, _ = oracle_model(cfg)
    model = adapter_like(oracle, cfg)
    x = torch.rand(4, cfg[0], cfg[1], cfg[2]) - 0.5
    with torch.no_grad():
        want = oracle(x)
    got = model(x)  # with grad on: the training path
    assert_outputs_close(got, want)
    assert got[1].dim() == (1 if cfg[5] else 0)  # additive: rosinality's 0-dim logdet
    c, h, w, k, L, affine, lu = cfg
    if h == w:  # train.py's helper (square images)
        assert [tuple(z.shape[1:]) for z in got[2]] == fk.calc_z_shapes(c, h, k, L)
    # a block on its own
    out, det, log_p, z_new = model.blocks[0](x)
    out0, det0, log_p0, z_new0 = oracle.blocks[0](x)
    for a, b, what in ((out, out0, "out"), (det, det0, "det"), (log_p, log_p0, "log_p"), (z_new, z_new0, "z_new")):
        assert_close(a.detach(), b.detach(), what=what)


def test_checkpoint_file_round_trip(tmp_path):
    cfg = CONFIGS[0]
    oracle, _ = oracle_model(cfg)
    torch.save(oracle.state_dict(), tmp_path / "model.pt")
    model = fk.Glow(cfg[0], cfg[3], cfg[4], affine=cfg[5], conv_lu=cfg[6], filter_size=FILTER)
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    x = torch.rand(2, 3, 16, 16) - 0.5
    with torch.no_grad():
        assert_outputs_close(model(x), oracle(x))
    # and back: the adapter's checkpoint loads into the oracle
    oracle2 = ref.Glow(cfg[0], cfg[3], cfg[4], affine=cfg[5], conv_lu=cfg[6], filter_size=FILTER)
    oracle2.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert_outputs_close(oracle2(x), oracle(x))


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[1], CONFIGS[4]], ids=_id)
def test_actnorm_data_dependent_init_matches(cfg):
    torch.manual_seed(1)
    c, h, w, k, L, affine, lu = cfg
    oracle = ref.Glow(c, k, L, affine=affine, conv_lu=lu, filter_size=FILTER)
    with torch.no_grad():
        for name, p in oracle.named_parameters():
            if "actnorm" not in name:
                p.add_(0.05 * torch.randn_like(p))
    model = adapter_like(oracle, cfg)  # initialized == 0 everywhere: both init on the next batch
    model.eval()  # as in rosinality, the init runs whatever the mode
    x = torch.rand(6, c, h, w) * 2 - 0.3
    with torch.no_grad():
        assert_outputs_close(model(x), oracle(x))
    sd, sd0 = model.state_dict(), oracle.state_dict()
    for key in sd0:
        if ".actnorm." in key:
            assert_close(sd[key], sd0[key], what=key)
            if key.endswith("initialized"):
                assert sd[key].item() == 1 and sd[key].dtype == torch.uint8


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[1], CONFIGS[5]], ids=_id)
def test_reverse_reconstructs_and_samples_as_the_oracle(cfg):
    oracle, _ = oracle_model(cfg, perturb=0.02)
    model = adapter_like(oracle, cfg)
    x = torch.rand(3, cfg[0], cfg[1], cfg[2]) - 0.5
    with torch.no_grad():
        _, _, zs = model(x)
        _, _, zs0 = oracle(x)
        rec = model.reverse(zs, reconstruct=True)
        assert_close(rec, x, 1e-5, "reconstruction")
        assert_close(rec, oracle.reverse(zs0, reconstruct=True), 1e-5, "reconstruction vs oracle")
        eps = [0.5 * torch.randn_like(z) for z in zs]  # sampling: z_list holds the standard-normal draws
        sample, sample0 = model.reverse(eps), oracle.reverse(eps)
        assert torch.isfinite(sample0).all()
        assert_close(sample, sample0, 1e-5, "sample")


def test_parts_match_the_oracle_one_by_one():
    torch.manual_seed(2)
    x = torch.randn(2, 8, 5, 7)
    for cls, args in (("ActNorm", (8,)), ("InvConv2d", (8,)), ("InvConv2dLU", (8,)), ("ZeroConv2d", (8, 6)),
                      ("AffineCoupling", (8, 16, True)), ("AffineCoupling", (8, 16, False)),
                      ("Flow", (8, True, True, 16)), ("Flow", (8, False, False, 16))):
        o = getattr(ref, cls)(*args)
        if cls == "ActNorm":
            o(x)  # init
        with torch.no_grad():
            for p in o.parameters():
                p.add_(0.1 * torch.randn_like(p))
        m = getattr(fk, cls)(*args)
        m.load_state_dict(o.state_dict())
        with torch.no_grad():
            got, want = m(x), o(x)
            if cls == "ZeroConv2d":
                assert_close(got, want, what=cls)
                continue
            assert_close(got[0], want[0], what=f"{cls} out")
            if want[1] is None:
                assert got[1] is None
            else:
                assert_close(got[1], want[1], what=f"{cls} logdet")
            assert_close(m.reverse(want[0]), o.reverse(want[0]), what=f"{cls} reverse")


@pytest.mark.parametrize("backend", ["auto", "torch"])  # the fused kernels, and flowkern's pure-torch reference
@pytest.mark.parametrize("affine", [True, False])
def test_gradients_match_the_oracle(affine, backend):
    cfg = (3, 8, 8, 2, 2, affine, True)
    oracle, _ = oracle_model(cfg, dtype=torch.float64)
    model = adapter_like(oracle, cfg, dtype=torch.float64)
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64) - 0.5
    for m in (oracle, model):
        with flowkern.use_backend(backend):
            log_p, logdet, _ = m(x)
            fk.calc_loss(log_p, logdet.mean(), 8, 32.0)[0].backward()
    grads0 = dict(oracle.named_parameters())
    for name, p in model.named_parameters():
        assert_close(p.grad, grads0[name].grad, 1e-9, f"grad of {name}")


def _grads(model, x):
    x = x.clone().requires_grad_(True)
    log_p, logdet, zs = model(x)
    loss = fk.calc_loss(log_p, logdet.mean(), x.shape[2], 32.0)[0] + sum((z * z).mean() for z in zs)
    loss.backward()
    return [x.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("affine,conv_lu", [(True, True), (True, False), (False, True), (False, False)])
def test_reversible_gradients_equal_plain_float64(affine, conv_lu):
    cfg = (3, 8, 8, 3, 3, affine, conv_lu)
    oracle, _ = oracle_model(cfg, dtype=torch.float64)
    plain = adapter_like(oracle, cfg, dtype=torch.float64)
    rev = adapter_like(oracle, cfg, dtype=torch.float64, reversible=True, recompute_chunk=3)  # 2 chunks of batch 5
    assert rev.reversible and not plain.reversible
    x = torch.rand(5, 3, 8, 8, dtype=torch.float64) - 0.5
    with torch.no_grad():
        assert_outputs_close(rev(x), plain(x), 1e-12)
    log_p, logdet, _ = rev(x)
    assert logdet.dim() == (1 if affine else 0)
    for g, g0 in zip(_grads(rev, x), _grads(plain, x)):
        assert_close(g, g0, 1e-9, "reversible gradient")


def test_reversible_uses_less_memory_and_runs_plain_until_actnorm_is_initialised():
    cfg = (3, 16, 16, 6, 2, True, True)
    oracle, x = oracle_model(cfg, batch=4)
    plain = adapter_like(oracle, cfg)
    rev = adapter_like(oracle, cfg, reversible=True)

    def step(model):
        def run():
            log_p, logdet, _ = model(x)
            fk.calc_loss(log_p, logdet.mean(), 16, 32.0)[0].backward()
        return run

    peaks = {}
    for name, model in (("plain", plain), ("reversible", rev)):
        peaks[name] = peak_memory(step(model), model, x).peak_bytes  # real peak: every tensor alive in the step
        model.zero_grad(set_to_none=True)
    assert peaks["reversible"] < 0.6 * peaks["plain"], peaks

    # an uninitialised ActNorm: that batch runs with plain autograd (the init needs the real forward), then reversibly
    fresh = fk.Glow(3, 6, 2, filter_size=FILTER, reversible=True)
    first, second = saved_tensor_bytes(step(fresh)), saved_tensor_bytes(step(fresh))
    assert second < 0.7 * first
    assert first == pytest.approx(saved_tensor_bytes(step(plain)), rel=0.05)


def test_training_lowers_the_loss_plain_and_reversible():
    torch.manual_seed(3)
    n_bins = 2.0 ** 5
    images = torch.rand(8, 3, 8, 8)  # ToTensor-like [0, 1] images, quantised as rosinality's train.py does
    image = torch.floor(images * 255 / 2 ** 3) / n_bins - 0.5
    losses = {}
    for reversible in (False, True):
        torch.manual_seed(4)
        model = fk.Glow(3, 2, 2, filter_size=FILTER, reversible=reversible)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        with torch.no_grad():
            model(image + torch.rand_like(image) / n_bins)  # ActNorm's init batch, as there
        run = []
        for _ in range(8):
            torch.manual_seed(5 + len(run))  # the same dequantisation noise for both runs
            log_p, logdet, _ = model(image + torch.rand_like(image) / n_bins)
            loss, _, _ = fk.calc_loss(log_p, logdet.mean(), 8, n_bins)
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.append(loss.item())
        assert run[-1] < run[0] - 0.1, run
        losses[reversible] = run
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)


def test_copies_run_their_own_flows():
    cfg = (3, 8, 8, 2, 2, True, True)
    oracle, x = oracle_model(cfg)
    model = adapter_like(oracle, cfg, reversible=True)
    twin = copy.deepcopy(model).double()
    log_p, logdet, _ = twin(x.double())
    (log_p + logdet).sum().backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None and p.grad.dtype == torch.float64 for p in twin.parameters())


def test_flow_speaks_flowkerns_step_protocol():
    torch.manual_seed(6)
    flow = fk.Flow(8, affine=True, conv_lu=False, filter_size=FILTER)
    x = torch.randn(3, 8, 4, 4, dtype=torch.float64)
    flow = flow.double()
    y, ld = flow(x)
    x2, ld_inv = flow.inverse(y)
    assert_close(x2, x, 1e-12, "inverse")
    assert_close(ld_inv, -ld, 1e-12, "inverse logdet")
    seq = flowkern.FlowSequence([flow], reversible=True)  # any flowkern chain takes it
    y2, ld2 = seq(x.requires_grad_(True))
    assert_close(y2, y, 1e-12, "in a FlowSequence")
    with pytest.raises(ValueError, match="context"):
        flow(x, torch.zeros_like(x))
    with pytest.raises(ValueError, match="even channel count"):
        fk.AffineCoupling(5)
