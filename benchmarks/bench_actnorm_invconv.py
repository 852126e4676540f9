"""actnorm_invconv (ActNorm + invertible 1x1 conv, fused): flowkern vs eager and compiled reference."""
import torch

import fused_op_bench
from flowkern import ops
from flowkern.nn.invconv import random_rotation


def case(shape, device, dtype):
    B, C, H, W = shape
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    s = (torch.rand(C, device=device) + 0.5).requires_grad_(True)
    b = torch.randn(C, device=device, requires_grad=True)
    Wm = random_rotation(C).to(device).requires_grad_(True)  # as InvConv holds it: contiguous (QR's q is not)
    ldw = torch.zeros((), device=device)  # as a FlowStep with an LU conv passes sum(log|diag U|)
    n = x.numel() * x.element_size()
    return (x, s, b, Wm, ldw), ops.actnorm_invconv_ref, ops.actnorm_invconv, 2 * n, 5 * n  # as channel_affine


def run(device, timer, **kw):
    return fused_op_bench.run("actnorm_invconv", case, device, timer, **kw)
