"""Reversible backprop: same gradients as plain autograd, memory flat in depth, DDP, autocast, drift checks."""

import pytest
import torch
import torch.multiprocessing as mp
import _workers
from _helpers import random_level as level
from _helpers import randomize_

import flowkern
from flowkern import (ActNorm2d, AffineCoupling, FlowSequence, FlowStep, Glow, InvConv1x1LU, ReconstructionError,
                      Squeeze2d)
from flowkern.memory import saved_tensor_bytes


def grads_of(model, x, ctx, R):
    y, ld = model(x, ctx)
    loss = (y * R).sum() + (ld * torch.linspace(0.5, 1.5, ld.numel(), dtype=ld.dtype)).sum()
    inputs = [x] + ([ctx] if ctx is not None else []) + list(model.parameters())
    return [y.detach(), ld.detach()] + list(torch.autograd.grad(loss, inputs))


def max_rel_diff(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("ctx_c", [0, 3])
@pytest.mark.parametrize("chunk", [None, 1, 2], ids=["whole-batch", "chunk1", "chunk2"])
@pytest.mark.parametrize("lu", [True, False], ids=["lu", "plain-conv"])
def test_reversible_gradients_equal_autograd_float64(backend, ctx_c, chunk, lu):
    """Recomputing the batch in chunks (2 does not divide the batch of 3) changes nothing beyond reassociation; the
    plain 1x1 conv as well as the LU one."""
    flowkern.set_backend(backend)
    plain = level(6, 5, ctx_c, reversible=False, lu=lu)
    rev = level(6, 5, ctx_c, reversible=True, lu=lu)
    rev.recompute_chunk = chunk
    rev.load_state_dict(plain.state_dict())
    x = torch.randn(3, 6, 4, 6, dtype=torch.float64, requires_grad=True)
    ctx = torch.randn(3, ctx_c, 4, 6, dtype=torch.float64, requires_grad=True) if ctx_c else None
    R = torch.randn(3, 6, 4, 6, dtype=torch.float64)
    g_plain = grads_of(plain, x, ctx, R)
    g_rev = grads_of(rev, x, ctx, R)
    assert len(g_plain) == len(g_rev) == 2 + 1 + (1 if ctx_c else 0) + len(list(plain.parameters()))
    for a, b in zip(g_rev, g_plain):
        assert max_rel_diff(a, b) <= 1e-10


def test_reversible_gradients_float32_within_tolerance():
    flowkern.set_backend("auto")
    plain = level(12, 8, 2, reversible=False, hidden=16, dtype=torch.float32)
    rev = level(12, 8, 2, reversible=True, hidden=16, dtype=torch.float32)
    rev.load_state_dict(plain.state_dict())
    x = torch.randn(4, 12, 8, 8, requires_grad=True)
    ctx = torch.randn(4, 2, 8, 8, requires_grad=True)
    R = torch.randn(4, 12, 8, 8)
    for a, b in zip(grads_of(rev, x, ctx, R), grads_of(plain, x, ctx, R)):
        assert max_rel_diff(a, b) <= 1e-4  # stated float32 tolerance: reconstruction rounding over 8 steps


def test_user_sequence_with_squeeze_and_glow_reversible():
    """A user's own chain (Squeeze2d + FlowSteps) and Glow(reversible=True) match their plain counterparts."""
    torch.manual_seed(3)
    g_plain = randomize_(Glow(2, levels=2, steps=3, hidden=8, context_channels=1)).double().train()
    g_rev = randomize_(Glow(2, levels=2, steps=3, hidden=8, context_channels=1, reversible=True)).double().train()
    g_rev.load_state_dict(g_plain.state_dict())
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    ctx = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    outs = []
    for g in (g_plain, g_rev):
        lp = g.log_prob(x, ctx).sum()
        outs.append([lp.detach()] + list(torch.autograd.grad(lp, [x, ctx] + list(g.parameters()))))
    for a, b in zip(*outs):
        assert max_rel_diff(a, b) <= 1e-10
    # standalone modules take the generic invert-and-recompute path; FlowStep its own reversible_backward
    def chain():
        return [Squeeze2d(), ActNorm2d(8), InvConv1x1LU(8), AffineCoupling(8, 8, context_channels=0), FlowStep(8, 8)]
    seq = randomize_(FlowSequence(chain(), reversible=True, recompute_chunk=2)).double()
    ref = randomize_(FlowSequence(chain())).double()
    ref.load_state_dict(seq.state_dict())
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64, requires_grad=True)  # chunks of 2, 2, 1; shapes change inside
    R = torch.randn(5, 8, 2, 2, dtype=torch.float64)
    for a, b in zip(grads_of(seq, x, None, R), grads_of(ref, x, None, R)):
        assert max_rel_diff(a, b) <= 1e-10


