"""Which implementation runs the fused ops: flowkern.set_backend(...) or FLOWKERN_BACKEND.

  "auto"   : CPU tensors -> the C++ kernels (float32/float64; other dtypes -> torch);
             CUDA tensors -> Triton if installed, else the CUDA kernels, else torch.
  "torch"  : the pure-PyTorch reference (the oracle and the benchmark baseline).
  "cpu" | "triton" | "cuda" : force one backend; a tensor it cannot take raises a clear error.
Triton runs on CPU tensors only under TRITON_INTERPRET=1 (how CI tests the kernels).
"""
import contextlib
import functools
import os

import torch

from flowkern import _ext

BACKENDS = ("auto", "torch", "cpu", "triton", "cuda")
_NATIVE_DTYPES_CPU = (torch.float32, torch.float64)
_GPU_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _validate(name: str) -> str:
    name = str(name).strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown flowkern backend {name!r}; choose one of {BACKENDS}")
    return name


def _from_environment() -> str:
    value = os.environ.get("FLOWKERN_BACKEND", "").strip()
    if not value:  # unset or empty: the default
        return "auto"
    try:
        return _validate(value)
    except ValueError:
        raise ValueError(f"environment variable FLOWKERN_BACKEND={value!r} is not a flowkern backend; choose one of "
                         f"{BACKENDS} or leave it unset") from None


_backend = _from_environment()


def set_backend(name: str) -> None:
    """Set the process-wide backend for the fused ops (see the module docstring)."""
    global _backend
    _backend = _validate(name)


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def use_backend(name: str):
    """Temporarily switch the backend: `with flowkern.use_backend("torch"): ...`."""
    global _backend
    previous, _backend = _backend, _validate(name)
    try:
        yield
    finally:
        _backend = previous


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve(x: torch.Tensor) -> str:
    """The concrete backend ("torch", "cpu", "triton" or "cuda") that will run an op on tensor x."""
    want = _backend
    dev = x.device.type
    if want == "torch":
        return "torch"
    if want == "auto":
        if dev == "cpu":
            return "cpu" if _ext.native_available() and x.dtype in _NATIVE_DTYPES_CPU else "torch"
        if dev == "cuda" and x.dtype in _GPU_DTYPES:
            if triton_available():
                return "triton"
            if _ext.cuda_built():
                return "cuda"
        return "torch"
    # an explicitly forced backend: refuse what it cannot run, with the reason
    if want == "cpu":
        if not _ext.native_available():
            raise RuntimeError(f"backend 'cpu' needs flowkern._C, which is not built: {_ext.cuda_status()['reason']}")
        if dev != "cpu":
            raise ValueError(f"backend 'cpu' got a tensor on {x.device}; use 'auto', 'triton' or 'cuda' for GPU "
                             "tensors")
        if x.dtype not in _NATIVE_DTYPES_CPU:
            raise TypeError(f"backend 'cpu' supports float32 and float64, got {x.dtype}; use backend 'torch' or 'auto'")
        return "cpu"
    if want == "triton":
        if not triton_available():
            raise RuntimeError("backend 'triton' requested but triton is not installed (pip install triton)")
        if dev == "cpu" and not triton_interpreting():
            raise ValueError("backend 'triton' got a CPU tensor; Triton runs on CPU only with TRITON_INTERPRET=1")
        if x.dtype not in _GPU_DTYPES:
            raise TypeError(f"backend 'triton' supports float32/float64/float16/bfloat16, got {x.dtype}")
        return "triton"
    # want == "cuda": no device query per op (cuda_status() asks the driver); only a refusal explains itself
    if not _ext.cuda_built():
        raise RuntimeError(f"backend 'cuda' unavailable: {_ext.cuda_status()['reason']}")
    if dev != "cuda":
        raise ValueError(f"backend 'cuda' got a tensor on {x.device}; move it to a CUDA device")
    if x.dtype not in _GPU_DTYPES:
        raise TypeError(f"backend 'cuda' supports float32/float64/float16/bfloat16, got {x.dtype}")
    return "cuda"
