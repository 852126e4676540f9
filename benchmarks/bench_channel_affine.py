"""channel_affine (the invertible 1x1 conv alone): flowkern vs eager and compiled reference, fwd and fwd+bwd."""
import torch

import fused_op_bench
from flowkern import ops
from flowkern.nn.invconv import random_rotation


def case(shape, device, dtype):
    B, C, H, W = shape
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    A = random_rotation(C).to(device).requires_grad_(True)  # contiguous, as a layer's weight (QR's q is not)
    c = torch.randn(C, device=device, requires_grad=True)
    n = x.numel() * x.element_size()
    return (x, A, c), ops.channel_affine_ref, ops.channel_affine, 2 * n, 5 * n  # fwd: x, y; bwd: x, dy, dx


def run(device, timer, **kw):
    return fused_op_bench.run("channel_affine", case, device, timer, **kw)
