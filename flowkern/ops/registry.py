"""Every torch.library op of flowkern: its schema (from the impl's annotations), its fake implementation (shapes only,
for torch.compile and the meta device) and its autograd formula, read top to bottom.

Each op is a FusedOp of its op file (flowkern/ops/<op>.py), registered as flowkern::<kernel name>. Under torch.compile
the FusedOp calls these registered ops; in eager mode it runs the same impl and formula without custom_op's dispatch
(flowkern.ops.dispatch.FusedOp). The backward kernels have no autograd formula of their own.
"""
import torch

from flowkern.ops import affine_coupling as ac, channel_affine as ca
from flowkern.ops.checks import acc_dtype
from flowkern.ops.dispatch import FusedOp


def _register(fused: FusedOp, fake):
    op = torch.library.custom_op(f"flowkern::{fused.name}", fused.impl, mutates_args=())
    op.register_fake(fake)
    if fused.backward is not None:
        bwd = fused.bwd
        op.register_autograd(lambda ctx, *grads: fused.backward(ctx, *grads, bwd=bwd and bwd.registered()),
                             setup_context=fused.setup_context)
    return op


def _acc_vector(x):
    """A per-sample vector in x's accumulation dtype (float64 for float64 data, float32 otherwise)."""
    return x.new_empty(x.shape[0], dtype=acc_dtype(x.dtype))


# channel_affine: y = A x + c per pixel; backward (dx, dA, dc)
channel_affine_bwd = _register(ca.channel_affine_bwd_op,
                               lambda x, dy, A, backend: (torch.empty_like(x), A.new_empty(A.shape),
                                                          A.new_empty(A.shape[:1])))
channel_affine_fwd = _register(ca.channel_affine_fwd_op, lambda x, A, c, backend: torch.empty_like(x))

# affine_coupling: (y, logdet) from (x, h); inverse (x, logdet) from (y, h); backward (dx, dh)
affine_coupling_bwd = _register(ac.affine_coupling_bwd_op,
                                lambda y, h, dy, dld, affine, scale, backend: (torch.empty_like(y),
                                                                               torch.empty_like(h)))
affine_coupling_fwd = _register(ac.affine_coupling_fwd_op,
                                lambda x, h, affine, scale, backend: (torch.empty_like(x), _acc_vector(x)))
affine_coupling_inv = _register(ac.affine_coupling_inv_op,
                                lambda y, h, affine, scale, backend: (torch.empty_like(y), _acc_vector(y)))

# every registered op by name (the tests run opcheck on each)
OPS = {"channel_affine_fwd": channel_affine_fwd, "channel_affine_bwd": channel_affine_bwd,
       "affine_coupling_fwd": affine_coupling_fwd, "affine_coupling_inv": affine_coupling_inv,
       "affine_coupling_bwd": affine_coupling_bwd}
