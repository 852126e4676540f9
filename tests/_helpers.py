"""Shared test helpers (tests/ is on sys.path via pytest's `pythonpath` setting)."""
import pytest
import torch

import flowkern

HAS_CUDA = torch.cuda.is_available() and flowkern.cuda_status()["available"]


def kernel_backends():
    """(backend, device) pairs whose kernels can run here, each as a pytest param with a skip reason if not."""
    out = [pytest.param("cpu", "cpu", id="cpu")]
    try:
        import triton  # noqa: F401
        tri_ok, tri_why = True, ""
    except ImportError:
        tri_ok, tri_why = False, "triton is not installed"
    if HAS_CUDA:
        out.append(pytest.param("triton", "cuda", id="triton-cuda",
                                marks=pytest.mark.skipif(not tri_ok, reason=tri_why)))
        out.append(pytest.param("cuda", "cuda", id="cuda", marks=pytest.mark.cuda))
    else:
        out.append(pytest.param("triton", "cpu", id="triton-interpret",
                                marks=pytest.mark.skipif(not tri_ok, reason=tri_why)))
        out.append(pytest.param("cuda", "cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skip(
            reason=f"no CUDA GPU here: {flowkern.cuda_status()['reason']}")]))
    return out


def randomize_(module: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Move every learnable floating-point parameter off its (often trivial) init, so tests see a non-identity flow
    (integer parameters, such as FrEIA's stored permutations, stay), and mark every ActNorm initialised."""
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad and p.is_floating_point():
                p.add_(scale * torch.randn_like(p))
    for m in module.modules():
        if hasattr(m, "mark_initialized"):
            m.mark_initialized()
    return module


def random_level(C, K, ctx=0, reversible=True, hidden=8, dtype=torch.float64, lu=True, net="glow", scale="sigmoid"):
    """A FlowSequence of K random (non-identity) FlowSteps in training mode."""
    seq = flowkern.FlowSequence([flowkern.FlowStep(C, hidden, ctx, lu=lu, net=net, scale=scale) for _ in range(K)],
                                reversible=reversible)
    return randomize_(seq).to(dtype).train()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


# ---------------------------------------------------------------------------------------------- fused-op tests
# Tolerances are relative Frobenius errors vs a float64 reference: float64 1e-12, float32 1e-5, half types 2e-2.
OP_SHAPES = [(1, 2, 3, 3), (3, 3, 5, 7), (2, 6, 4, 4), (2, 12, 8, 8), (2, 48, 4, 4), (1, 96, 3, 5)]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 2e-2}
DTYPES = {"cpu": [torch.float32, torch.float64],
          "triton": [torch.float32, torch.float64, torch.float16, torch.bfloat16],
          "cuda": [torch.float32, torch.float64, torch.float16, torch.bfloat16]}


def op_cases():
    """(backend, device, dtype) for every kernel backend and the dtypes it takes, as pytest params."""
    for bk in kernel_backends():
        backend, device = bk.values
        for dtype in DTYPES[backend]:
            yield pytest.param(backend, device, dtype, marks=bk.marks, id=f"{bk.id}-{str(dtype)[6:]}")


def rand(*shape, dtype, device, requires_grad=False):
    return torch.randn(*shape, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_(requires_grad)


def run_with(backend, fn):
    with flowkern.use_backend(backend):
        return fn()


def check_close(got, ref64, dtype, what):
    err = rel_err(got.double().cpu(), ref64.double().cpu())
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g} > {TOL[dtype]:g}"


def grads(out_fn, inputs, seed_like):
    """Gradients of sum(out * R) (R fixed random weights per output) w.r.t. inputs."""
    outs = out_fn()
    loss = sum((o.double() * r).sum() for o, r in zip(outs, seed_like))
    return torch.autograd.grad(loss, inputs)
