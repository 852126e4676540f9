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
    """Move every parameter off its (often trivial) init, so tests see a non-identity flow."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    for m in module.modules():
        if isinstance(m, flowkern.ActNorm2d):
            m.initialized.fill_(True)
            m._initialized = True
    return module


def random_level(C, K, ctx=0, reversible=True, hidden=8, dtype=torch.float64):
    """A FlowSequence of K random (non-identity) FlowSteps in training mode."""
    seq = flowkern.FlowSequence([flowkern.FlowStep(C, hidden, ctx) for _ in range(K)], reversible=reversible)
    return randomize_(seq).to(dtype).train()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()
