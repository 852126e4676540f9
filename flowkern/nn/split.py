import math

import torch
import torch.nn.functional as F
from torch import nn

from flowkern.nn._checks import check_context, check_input
from flowkern.nn.coupling import ZeroConv2d

LOG_2PI = math.log(2 * math.pi)
PRIOR_SCALES = ("exp", "softplus")
_SOFTPLUS_INV_ONE = math.log(math.e - 1)  # softplus of it is 1


def prior_log_std(raw: torch.Tensor, scale: str) -> torch.Tensor:
    """log sigma of a learned prior from its network's raw output: sigma = exp(raw) (Glow), or sigma =
    softplus(raw + log(e - 1)) (the RFN thesis: it grows linearly, not exponentially, so sigma cannot spike). Both
    give sigma = 1 at raw = 0, where the zero-initialised conv starts."""
    if scale == "exp":
        return raw
    return torch.log(F.softplus(raw + _SOFTPLUS_INV_ONE).clamp_min(torch.finfo(raw.dtype).tiny))


def _check_scale(owner: str, scale: str) -> str:
    if scale not in PRIOR_SCALES:
        raise ValueError(f"{owner}: scale must be one of {PRIOR_SCALES}, got {scale!r}")
    return scale


def standard_normal_logp(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed per sample -> (B,)."""
    return (-0.5 * (z * z + LOG_2PI)).flatten(1).sum(1)


class Split(nn.Module):
    """Glow's split with a learned Gaussian prior p(z2 | z1 [, context]), written as an invertible map.

    x = (z1, z2) with z1 = x[:, :C//2]; a zero-initialised conv of (z1 [, context]) gives (mean, logs), and
    forward returns y = (z1, eps) with eps = (z2 - mean) * exp(-logs) and logdet = -sum(logs). Under the model
    eps ~ N(0, I), so log p(z2 | z1) = log N(eps) + logdet: the prior term becomes one more flow layer, encode and
    decode stay exact inverses, and sampling at temperature T draws eps ~ N(0, T^2 I).
    With learn_prior=False the split is a plain partition (eps = z2, logdet 0): for models that bring their own
    prior over the latents (VideoFlow). scale: how the conv's second half becomes the std (prior_log_std).
    """

    def __init__(self, num_channels: int, context_channels: int = 0, learn_prior: bool = True, scale: str = "exp"):
        super().__init__()
        if num_channels < 2:
            raise ValueError(f"Split needs at least 2 channels, got {num_channels}")
        self.num_channels = num_channels
        self.context_channels = context_channels
        self.c1 = num_channels // 2
        self.c2 = num_channels - self.c1
        self.learn_prior = learn_prior
        self.scale = _check_scale("Split", scale)
        self.prior = ZeroConv2d(self.c1 + context_channels, 2 * self.c2) if learn_prior else None

    def mean_logs(self, z1, context=None):
        h = self.prior(z1 if context is None else torch.cat([z1, context.to(z1.dtype)], 1))
        return h[:, :self.c2], prior_log_std(h[:, self.c2:], self.scale)

    def forward(self, x, context=None):
        check_input(self, x)
        check_context(self, context, x)
        if not self.learn_prior:
            return x, x.new_zeros(x.shape[0])
        z1, z2 = x[:, :self.c1], x[:, self.c1:]
        mean, logs = self.mean_logs(z1, context)
        eps = (z2 - mean) * torch.exp(-logs)
        return torch.cat([z1, eps], 1), -logs.flatten(1).sum(1)

    def inverse(self, y, context=None):
        check_input(self, y)
        check_context(self, context, y)
        if not self.learn_prior:
            return y, y.new_zeros(y.shape[0])
        z1, eps = y[:, :self.c1], y[:, self.c1:]
        mean, logs = self.mean_logs(z1, context)
        return torch.cat([z1, mean + eps * torch.exp(logs)], 1), logs.flatten(1).sum(1)


class TopPrior(nn.Module):
    """Learned Gaussian prior of the top latent, written as an invertible standardisation like Split.
    Unconditional: a learned per-channel mean and log-std. Conditional: a zero-initialised conv of the context.
    scale: how the raw std becomes sigma (prior_log_std)."""

    def __init__(self, num_channels: int, context_channels: int = 0, learn_prior: bool = True, scale: str = "exp"):
        super().__init__()
        self.num_channels = num_channels
        self.scale = _check_scale("TopPrior", scale)
        self.context_channels = context_channels
        self.learn_prior = learn_prior
        if learn_prior and context_channels:
            self.conv = ZeroConv2d(context_channels, 2 * num_channels)
        elif learn_prior:
            self.mean = nn.Parameter(torch.zeros(num_channels))
            self.logs = nn.Parameter(torch.zeros(num_channels))

    def mean_logs(self, z, context=None):
        if self.context_channels:
            h = self.conv(context.to(z.dtype))
            return h[:, :self.num_channels], prior_log_std(h[:, self.num_channels:], self.scale)
        return (self.mean.view(1, -1, 1, 1).expand_as(z),
                prior_log_std(self.logs, self.scale).view(1, -1, 1, 1).expand_as(z))

    def forward(self, z, context=None):
        check_input(self, z)
        check_context(self, context, z)
        if not self.learn_prior:
            return z, z.new_zeros(z.shape[0])
        mean, logs = self.mean_logs(z, context)
        return (z - mean) * torch.exp(-logs), -logs.flatten(1).sum(1)

    def inverse(self, eps, context=None):
        check_input(self, eps)
        check_context(self, context, eps)
        if not self.learn_prior:
            return eps, eps.new_zeros(eps.shape[0])
        mean, logs = self.mean_logs(eps, context)
        return mean + eps * torch.exp(logs), logs.flatten(1).sum(1)
