"""The native extension flowkern._C, and what it can do on this machine."""
import torch

try:
    from flowkern import _C
    _IMPORT_ERROR = None
except ImportError as e:  # a source checkout that was never built: the torch backend still works
    _C = None
    _IMPORT_ERROR = e

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def native_available() -> bool:
    """True when flowkern._C was built and imported (CPU kernels are always part of it)."""
    return _C is not None


def cuda_built() -> bool:
    return _C is not None and bool(_C.with_cuda)


def cuda_status() -> dict:
    """Whether flowkern's CUDA kernels can run here, and if not, why. Never raises.

    Keys: built (bool), archs (compute capabilities compiled), available (bool), devices (int), reason (str).
    """
    if _C is None:
        return {"built": False, "archs": "", "available": False, "devices": 0,
                "reason": f"flowkern._C is not built ({_IMPORT_ERROR}); run `pip install .`"}
    if not _C.with_cuda:
        return {"built": False, "archs": "", "available": False, "devices": 0,
                "reason": "flowkern was built without CUDA (nvcc not found at build time, or FLOWKERN_CUDA=0)"}
    n, why = _C.cuda.device_count()
    status = {"built": True, "archs": _C.cuda_archs, "available": n > 0, "devices": max(n, 0), "reason": why}
    if n > 0 and not torch.cuda.is_available():
        status.update(available=False, reason="torch cannot use CUDA here (a CPU build of torch?)")
    return status


def check(code: int, name: str, device_kind: str) -> None:
    """Turn a kernel's return code into an exception naming the kernel."""
    if code == 0:
        return
    if device_kind == "cuda":
        raise RuntimeError(f"flowkern CUDA kernel {name} failed: {_C.cuda.error_string(code)} (code {code})")
    raise RuntimeError(f"flowkern CPU kernel {name} refused its arguments (code {code}); please report this")
