"""flowkern._C_eager: the CPU kernels behind torch-linked eager entry points (csrc/eager/), when it was built.

An eager CPU call of actnorm_invconv, actnorm_invconv_lu or affine_coupling, its autograd node and its backward then
run in C++: one Python call instead of a dozen small ones (params structs, allocations, an autograd.Function), which
at Glow-step sizes cost as much as the kernel. The module is built when torch is importable at build time
(`pip install --no-build-isolation .`, as `make` installs) and is tied to that torch version. Without it, with
FLOWKERN_EAGER=0 in the environment, or under torch.compile, the same kernels run through flowkern/ops/ (dispatch.py);
the results are the same bit for bit (same kernels, same partial sums). A call on CPU tensors goes to C++ before any
Python check (fast(): the entries check every argument themselves); the ops' Python path runs when an entry
does not take the call or refuses it, and its checks name the problem.
"""
import importlib
import os
from typing import List, Optional

import torch

from flowkern import backend as _backend

_module, _reason = None, ""
ENABLED = os.environ.get("FLOWKERN_EAGER", "1") != "0"  # tests switch it to compare both paths


def _double_backward(op: str, tensors: List[Optional[torch.Tensor]], flags: List[bool]):
    """The gradients of a C++ autograd node under create_graph=True, in differentiable torch ops: the Python path's
    own double-backward formulas (csrc/eager/common.h)."""
    ai = importlib.import_module("flowkern.ops.actnorm_invconv")  # the modules: flowkern.ops exports the functions
    ac = importlib.import_module("flowkern.ops.affine_coupling")
    if op == "affine_coupling":
        y, h, dy, dld = tensors
        affine, exp_scale = flags
        return list(ac.affine_coupling_bwd_ref(y, h, dy, dld, affine, "exp" if exp_scale else "sigmoid"))
    if op == "actnorm_invconv":
        x, s, b, W, ldw, dy, dld = tensors
        dx, *grads = ai._backward(x, dy, dld, s, b, W, None, "cpu", differentiable=True)
        return [dx] + [g.to(t.dtype) for g, t in zip(grads, (s, b, W, ldw))]
    if op == "actnorm_invconv_lu":
        x, *params, dy, dld = tensors
        return list(ai.lu_double_backward(x, params, dy, dld, flags))
    raise ValueError(f"flowkern._C_eager: no double backward for {op!r}")


def _load():
    global _module, _reason
    try:
        from flowkern import _C_eager
    except ImportError as e:
        _reason = (f"flowkern._C_eager is not built or does not load ({e}); pip install --no-build-isolation . "
                   "builds it against the installed torch")
        return
    if _C_eager.torch_version != torch.__version__:
        _reason = (f"flowkern._C_eager was built against torch {_C_eager.torch_version}, not {torch.__version__}: "
                   "rebuild")
        return
    _C_eager.set_double_backward(_double_backward)
    _module = _C_eager


_load()


def status() -> dict:
    """Whether the CPU's eager calls run through flowkern._C_eager, and if not, why."""
    if _module is None:
        return {"available": False, "enabled": ENABLED, "reason": _reason}
    return {"available": True, "enabled": ENABLED, "torch": _module.torch_version,
            "reason": "" if ENABLED else "disabled (FLOWKERN_EAGER=0)"}


_CPU_BACKENDS = ("auto", "cpu")


def fast(x: torch.Tensor):
    """flowkern._C_eager for an op's call before any Python check, or None: not built, disabled, x not a CPU tensor,
    the backend neither "auto" nor "cpu", or under torch.compile. Its entry answers None for a call it does not take
    (a tensor that is not contiguous float32/float64, or carries a forward-mode tangent: the op's Python path converts
    or dispatches it) and raises for a malformed one (the op's Python checks then name the problem in the op's
    terms). At Glow-step sizes the Python checks, run after a kernel has streamed megabytes through the caches, cost
    as much as a tenth of the call; so does a helper frame more (the ops call the entry themselves)."""
    if (_module is None or not ENABLED or not isinstance(x, torch.Tensor) or not x.is_cpu
            or _backend.get_backend() not in _CPU_BACKENDS or torch.compiler.is_compiling()):
        return None
    return _module


def module(x: torch.Tensor):
    """flowkern._C_eager for a call on x, or None: not built, disabled, not a CPU tensor, an empty one, or under
    torch.compile (which traces the registered ops instead)."""
    if _module is None or not ENABLED or x.device.type != "cpu" or not x.numel() or torch.compiler.is_compiling():
        return None
    return _module
