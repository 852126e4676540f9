"""The Recurrent Flow Network (Gammelli et al.; Glissov & Konradsen's thesis, chapters 5 and 8) on flowkern.

An SRNN whose emission is a conditional Glow. For each frame t >= 2, with u_t = x_{t-1}:
- feature extractor F (per level l = 1..L: two 3x3 convs of base_width * 2^l channels with BatchNorm and
  LeakyReLU(0.2), then a 2x down-sampling: max-pool ("vgg") or a stride-2 conv ("dcgan")), applied to x_{t-1}
  (the transition's input and the conditioning network's skips) and to x_t (the posterior's input);
- transition: h_t = ConvLSTM(h_{t-1}, F_L(x_{t-1})) (3x3, peepholes) at H / 2^L;
- prior p(z_t | z_{t-1}, h_t) and posterior q(z_t | z_{t-1}, h_t, F_L(x_t)): two 3x3 convs each, a diagonal
  Gaussian with softplus std;
- conditioning network: the extractor reversed, from [h_t, z_t] up to every Glow level's resolution (nearest
  up-sampling, or transposed convs for "dcgan"), with U-Net skips from F(x_{t-1}); level l's output conditions Glow
  level l's couplings and split prior (the top level's also the base distribution);
- emission: log p(x_t | z_t, h_t) from a conditional Glow (flowkern.Glow with a context pyramid; reversible; the
  couplings' networks 3x3-1x1-3x3 with ActNorm + ReLU, the split priors' and base distribution's std a softplus).
The ELBO per frame is log p(x_t | z_t, h_t) - beta * KL(q || p), z_t drawn from q (reparameterised); z_1 = 0 and
h_1 = 0, and the first frame is only context.

The thesis's options (section 3.5-3.6), each a switch of RFNConfig:
- smoothing (SRNN's; on in the thesis): the posterior reads a_t = a backward ConvLSTM over [h_t, F_L(x_t)] from
  the last frame down to t, q(z_t | z_{t-1}, a_t): it sees the future frames (the prior and the flow never do);
- res_q (the residual posterior): q's mean is the prior's mean plus the posterior network's output;
- overshooting D (latent overshooting): the KL of frame t averages D terms, the d-step prior of z_t rolled from the
  posterior's z_{t-d} through the prior (d = 1: the plain KL; d > 1 against a stopped-gradient posterior);
- coupling_scale: the thesis's clamp log s = s_scale tanh(h) + s_shift (the default), or Glow's s = sigmoid(h + 2).
Bits per dimension are the thesis's: (KL + NLL) / (ln 2 * C*H*W * (T - 1)) of the dequantized data, with the
-D log(2^n_bits) constant (flowkern.bits_per_dim).
"""
from dataclasses import asdict, dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import flowkern
from flowkern import Glow
from flowkern.memory import peak_memory
from flowkern.models.generation import warn_if_diverged
from flowkern.nn import mark_initialized
from flowkern.nn.coupling import COUPLING_SCALES

EXTRACTORS = ("vgg", "dcgan")


@dataclass
class RFNConfig:
    in_channels: int = 3
    image_size: int = 64
    levels: int = 4
    steps: int = 10
    hidden: int = 256  # the couplings' channels
    affine: bool = True
    coupling_net: str = "actnorm"  # the thesis's conditioner: 3x3, 1x1 convs with ActNorm + ReLU, zero-init 3x3
    prior_scale: str = "softplus"  # the split priors' and base distribution's std: softplus (the thesis) or exp
    coupling_scale: str = "tanh"  # the couplings' scale: the thesis's learned tanh clamp, or Glow's sigmoid
    extractor: str = "vgg"
    base_width: int = 8  # extractor level l (1..L) has base_width * 2^l channels
    h_channels: int = 256
    z_channels: int = 5
    a_channels: int = 256  # the smoothing backward ConvLSTM's channels
    smoothing: bool = True
    res_q: bool = False
    overshooting: int = 1
    n_bits: int = 8
    reversible: bool = True

    def __post_init__(self):
        if self.extractor not in EXTRACTORS:
            raise ValueError(f"RFNConfig: extractor must be one of {EXTRACTORS}, got {self.extractor!r}")
        if self.coupling_scale not in COUPLING_SCALES:
            raise ValueError(f"RFNConfig: coupling_scale must be one of {COUPLING_SCALES}, got "
                             f"{self.coupling_scale!r}")
        if self.overshooting < 1:
            raise ValueError(f"RFNConfig: overshooting is a number of steps D >= 1 (1: off), got {self.overshooting}")
        if self.image_size % 2 ** self.levels:
            raise ValueError(f"RFNConfig: image_size must be a multiple of 2 ** levels = {2 ** self.levels}, got "
                             f"{self.image_size}")

    def width(self, level: int) -> int:
        """Channels of the extractor's and the conditioning network's level `level` (1..L)."""
        return self.base_width * 2 ** level