def test_chunked_recompute_bounds_the_peak_by_the_chunk_not_the_batch():
    """Real peak memory (every storage alive in the step): with chunks of 4 samples, the transient of forward and
    backward no longer grows with the batch; only batch-sized tensors (input, output, their gradients) do."""
    from flowkern.memory import peak_memory

    def peak(batch, chunk):
        torch.manual_seed(0)
        seq = level(4, 3, reversible=True, hidden=64, dtype=torch.float32)
        seq.recompute_chunk = chunk
        x = torch.randn(batch, 4, 8, 8, requires_grad=True)

        def step():
            y, ld = seq(x)
            (0.5 * (y * y).sum() - ld.sum()).backward()
        return peak_memory(step, seq, x).peak_bytes

    sample = 4 * 8 * 8 * 4  # bytes of one sample
    per_sample = {chunk: (peak(64, chunk) - peak(16, chunk)) / 48 for chunk in (None, 4)}
    assert per_sample[4] <= 8 * sample, per_sample  # input, output, gradients, logdet: a few samples' sizes
    assert per_sample[None] > 4 * per_sample[4], per_sample  # the whole-batch recompute pays hidden activations


def test_saved_bytes_do_not_grow_with_depth():
    flowkern.set_backend("auto")

    def saved(K, reversible):
        torch.manual_seed(0)
        seq = level(12, K, reversible=reversible, hidden=16, dtype=torch.float32)
        x = torch.randn(2, 12, 8, 8, requires_grad=True)
        return saved_tensor_bytes(lambda: seq(x))

    rev2, rev32 = saved(2, True), saved(32, True)
    plain2, plain32 = saved(2, False), saved(32, False)
    assert rev32 <= 1.15 * rev2, (rev2, rev32)
    assert plain32 >= 10 * plain2, (plain2, plain32)  # plain autograd grows ~linearly in K
    assert rev32 < plain32 / 20


def test_actnorm_init_runs_plain_then_reversible():
    seq = FlowSequence([FlowStep(4, 8) for _ in range(3)], reversible=True).train()
    x = 2 + 3 * torch.randn(8, 4, 4, 4)
    n_first = saved_tensor_bytes(lambda: seq(x)[0].sum().backward())
    assert all(bool(s.actnorm.initialized) for s in seq.steps)
    n_next = saved_tensor_bytes(lambda: seq(x)[0].sum().backward())
    assert n_next < n_first  # first batch: plain autograd (init); then reversible


def test_no_grad_inference_bypasses_reversible_machinery():
    seq = level(4, 3, reversible=True, dtype=torch.float32)
    x = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        y, ld = seq(x)
    assert y.grad_fn is None
    seq.reversible = False
    with torch.no_grad():
        y2, ld2 = seq(x)
    assert torch.equal(y, y2) and torch.equal(ld, ld2)


def test_verify_mode_measures_drift_and_fails_loudly():
    seq = level(6, 4, reversible=True, dtype=torch.float32)
    seq.verify = True
    x = torch.randn(2, 6, 4, 4, requires_grad=True)
    seq(x)[0].sum().backward()
    drift = seq.last_drift
    assert len(drift) == 4 and all(0 <= d < 1e-4 for d in drift)
    assert max(drift) > 0  # float32 inversion is not bit-exact: the measurement is real
    seq.verify_tol = 1e-12
    with pytest.raises(ReconstructionError, match="reconstruction error"):
        seq(x)[0].sum().backward()


