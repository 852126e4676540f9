import torch
from torch import nn

from flowkern import ops
from flowkern.nn.actnorm import ActNorm2d
from flowkern.nn._checks import check_context, check_input


class ZeroConv2d(nn.Module):
    """3x3 conv initialised to zero, with a learned per-channel output scale exp(3 * logs) (Glow)."""

    def __init__(self, in_channels: int, out_channels: int, logscale_factor: float = 3.0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(out_channels))
        self.logscale_factor = logscale_factor

    def forward(self, x):
        return self.conv(x) * torch.exp(self.logs * self.logscale_factor).view(1, -1, 1, 1)


class NetActNorm(ActNorm2d):
    """ActNorm inside a coupling network: returns the normalised activations only (no log-determinant: the network
    need not be invertible). Its data-dependent init runs like any ActNorm's."""

    def forward(self, x):
        return super().forward(x)[0]


class GatedUnit(nn.Module):
    """Gated activation unit: tanh(a) * sigmoid(b) over the two halves of the channels."""

    def forward(self, x):
        a, b = x.chunk(2, 1)
        return torch.tanh(a) * torch.sigmoid(b)


COUPLING_NETS = ("glow", "gatu", "actnorm")


def coupling_network(in_channels: int, hidden: int, out_channels: int, kind: str = "glow") -> nn.Sequential:
    """The coupling NN. "glow" (Glow's): 3x3 conv, ReLU, 1x1 conv, ReLU, zero-initialised 3x3 conv. "gatu" (the
    VideoFlow reference code's): each of the two hidden convs followed by ActNorm and a gated activation unit
    (the conv gives 2 * hidden channels, the unit halves them), then the zero-initialised 3x3 conv. "actnorm" (the
    RFN thesis's): Glow's with ActNorm after each hidden conv, before its ReLU."""
    if kind == "glow":
        net = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(),
                            nn.Conv2d(hidden, hidden, 1), nn.ReLU(), ZeroConv2d(hidden, out_channels))
        convs = (net[0], net[2])
    elif kind == "gatu":
        # no conv bias: the ActNorm after each conv has one
        net = nn.Sequential(nn.Conv2d(in_channels, 2 * hidden, 3, padding=1, bias=False), NetActNorm(2 * hidden),
                            GatedUnit(), nn.Conv2d(hidden, 2 * hidden, 1, bias=False), NetActNorm(2 * hidden),
                            GatedUnit(), ZeroConv2d(hidden, out_channels))
        convs = (net[0], net[3])
    elif kind == "actnorm":
        net = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False), NetActNorm(hidden), nn.ReLU(),
                            nn.Conv2d(hidden, hidden, 1, bias=False), NetActNorm(hidden), nn.ReLU(),
                            ZeroConv2d(hidden, out_channels))
        convs = (net[0], net[3])
    else:
        raise ValueError(f"coupling_network: expected kind one of {COUPLING_NETS}, got {kind!r}")
    for conv in convs:
        nn.init.normal_(conv.weight, 0.0, 0.05)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
    return net


COUPLING_SCALES = ("sigmoid", "tanh")


class AffineCoupling(nn.Module):
    """Glow affine (or additive) coupling, optionally conditional.

    x = (x_a, x_b) with x_a = x[:, :C//2] passed through and x_b (C - C//2 channels, so odd C works) transformed:
    h = NN(cat(x_a, context)), y_b = (x_b + h_t) * s; logdet = sum log s, with s from h_s by `scale`:
      "sigmoid" (Glow):           s = sigmoid(h_s + 2)
      "tanh" (RealNVP's clamp):   log s = s_scale * tanh(h_s) + s_shift, s_scale and s_shift learned per channel
                                  (initialised to 1 and 0: s = 1 at the zero-initialised network's start)
    Additive (affine=False): y_b = x_b + h, logdet 0. The elementwise tail is one fused kernel (for "tanh", the one
    that takes log s: ops.affine_coupling's scale="exp").
    net: the NN's kind (coupling_network): "glow", "gatu" or "actnorm".
    """

    def __init__(self, num_channels: int, hidden: int = 512, context_channels: int = 0, affine: bool = True,
                 net: str = "glow", scale: str = "sigmoid"):
        super().__init__()
        if num_channels < 2:
            raise ValueError(f"AffineCoupling needs at least 2 channels, got {num_channels}")
        if scale not in COUPLING_SCALES:
            raise ValueError(f"AffineCoupling: scale must be one of {COUPLING_SCALES}, got {scale!r}")
        self.num_channels = num_channels
        self.context_channels = context_channels
        self.affine = affine
        self.scale = scale
        self.ca = num_channels // 2
        cb = num_channels - self.ca
        self.nn = coupling_network(self.ca + context_channels, hidden, 2 * cb if affine else cb, net)
        if affine and scale == "tanh":
            self.s_scale = nn.Parameter(torch.ones(cb, 1, 1))
            self.s_shift = nn.Parameter(torch.zeros(cb, 1, 1))

    @property
    def op_scale(self) -> str:
        """The scale argument of ops.affine_coupling for what _h returns."""
        return "exp" if self.affine and self.scale == "tanh" else "sigmoid"

    def _h(self, xa, context):
        h = self.nn(xa if context is None else torch.cat([xa, context.to(xa.dtype)], 1))
        if self.op_scale == "exp":  # (h_t, clamped log s)
            cb = self.num_channels - self.ca
            h = torch.cat([h[:, :cb], self.s_scale.to(h.dtype) * torch.tanh(h[:, cb:]) + self.s_shift.to(h.dtype)],
                          1)
        return h

    def forward(self, x, context=None):
        check_input(self, x)
        check_context(self, context, x)
        return ops.affine_coupling(x, self._h(x[:, :self.ca], context), self.affine, self.op_scale)

    def inverse(self, y, context=None):
        check_input(self, y)
        check_context(self, context, y)
        return ops.affine_coupling_inverse(y, self._h(y[:, :self.ca], context), self.affine, self.op_scale)

    def extra_repr(self):
        return (f"{self.num_channels}, context_channels={self.context_channels}, affine={self.affine}"
                + (f", scale={self.scale!r}" if self.affine else ""))
