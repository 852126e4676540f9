"""Checks and launch helpers shared by the fused ops. Every check runs before a pointer reaches C++."""
import contextlib

import torch

from flowkern import _ext, backend as _backend

# Largest channel count each GPU backend takes in channel_affine (the C x C matrix is held on chip).
MAX_CHANNELS = {"triton": 256, "cuda": 128}


def check_nchw(x: torch.Tensor, op: str, what: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{op}: {what} must be a 4-D NCHW tensor (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: {what} must be a floating-point tensor, got {x.dtype}")


def check_same_device(op: str, **tensors) -> None:
    devs = {k: t.device for k, t in tensors.items() if t is not None}
    if len(set(devs.values())) > 1:
        where = ", ".join(f"{k} on {d}" for k, d in devs.items())
        raise ValueError(f"{op}: all tensors must be on one device, got {where}")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of matrices, partial sums and logdets: float64 for float64 data, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def pick_backend(x: torch.Tensor, channels: int) -> str:
    """backend.resolve(x), falling back to torch in 'auto' when C exceeds a GPU backend's limit."""
    name = _backend.resolve(x)
    limit = MAX_CHANNELS.get(name)
    if limit is not None and channels > limit:
        if _backend.get_backend() == "auto":
            return "torch"
        raise ValueError(f"backend {name!r} supports at most {limit} channels here, got {channels}; "
                         "use backend 'auto' or 'torch'")
    return name


def device_guard(x: torch.Tensor):
    """Make x's GPU the current device for a launch (kernels launch on the current device)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def no_autocast(x: torch.Tensor):
    """Disable autocast for flow algebra on x's device; free when autocast is off (the common case)."""
    dev = x.device.type
    if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
        return torch.autocast(dev, enabled=False)
    return contextlib.nullcontext()  # autocast off, or a device without autocast (meta)


def needs_grad(*tensors) -> bool:
    """Whether autograd must record this op (else the eager path skips the autograd.Function entirely)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def threads() -> int:
    return torch.get_num_threads()


def stream(x: torch.Tensor) -> int:
    return torch.cuda.current_stream(x.device).cuda_stream


def code(dtype: torch.dtype) -> int:
    return _ext.DTYPE_CODES[dtype]


def ptr(t) -> int:
    return 0 if t is None else t.data_ptr()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, b: int) -> int:
    return cdiv(a, b) * b


def pixel_chunk(backend: str, B: int, HW: int) -> int:
    """Pixels per partial-sum chunk of channel_affine's backward. A function of the shape only, so the
    reduction order (and hence the result, bit for bit) never depends on thread count or timing."""
    if backend == "cpu":
        return 1024
    return max(256, round_up(cdiv(B * HW, 512), 256))  # GPU: ~512 blocks in flight


def element_chunk(backend: str, B: int, E: int) -> int:
    """Elements per logdet partial of the coupling (same determinism rule as pixel_chunk)."""
    if backend == "cpu":
        return 4096
    return max(1024, round_up(cdiv(B * E, 1024), 1024))