CONFIGS = {
    # the thesis's table A.2 (BAIR): L=4, K=10, affine couplings of 256 channels, h_t 256 channels, z_t 5
    "bair": RFNConfig(),
    "smmnist": RFNConfig(in_channels=1, z_channels=3),
    # a CPU-sized model for SM-MNIST at 32x32
    "small": RFNConfig(in_channels=1, image_size=32, levels=3, steps=4, hidden=64, h_channels=32, z_channels=3,
                       a_channels=32),
    "tiny": RFNConfig(in_channels=1, image_size=16, levels=2, steps=1, hidden=8, base_width=2, h_channels=4,
                      z_channels=2, a_channels=4),
}


def _conv_block(c_in: int, c_out: int) -> List[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]


class FeatureExtractor(nn.Module):
    """x (B, C, H, W) -> [F_1 (H/2), ..., F_L (H/2^L)]: per level two 3x3 convs + BatchNorm + LeakyReLU(0.2), then a
    2x down-sampling (max-pool, or a stride-2 conv for "dcgan")."""

    def __init__(self, cfg: RFNConfig):
        super().__init__()
        blocks, c = [], cfg.in_channels
        for level in range(1, cfg.levels + 1):
            w = cfg.width(level)
            down = [nn.MaxPool2d(2)] if cfg.extractor == "vgg" else [
                nn.Conv2d(w, w, 4, stride=2, padding=1), nn.BatchNorm2d(w), nn.LeakyReLU(0.2)]
            blocks.append(nn.Sequential(*_conv_block(c, w), *_conv_block(w, w), *down))
            c = w
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out


class ConvLSTMCell(nn.Module):
    """A convolutional LSTM cell with peepholes (Shi et al. 2015): the gates see x, h_{t-1} through a 3x3 conv and
    the cell (c_{t-1} for input and forget gates, c_t for the output gate) through per-position weights."""

    def __init__(self, in_channels: int, hidden: int, size: int):
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(in_channels + hidden, 4 * hidden, 3, padding=1)
        self.peep = nn.Parameter(torch.zeros(3, hidden, size, size))  # input, forget, output

    def forward(self, x: torch.Tensor, state: Optional[Tuple[torch.Tensor, torch.Tensor]]):
        if state is None:
            h = c = x.new_zeros(x.shape[0], self.hidden, *x.shape[2:])
        else:
            h, c = state
        i, f, g, o = self.gates(torch.cat([x, h], 1)).chunk(4, 1)
        c = torch.sigmoid(f + self.peep[1] * c) * c + torch.sigmoid(i + self.peep[0] * c) * torch.tanh(g)
        h = torch.sigmoid(o + self.peep[2] * c) * torch.tanh(c)
        return h, (h, c)


