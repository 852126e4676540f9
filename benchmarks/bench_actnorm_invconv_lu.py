"""actnorm_invconv_lu (ActNorm + LU-parametrised invertible 1x1 conv, fused, from the layers' own parameters: what a
Glow step with an LU conv trains): flowkern vs eager and compiled reference, each forming s = exp(log_scale) and
W = P L U from the factors, as a training step must."""
import torch

import fused_op_bench
from flowkern import ops


def case(shape, device, dtype):
    B, C, H, W = shape
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    P, L, U = torch.linalg.lu(torch.linalg.qr(torch.randn(C, C, dtype=torch.float64))[0])
    d = torch.diagonal(U)
    learned = [0.1 * torch.randn(C), torch.randn(C), torch.tril(L, -1).float(), torch.triu(U, 1).float(),
               d.abs().log().float()]  # log_scale, bias, lower, upper, log_s
    learned = [t.to(device).requires_grad_(True) for t in learned]
    fixed = [P.float().to(device), torch.sign(d).float().to(device)]
    n = x.numel() * x.element_size()
    return (x, *learned, *fixed), ops.actnorm_invconv_lu_ref, ops.actnorm_invconv_lu, 2 * n, 5 * n


def run(device, timer, **kw):
    return fused_op_bench.run("actnorm_invconv_lu", case, device, timer, **kw)
