"""flowkern._C_eager: the CPU's eager entry points in C++ give the Python path's results bit for bit (same kernels,
same partial sums), forward, backward and double backward, and are the path an eager CPU call takes."""
import importlib

import pytest
import torch

import flowkern
from flowkern import ops
from flowkern.ops import dispatch, eager

from _helpers import OP_SHAPES

pytestmark = pytest.mark.skipif(not eager.status()["available"],
                                reason=f"flowkern._C_eager is not available: {eager.status()['reason']}")


def _affine_coupling_case(shape, dtype, g):
    B, C, H, W = shape
    cb = C - C // 2
    x = torch.randn(shape, dtype=dtype, generator=g)
    h = torch.randn(B, 2 * cb, H, W, dtype=dtype, generator=g)
    return [x, h], lambda x, h: ops.affine_coupling(x, h)


def _exp_coupling_case(shape, dtype, g):
    (x, h), _ = _affine_coupling_case(shape, dtype, g)
    return [x, 0.5 * h], lambda x, h: ops.affine_coupling(x, h, scale="exp")


def _additive_coupling_case(shape, dtype, g):
    B, C, H, W = shape
    x = torch.randn(shape, dtype=dtype, generator=g)
    h = torch.randn(B, C - C // 2, H, W, dtype=dtype, generator=g)
    return [x, h], lambda x, h: ops.affine_coupling(x, h, affine=False)


def _actnorm_invconv_case(shape, dtype, g):
    C = shape[1]
    x = torch.randn(shape, dtype=dtype, generator=g)
    s = torch.rand(C, dtype=dtype, generator=g) + 0.5
    b = torch.randn(C, dtype=dtype, generator=g)
    W = torch.linalg.qr(torch.randn(C, C, dtype=torch.float64, generator=g))[0].to(dtype)
    return [x, s, b, W], ops.actnorm_invconv


def _actnorm_invconv_lu_case(shape, dtype, g):
    C = shape[1]
    x = torch.randn(shape, dtype=dtype, generator=g)
    log_scale, bias, log_s = (0.3 * torch.randn(C, dtype=dtype, generator=g) for _ in range(3))
    lower, upper = (0.3 * torch.randn(C, C, dtype=dtype, generator=g) for _ in range(2))
    P = torch.eye(C, dtype=dtype)[torch.randperm(C, generator=g)]
    sign = torch.where(torch.rand(C, generator=g) < 0.5, -1.0, 1.0).to(dtype)
    params = [x, log_scale, bias, lower, upper, log_s]
    return params, lambda *t: ops.actnorm_invconv_lu(*t, P, sign)


CASES = {"affine_coupling": _affine_coupling_case, "affine_coupling_exp": _exp_coupling_case,
         "affine_coupling_additive": _additive_coupling_case, "actnorm_invconv": _actnorm_invconv_case,
         "actnorm_invconv_lu": _actnorm_invconv_lu_case}


def _run(case, shape, dtype, use_eager, monkeypatch, uses=("y", "ld")):
    """(y, logdet, gradients of every input) of one forward + backward, through _C_eager or the Python path."""
    monkeypatch.setattr(eager, "ENABLED", use_eager)
    g = torch.Generator().manual_seed(0)
    inputs, fn = CASES[case](shape, dtype, g)
    inputs = [t.requires_grad_(True) for t in inputs]
    y, ld = fn(*inputs)
    gy, gld = torch.randn(y.shape, dtype=y.dtype, generator=g), torch.randn(ld.shape, dtype=ld.dtype, generator=g)
    outs = [(o, go) for name, o, go in (("y", y, gy), ("ld", ld, gld)) if name in uses]
    grads = torch.autograd.grad([o for o, _ in outs], inputs, [go for _, go in outs], allow_unused=True)
    with torch.no_grad():
        y_ng, ld_ng = fn(*inputs)
    return [y.detach(), ld.detach(), y_ng, ld_ng] + list(grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", OP_SHAPES)
@pytest.mark.parametrize("case", list(CASES))
def test_eager_entry_matches_the_python_path_bit_for_bit(case, shape, dtype, monkeypatch):
    fast = _run(case, shape, dtype, True, monkeypatch)
    slow = _run(case, shape, dtype, False, monkeypatch)
    for a, b in zip(fast, slow):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("uses", [("y",), ("ld",)])
@pytest.mark.parametrize("case", ["actnorm_invconv", "actnorm_invconv_lu", "affine_coupling"])
def test_eager_entry_with_a_loss_of_one_output(case, uses, monkeypatch):
    """A loss of y alone or of the logdet alone: the node gets one undefined gradient (the invconv nodes do not
    materialise it) and still gives the Python path's gradients."""
    fast = _run(case, (2, 6, 4, 5), torch.float64, True, monkeypatch, uses)
    slow = _run(case, (2, 6, 4, 5), torch.float64, False, monkeypatch, uses)
    for a, b in zip(fast, slow):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("case", list(CASES))
def test_an_eager_cpu_call_goes_through_c_eager(case, monkeypatch):
    """With _C_eager, forward, its node and backward never reach the Python launch path."""
    def refuse(*args, **kw):
        raise AssertionError("the Python launch path ran")
    monkeypatch.setattr(dispatch, "_launch", refuse)
    _run(case, (2, 6, 4, 4), torch.float32, True, monkeypatch)
    with pytest.raises(AssertionError, match="Python launch path"):
        _run(case, (2, 6, 4, 4), torch.float32, False, monkeypatch)


@pytest.mark.parametrize("case", [c for c in CASES if c != "affine_coupling_additive"])  # its gradients are constant
def test_double_backward_through_the_c_eager_node(case, monkeypatch):
    """create_graph=True through the C++ node (it calls back into Python's differentiable formulas): the gradient of
    a gradient penalty equals the Python path's."""
    def penalty_grads(use_eager):
        monkeypatch.setattr(eager, "ENABLED", use_eager)
        g = torch.Generator().manual_seed(1)
        inputs, fn = CASES[case]((2, 4, 3, 3), torch.float64, g)
        inputs = [t.requires_grad_(True) for t in inputs]
        y, ld = fn(*inputs)
        loss = (y * torch.randn(y.shape, dtype=y.dtype, generator=g)).sum() + (ld * 0.3).sum()
        first = torch.autograd.grad(loss, inputs, create_graph=True)
        return torch.autograd.grad(sum(f.square().sum() for f in first), inputs, allow_unused=True)
    calls = []

    def counted(op, tensors, flags):
        calls.append(op)
        return eager._double_backward(op, tensors, flags)
    eager._module.set_double_backward(counted)
    try:
        fast = penalty_grads(True)
    finally:
        eager._module.set_double_backward(eager._double_backward)
    assert calls == [case.split("_exp")[0]]  # the C++ node asked Python once
    for a, b in zip(fast, penalty_grads(False)):
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_eager_status_and_switch(monkeypatch):
    st = eager.status()
    assert st["available"] and st["enabled"] and st["torch"] == torch.__version__
    x = torch.randn(2, 4, 3, 3)
    assert eager.module(x) is not None
    assert eager.module(x[:0]) is None  # empty: the Python path's own handling
    monkeypatch.setattr(eager, "ENABLED", False)
    assert eager.module(x) is None and not eager.status()["enabled"]


def test_a_refused_permutation_is_named_on_the_eager_path():
    C = 4
    x = torch.randn(2, C, 3, 3)
    P = torch.eye(C)
    P[0, 0] = 2.0
    with pytest.raises(ValueError, match="P must be a permutation matrix"):
        ops.actnorm_invconv_lu(x, torch.zeros(C), torch.zeros(C), torch.zeros(C, C), torch.zeros(C, C),
                               torch.zeros(C), P, torch.ones(C))


def test_direct_calls_answer_none_for_calls_not_theirs_and_raise_a_named_error_for_malformed_ones():
    """flowkern._C_eager is importable on its own: a call the entries do not take (a strided, half, empty tensor, or
    data tensors of two dtypes) gets None, and flowkern/ops/ converts it (no exception: one costs ~10 us per call);
    a malformed call raises, naming the tensor and the problem, instead of handing the kernels a bad pointer."""
    m = eager.module(torch.zeros(1))
    x, h = torch.randn(2, 6, 5, 7), torch.randn(2, 6, 5, 7)
    s, b, W, ldw = torch.rand(6) + 0.5, torch.randn(6), torch.linalg.qr(torch.randn(6, 6))[0], torch.zeros(())
    not_theirs = [
        lambda: m.affine_coupling(x.transpose(2, 3), h.transpose(2, 3), True, "sigmoid"),
        lambda: m.affine_coupling(x, h.double(), True, "sigmoid"),
        lambda: m.affine_coupling(x.half(), h.half(), True, "sigmoid"),
        lambda: m.affine_coupling(x[:0], h[:0], True, "sigmoid"),
        lambda: m.actnorm_invconv(x.transpose(2, 3), s, b, W, ldw),
        lambda: m.actnorm_invconv_lu(x.bfloat16(), s.log(), b, W, W, s.log(), torch.eye(6), torch.ones(6)),
    ]
    for call in not_theirs:
        assert call() is None
    malformed = [
        (lambda: m.affine_coupling(x, h[:, :5].contiguous(), True, "sigmoid"), "h has 5 channels, expected 6"),
        (lambda: m.affine_coupling(x, h[:1].contiguous(), True, "sigmoid"), "h has shape"),
        (lambda: m.affine_coupling(x, h, True, "tanh"), 'scale must be "sigmoid" or "exp", got "tanh"'),
        (lambda: m.actnorm_invconv(x[0], s, b, W, ldw), "x must be 4-D"),
        (lambda: m.actnorm_invconv(x, s[:5], b, W, ldw), r"s has shape \[5\], expected \[6\]"),
        (lambda: m.actnorm_invconv(x, s, b, W[:5], ldw), r"W has shape \[5, 6\], expected \[6, 6\]"),
        (lambda: m.actnorm_invconv(x, s, b, W.reshape(36), ldw), r"W has shape \[36\], expected \[6, 6\]"),
        (lambda: m.actnorm_invconv(x, s, b, W, torch.zeros(2)), "ldw has shape .2., expected one element"),
        (lambda: m.actnorm_invconv_lu(x, s.log(), b, W, W, s.log(), torch.eye(6), torch.ones(5)),
         r"sign has shape \[5\], expected \[6\]"),
    ]
    for call, message in malformed:
        with pytest.raises(RuntimeError, match=message):
            call()


def test_valid_eager_calls_go_straight_to_cpp_and_bad_ones_get_the_python_error(monkeypatch):
    """A contiguous CPU float call enters flowkern._C_eager before any Python check (eager.fast); what C++
    refuses, or has to convert first, takes the ops' full Python path, whose checks name the problem."""
    ac = importlib.import_module("flowkern.ops.affine_coupling")
    ai = importlib.import_module("flowkern.ops.actnorm_invconv")
    x, h = torch.randn(2, 6, 5, 7), torch.randn(2, 6, 5, 7)
    s, b, ldw = torch.rand(6) + 0.5, torch.randn(6), torch.zeros(())
    W = torch.linalg.qr(torch.randn(6, 6))[0].contiguous()
    lu = (0.1 * torch.randn(6), torch.randn(6), torch.randn(6, 6), torch.randn(6, 6), torch.zeros(6), torch.eye(6),
          torch.ones(6))
    y, ld = ops.affine_coupling(x, h)  # through the full path, for reference
    y2, ld2 = ops.actnorm_invconv(x, s, b, W, ldw)
    y3, ld3 = ops.actnorm_invconv_lu(x, *lu)

    def checked(*args, **kwargs):
        raise AssertionError("the Python checks ran for a call C++ takes as it is")
    monkeypatch.setattr(ac, "_run", checked)
    monkeypatch.setattr(ai, "_check", checked)
    monkeypatch.setattr(ai, "_check_lu", checked)
    for got, want in ((ops.affine_coupling(x, h), (y, ld)), (ops.actnorm_invconv(x, s, b, W, ldw), (y2, ld2)),
                      (ops.actnorm_invconv_lu(x, *lu), (y3, ld3))):
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"h must have shape \(2, 6, 5, 7\)"):
        ops.affine_coupling(x, h[:, :4])
    with pytest.raises(ValueError, match=r"W must have shape \(6, 6\) for x with 6 channels"):
        ops.actnorm_invconv(x, s, b, W.reshape(36), ldw)
    with pytest.raises(ValueError, match=r"lower must have shape \(6, 6\)"):
        ops.actnorm_invconv_lu(x, lu[0], lu[1], lu[2][:5], *lu[3:])
    # non-contiguous x or a float64 h: converted on the full path, same results
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)
    assert not xt.is_contiguous()
    assert all(torch.equal(a, b) for a, b in zip(ops.affine_coupling(xt, h), (y, ld)))