def _autocast_loss(m, x, autocast):
    """(y, loss) of a bf16-autocast forward (or a plain one); the flow's outputs stay fp32."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y, ld = m(x)
        loss = (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum() + ld.sum()
    assert y.dtype == torch.float32 and ld.dtype == torch.float32
    return y, loss


def test_autocast_bf16_network_fp32_flow():
    """Under bf16 autocast the reversible chain must be as accurate as plain autograd under autocast, both judged
    against the fp32 result (bf16 convs may take other kernels under no_grad, so bitwise equality is not expected)."""
    flowkern.set_backend("auto")
    plain = level(6, 3, reversible=False, hidden=16, dtype=torch.float32)
    rev = level(6, 3, reversible=True, hidden=16, dtype=torch.float32)
    rev.load_state_dict(plain.state_dict())
    x = torch.randn(2, 6, 8, 8, requires_grad=True)

    def run(m, autocast):
        y, loss = _autocast_loss(m, x, autocast)
        return [y.detach()] + list(torch.autograd.grad(loss, [x] + list(m.parameters())))

    ref, amp_plain, amp_rev = run(plain, False), run(plain, True), run(rev, True)
    for r, a, b in zip(ref, amp_plain, amp_rev):
        err_plain, err_rev = max_rel_diff(a, r), max_rel_diff(b, r)
        assert err_rev <= 2 * err_plain + 1e-3, (err_plain, err_rev)


@pytest.mark.parametrize("reversible", [True])
def test_ddp_two_processes_match_single_process(tmp_path, reversible):
    path = str(tmp_path / "grads.pt")
    rendezvous = str(tmp_path / "rendezvous")  # file-based: no TCP port to race for
    mp.start_processes(_workers.ddp_flow_grads, args=(2, rendezvous, path, reversible), nprocs=2, join=True,
                       start_method="spawn")
    ddp_grads = torch.load(path, weights_only=True)
    torch.manual_seed(0)
    model = level(4, 3, ctx=2, reversible=False, dtype=torch.float64)
    torch.manual_seed(1)
    x = torch.randn(4, 4, 4, 4, dtype=torch.float64)
    ctx = torch.randn(4, 2, 4, 4, dtype=torch.float64)
    y, ld = model(x, ctx)
    ((y ** 2).mean() - ld.mean()).backward()
    assert len(ddp_grads) == len(list(model.parameters()))
    for a, p in zip(ddp_grads, model.parameters()):
        assert a is not None and max_rel_diff(a, p.grad) <= 1e-10


def test_autocast_keeps_flow_exactly_invertible():
    """Under autocast only the coupling network runs in bf16: the flow itself (LU weight, biases) stays fp32, so
    inverse(forward(x)) is exact to fp32 rounding. (A bf16 LU weight once broke this.)"""
    seq = randomize_(FlowSequence([FlowStep(6, 16) for _ in range(3)]))
    x = torch.randn(2, 6, 8, 8)
    for backend in ("torch", "auto"):
        flowkern.set_backend(backend)
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            y, _ = seq(x)
            x2, _ = seq.inverse(y)
        assert (x2 - x).abs().max().item() < 1e-5


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_autocast_flow_gradients_as_accurate_as_plain(backend):
    """Under bf16 autocast the flow's own gradients (ActNorm, 1x1 conv) are fp32 in reversible backward as in plain
    autograd. The coupling networks are near zero here, so their bf16 error does not hide the flow's; differentiating
    inside the autocast region once made the 1x1-conv weight gradients ~50x worse than plain autocast."""
    flowkern.set_backend(backend)

    def model(reversible):
        torch.manual_seed(0)
        seq = FlowSequence([FlowStep(6, 16) for _ in range(3)], reversible=reversible)
        with torch.no_grad():
            for name, p in seq.named_parameters():
                p.add_((0.1 if "coupling" not in name else 0.01 * ("nn.4" in name)) * torch.randn_like(p))
        return randomize_(seq, scale=0.0).train()

    x = torch.randn(2, 6, 8, 8, requires_grad=True)

    def grads(m, autocast):
        g = torch.autograd.grad(_autocast_loss(m, x, autocast)[1], list(m.parameters()))
        return {n: gi for (n, _), gi in zip(m.named_parameters(), g) if "coupling" not in n}

    ref, plain, rev = grads(model(False), False), grads(model(False), True), grads(model(True), True)
    for name in ref:
        err_plain, err_rev = max_rel_diff(plain[name], ref[name]), max_rel_diff(rev[name], ref[name])
        assert err_rev <= 2 * err_plain + 1e-5, (name, err_plain, err_rev)


def test_double_backward_through_reversible_says_why():
    seq = level(4, 2, dtype=torch.float64)
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    y, ld = seq(x)
    with pytest.raises(RuntimeError, match="reversible=False"):
        torch.autograd.grad((y ** 2).sum() - ld.sum(), x, create_graph=True)


@pytest.mark.parametrize("reversible", [False, True])
def test_parameter_changed_between_forward_and_backward_raises(reversible):
    """As plain autograd does: an optimizer step (or any in-place change) between forward and backward must not
    silently give gradients of other weights."""
    seq = level(4, 2, reversible=reversible, dtype=torch.float64)
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    y, ld = seq(x)
    with torch.no_grad():
        seq.steps[0].coupling.nn[0].weight.add_(0.1)  # a tensor plain autograd saves (conv weight)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        ((y ** 2).sum() - ld.sum()).backward()


def test_verify_mode_backward_twice_with_retain_graph():
    seq = level(4, 2, dtype=torch.float64)
    seq.verify = True
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    y, ld = seq(x)
    loss = (y ** 2).sum() - ld.sum()
    g1 = torch.autograd.grad(loss, [x] + list(seq.parameters()), retain_graph=True)
    g2 = torch.autograd.grad(loss, [x] + list(seq.parameters()))
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)
    assert len(seq.last_drift) == 2
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(loss, x)
