"""The host side of a FlowStep: how many torch ops one step dispatches, and the parameter-derived tensors it forms once
per parameter version (the GPU kernels at VideoFlow sizes take microseconds, each host-side op as long)."""
import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import pytest
from _helpers import HAS_CUDA, randomize_
import flowkern
from flowkern.nn import FlowSequence, FlowStep

# Torch ops one FlowStep dispatches for forward + backward (CPU kernels) on top of its coupling network's own ops
# (measured and subtracted: the network is the user's; the reversible count subtracts it twice, as its forward runs
# twice). The budget is this code's count, under half of where it started: 72 (plain) and 145 (reversible) before the
# derived-tensor cache, the CPU actnorm_invconv kernels and the LU factors' algebra in those kernels; 24 and 54 before
# the CPU coupling kernel summed its own logdet partials.
OWN_OPS_BUDGET = {"plain": 23, "reversible": 52}


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self):
        return sum(self.ops.values())


def _step(C=12, hidden=16, dtype=torch.float32):
    torch.manual_seed(0)
    return randomize_(FlowStep(C, hidden)).to(dtype).train()


def _network_ops(step, x):
    xa = x[:, :step.coupling.ca].detach().requires_grad_(True)
    with CountOps() as m:
        h = step.coupling._h(xa, None)
        torch.autograd.backward(h, torch.randn_like(h))
    return m.total


def test_flowstep_forward_backward_op_budget():
    for mode, budget in OWN_OPS_BUDGET.items():
        step = _step()
        model = FlowSequence([step], reversible=mode == "reversible")
        x = torch.randn(4, 12, 8, 8, requires_grad=True)
        gy, gld = torch.randn(4, 12, 8, 8), torch.randn(4)
        with flowkern.use_backend("auto"), CountOps() as m:
            y, ld = model(x)
            torch.autograd.backward((y, ld), (gy, gld))
        own = m.total - _network_ops(step, x) * (2 if mode == "reversible" else 1)  # reversible reruns its forward
        assert own <= budget, (mode, own, m.ops.most_common(12))


def test_derived_tensors_formed_once_per_parameter_version():
    step = _step()
    x = torch.randn(3, 12, 5, 7)
    with torch.no_grad():
        with CountOps() as first:
            step.inverse(step(x)[0])
        with CountOps() as again:
            y, _ = step(x)
            step.inverse(y)
    # The second forward + inverse forms nothing: no LU weight (matrix products, diagonal), no c = A b, no triangular
    # solves for W^-1. (The coupling network has no matrix products of its own: its convolutions are convolutions.)
    formed = {"aten.mm.default", "aten.linalg_solve_triangular.default", "aten.diag_embed.default", "aten.mv.default"}
    assert formed & set(first.ops), first.ops
    assert not formed & set(again.ops), again.ops
    # and the cache holds plain values: no autograd graph kept alive between calls
    assert not any(t.requires_grad for t in step.derived(torch.float32, inverse=True).values())


def test_derived_tensors_follow_parameter_changes():
    # An optimizer step (in place), a state_dict load and a dtype change must each be seen: the inverse stays exact.
    step = _step()
    x = torch.randn(3, 12, 5, 7)
    opt = torch.optim.SGD(step.parameters(), lr=0.1)

    def roundtrip_err(m, x):
        with torch.no_grad():
            y, ld = m(x)
            back, ld_inv = m.inverse(y)
            ref, ld_ref = FlowSequence([m])(x)  # same module: only checks forward is self-consistent
        return (back - x).abs().max().item(), (ld + ld_inv).abs().max().item(), (y - ref).abs().max().item()

    assert max(roundtrip_err(step, x)) < 1e-4
    with torch.no_grad():
        y_before, _ = step(x)
    loss = step(x)[0].square().mean()
    loss.backward()
    opt.step()  # in place: the version counters move
    with torch.no_grad():
        y_after, _ = step(x)
        with flowkern.use_backend("torch"):
            y_ref, _ = step(x)
    assert not torch.allclose(y_before, y_after)
    torch.testing.assert_close(y_after, y_ref, rtol=1e-5, atol=1e-5)
    assert max(roundtrip_err(step, x)) < 1e-4

    other = _step()
    other.load_state_dict({k: v + 0.01 for k, v in step.state_dict().items()})
    step.load_state_dict(other.state_dict())  # copied in place
    with torch.no_grad():
        torch.testing.assert_close(step(x)[0], other(x)[0], rtol=1e-6, atol=1e-6)

    step.double()  # a new storage under the same Parameter objects
    xd = x.double()
    with torch.no_grad():
        y64, _ = step(xd)
        with flowkern.use_backend("torch"):
            ref64, _ = step(xd)
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64, ref64, rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="CUDA graph capture needs a CUDA GPU")
def test_flowstep_training_step_captures_in_a_cuda_graph():
    # No host sync in forward or backward (no .item(), no status query per op): the step replays as a CUDA graph.
    step = _step().cuda()
    x = torch.randn(4, 12, 8, 8, device="cuda", requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(step, (x,))
    y, ld = graphed(x)
    y_ref, ld_ref = step(x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(ld, ld_ref)
    g = torch.autograd.grad((y.square().sum() + ld.sum()), [x] + list(step.parameters()))
    g_ref = torch.autograd.grad((y_ref.square().sum() + ld_ref.sum()), [x] + list(step.parameters()))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_derived_tensors_from_inference_mode_serve_a_later_input_gradient():
    # Evaluate under inference_mode, then take the gradient of the frozen flow's output w.r.t. its input (saliency,
    # adversarial inputs): the cached tensors must be usable by autograd.
    step = _step()
    for p in step.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 12, 4, 4)
    with torch.inference_mode():
        y_inf, _ = step(x)
    xg = x.clone().requires_grad_(True)
    y, ld = step(xg)
    (g,) = torch.autograd.grad(y.square().sum(), [xg])
    with flowkern.use_backend("torch"):
        xr = x.clone().requires_grad_(True)
        (g_ref,) = torch.autograd.grad(step(xr)[0].square().sum(), [xr])
    torch.testing.assert_close(y.detach(), y_inf)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)
