import contextlib

import torch
from torch import nn

from flowkern import ops
from flowkern.nn._checks import check_input
from flowkern.nn.actnorm import ActNorm2d
from flowkern.nn.coupling import AffineCoupling
from flowkern.nn.invconv import InvConv1x1, InvConv1x1LU


class FlowStep(nn.Module):
    """One Glow step: ActNorm2d -> invertible 1x1 conv (LU or plain) -> affine/additive coupling.

    ActNorm and the 1x1 conv run as one per-pixel affine map (ops.actnorm_invconv: one pass over x on the kernel
    backends, the unfused reference on "torch"); the coupling's tail is ops.affine_coupling.
    """

    def __init__(self, num_channels: int, hidden: int = 512, context_channels: int = 0, affine: bool = True,
                 lu: bool = True):
        super().__init__()
        self.num_channels = num_channels
        self.actnorm = ActNorm2d(num_channels)
        self.invconv = InvConv1x1LU(num_channels) if lu else InvConv1x1(num_channels)
        self.coupling = AffineCoupling(num_channels, hidden, context_channels, affine)

    def _affine(self, x):
        """ActNorm + 1x1 conv: (x', logdet)."""
        self.actnorm.maybe_initialize(x)
        return ops.actnorm_invconv(x, self.actnorm.scale(), self.actnorm.bias, self.invconv.weight(),
                                   logdet_w=self.invconv.logdet_per_pixel())

    def _affine_inverse(self, y):
        return ops.actnorm_invconv_inverse(y, self.actnorm.scale(), self.actnorm.bias, self.invconv.weight(),
                                           logdet_w=self.invconv.logdet_per_pixel(),
                                           W_inv=self.invconv.weight_inverse())

    def forward(self, x, context=None):
        check_input(self, x)
        y, ld = self._affine(x)
        y, ld2 = self.coupling(y, context)
        return y, ld + ld2

    def inverse(self, y, context=None):
        check_input(self, y)
        x, ld2 = self.coupling.inverse(y, context)
        x, ld = self._affine_inverse(x)
        return x, ld + ld2

    def reversible_backward(self, y, context, dy, dlogdet, context_grad: bool, autocast=contextlib.nullcontext):
        """Backward of this step from its output alone (used by flowkern.reversible).

        The coupling network reads the passthrough half, which the step leaves unchanged (x'_a = y_a), so it runs
        once here, with grad, on y_a: its h inverts the coupling, the fused tail kernel gives (dx', dh), and dh is
        pushed through the network (to y_a, the context and its weights) and then through ActNorm + 1x1 conv.
        Cost: one network forward + backward, as with checkpointing (a generic invert-then-recompute pays two
        network forwards). `autocast()` re-enters the forward's autocast state around the recomputed forward ops
        only: the gradients are taken outside it, so backward runs in the forward's dtypes (the flow's in fp32).
        Returns (x, dx, dcontext or None, {param: grad}).
        """
        cp = self.coupling
        ya = y[:, :cp.ca].detach().requires_grad_(True)
        c = context.detach().requires_grad_(True) if context_grad else context
        with torch.enable_grad(), autocast():
            h = cp._h(ya, c)
        with torch.no_grad(), autocast():
            xc, _ = ops.affine_coupling_inverse(y, h, cp.affine)  # the coupling's input x'
            x, _ = self._affine_inverse(xc)
        with torch.enable_grad():
            xc_leaf, h_leaf = xc.requires_grad_(True), h.detach().requires_grad_(True)
            with autocast():
                y2, ld2 = ops.affine_coupling(xc_leaf, h_leaf, cp.affine)
            g_xc, g_h = torch.autograd.grad([y2, ld2], [xc_leaf, h_leaf], [dy, dlogdet.to(ld2.dtype)])
            nn_params = [p for p in cp.parameters() if p.requires_grad]
            g_nn = torch.autograd.grad(h, [ya] + ([c] if context_grad else []) + nn_params, g_h, allow_unused=True)
            g_xc = torch.cat([g_xc[:, :cp.ca] + g_nn[0], g_xc[:, cp.ca:]], 1)
            x_leaf = x.detach().requires_grad_(True)
            with autocast():
                xc2, ld1 = self._affine(x_leaf)
            aff_params = [p for m in (self.actnorm, self.invconv) for p in m.parameters() if p.requires_grad]
            g_aff = torch.autograd.grad([xc2, ld1], [x_leaf] + aff_params, [g_xc, dlogdet.to(ld1.dtype)],
                                        allow_unused=True)
        grads = dict(zip(nn_params, g_nn[2 if context_grad else 1:]))
        grads.update(zip(aff_params, g_aff[1:]))
        return x_leaf.detach(), g_aff[0], (g_nn[1] if context_grad else None), grads
