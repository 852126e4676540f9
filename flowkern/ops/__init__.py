"""The fused ops. Each op file holds one op: its pure-torch reference (*_ref), its kernel launches, its autograd
formula and its public function; registry.py registers them all with torch.library; dispatch.py picks the backend and
launches the kernel (csrc/ for C++ and CUDA, ops/triton/ for Triton)."""
from flowkern.ops import registry  # noqa: F401  (registers the torch.library ops)
from flowkern.ops.actnorm_invconv import (actnorm_invconv, actnorm_invconv_backward, actnorm_invconv_inverse,
                                          actnorm_invconv_lu, actnorm_invconv_lu_backward, actnorm_invconv_lu_ref,
                                          actnorm_invconv_ref, lu_weight)
from flowkern.ops.affine_coupling import (affine_coupling, affine_coupling_backward, affine_coupling_inverse,
                                          affine_coupling_inverse_ref, affine_coupling_ref)
from flowkern.ops.channel_affine import channel_affine, channel_affine_ref, max_channels
from flowkern.ops.checks import acc_dtype

__all__ = ["acc_dtype", "actnorm_invconv", "actnorm_invconv_backward", "actnorm_invconv_inverse", "actnorm_invconv_ref",
           "actnorm_invconv_lu", "actnorm_invconv_lu_backward", "actnorm_invconv_lu_ref", "lu_weight",
           "channel_affine", "channel_affine_ref", "max_channels", "affine_coupling", "affine_coupling_backward",
           "affine_coupling_inverse", "affine_coupling_ref", "affine_coupling_inverse_ref"]
