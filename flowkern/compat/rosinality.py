"""rosinality/glow-pytorch compatibility: the classes of its model.py on flowkern's fused ops.

    from model import Glow                                ->  from flowkern.compat.rosinality import Glow
    model = Glow(3, n_flow, n_block, affine=..., conv_lu=...)     same arguments; add reversible=True to save memory

Same constructor arguments, `forward`/`reverse` signatures and return tuples (Glow.forward -> (log_p_sum, logdet,
z_outs), Glow.reverse(z_list, reconstruct=False) -> image; Block.forward -> (out, logdet, log_p, z_new); Flow.forward
-> (out, logdet); ...), the same state_dict keys, shapes and dtypes (so a checkpoint trained with that code loads with
`load_state_dict` and gives the same numbers, float32 to ~1e-5) and the same maths, quirks included:

- ActNorm: y = scale * (x + loc) with raw `loc`/`scale` parameters of shape (1, C, 1, 1) (a negative scale is
  allowed: logdet = H*W*sum(log|scale|)) and a uint8 `initialized` buffer. The data-dependent init (loc = -mean,
  scale = 1 / (unbiased std + 1e-6)) runs on the first forward while `initialized` is 0, in training and eval mode
  alike, as there (flowkern's ActNorm2d inits in training mode only).
- InvConv2d: `weight` (C, C, 1, 1), logdet from a float64 slogdet. InvConv2dLU: buffers w_p, u_mask, l_mask,
  s_sign, l_eye and parameters w_l, w_s (log|s|), w_u; W = w_p (w_l * l_mask + I) (w_u * u_mask + diag(s_sign
  e^w_s)), logdet = H*W*sum(w_s).
- ZeroConv2d pads with the value 1 (not 0) and scales by exp(3 * scale); `scale` is (1, C_out, 1, 1).
- AffineCoupling: the network output is split as (log_s, t), s = sigmoid(log_s + 2), out_b = (in_b + t) * s; its
  logdet is (B,), or None for the additive coupling (affine=False).
- Logdets: ActNorm's and the convs' are 0-dim tensors, so with additive couplings Flow, Block and Glow return a 0-dim
  logdet (the same for every sample), with affine ones a (B,) tensor.
- Block: squeeze -> flows -> split; the prior is a ZeroConv2d giving (mean, log_sd) from the kept half, or, on the
  last block, from zeros (with the pad value 1 its output still varies at the border); log_p is summed per sample.
- Glow: n_block blocks; the last block is built without `conv_lu`, so it always uses InvConv2dLU (that is what the
  checkpoints hold).

How it runs: ActNorm + the 1x1 conv of a Flow are one fused per-pixel affine map (flowkern.ops.actnorm_invconv,
given W and its known log-determinant), the coupling's elementwise tail is flowkern.ops.affine_coupling (whose h is
(t, s): the last conv's output channels are rotated by half instead of copying the activation), the 1x1 conv of a
standalone InvConv2d is flowkern.ops.channel_affine. Inverses use a float64 inverse or triangular solves.

Beyond the original (all optional keywords, defaults as there): `filter_size` on Flow/Block/Glow (there fixed at 512),
`reversible=True` (and `recompute_chunk`) on Block/Glow: each block's flows train with flowkern's reversible backprop
(flowkern.reversible; same gradients, activation memory flat in n_flow). Each Flow also speaks flowkern's step
protocol (forward(x, context=None), inverse(y) -> (x, logdet), reversible_backward). Training helpers of its train.py:
`calc_z_shapes`, `calc_loss`; its data convention (n_bits images mapped to [-0.5, 0.5), uniform noise of one bin) is
flowkern.preprocess (which takes 0..255 data rather than ToTensor's 0..1).
"""
import contextlib
import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flowkern import ops
from flowkern.nn.invconv import random_rotation
from flowkern.nn.squeeze import squeeze2d, unsqueeze2d
from flowkern.ops.checks import no_autocast
from flowkern.reversible import DEFAULT_RECOMPUTE_CHUNK, needs_plain_forward, reversible_forward

