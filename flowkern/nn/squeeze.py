import torch
from torch import nn


def squeeze2d(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2): each 2x2 patch goes to channels (Glow's ordering)."""
    B, C, H, W = x.shape
    if H % 2 or W % 2:
        raise ValueError(f"Squeeze2d needs even height and width, got {H}x{W} (input shape {tuple(x.shape)})")
    x = x.view(B, C, H // 2, 2, W // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(B, C * 4, H // 2, W // 2)


def unsqueeze2d(x: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    if C % 4:
        raise ValueError(f"unsqueeze needs a channel count divisible by 4, got {C} (input shape {tuple(x.shape)})")
    x = x.view(B, C // 4, 2, 2, H, W).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(B, C // 4, H * 2, W * 2)


class Squeeze2d(nn.Module):
    """Space-to-depth by 2; volume preserving (logdet 0)."""

    def forward(self, x, context=None):
        if x.dim() != 4:
            raise ValueError(f"Squeeze2d: expected a 4-D NCHW tensor, got shape {tuple(x.shape)}")
        return squeeze2d(x), x.new_zeros(x.shape[0])

    def inverse(self, y, context=None):
        if y.dim() != 4:
            raise ValueError(f"Squeeze2d.inverse: expected a 4-D NCHW tensor, got shape {tuple(y.shape)}")
        return unsqueeze2d(y), y.new_zeros(y.shape[0])
