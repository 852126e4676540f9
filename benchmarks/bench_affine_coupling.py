"""affine_coupling (the coupling's elementwise tail and logdet): flowkern vs eager and compiled reference."""
import torch

import fused_op_bench
from flowkern import ops


def case(shape, device, dtype):
    B, C, H, W = shape
    cb = C - C // 2
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    h = torch.randn(B, 2 * cb, H, W, device=device, dtype=dtype, requires_grad=True)
    e = x.element_size()
    fwd_bytes = (2 * x.numel() + h.numel()) * e  # read x, h; write y
    bwd_bytes = (3 * x.numel() + 2 * h.numel()) * e  # read y_b-ish, h_s, dy; write dx, dh (approx.)
    return (x, h), ops.affine_coupling_ref, ops.affine_coupling, fwd_bytes, fwd_bytes + bwd_bytes


def run(device, timer, **kw):
    return fused_op_bench.run("affine_coupling", case, device, timer, **kw)
