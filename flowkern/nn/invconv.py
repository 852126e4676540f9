import torch
from torch import nn

from flowkern import ops
from flowkern.ops.checks import no_autocast
from flowkern.nn._checks import check_input


def random_rotation(c: int) -> torch.Tensor:
    """A random orthogonal C x C matrix (QR of a Gaussian matrix, sign-fixed so it is Haar distributed)."""
    q, r = torch.linalg.qr(torch.randn(c, c, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float().contiguous()  # QR's q is column-major


class _InvConvBase(nn.Module):
    """Invertible 1x1 convolution: y = W x per pixel; logdet = H*W*log|det W|."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.num_channels = num_channels

    def weight(self) -> torch.Tensor:
        raise NotImplementedError

    def logdet_per_pixel(self) -> torch.Tensor:
        raise NotImplementedError

    def weight_inverse(self) -> torch.Tensor:
        # float64 inverse: stable even when W drifts towards ill-conditioning during training
        W = self.weight()
        return torch.linalg.inv(W.double()).to(W.dtype)

    def logdet(self, x: torch.Tensor) -> torch.Tensor:
        hw = x.shape[2] * x.shape[3]
        return (hw * self.logdet_per_pixel()).to(ops.acc_dtype(x.dtype)).expand(x.shape[0])

    def forward(self, x, context=None):
        check_input(self, x)
        return ops.channel_affine(x, self.weight()), self.logdet(x)

    def inverse(self, y, context=None):
        check_input(self, y)
        return ops.channel_affine(y, self.weight_inverse()), -self.logdet(y)

    def extra_repr(self):
        return f"{self.num_channels}"


class InvConv1x1(_InvConvBase):
    """Plain invertible 1x1 conv (Glow), W initialised to a random rotation; log|det W| by float64 slogdet."""

    def __init__(self, num_channels: int):
        super().__init__(num_channels)
        self.W = nn.Parameter(random_rotation(num_channels))

    def weight(self):
        return self.W

    def logdet_per_pixel(self):
        return torch.linalg.slogdet(self.W.double())[1].to(self.W.dtype)


class InvConv1x1LU(_InvConvBase):
    """LU-decomposed invertible 1x1 conv (Glow): W = P L (U + diag(sign_s * exp(log_s))).

    P (permutation) and sign_s are fixed buffers; L (unit lower), U (strictly upper) and log_s are learned.
    log|det W| = sum(log_s): no determinant is ever computed.
    """

    def __init__(self, num_channels: int):
        super().__init__(num_channels)
        P, L, U = torch.linalg.lu(random_rotation(num_channels).double())
        diag = torch.diagonal(U)
        self.register_buffer("P", P.float())
        self.register_buffer("sign_s", torch.sign(diag).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(num_channels, num_channels), -1))
        self.register_buffer("eye", torch.eye(num_channels))
        self.lower = nn.Parameter(torch.tril(L, -1).float())
        self.upper = nn.Parameter(torch.triu(U, 1).float())
        self.log_s = nn.Parameter(torch.log(torch.abs(diag)).float())

    def weight(self):
        with no_autocast(self.lower):  # W must be exact for the inverse to match
            return ops.lu_weight(self.lower, self.upper, self.log_s, self.P, self.sign_s)

    def logdet_per_pixel(self):
        return self.log_s.sum()

    def weight_inverse(self):
        # W^-1 = U^-1 L^-1 P^T by two float64 triangular solves
        L = (self.lower * self.lower_mask + self.eye).double()
        U = (self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))).double()
        Pt = self.P.double().T
        Linv_Pt = torch.linalg.solve_triangular(L, Pt, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(U, Linv_Pt, upper=True).to(self.log_s.dtype)