__all__ = ["ActNorm", "InvConv2d", "InvConv2dLU", "ZeroConv2d", "AffineCoupling", "Flow", "Block", "Glow",
           "gaussian_log_p", "gaussian_sample", "calc_z_shapes", "calc_loss"]

LOG_2PI = math.log(2 * math.pi)


def _no_context(module, context):
    if context is not None:
        raise ValueError(f"{type(module).__name__} (rosinality compat) takes no context tensor")


def _hw(x):
    return x.shape[2] * x.shape[3]


class ActNorm(nn.Module):
    """Per-channel affine y = scale * (x + loc) with rosinality's parameters and data-dependent init.
    forward(input) -> (out, logdet 0-dim), or out alone with logdet=False; reverse(output) -> input."""

    def __init__(self, in_channel: int, logdet: bool = True):
        super().__init__()
        self.num_channels = in_channel
        self.loc = nn.Parameter(torch.zeros(1, in_channel, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, in_channel, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        self.logdet = logdet
        self._init_seen = (None, -1, False)  # (buffer, version, value): reading a GPU buffer syncs, so read on change

    def is_initialized(self) -> bool:
        buf = self.initialized
        seen, version, value = self._init_seen
        if seen is not buf or version != buf._version:
            value = bool(buf)
            self._init_seen = (buf, buf._version, value)
        return value

    def needs_init(self) -> bool:
        """Whether the next forward runs the data-dependent init (flowkern's reversible machinery asks this: while
        True, a reversible block runs with plain autograd)."""
        return not self.is_initialized()

    @torch.no_grad()
    def initialize(self, input: torch.Tensor) -> None:
        """loc = -mean, scale = 1 / (std + 1e-6) per channel over batch and pixels (unbiased std, in float64)."""
        flat = input.detach().transpose(0, 1).reshape(self.num_channels, -1).double()
        std, mean = torch.std_mean(flat, dim=1)
        self.loc.copy_(-mean.view_as(self.loc))
        self.scale.copy_((1.0 / (std + 1e-6)).view_as(self.scale))
        self.initialized.fill_(1)

    def maybe_initialize(self, input: torch.Tensor) -> None:
        if self.needs_init():
            self.initialize(input)

    def s_b(self):
        """(s, b) of shape (C,), as flowkern's ops take them: y = s * (x + b)."""
        return self.scale.view(-1), self.loc.view(-1)

    def logdet_value(self, input: torch.Tensor) -> torch.Tensor:
        return _hw(input) * self.scale.abs().log().sum()

    def forward(self, input):
        self.maybe_initialize(input)
        out = self.scale * (input + self.loc)
        return (out, self.logdet_value(input)) if self.logdet else out

    def reverse(self, output):
        return output / self.scale - self.loc


class _InvConvMixin:
    """Shared by the 1x1 convs: forward/reverse through flowkern.ops.channel_affine given matrix()."""

    def forward(self, input):
        return ops.channel_affine(input, self.matrix()), _hw(input) * self.logdet_per_pixel()

    def reverse(self, output):
        return ops.channel_affine(output, self.matrix_inverse())


class InvConv2d(_InvConvMixin, nn.Module):
    """Invertible 1x1 conv with a plain `weight` (C, C, 1, 1), initialised to a random rotation.
    forward(input) -> (out, logdet 0-dim: H*W*log|det W| by a float64 slogdet); reverse(output) -> input."""

    def __init__(self, in_channel: int):
        super().__init__()
        self.num_channels = in_channel
        self.weight = nn.Parameter(random_rotation(in_channel).contiguous()[:, :, None, None])

    def matrix(self) -> torch.Tensor:
        # contiguous: the kernels' backward from the input (ops.actnorm_invconv_backward) needs a row-major W
        return self.weight.reshape(self.num_channels, self.num_channels).contiguous()

    def logdet_per_pixel(self) -> torch.Tensor:
        W = self.matrix()
        return torch.linalg.slogdet(W.double())[1].to(W.dtype)

    def matrix_inverse(self) -> torch.Tensor:
        W = self.matrix()
        return torch.linalg.inv(W.double()).to(W.dtype)


class InvConv2dLU(_InvConvMixin, nn.Module):
    """LU-parametrised invertible 1x1 conv with rosinality's buffers (w_p, u_mask, l_mask, s_sign, l_eye) and
    parameters (w_l, w_s = log|diag U|, w_u). logdet = H*W*sum(w_s), no determinant computed."""

    def __init__(self, in_channel: int):
        super().__init__()
        self.num_channels = in_channel
        P, L, U = torch.linalg.lu(random_rotation(in_channel).double())
        d = torch.diagonal(U)
        u_mask = torch.triu(torch.ones(in_channel, in_channel), 1)
        self.register_buffer("w_p", P.float())
        self.register_buffer("u_mask", u_mask)
        self.register_buffer("l_mask", u_mask.T.contiguous())
        self.register_buffer("s_sign", torch.sign(d).float())
        self.register_buffer("l_eye", torch.eye(in_channel))
        self.w_l = nn.Parameter(L.float())
        self.w_s = nn.Parameter(d.abs().log().float())
        self.w_u = nn.Parameter(torch.triu(U, 1).float())

    def _lu(self):
        L = self.w_l * self.l_mask + self.l_eye
        U = self.w_u * self.u_mask + torch.diag(self.s_sign * torch.exp(self.w_s))
        return L, U

    def matrix(self) -> torch.Tensor:
        L, U = self._lu()
        with no_autocast(L):
            return self.w_p @ L @ U

    def calc_weight(self) -> torch.Tensor:
        """The conv weight (C, C, 1, 1), as rosinality's calc_weight."""
        return self.matrix()[:, :, None, None]

    def logdet_per_pixel(self) -> torch.Tensor:
        return self.w_s.sum()

    def matrix_inverse(self) -> torch.Tensor:
        # W^-1 = U^-1 L^-1 P^T by two float64 triangular solves
        L, U = (t.double() for t in self._lu())
        rhs = torch.linalg.solve_triangular(L, self.w_p.double().T, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(U, rhs, upper=True).to(self.w_s.dtype)


class ZeroConv2d(nn.Module):
    """Zero-initialised 3x3 conv over the input padded with ones, times exp(3 * scale). `padding` is accepted and,
    as there, ignored (the padding is always one pixel of value 1)."""

    def __init__(self, in_channel: int, out_channel: int, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channel, out_channel, 3, padding=0)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.scale = nn.Parameter(torch.zeros(1, out_channel, 1, 1))

    def conv_out(self, input, rotate: int = 0):
        """The output, its channels rotated by `rotate` (rotating the weights, not the activation)."""
        w, b, s = self.conv.weight, self.conv.bias, self.scale
        if rotate:
            w, b, s = w.roll(rotate, 0), b.roll(rotate, 0), s.roll(rotate, 1)
        return F.conv2d(F.pad(input, [1, 1, 1, 1], value=1.0), w, b) * torch.exp(s * 3)

    def forward(self, input):
        return self.conv_out(input)


class AffineCoupling(nn.Module):
    """Glow coupling with rosinality's network `net` (3x3 conv, ReLU, 1x1 conv, ReLU, ZeroConv2d) and tail:
    forward(input) -> (out, logdet (B,) or None when affine=False); reverse(output) -> input."""

    def __init__(self, in_channel: int, filter_size: int = 512, affine: bool = True):
        super().__init__()
        if in_channel < 2 or in_channel % 2:
            raise ValueError(f"AffineCoupling (rosinality compat) needs an even channel count, got {in_channel}")
        self.num_channels = in_channel
        self.ca = in_channel // 2
        self.affine = affine
        self.net = nn.Sequential(
            nn.Conv2d(self.ca, filter_size, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(filter_size, filter_size, 1), nn.ReLU(inplace=True),
            ZeroConv2d(filter_size, in_channel if affine else self.ca))
        for conv in (self.net[0], self.net[2]):
            nn.init.normal_(conv.weight, 0.0, 0.05)
            nn.init.zeros_(conv.bias)

    def _h(self, in_a, context=None):
        """The network output in flowkern's order: (t, log_s) for ops.affine_coupling (rosinality's is (log_s, t))."""
        h = in_a
        for i in range(4):
            h = self.net[i](h)
        return self.net[4].conv_out(h, rotate=self.ca if self.affine else 0)

    def forward(self, input):
        out, logdet = ops.affine_coupling(input, self._h(input[:, :self.ca]), self.affine)
        return out, (logdet if self.affine else None)

    def reverse(self, output):
        return ops.affine_coupling_inverse(output, self._h(output[:, :self.ca]), self.affine)[0]


class Flow(nn.Module):
    """One step: ActNorm -> InvConv2dLU (conv_lu) or InvConv2d -> AffineCoupling. forward(input) -> (out, logdet);
    reverse(output) -> input. Also a flowkern step (context=None only): inverse(y) -> (x, logdet) and
    reversible_backward, used by Block(reversible=True)."""

    def __init__(self, in_channel: int, affine: bool = True, conv_lu: bool = True, filter_size: int = 512):
        super().__init__()
        self.num_channels = in_channel
        self.actnorm = ActNorm(in_channel)
        self.invconv = InvConv2dLU(in_channel) if conv_lu else InvConv2d(in_channel)
        self.coupling = AffineCoupling(in_channel, filter_size, affine=affine)

    def _linear(self):
        """(s, b, W, log|det W|) of the fused ActNorm + 1x1 conv: y = W diag(s) (x + b)."""
        s, b = self.actnorm.s_b()
        return s, b, self.invconv.matrix(), self.invconv.logdet_per_pixel()

    def forward(self, input, context=None):
        _no_context(self, context)
        self.actnorm.maybe_initialize(input)
        s, b, W, ldw = self._linear()
        out, logdet = ops.actnorm_invconv(input, s, b, W, logdet_w=ldw)
        cp = self.coupling
        out, det = ops.affine_coupling(out, cp._h(out[:, :cp.ca]), cp.affine)
        # affine: per sample (B,); additive: the 0-dim tensor rosinality returns (the same for every sample)
        return out, (logdet + det if cp.affine else logdet[0])

    def inverse(self, output, context=None):
        _no_context(self, context)
        cp = self.coupling
        x, det = ops.affine_coupling_inverse(output, cp._h(output[:, :cp.ca]), cp.affine)
        s, b, W, ldw = self._linear()
        x, logdet = ops.actnorm_invconv_inverse(x, s, b, W, logdet_w=ldw, W_inv=self.invconv.matrix_inverse())
        return x, logdet + det

    def reverse(self, output):
        return self.inverse(output)[0]

    def reversible_backward(self, y, context, dy, dlogdet, context_grad: bool, autocast=contextlib.nullcontext):
        """Backward from the output alone (flowkern.reversible's step protocol, as FlowStep): the coupling network
        runs once, with grad, on the passthrough half y_a (= its input's); its h inverts the coupling and the fused
        affine map, and the backward passes come from ops.affine_coupling_backward and ops.actnorm_invconv_backward.
        Returns (x, dx, None, {param: grad})."""
        _no_context(self, context)
        cp, an, ic = self.coupling, self.actnorm, self.invconv
        ya = y[:, :cp.ca].detach().requires_grad_(True)
        with torch.enable_grad():
            s, b, W, ldw = self._linear()
            with autocast():
                h = cp._h(ya)
        with torch.no_grad(), autocast():
            xc, _ = ops.affine_coupling_inverse(y, h, cp.affine)
            x, _ = ops.actnorm_invconv_inverse(xc, s.detach(), b.detach(), W.detach(), logdet_w=ldw.detach(),
                                               W_inv=ic.matrix_inverse())
        g_xc, g_h = ops.affine_coupling_backward(y, h, dy, dlogdet, cp.affine)
        nn_params = [p for p in cp.parameters() if p.requires_grad]
        g_nn = torch.autograd.grad(h, [ya] + nn_params, g_h, allow_unused=True)
        g_xc[:, :cp.ca] += g_nn[0]  # the network read the coupling's input x'_a = y_a too
        dx, ds, db, dW, dldw = ops.actnorm_invconv_backward(x, g_xc, dlogdet, s, b, W)
        aff_params = [p for m in (an, ic) for p in m.parameters() if p.requires_grad]
        outs = [(t, g) for t, g in ((s, ds), (b, db), (W, dW), (ldw, dldw)) if t.requires_grad]
        g_aff = torch.autograd.grad([t for t, _ in outs], aff_params, [g.to(t.dtype) for t, g in outs],
                                    allow_unused=True) if outs and aff_params else ()
        grads = dict(zip(nn_params, g_nn[1:]))
        grads.update(zip(aff_params, g_aff))
        return x, dx, None, grads


def gaussian_log_p(x, mean, log_sd):
    """Elementwise log N(x; mean, exp(log_sd)^2)."""
    eps = (x - mean) * torch.exp(-log_sd)
    return -0.5 * (LOG_2PI + eps * eps) - log_sd


def gaussian_sample(eps, mean, log_sd):
    return mean + torch.exp(log_sd) * eps


class Block(nn.Module):
    """squeeze -> n_flow Flows -> split with a learned Gaussian prior. forward(input) -> (out, logdet, log_p,
    z_new); reverse(output, eps=None, reconstruct=False) -> input. reversible=True: the flows train with flowkern's
    reversible backprop (flowkern.reversible, as in FlowSequence), `recompute_chunk` samples at a time."""

    def __init__(self, in_channel: int, n_flow: int, split: bool = True, affine: bool = True, conv_lu: bool = True,
                 filter_size: int = 512, reversible: bool = False,
                 recompute_chunk: Optional[int] = DEFAULT_RECOMPUTE_CHUNK):
        super().__init__()
        squeeze_dim = in_channel * 4
        self.flows = nn.ModuleList(Flow(squeeze_dim, affine=affine, conv_lu=conv_lu, filter_size=filter_size)
                                   for _ in range(n_flow))
        self.split = split
        self.affine = affine
        self.prior = ZeroConv2d(in_channel * 2, in_channel * 4) if split else ZeroConv2d(in_channel * 4,
                                                                                          in_channel * 8)
        if recompute_chunk is not None and recompute_chunk < 1:
            raise ValueError(f"Block: recompute_chunk must be a positive number of samples or None, got "
                             f"{recompute_chunk}")
        self.reversible = reversible
        self.recompute_chunk = recompute_chunk

    def _use_reversible(self, x) -> bool:
        """As flowkern.FlowSequence: reversible when training with grad and every ActNorm is initialised."""
        if not self.reversible or not torch.is_grad_enabled() or needs_plain_forward(self.flows):
            return False
        return x.requires_grad or any(p.requires_grad for p in self.flows.parameters())

    def _flows_forward(self, x):
        # the chain is walked from self.flows on every call (no second reference to the modules is kept, so
        # nn.DataParallel replicas and deep copies run their own flows)
        if self._use_reversible(x):
            return reversible_forward(list(self.flows), x, None, None, self.recompute_chunk)
        logdet = 0
        for flow in self.flows:
            x, det = flow(x)
            logdet = logdet + det
        return x, logdet

    def _top_prior(self, like):
        """(mean, log_sd) of the last block's prior: its conv of zeros, computed for one sample and broadcast."""
        zero = like.new_zeros((1,) + tuple(like.shape[1:]))
        return self.prior(zero).chunk(2, 1)

    def forward(self, input):
        b_size = input.shape[0]
        out, logdet = self._flows_forward(squeeze2d(input))
        if not self.affine and isinstance(logdet, torch.Tensor) and logdet.dim():
            logdet = logdet[0]  # the reversible chain sums per sample; additive logdets are 0-dim there
        if self.split:
            out, z_new = out.chunk(2, 1)
            mean, log_sd = self.prior(out).chunk(2, 1)
        else:
            z_new = out
            mean, log_sd = self._top_prior(out)
        log_p = gaussian_log_p(z_new, mean, log_sd).reshape(b_size, -1).sum(1)
        return out, logdet, log_p, z_new

    def reverse(self, output, eps=None, reconstruct=False):
        if reconstruct:
            input = torch.cat([output, eps], 1) if self.split else eps
        elif self.split:
            mean, log_sd = self.prior(output).chunk(2, 1)
            input = torch.cat([output, gaussian_sample(eps, mean, log_sd)], 1)
        else:
            mean, log_sd = self._top_prior(output)
            input = gaussian_sample(eps, mean, log_sd)
        for flow in self.flows[::-1]:
            input = flow.reverse(input)
        return unsqueeze2d(input)


class Glow(nn.Module):
    """rosinality's multi-scale Glow. forward(input) -> (log_p_sum (B,), logdet, z_outs); reverse(z_list,
    reconstruct=False) -> image (z_list: latents to reconstruct from, or standard-normal eps to sample with)."""

    def __init__(self, in_channel: int, n_flow: int, n_block: int, affine: bool = True, conv_lu: bool = True,
                 filter_size: int = 512, reversible: bool = False,
                 recompute_chunk: Optional[int] = DEFAULT_RECOMPUTE_CHUNK):
        super().__init__()
        kw = dict(affine=affine, filter_size=filter_size, reversible=reversible, recompute_chunk=recompute_chunk)
        self.blocks = nn.ModuleList()
        n_channel = in_channel
        for _ in range(n_block - 1):
            self.blocks.append(Block(n_channel, n_flow, conv_lu=conv_lu, **kw))
            n_channel *= 2
        self.blocks.append(Block(n_channel, n_flow, split=False, **kw))  # conv_lu not passed, as in rosinality

    @property
    def reversible(self) -> bool:
        return all(b.reversible for b in self.blocks)

    @reversible.setter
    def reversible(self, value: bool) -> None:
        for b in self.blocks:
            b.reversible = value

    def forward(self, input):
        log_p_sum, logdet, out, z_outs = 0, 0, input, []
        for block in self.blocks:
            out, det, log_p, z_new = block(out)
            z_outs.append(z_new)
            logdet = logdet + det
            log_p_sum = log_p_sum + log_p
        return log_p_sum, logdet, z_outs

    def reverse(self, z_list: Sequence[torch.Tensor], reconstruct: bool = False):
        input = z_list[-1]
        for i, block in enumerate(self.blocks[::-1]):
            input = block.reverse(input, z_list[-(i + 1)], reconstruct=reconstruct)
        return input


def calc_z_shapes(n_channel: int, input_size: int, n_flow: int, n_block: int) -> List[tuple]:
    """Shapes (C, H, W) of Glow's z_outs for square input_size images (train.py's helper; n_flow is unused)."""
    shapes = []
    for _ in range(n_block - 1):
        input_size //= 2
        n_channel *= 2
        shapes.append((n_channel, input_size, input_size))
    input_size //= 2
    shapes.append((n_channel * 4, input_size, input_size))
    return shapes


def calc_loss(log_p, logdet, image_size: int, n_bins: float, n_channel: int = 3):
    """train.py's loss: (loss, log_p, logdet) in bits per dimension, averaged over the batch, for n_bins-level data
    dequantized with uniform noise (the -log(n_bins) per dimension term). n_channel: 3 there."""
    n_pixel = image_size * image_size * n_channel
    denom = math.log(2) * n_pixel
    log_px = logdet + log_p - math.log(n_bins) * n_pixel
    return (-log_px / denom).mean(), (log_p / denom).mean(), (logdet / denom).mean()
