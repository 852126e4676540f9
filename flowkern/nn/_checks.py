"""Input checks shared by the modules: a wrong shape or dtype fails here with the module's name, not deep in a conv."""
from typing import Optional

import torch
from torch import nn


def check_input(module: nn.Module, x: torch.Tensor, channels: Optional[int] = None) -> None:
    """x must be a floating NCHW tensor with `channels` (default module.num_channels) channels, in the dtype of the
    module's parameters (the flow's math runs in that dtype; autocast only touches the coupling networks)."""
    name = type(module).__name__
    channels = module.num_channels if channels is None else channels
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D NCHW tensor (B, {channels}, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} channels, got {x.shape[1]} (input shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    param = next(module.parameters(), None)
    if param is not None and param.dtype != x.dtype:
        raise TypeError(f"{name}: input dtype {x.dtype} does not match the module's parameters ({param.dtype}); "
                        f"convert one to the other, e.g. x.to({param.dtype}) or module.to({x.dtype})")


def check_context(module: nn.Module, context: Optional[torch.Tensor], x: torch.Tensor) -> None:
    name, channels = type(module).__name__, module.context_channels
    if channels == 0:
        if context is not None:
            raise ValueError(f"{name}: got a context tensor but was built with context_channels=0")
        return
    if context is None:
        raise ValueError(f"{name}: built with context_channels={channels}, so a context tensor "
                         f"(B, {channels}, H, W) is required")
    want = (x.shape[0], channels, x.shape[2], x.shape[3])
    if context.dim() != 4 or tuple(context.shape) != want:
        raise ValueError(f"{name}: context must have shape {want} to match input {tuple(x.shape)}, "
                         f"got {tuple(context.shape)}")
    if context.device != x.device:
        raise ValueError(f"{name}: context is on {context.device} but the input is on {x.device}")