SAVED = {"affine_coupling": 2, "affine_coupling_exp": 2, "affine_coupling_additive": 2, "actnorm_invconv": 5,
         "actnorm_invconv_lu": 8}  # the tensors each C++ node saves: (y, h); (x, s, b, W, ldw); x and 7 LU inputs


@pytest.mark.parametrize("case", list(CASES))
def test_the_c_eager_nodes_keep_autograd_s_guarantees(case):
    """The C++ nodes are plain autograd Nodes (no autograd::Function): they still save through saved-tensor hooks,
    refuse a saved tensor changed in place, free what they saved after a backward, and honour retain_graph and a
    gradient asked for some inputs only."""
    g = torch.Generator().manual_seed(2)
    inputs, fn = CASES[case]((2, 6, 3, 4), torch.float64, g)
    inputs = [t.requires_grad_(True) for t in inputs]
    if case == "actnorm_invconv":  # with log|det W| given: without it the op's slogdet saves tensors of its own
        ldw = torch.linalg.slogdet(inputs[3].detach())[1]
        fn = lambda x, s, b, W: ops.actnorm_invconv(x, s, b, W, ldw)  # noqa: E731

    def loss(y, ld):
        return (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum() + (0.3 * ld).sum()
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        y, ld = fn(*inputs)
    assert y.grad_fn.name().startswith("flowkern::") and len(packed) == SAVED[case]
    first = torch.autograd.grad(loss(y, ld), inputs, retain_graph=True)
    again = torch.autograd.grad(loss(y, ld), inputs)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(loss(y, ld), inputs)
    some = torch.autograd.grad(loss(*fn(*inputs)), inputs[1:])  # no gradient for x
    assert all(torch.equal(a, b) for a, b in zip(some, first[1:]))
    y, ld = fn(*inputs)
    with torch.no_grad():
        (y if case.startswith("affine_coupling") else inputs[0]).mul_(2)  # coupling saves y; actnorm x
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(loss(y, ld), inputs)
