from torch import nn

from flowkern import ops
from flowkern.nn._checks import check_input
from flowkern.nn.actnorm import ActNorm2d
from flowkern.nn.coupling import AffineCoupling
from flowkern.nn.invconv import InvConv1x1, InvConv1x1LU


class FlowStep(nn.Module):
    """One Glow step: ActNorm2d -> invertible 1x1 conv (LU or plain) -> affine/additive coupling.

    With a kernel backend, ActNorm and the 1x1 conv run as one fused per-pixel affine map (one pass over x);
    with the "torch" backend each sub-module runs its reference code.
    """

    def __init__(self, num_channels: int, hidden: int = 512, context_channels: int = 0, affine: bool = True,
                 lu: bool = True):
        super().__init__()
        self.num_channels = num_channels
        self.actnorm = ActNorm2d(num_channels)
        self.invconv = InvConv1x1LU(num_channels) if lu else InvConv1x1(num_channels)
        self.coupling = AffineCoupling(num_channels, hidden, context_channels, affine)

    def forward(self, x, context=None):
        check_input(x, self.num_channels, type(self).__name__)
        if ops.uses_kernels(x):
            self.actnorm.maybe_initialize(x)
            y, ld = ops.actnorm_invconv(x, self.actnorm.scale(), self.actnorm.bias, self.invconv.weight(),
                                        logdet_w=self.invconv.logdet_per_pixel())
        else:
            y, ld0 = self.actnorm(x)
            y, ld = self.invconv(y)
            ld = ld + ld0
        y, ld2 = self.coupling(y, context)
        return y, ld + ld2

    def inverse(self, y, context=None):
        check_input(y, self.num_channels, type(self).__name__)
        x, ld2 = self.coupling.inverse(y, context)
        if ops.uses_kernels(x):
            x, ld = ops.actnorm_invconv_inverse(x, self.actnorm.scale(), self.actnorm.bias, self.invconv.weight(),
                                                logdet_w=self.invconv.logdet_per_pixel(),
                                                W_inv=self.invconv.weight_inverse())
        else:
            x, ld = self.invconv.inverse(x)
            x, ld0 = self.actnorm.inverse(x)
            ld = ld + ld0
        return x, ld + ld2
