"""Dequantization and bits/dim, as in Glow: n-bit data, uniform noise, the -D log(2^n_bits) term."""
import math
from typing import Optional

import torch


def preprocess(x: torch.Tensor, n_bits: int = 8, noise: bool = True,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """8-bit data in [0, 255] (uint8 or float) -> continuous data in [-0.5, 0.5): reduce to n_bits, map bin k to
    k / 2^n - 0.5, and add uniform noise U(0, 1/2^n) (dequantization) when `noise`."""
    if not 1 <= n_bits <= 8:
        raise ValueError(f"n_bits must be in 1..8, got {n_bits}")
    xf = x.float() if not x.is_floating_point() else x
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError("preprocess: the data contains non-finite values (NaN/Inf)")
    if x.numel() and (xf.min() < 0 or xf.max() > 255):
        raise ValueError(f"preprocess: expected 8-bit data in [0, 255], got range [{xf.min().item()}, "
                         f"{xf.max().item()}]")
    bins = 2 ** n_bits
    k = torch.floor(xf / 2 ** (8 - n_bits))
    out = k / bins - 0.5
    if noise:
        out = out + torch.rand(out.shape, generator=generator, device=out.device, dtype=out.dtype) / bins
    return out


def postprocess(x: torch.Tensor, n_bits: int = 8) -> torch.Tensor:
    """Continuous data in [-0.5, 0.5) -> uint8 in [0, 255] (the n-bit bin, scaled back to 8 bits)."""
    bins = 2 ** n_bits
    k = torch.floor((x + 0.5) * bins).clamp(0, bins - 1)
    return (k * 2 ** (8 - n_bits)).to(torch.uint8)


def bits_per_dim(log_prob: torch.Tensor, num_dims: int, n_bits: int = 8) -> torch.Tensor:
    """Bits per dimension of the discrete data, from the continuous log-density of dequantized data in nats.

    -log P(bin) = -log p(x) + D log(2^n_bits) (each bin has volume 2^-n_bits per dimension), then / (D log 2).
    num_dims: D, the number of dimensions per sample (C*H*W; times T for video).
    """
    return (-log_prob + num_dims * n_bits * math.log(2.0)) / (num_dims * math.log(2.0))