class GaussianNet(nn.Module):
    """A diagonal Gaussian from a feature map: 3x3 conv, LeakyReLU(0.2), 3x3 conv -> (mean, softplus std)."""

    def __init__(self, in_channels: int, hidden: int, z_channels: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(hidden, 2 * z_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        mean, raw = self.net(x).chunk(2, 1)
        return mean, F.softplus(raw) + 1e-4  # the floor keeps the KL finite


def gaussian_kl(mq, sq, mp, sp) -> torch.Tensor:
    """KL(N(mq, sq^2) || N(mp, sp^2)) of diagonal Gaussians, summed per sample: (B,)."""
    kl = torch.log(sp / sq) + (sq * sq + (mq - mp) ** 2) / (2 * sp * sp) - 0.5
    return kl.flatten(1).sum(1)


class ConditioningNetwork(nn.Module):
    """[h_t, z_t] at H/2^L -> one condition per Glow level (level l-1's at H/2^l, base_width * 2^l channels): the
    extractor's levels in reverse, each taking the skip F_l(x_{t-1}) concatenated to its input, with a 2x
    up-sampling (nearest, or a transposed conv for "dcgan") between levels."""

    def __init__(self, cfg: RFNConfig):
        super().__init__()
        L = cfg.levels
        blocks, ups = [], []
        c = cfg.h_channels + cfg.z_channels
        for level in range(L, 0, -1):
            w = cfg.width(level)
            blocks.append(nn.Sequential(*_conv_block(c + w, w), *_conv_block(w, w)))
            if level > 1:
                ups.append(nn.Upsample(scale_factor=2, mode="nearest") if cfg.extractor == "vgg" else
                           nn.ConvTranspose2d(w, w, 4, stride=2, padding=1))
            c = w
        self.blocks, self.ups = nn.ModuleList(blocks), nn.ModuleList(ups)

    def forward(self, h: torch.Tensor, z: torch.Tensor, skips: List[torch.Tensor]) -> List[torch.Tensor]:
        x, out = torch.cat([h, z], 1), []
        for i, block in enumerate(self.blocks):
            x = block(torch.cat([x, skips[-1 - i]], 1))
            out.append(x)
            if i < len(self.ups):
                x = self.ups[i](x)
        return out[::-1]  # level 1 (finest) first, as flowkern.Glow takes a context pyramid


class RFN(nn.Module):
    def __init__(self, cfg: RFNConfig):
        super().__init__()
        self.cfg = cfg
        L, top = cfg.levels, cfg.width(cfg.levels)
        bottom = cfg.image_size // 2 ** L
        self.extractor = FeatureExtractor(cfg)
        self.lstm = ConvLSTMCell(top, cfg.h_channels, bottom)
        self.prior = GaussianNet(cfg.z_channels + cfg.h_channels, cfg.h_channels, cfg.z_channels)
        q_in = cfg.a_channels if cfg.smoothing else cfg.h_channels + top
        self.smoother = ConvLSTMCell(cfg.h_channels + top, cfg.a_channels, bottom) if cfg.smoothing else None
        self.posterior = GaussianNet(cfg.z_channels + q_in, cfg.h_channels, cfg.z_channels)
        self.conditioner = ConditioningNetwork(cfg)
        self.flow = Glow(cfg.in_channels, L, cfg.steps, cfg.hidden, affine=cfg.affine,
                         context_channels=tuple(cfg.width(level) for level in range(1, L + 1)),
                         reversible=cfg.reversible, coupling_net=cfg.coupling_net, prior_scale=cfg.prior_scale,
                         coupling_scale=cfg.coupling_scale)
        self.beta = 1.0  # the KL's weight in log_prob_frames (training anneals it; evaluation uses 1)

    @property
    def frame_dims(self) -> int:
        return self.cfg.in_channels * self.cfg.image_size ** 2

    def _check(self, video: torch.Tensor, min_frames: int = 2):
        cfg = self.cfg
        want = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if video.dim() != 5 or tuple(video.shape[2:]) != want or video.shape[1] < min_frames:
            raise ValueError(f"RFN: expected a video of shape (B, T >= {min_frames}, {want[0]}, {want[1]}, "
                             f"{want[2]}), got {tuple(video.shape)}")

    def _noise(self, like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)

    def _posterior(self, z, h, feats_top, smoothed, prior_mean):
        """q(z_t | z_{t-1}, h_t, x_t) (or, smoothing, | z_{t-1}, a_t): (mean, std); res_q adds the prior's mean."""
        mq, sq = self.posterior(torch.cat([z, smoothed] if self.smoother is not None else [z, h, feats_top], 1))
        return (prior_mean + mq if self.cfg.res_q else mq), sq

    def elbo_terms(self, video: torch.Tensor, generator: Optional[torch.Generator] = None):
        """(log p(x_t | z_t, h_t), KL(q(z_t | .) || p(z_t | .))) in nats for frames t = 2..T, each (B, T - 1), with
        z_t drawn from the posterior (the noise from `generator`, else the global RNG). The prior and the flow of
        frame t read x_1..x_{t-1} (and the flow x_t); the posterior reads x_t, and with smoothing the later frames."""
        self._check(video)
        feats, hs, smoothed, _ = self._encode(video)
        zs = [video.new_zeros(video.shape[0], self.cfg.z_channels, *hs[0].shape[2:])]  # z_1 = 0, then q's z_2, ...
        posts, log_px, kl = [], [], []
        for k in range(video.shape[1] - 1):  # frame k + 2
            mp, sp = self.prior(torch.cat([zs[-1], hs[k]], 1))
            mq, sq = self._posterior(zs[-1], hs[k], feats[k + 1][-1], smoothed[k], mp)
            posts.append((mq, sq))
            kl.append(self._overshooting_kl(k, zs, hs, posts, (mp, sp), generator))
            zs.append(mq + sq * self._noise(mq, generator))
            log_px.append(self.flow.log_prob(video[:, k + 1], self.conditioner(hs[k], zs[-1], feats[k])))
        return torch.stack(log_px, 1), torch.stack(kl, 1)

    def _overshooting_kl(self, k, zs, hs, posts, prior, generator):
        """The KL of predicted frame k (frame k + 2): the plain one, or with overshooting D the mean over d = 1..D
        (as far as the clip goes back) of KL(q_k || p_d), p_d rolled d - 1 steps through the prior from the
        posterior's z of d steps earlier, against the posterior with its gradient stopped."""
        mq, sq = posts[k]
        terms = [gaussian_kl(mq, sq, *prior)]
        for d in range(2, min(self.cfg.overshooting, k + 1) + 1):
            z = zs[k + 1 - d]
            for j in range(k + 1 - d, k):  # rolled with the prior's samples up to frame k - 1
                mp, sp = self.prior(torch.cat([z, hs[j]], 1))
                z = mp + sp * self._noise(mp, generator)
            terms.append(gaussian_kl(mq.detach(), sq.detach(), *self.prior(torch.cat([z, hs[k]], 1))))
        return torch.stack(terms).mean(0)

    def _encode(self, video):
        """The deterministic paths of a clip: every frame's features, h_t (from x_1..x_{t-1}) for t = 2..T, a_t
        (smoothing: from [h_t, F_L(x_t)] of frames T down to t; else None) and the forward ConvLSTM's last state."""
        T = video.shape[1]
        feats = [self.extractor(video[:, t]) for t in range(T)]
        hs, state = [], None
        for t in range(1, T):
            h, state = self.lstm(feats[t - 1][-1], state)
            hs.append(h)
        smoothed, back = [None] * (T - 1), None
        if self.smoother is not None:
            for k in reversed(range(T - 1)):
                smoothed[k], back = self.smoother(torch.cat([hs[k], feats[k + 1][-1]], 1), back)
        return feats, hs, smoothed, state

    def _warm_up(self, context, generator):
        """The posterior over the context's frames 2..c: (the forward ConvLSTM's state, the last z)."""
        feats, hs, smoothed, state = self._encode(context)
        z = context.new_zeros(context.shape[0], self.cfg.z_channels, *hs[0].shape[2:])
        for k in range(context.shape[1] - 1):
            mp, _ = self.prior(torch.cat([z, hs[k]], 1))
            mq, sq = self._posterior(z, hs[k], feats[k + 1][-1], smoothed[k], mp)
            z = mq + sq * self._noise(mq, generator)
        return state, z

    def log_prob_frames(self, video: torch.Tensor) -> torch.Tensor:
        """Per-frame ELBO terms log p(x_t | z_t, h_t) - beta * KL for frames 2..T: (B, T - 1), a lower bound of
        log p(x_t | x_<t) at beta = 1. In eval mode the posterior's noise is fixed (seed 0), so evaluations are
        comparable and leave the global RNG alone."""
        g = None
        if not self.training:
            g = torch.Generator(device=video.device).manual_seed(0)
        log_px, kl = self.elbo_terms(video, g)
        return log_px - self.beta * kl

    def forward(self, video):
        return self.log_prob_frames(video)

    @torch.no_grad()
    def generate(self, context: torch.Tensor, num_frames: int, temperature: float = 1.0,
                 batch_size: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Continue `context` (B, c >= 1, C, H, W) in [-0.5, 0.5] by num_frames frames: the context's latents from
        the posterior (the warm-up), then z_t from the prior and x_t from the flow, whose base distribution and split
        priors have their std scaled by temperature. Each sampled frame conditions the next clamped to [-0.5, 0.5].
        Returns (B, c + num_frames, C, H, W), the frames as sampled."""
        if context is None:
            raise ValueError("RFN.generate: needs at least one context frame (the first frame is not modelled)")
        self._check(context, min_frames=1)
        frames = list(context.unbind(1))
        state, z, feats_prev = None, None, self.extractor(frames[0])
        if len(frames) > 1:  # the warm-up: the context's latents from the posterior (smoothing: over the context)
            state, z = self._warm_up(context, generator)
            feats_prev = self.extractor(frames[-1])
        if z is None:
            z = context.new_zeros(context.shape[0], self.cfg.z_channels, *feats_prev[-1].shape[2:])
        size = (self.cfg.image_size,) * 2
        for _ in range(num_frames):
            h, state = self.lstm(feats_prev[-1], state)
            mp, sp = self.prior(torch.cat([z, h], 1))
            z = mp + sp * self._noise(mp, generator)
            x = self.flow.sample(context.shape[0], temperature, self.conditioner(h, z, feats_prev), size, generator)
            frames.append(x)
            # the next step reads the frame as a picture (the data's range), as training always did: a sample's
            # few far-out values would otherwise feed back and grow frame by frame
            feats_prev = self.extractor(x.clamp(-0.5, 0.5))
        return warn_if_diverged(torch.stack(frames, 1), "RFN")

    @torch.no_grad()
    def out_of_sequence_bpp(self, context: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Bits/pixel (the ELBO's, posterior noise of seed 0) of each candidate frame placed right after `context`
        (B, c, ...): candidates (B, K, C, H, W) -> (B, K). (VideoFlow's measure of the same name.)"""
        out = []
        for k in range(candidates.shape[1]):
            g = torch.Generator(device=context.device).manual_seed(0)
            log_px, kl = self.elbo_terms(torch.cat([context, candidates[:, k:k + 1]], 1), g)
            out.append(flowkern.bits_per_dim(log_px[:, -1] - kl[:, -1], self.frame_dims, self.cfg.n_bits))
        return torch.stack(out, 1)

    def config_dict(self) -> dict:
        return asdict(self.cfg)


def elbo_bits_per_dim(log_px: torch.Tensor, kl: torch.Tensor, frame_dims: int, n_bits: int) -> torch.Tensor:
    """The thesis's bits/dim of each clip: (KL + NLL) summed over frames 2..T / (ln 2 * C*H*W * (T - 1)), of the
    discrete data (the dequantization constant included). log_px, kl: (B, T - 1) in nats -> (B,)."""
    return flowkern.bits_per_dim((log_px - kl).mean(1), frame_dims, n_bits)


def training_step_peak(cfg: RFNConfig, batch: int, frames: int, device="meta"):
    """The real peak memory (flowkern.memory.PeakMemory: every storage alive) of one training step of a fresh
    RFN(cfg), forward and backward of the mean negative ELBO, on `batch` clips of `frames` frames."""
    with torch.device(device):
        model = RFN(cfg)
        video = torch.rand(batch, frames, cfg.in_channels, cfg.image_size, cfg.image_size) - 0.5
    mark_initialized(model)  # the data-dependent init is not part of a training step
    return peak_memory(lambda: (-model.log_prob_frames(video).mean()).backward(), model, video)
