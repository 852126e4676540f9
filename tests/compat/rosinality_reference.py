"""Test oracle for flowkern.compat.rosinality: an independent plain-PyTorch implementation of the model semantics of
rosinality/glow-pytorch's model.py (MIT licensed), written for these tests from reading that code. It follows that
code's maths step by step, in float32 where it computes in float32 (ActNorm's init statistics, the plain 1x1 conv's
inverse, the slogdet cast back to float), with the same module and attribute names (so the same state_dict keys,
shapes and dtypes) and the same return tuples. No flowkern code is used here. One addition: `filter_size` on
Flow/Block/Glow (fixed at 512 there), so the tests and benchmarks can use small networks.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


class ActNorm(nn.Module):
    def __init__(self, in_channel, logdet=True):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, in_channel, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, in_channel, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        self.logdet = logdet

    @torch.no_grad()
    def initialize(self, x):
        per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)  # (C, B*H*W), in x's dtype
        mu = per_channel.mean(dim=1)
        sd = per_channel.std(dim=1)  # unbiased
        self.loc.data.copy_(-mu.reshape(1, -1, 1, 1))
        self.scale.data.copy_(1 / (sd.reshape(1, -1, 1, 1) + 1e-6))

    def forward(self, x):
        if int(self.initialized.item()) == 0:
            self.initialize(x)
            self.initialized.fill_(1)
        h, w = x.shape[2], x.shape[3]
        ld = h * w * torch.log(torch.abs(self.scale)).sum()
        y = self.scale * (x + self.loc)
        return (y, ld) if self.logdet else y

    def reverse(self, y):
        return y / self.scale - self.loc


class InvConv2d(nn.Module):
    def __init__(self, in_channel):
        super().__init__()
        q = torch.linalg.qr(torch.randn(in_channel, in_channel))[0]
        self.weight = nn.Parameter(q[:, :, None, None].contiguous())

    def forward(self, x):
        h, w = x.shape[2], x.shape[3]
        mat = self.weight.squeeze()
        ld = h * w * torch.linalg.slogdet(mat.double())[1].float()
        return F.conv2d(x, self.weight), ld

    def reverse(self, y):
        inv = torch.inverse(self.weight.squeeze())  # in the weight's dtype
        return F.conv2d(y, inv[:, :, None, None])


class InvConv2dLU(nn.Module):
    def __init__(self, in_channel):
        super().__init__()
        q = torch.linalg.qr(torch.randn(in_channel, in_channel, dtype=torch.float64))[0].float()
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper).clone()
        upper_mask = torch.ones(in_channel, in_channel).triu(1)
        self.register_buffer("w_p", p)
        self.register_buffer("u_mask", upper_mask)
        self.register_buffer("l_mask", upper_mask.t().contiguous())
        self.register_buffer("s_sign", diag.sign())
        self.register_buffer("l_eye", torch.eye(in_channel))
        self.w_l = nn.Parameter(lower.contiguous())  # the full L (unit diagonal); the mask keeps its strict lower part
        self.w_s = nn.Parameter(diag.abs().log())
        self.w_u = nn.Parameter(upper.triu(1).contiguous())

    def calc_weight(self):
        lower = self.w_l * self.l_mask + self.l_eye
        upper = self.w_u * self.u_mask + torch.diag(self.s_sign * self.w_s.exp())
        return (self.w_p @ lower @ upper)[:, :, None, None]

    def forward(self, x):
        h, w = x.shape[2], x.shape[3]
        ld = h * w * sum(self.w_s)  # a 0-dim tensor
        return F.conv2d(x, self.calc_weight()), ld

    def reverse(self, y):
        inv = torch.inverse(self.calc_weight().squeeze())
        return F.conv2d(y, inv[:, :, None, None])


class ZeroConv2d(nn.Module):
    def __init__(self, in_channel, out_channel, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channel, out_channel, 3, padding=0)
        self.conv.weight.data.zero_()
        self.conv.bias.data.zero_()
        self.scale = nn.Parameter(torch.zeros(1, out_channel, 1, 1))

    def forward(self, x):
        padded = F.pad(x, (1, 1, 1, 1), mode="constant", value=1.0)
        return self.conv(padded) * torch.exp(3 * self.scale)


class AffineCoupling(nn.Module):
    def __init__(self, in_channel, filter_size=512, affine=True):
        super().__init__()
        self.affine = affine
        half = in_channel // 2
        self.net = nn.Sequential(
            nn.Conv2d(half, filter_size, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(filter_size, filter_size, 1),
            nn.ReLU(inplace=True),
            ZeroConv2d(filter_size, in_channel if affine else half),
        )
        for idx in (0, 2):
            self.net[idx].weight.data.normal_(0, 0.05)
            self.net[idx].bias.data.zero_()

    def forward(self, x):
        xa, xb = torch.chunk(x, 2, dim=1)
        if not self.affine:
            return torch.cat([xa, xb + self.net(xa)], dim=1), None
        log_s, t = torch.chunk(self.net(xa), 2, dim=1)
        s = torch.sigmoid(log_s + 2)
        ld = torch.log(s).reshape(x.shape[0], -1).sum(dim=1)
        return torch.cat([xa, (xb + t) * s], dim=1), ld

    def reverse(self, y):
        ya, yb = torch.chunk(y, 2, dim=1)
        if not self.affine:
            return torch.cat([ya, yb - self.net(ya)], dim=1)
        log_s, t = torch.chunk(self.net(ya), 2, dim=1)
        s = torch.sigmoid(log_s + 2)
        return torch.cat([ya, yb / s - t], dim=1)


class Flow(nn.Module):
    def __init__(self, in_channel, affine=True, conv_lu=True, filter_size=512):
        super().__init__()
        self.actnorm = ActNorm(in_channel)
        self.invconv = InvConv2dLU(in_channel) if conv_lu else InvConv2d(in_channel)
        self.coupling = AffineCoupling(in_channel, filter_size=filter_size, affine=affine)

    def forward(self, x):
        h, ld_an = self.actnorm(x)
        h, ld_w = self.invconv(h)
        h, ld_c = self.coupling(h)
        ld = ld_an + ld_w
        return h, (ld if ld_c is None else ld + ld_c)

    def reverse(self, y):
        return self.actnorm.reverse(self.invconv.reverse(self.coupling.reverse(y)))


def gaussian_log_p(x, mean, log_sd):
    return -0.5 * math.log(2 * math.pi) - log_sd - 0.5 * (x - mean) ** 2 / torch.exp(2 * log_sd)


def gaussian_sample(eps, mean, log_sd):
    return mean + torch.exp(log_sd) * eps


def _squeeze(x):
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def _unsqueeze(x):
    b, c, h, w = x.shape
    x = x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, 2 * h, 2 * w)


class Block(nn.Module):
    def __init__(self, in_channel, n_flow, split=True, affine=True, conv_lu=True, filter_size=512):
        super().__init__()
        self.flows = nn.ModuleList([Flow(4 * in_channel, affine=affine, conv_lu=conv_lu, filter_size=filter_size)
                                    for _ in range(n_flow)])
        self.split = split
        if split:
            self.prior = ZeroConv2d(2 * in_channel, 4 * in_channel)
        else:
            self.prior = ZeroConv2d(4 * in_channel, 8 * in_channel)

    def forward(self, x):
        n = x.shape[0]
        h = _squeeze(x)
        ld = 0
        for flow in self.flows:
            h, d = flow(h)
            ld = ld + d
        if self.split:
            h, z = torch.chunk(h, 2, dim=1)
            mean, log_sd = torch.chunk(self.prior(h), 2, dim=1)
        else:
            z = h
            mean, log_sd = torch.chunk(self.prior(torch.zeros_like(h)), 2, dim=1)
        log_p = gaussian_log_p(z, mean, log_sd).reshape(n, -1).sum(dim=1)
        return h, ld, log_p, z

    def reverse(self, output, eps=None, reconstruct=False):
        if reconstruct:
            h = torch.cat([output, eps], dim=1) if self.split else eps
        elif self.split:
            mean, log_sd = torch.chunk(self.prior(output), 2, dim=1)
            h = torch.cat([output, gaussian_sample(eps, mean, log_sd)], dim=1)
        else:
            mean, log_sd = torch.chunk(self.prior(torch.zeros_like(output)), 2, dim=1)
            h = gaussian_sample(eps, mean, log_sd)
        for flow in reversed(self.flows):
            h = flow.reverse(h)
        return _unsqueeze(h)


class Glow(nn.Module):
    def __init__(self, in_channel, n_flow, n_block, affine=True, conv_lu=True, filter_size=512):
        super().__init__()
        self.blocks = nn.ModuleList()
        c = in_channel
        for _ in range(n_block - 1):
            self.blocks.append(Block(c, n_flow, affine=affine, conv_lu=conv_lu, filter_size=filter_size))
            c *= 2
        # the last block gets no conv_lu argument there: it is always LU
        self.blocks.append(Block(c, n_flow, split=False, affine=affine, filter_size=filter_size))

    def forward(self, x):
        log_p_sum, logdet, z_outs, h = 0, 0, [], x
        for block in self.blocks:
            h, d, log_p, z = block(h)
            z_outs.append(z)
            logdet = logdet + d
            log_p_sum = log_p_sum + log_p
        return log_p_sum, logdet, z_outs

    def reverse(self, z_list, reconstruct=False):
        h = None
        for k, block in enumerate(reversed(self.blocks)):
            z = z_list[len(z_list) - 1 - k]
            h = block.reverse(z if k == 0 else h, z, reconstruct=reconstruct)
        return h
