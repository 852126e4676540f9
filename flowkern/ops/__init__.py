"""Functional fused ops. Each file holds one op: its pure-torch reference (*_ref), its dispatch to the C++,
CUDA or Triton kernels, and its torch.library registration (custom_op + fake + autograd)."""
from flowkern.ops import _common
from flowkern.ops.affine_coupling import (affine_coupling, affine_coupling_inverse, affine_coupling_inverse_ref,
                                          affine_coupling_ref)
from flowkern.ops.channel_affine import (actnorm_invconv, actnorm_invconv_inverse, actnorm_invconv_ref,
                                         channel_affine, channel_affine_ref)
from flowkern.ops._common import acc_dtype


def uses_kernels(x) -> bool:
    """True when the fused kernels (not the torch reference) will run on x with the current backend."""
    return _common.pick_backend(x, x.shape[1]) != "torch"


__all__ = ["uses_kernels", "acc_dtype", "actnorm_invconv", "actnorm_invconv_inverse", "actnorm_invconv_ref",
           "channel_affine", "channel_affine_ref", "affine_coupling", "affine_coupling_inverse", "affine_coupling_ref",
           "affine_coupling_inverse_ref"]
