"""Argument checks and small helpers shared by the fused ops. Every check runs before a pointer reaches C++."""
import contextlib

import torch


def check_nchw(x: torch.Tensor, op: str, what: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{op}: {what} must be a 4-D NCHW tensor (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: {what} must be a floating-point tensor, got {x.dtype}")


def check_shape(op: str, name: str, t: torch.Tensor, shape: tuple, why: str = "") -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}{why}, got {tuple(t.shape)}")


def check_same_device(op: str, **tensors) -> None:
    devs = {k: t.device for k, t in tensors.items() if t is not None}
    if len(set(devs.values())) > 1:
        where = ", ".join(f"{k} on {d}" for k, d in devs.items())
        raise ValueError(f"{op}: all tensors must be on one device, got {where}")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of matrices, partial sums and logdets: float64 for float64 data, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def no_autocast(x: torch.Tensor):
    """Disable autocast for flow algebra on x's device; free when autocast is off (the common case)."""
    dev = x.device.type
    if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
        return torch.autocast(dev, enabled=False)
    return contextlib.nullcontext()  # autocast off, or a device without autocast (meta)


def needs_grad(*args) -> bool:
    """Whether autograd must record this call (else the eager path skips the autograd.Function entirely)."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in args)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, b: int) -> int:
    return cdiv(a, b) * b
