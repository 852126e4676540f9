"""VideoFlow (Kumar et al., "VideoFlow: A Flow-Based Generative Model for Video", ICLR 2020) on flowkern.

x_t <-> z_t = (z_t^(1), ..., z_t^(L)) by a per-frame multi-scale Glow (reversible backprop by default), and a latent
autoregressive prior  p(z_t^(l) | z_<t^(l), z_t^(>l)) = N(mu, sigma):
  a conv of h_t^(>l) (the half kept at level l's split, which determines z_t^(>l)) is concatenated to each of
  the previous n latents of level l; a stack of 3-D residual blocks (2x3x3 convs, causal in time; ReLU; a gated
  activation unit tanh * sigmoid of 1x1x1 convs; a zero-initialised last conv; parallel branches with spatial
  dilations 1, 2, 4 as the resolution allows, summed with the block input) runs over that window; its last time
  step goes through a zero-initialised 1x1 conv to (delta, log sigma), and mean = z_{t-1}^(l) + delta (temporal
  skip connection); optionally (advect > 0, not in the paper) mean = K * z_{t-1}^(l) + delta, K a k x k kernel per
  clip predicted from the same features.
Frames with fewer than n previous latents use Glow's split prior p(z^(l) | h^(>l)) (a zero-initialised conv), and
a learned per-channel prior at the top level.

Memory: the flow is reversible, and the prior network is checkpointed per level and time step, so a training
step's memory grows with the number of frames by roughly the size of the latents, not of the activations.
"""
import math
from dataclasses import asdict, dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as ckpt
from torch import nn

import flowkern
from flowkern import Glow
from flowkern.memory import MemoryPlan, peak_memory
from flowkern.models.generation import warn_if_diverged
from flowkern.nn import ZeroConv2d, mark_initialized

LOG_2PI = 1.8378770664093453


@dataclass
class VideoFlowConfig:
    in_channels: int = 3
    image_size: int = 64
    levels: int = 3
    steps: int = 24
    hidden: int = 512  # coupling network channels
    affine: bool = True
    coupling_net: str = "glow"  # the couplings' NN: "glow", or "gatu" (the reference: ActNorm + gated units)
    prior_blocks: int = 5
    # residual stream of the 3-D prior network; None: the width of its input (latents + conditioning), as in the
    # reference code (the paper's 256 read literally makes the bair prior 7x the flow's size)
    prior_channels: Optional[int] = 256
    prior_hidden: int = 512  # first layer of each residual branch
    context: int = 3  # n: how many previous latents the prior looks at
    # frames with 1..n-1 previous latents: False, Glow's split prior (they are the reference's conditioning frames);
    # True, the same prior over a window zero-padded in front (a causal conv's padding), so frame 2 given frame 1
    # comes from the network that predicts the later frames
    pad_context: bool = False
    skip: bool = True  # temporal skip connection mean = z_{t-1} + delta (the paper); the reference code has it off
    # advection (neither the paper nor the reference): with the skip, mean = K * z_{t-1} + delta, where K is a k x k
    # kernel per clip and level (a softmax over its taps, pooled from the prior network's last features), so a move
    # is a copy from a few latent pixels away rather than a regression of the new values; 0: off (the plain skip)
    advect: int = 0
    # with advect: the kernel's logits also get, at each of its offsets, the normalised correlation of the last two
    # latents' deviations from their means at that offset (how well the move from t-2 to t-1 is that offset: a
    # constant-velocity cue, as a cost volume in optical flow), times a learned scale starting at ADVECT_CORR_SCALE
    advect_corr: bool = False
    # with advect: the kernel's taps are the weights of a mixture, p(z_t) = sum_o pi_o N(shift_o(z_{t-1}) + delta,
    # sigma), rather than of a blend of shifts: an uncertain move (the first frame's 8 directions, a sub-pixel one)
    # is then a choice between sharp copies, not their average, and a sample picks one shift
    advect_mixture: bool = False
    cond_kernel: int = 1  # the conv taking h_t^(>l) into the prior: 1 (1x1), or 3 (the reference: zero-init 3x3)
    gated: bool = True  # gated activation unit (else ReLU)
    dilations: Tuple[int, ...] = (1, 2, 4)
    n_bits: int = 8
    reversible: bool = True
    checkpoint_prior: bool = True
    recompute_chunk: Optional[int] = 32  # frames the reversible backward recomputes at once (None: all B*T)

    @property
    def first_conditioned(self) -> int:
        """The first frame the latent prior network predicts (VideoFlow.first_conditioned)."""
        return 1 if self.pad_context else self.context

    def __post_init__(self):
        if self.advect and (self.advect < 0 or self.advect % 2 == 0 or not self.skip):
            raise ValueError(f"VideoFlowConfig: advect must be 0 (off) or an odd kernel size with skip=True, got "
                             f"advect={self.advect}, skip={self.skip}")
        if self.advect_mixture and not self.advect:
            raise ValueError("VideoFlowConfig: advect_mixture needs advect > 0")
        if self.advect_corr and not (self.advect and self.context >= 2):
            raise ValueError(f"VideoFlowConfig: advect_corr needs advect > 0 and context >= 2, got advect="
                             f"{self.advect}, context={self.context}")


CONFIGS = {
    # the paper's BAIR setting (appendix E.1): L=3, K=24, affine, 512 coupling channels, 5 prior blocks, n=3; the
    # prior's residual stream at its input's width and 512 hidden, as in the reference code
    "bair": VideoFlowConfig(prior_channels=None, prior_hidden=512, coupling_net="gatu", cond_kernel=3),
    # Stochastic Movement: 64x64 shapes; the paper models frame 2 given frame 1 (n=1)
    # Stochastic Movement at 64x64 as tensor2tensor's next_frame_glow trains it (a GPU config): additive couplings,
    # no latent skip, K=24 width 512 with gated units, a 10-block prior (256 hidden, residual stream at its input's
    # width), zero-init 3x3 conditioning;
    # frame 2 given frame 1
    "shapes": VideoFlowConfig(levels=3, steps=24, hidden=512, affine=False, coupling_net="gatu", skip=False,
                              prior_blocks=10, prior_channels=None, prior_hidden=256, context=1, cond_kernel=3),
    # Stochastic Movement at 32x32 for a CPU: small; the paper's latent skip, which is what makes sampled
    # continuations keep the object (the prior's mean starts at the last latent rather than at zero); two previous
    # latents, zero-padded for frame 2, so the motion is a local cue (with one, the prior must infer the direction
    # from where the object is relative to the centre); the last latent moved by a mixture of 5x5 shifts whose
    # weights see the last move (advect, advect_corr, advect_mixture: neither the paper's nor the reference's),
    # without which samples did not learn the direction in CPU-sized runs
    # (models/results/videoflow-shapes-small-cpu/README.md has the ablation)
    "shapes-small": VideoFlowConfig(image_size=32, levels=3, steps=4, hidden=64, affine=False, skip=True,
                                    prior_blocks=2, prior_channels=32, prior_hidden=48, context=2, pad_context=True,
                                    cond_kernel=3, advect=5, advect_corr=True, advect_mixture=True),
    # CPU tests
    "tiny": VideoFlowConfig(image_size=16, levels=2, steps=2, hidden=16, prior_blocks=1, prior_channels=8,
                            prior_hidden=8, context=2),
}


def advect(z: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """out[n, c, p] = sum_o kernel[n, o] z[n, c, p + o - k//2]: every channel of sample n filtered by its own k x k
    kernel (N, k, k), with the border replicated (a latent's background is not zero)."""
    N, C, H, W = z.shape
    k = kernel.shape[-1]
    r = k // 2
    zp = F.pad(z, (r, r, r, r), mode="replicate").reshape(1, N * C, H + 2 * r, W + 2 * r)
    w = kernel.to(z.dtype).repeat_interleave(C, 0).unsqueeze(1)  # (N*C, 1, k, k)
    return F.conv2d(zp, w, groups=N * C).view(N, C, H, W)


ADVECT_CORR_SCALE = 10.0  # the correlation cue's initial weight: a full match lifts its tap's logit by 10


def offset_correlation(before: torch.Tensor, after: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k*k): for each offset o of a k x k window, sum_{c,p} a[c, p] b[c, p + o - k//2] / (|a| |b|), a and b the
    deviations of `after` and `before` (N, C, H, W) from their per-channel means (so a flat background adds
    nothing). Tap o measures a move by -(o - k//2) from before to after, the move advect's tap o makes; 0 where
    either is flat (a zero-padded window)."""
    N, C, H, W = after.shape
    r = k // 2
    a = after - after.mean((2, 3), keepdim=True)
    b = before - before.mean((2, 3), keepdim=True)
    patches = F.unfold(F.pad(b, (r, r, r, r)), k).view(N, C, k * k, H * W)  # b[c, p + o - r] at [n, c, o, p]
    corr = (patches * a.reshape(N, C, 1, H * W)).sum((1, 3))
    norm = a.flatten(1).norm(dim=1) * b.flatten(1).norm(dim=1)
    return corr / (norm.unsqueeze(1) + 1e-6)


def shifted_copies(z: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k*k, C, H, W): copy o of z (N, C, H, W) is z[:, :, p + o - k//2] (border replicated), the latent moved by
    -(o - k//2): advect's tap o alone."""
    N, C, H, W = z.shape
    r = k // 2
    cols = F.unfold(F.pad(z, (r, r, r, r), mode="replicate"), k)  # (N, C*k*k, H*W)
    return cols.view(N, C, k * k, H, W).transpose(1, 2)


def gaussian_logp(z, mean, logs):
    """log N(z; mean, exp(logs)^2), summed over all but the first dimension."""
    return (-0.5 * (LOG_2PI + 2.0 * logs + (z - mean) ** 2 * torch.exp(-2.0 * logs))).flatten(1).sum(1)


def mixture_logp(z, means, logs, log_pi):
    """log sum_o pi_o N(z; means[:, o], exp(logs)^2) per sample: z, logs (N, C, H, W), means (N, K, C, H, W), log_pi
    (N, K). gaussian_logp per component, broadcast over the K means: z and logs are never copied K times, and the
    log-variance term is summed once."""
    sq = ((z.unsqueeze(1) - means) ** 2 * torch.exp(-2.0 * logs).unsqueeze(1)).flatten(2).sum(2)  # (N, K)
    return torch.logsumexp(log_pi - 0.5 * ((LOG_2PI + 2.0 * logs).flatten(1).sum(1, keepdim=True) + sq), 1)


class _Branch3d(nn.Module):
    """One dilated branch of a residual block: 2x3x3 conv -> ReLU -> gated unit (1x1x1) -> zero-init 2x3x3 conv.
    With a one-latent window (taps=1) the convs are 1x3x3, as in the reference: a second tap would only see padding."""

    def __init__(self, channels: int, hidden: int, dilation: int, gated: bool, taps: int = 2):
        super().__init__()
        d = dilation
        self.taps = taps
        self.conv1 = nn.Conv3d(channels, hidden, (taps, 3, 3), dilation=(1, d, d), padding=(0, d, d))
        self.gate_a = nn.Conv3d(hidden, hidden, 1)
        self.gate_b = nn.Conv3d(hidden, hidden, 1) if gated else None
        self.conv3 = nn.Conv3d(hidden, channels, (taps, 3, 3), dilation=(1, d, d), padding=(0, d, d))
        for m in (self.conv1, self.gate_a) + ((self.gate_b,) if gated else ()):
            nn.init.normal_(m.weight, 0.0, 0.05)
            nn.init.zeros_(m.bias)
        nn.init.zeros_(self.conv3.weight)  # the block starts as the identity
        nn.init.zeros_(self.conv3.bias)

    def forward(self, x):
        causal = (0, 0, 0, 0, self.taps - 1, 0)  # pad in the past: kernel 2 in time sees (t-1, t)
        h = F.relu(self.conv1(F.pad(x, causal)))
        h = torch.tanh(self.gate_a(h)) * torch.sigmoid(self.gate_b(h)) if self.gate_b is not None \
            else F.relu(self.gate_a(h))
        return self.conv3(F.pad(h, causal))


class _ResBlock3d(nn.Module):
    def __init__(self, channels, hidden, dilations, gated, taps):
        super().__init__()
        self.branches = nn.ModuleList(_Branch3d(channels, hidden, d, gated, taps) for d in dilations)

    def forward(self, x):
        return x + sum(b(x) for b in self.branches)


class LatentPrior(nn.Module):
    """p(z_t | z_{t-n..t-1}, h_t) for one level: (mean, log sigma) of shape (N, C, H, W)."""

    def __init__(self, latent_channels: int, cond_channels: int, size: int, cfg: VideoFlowConfig):
        super().__init__()
        self.skip = cfg.skip
        self.cond = None
        if cond_channels:
            k = cfg.cond_kernel
            if k not in (1, 3):
                raise ValueError(f"VideoFlowConfig: expected cond_kernel 1 or 3, got {k}")
            self.cond = nn.Conv2d(cond_channels, latent_channels, k, padding=k // 2)
            if k == 3:  # the reference's zero-initialised conditioning conv: the prior starts unconditioned
                nn.init.zeros_(self.cond.weight)
                nn.init.zeros_(self.cond.bias)
        in_ch = latent_channels * (2 if cond_channels else 1)
        dilations = tuple(d for d in cfg.dilations if d < size) or (1,)  # as the resolution allows
        taps = min(2, cfg.context)
        width = cfg.prior_channels or in_ch
        self.inp = nn.Conv3d(in_ch, width, 1) if cfg.prior_channels else nn.Identity()
        self.blocks = nn.Sequential(*[_ResBlock3d(width, cfg.prior_hidden, dilations, cfg.gated, taps)
                                      for _ in range(cfg.prior_blocks)])
        self.out = ZeroConv2d(width, 2 * latent_channels)
        self.advect_logits = None
        if cfg.advect:
            k = min(cfg.advect, size - 1 + size % 2)  # odd, at most the level's size
            self.advect_logits = nn.Conv2d(width, k * k, 1)
            nn.init.zeros_(self.advect_logits.weight)
            nn.init.zeros_(self.advect_logits.bias)
            # a fixed prior on the taps: at init the centre holds 3/4 of the kernel (nearly the plain skip)
            bias = torch.zeros(k * k)
            bias[k * k // 2] = math.log(3.0 * (k * k - 1)) if k > 1 else 0.0
            self.register_buffer("advect_bias", bias)
            self.advect_corr_log_scale = nn.Parameter(torch.tensor(math.log(ADVECT_CORR_SCALE))) \
                if cfg.advect_corr else None
        self.mixture = cfg.advect_mixture

    def advect_tap_logits(self, feat: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """(N, k*k) logits of the advection's taps from the last features (N, width, H, W), averaged over the frame,
        and with advect_corr from the correlation of the last two latents of the window prev (N, n, C, H, W)."""
        logits = self.advect_logits(feat).mean((2, 3)) + self.advect_bias
        if self.advect_corr_log_scale is not None:
            k = int(round(logits.shape[1] ** 0.5))
            logits = logits + self.advect_corr_log_scale.exp() * offset_correlation(prev[:, -2], prev[:, -1], k)
        return logits

    def advect_kernel(self, feat: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """(N, k, k): the taps' softmax."""
        logits = self.advect_tap_logits(feat, prev)
        k = int(round(logits.shape[1] ** 0.5))
        return logits.softmax(1).view(-1, k, k)

    def forward(self, prev: torch.Tensor, h: Optional[torch.Tensor]):
        """(mean, logs). prev (N, n, C, H, W): the n previous latents, oldest first; h (N, Ch, H, W) or None. With
        advect_mixture, the mean is the mixture's (its weights times its components' means)."""
        if self.mixture:
            means, logs, log_pi = self.mixture_parts(prev, h)
            return (log_pi.exp()[:, :, None, None, None] * means).sum(1), logs
        feat, delta, logs = self._head(prev, h)
        if not self.skip:
            return delta, logs
        last = prev[:, -1] if self.advect_logits is None else advect(prev[:, -1], self.advect_kernel(feat, prev))
        return last + delta, logs

    def mixture_parts(self, prev: torch.Tensor, h: Optional[torch.Tensor]):
        """advect_mixture: (means (N, K, C, H, W), logs (N, C, H, W), log weights (N, K)), K = k*k shifts."""
        feat, delta, logs = self._head(prev, h)
        log_pi = self.advect_tap_logits(feat, prev).log_softmax(1)
        k = int(round(log_pi.shape[1] ** 0.5))
        return shifted_copies(prev[:, -1], k) + delta.unsqueeze(1), logs, log_pi

    def log_prob(self, z: torch.Tensor, prev: torch.Tensor, h: Optional[torch.Tensor]) -> torch.Tensor:
        """log p(z | prev, h) per sample (N,)."""
        if not self.mixture:
            mean, logs = self(prev, h)
            return gaussian_logp(z, mean, logs)
        return mixture_logp(z, *self.mixture_parts(prev, h))

    def sample(self, prev: torch.Tensor, h: Optional[torch.Tensor], temperature: float, generator=None):
        """z ~ p(z | prev, h) with its noise scaled by temperature; a mixture picks its component at random (the most
        likely one at temperature 0)."""
        if not self.mixture:
            mean, logs = self(prev, h)
        else:
            means, logs, log_pi = self.mixture_parts(prev, h)
            pick = log_pi.argmax(1) if temperature == 0 else \
                torch.multinomial(log_pi.exp(), 1, generator=generator).squeeze(1)
            mean = means[torch.arange(means.shape[0], device=means.device), pick]
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + temperature * torch.exp(logs) * eps

    def _head(self, prev: torch.Tensor, h: Optional[torch.Tensor]):
        """(the last features (N, width, H, W), delta, logs)."""
        N, n, C, H, W = prev.shape
        x = prev
        if self.cond is not None:
            w = self.cond(h).unsqueeze(1).expand(N, n, C, H, W)
            x = torch.cat([prev, w], 2)
        x = self.blocks(self.inp(x.transpose(1, 2)))  # (N, channels, n, H, W)
        feat = x[:, :, -1]  # the last temporal activation sees the whole window
        out = self.out(feat)
        return feat, out[:, :C], out[:, C:]


class FirstFramePrior(nn.Module):
    """For frames with fewer than n previous latents: Glow's split prior p(z | h) below the top level, a learned
    per-channel Gaussian at the top."""

    def __init__(self, latent_channels: int, cond_channels: int):
        super().__init__()
        self.conv = ZeroConv2d(cond_channels, 2 * latent_channels) if cond_channels else None
        if not cond_channels:
            self.mean = nn.Parameter(torch.zeros(latent_channels))
            self.logs = nn.Parameter(torch.zeros(latent_channels))

    def forward(self, shape: Tuple[int, ...], h: Optional[torch.Tensor]):
        """(mean, logs) for latents of `shape` (N, C, H, W)."""
        if self.conv is not None:
            out = self.conv(h)
            c = out.shape[1] // 2
            return out[:, :c], out[:, c:]
        return self.mean.view(1, -1, 1, 1).expand(shape), self.logs.view(1, -1, 1, 1).expand(shape)


class VideoFlow(nn.Module):
    def __init__(self, cfg: VideoFlowConfig):
        super().__init__()
        self.cfg = cfg
        self.glow = Glow(cfg.in_channels, cfg.levels, cfg.steps, cfg.hidden, affine=cfg.affine, learn_priors=False,
                         reversible=cfg.reversible, recompute_chunk=cfg.recompute_chunk,
                         coupling_net=cfg.coupling_net)
        shapes = self.glow.latent_shapes(cfg.image_size, cfg.image_size)
        self.latent_shapes = shapes
        self.priors = nn.ModuleList()
        self.first_priors = nn.ModuleList()
        for level, (c, h, _) in enumerate(shapes):
            cond = self.glow.splits[level].c1 if level < cfg.levels - 1 else 0
            self.priors.append(LatentPrior(c, cond, h, cfg))
            self.first_priors.append(FirstFramePrior(c, cond))

    @property
    def frame_dims(self) -> int:
        return self.cfg.in_channels * self.cfg.image_size ** 2

    def _check(self, video):
        cfg = self.cfg
        want = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if video.dim() != 5 or tuple(video.shape[2:]) != want:
            raise ValueError(f"VideoFlow: expected a video of shape (B, T, {want[0]}, {want[1]}, {want[2]}), "
                             f"got {tuple(video.shape)}")

    # ---------------------------------------------------------------------------------------------- likelihood
    def _first_frames(self, level: int, z: torch.Tensor, h: Optional[torch.Tensor]):
        """(mean, logs) of the frames the first-frame prior models, flattened over (B, frames), and their count."""
        first = min(self.first_conditioned, z.shape[1])
        if not first:
            return None, None, 0
        m, s = self.first_priors[level](z[:, :first].flatten(0, 1).shape,
                                        None if h is None else h[:, :first].flatten(0, 1))
        return m, s, first

    def _later_frames(self, level: int, z: torch.Tensor, h: Optional[torch.Tensor], call) -> list:
        """call(window, h_t, z_t) for every frame t the latent prior network models, each call checkpointed (peak
        memory ~ one frame's activations); window: the n latents before t, a view of z once n are there (the
        checkpoint then saves no copy), zero-padded before that."""
        n, out = self.cfg.context, []
        for t in range(min(self.first_conditioned, z.shape[1]), z.shape[1]):
            window = z[:, t - n:t] if t >= n else self._window(list(z[:, :t].unbind(1)))
            args = (window, None if h is None else h[:, t], z[:, t])
            if self.cfg.checkpoint_prior and torch.is_grad_enabled():
                out.append(ckpt.checkpoint(call, *args, use_reentrant=False))
            else:
                out.append(call(*args))
        return out

    def _level_prior(self, level: int, z: torch.Tensor, h: Optional[torch.Tensor]):
        """(mean, logs) for every frame of level `level`; z (B, T, C, H, W), h (B, T, Ch, H, W) or None."""
        m, s, first = self._first_frames(level, z, h)
        means, logss = ([m.reshape(z[:, :first].shape)], [s.reshape(z[:, :first].shape)]) if first else ([], [])
        prior = self.priors[level]
        for m, s in self._later_frames(level, z, h, lambda window, h_t, z_t: prior(window, h_t)):
            means.append(m.unsqueeze(1))
            logss.append(s.unsqueeze(1))
        return torch.cat(means, 1), torch.cat(logss, 1)

    def _level_logp(self, level: int, z: torch.Tensor, h: Optional[torch.Tensor]) -> torch.Tensor:
        """log p(z_t | z_<t, h_t) of every frame of level `level`: (B, T)."""
        B, T = z.shape[:2]
        if not self.cfg.advect_mixture:
            mean, logs = self._level_prior(level, z, h)
            return gaussian_logp(z.flatten(0, 1), mean.flatten(0, 1), logs.flatten(0, 1)).view(B, T)
        m, s, first = self._first_frames(level, z, h)
        out = [gaussian_logp(z[:, :first].flatten(0, 1), m, s).view(B, first)] if first else []
        prior = self.priors[level]
        out += [lp.unsqueeze(1) for lp in
                self._later_frames(level, z, h, lambda window, h_t, z_t: prior.log_prob(z_t, window, h_t))]
        return torch.cat(out, 1)

    @property
    def first_conditioned(self) -> int:
        """The first frame whose prior is the latent prior network (the earlier ones use the first-frame prior)."""
        return self.cfg.first_conditioned

    def _window(self, past: List[torch.Tensor]) -> torch.Tensor:
        """The last n latents (N, n, C, H, W), zero-padded in front when fewer are there (pad_context)."""
        n = self.cfg.context
        past = past[-n:]
        return torch.stack([torch.zeros_like(past[0])] * (n - len(past)) + past, 1)

    def log_prob_frames(self, video: torch.Tensor) -> torch.Tensor:
        """log p(x_t | x_<t) in nats for every frame: (B, T). video (B, T, C, H, W) in [-0.5, 0.5]."""
        self._check(video)
        B, T = video.shape[:2]
        zs, hs, logdet = self.glow.encode_levels(video.flatten(0, 1))
        lp = logdet.view(B, T)
        for level, z in enumerate(zs):
            z = z.view(B, T, *z.shape[1:])
            h = hs[level].view(B, T, *hs[level].shape[1:]) if level < len(hs) else None
            lp = lp + self._level_logp(level, z, h)
        return lp

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """The per-frame log-likelihood (B, T): what training differentiates (and DDP wraps)."""
        return self.log_prob_frames(video)

    def log_prob(self, video: torch.Tensor) -> torch.Tensor:
        """log p(video) in nats per clip: (B,)."""
        return self.log_prob_frames(video).sum(1)

    def bits_per_pixel(self, video: torch.Tensor, from_frame: int = 0) -> torch.Tensor:
        """Bits per pixel (per sub-pixel dimension, as the paper reports) of frames from_frame.. given the earlier
        ones, per clip: (B,). Uses the model's n_bits quantization."""
        lp = self.log_prob_frames(video)[:, from_frame:]
        return flowkern.bits_per_dim(lp, self.frame_dims, self.cfg.n_bits).mean(1)

    # ---------------------------------------------------------------------------------------------- generation
    def _sample_frame(self, history: List[List[torch.Tensor]], batch: int, temperature: float, generator=None):
        """Sample the next frame given per-level latent histories; appends its latents, returns the frame."""
        h = None
        new = [None] * self.cfg.levels
        for level in reversed(range(self.cfg.levels)):
            past = history[level]
            if len(past) < self.first_conditioned:
                mean, logs = self.first_priors[level]((batch,) + self.latent_shapes[level], h)
                p = next(self.parameters())
                eps = torch.randn(mean.shape, generator=generator, device=p.device, dtype=p.dtype)
                z = mean + temperature * torch.exp(logs) * eps
            else:
                z = self.priors[level].sample(self._window(past), h, temperature, generator)
            new[level] = z
            h, _ = self.glow.decode_level(level, z, h)
        for level in range(self.cfg.levels):
            history[level].append(new[level])
        return h

    @torch.no_grad()
    def generate(self, context: Optional[torch.Tensor], num_frames: int, temperature: float = 1.0,
                 batch_size: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Continue `context` (B, c, C, H, W) in [-0.5, 0.5] (or None: unconditional) by num_frames frames, with every
        prior's sigma scaled by temperature. Returns (B, c + num_frames, C, H, W)."""
        frames, history = [], [[] for _ in range(self.cfg.levels)]
        if context is not None:
            self._check(context)
            B, c = context.shape[:2]
            zs, _, _ = self.glow.encode_levels(context.flatten(0, 1))
            for level, z in enumerate(zs):
                history[level] = list(z.view(B, c, *z.shape[1:]).unbind(1))
            frames = list(context.unbind(1))
        else:
            if batch_size is None:
                raise ValueError("VideoFlow.generate: give a context or a batch_size")
            B = batch_size
        for _ in range(num_frames):
            frames.append(self._sample_frame(history, B, temperature, generator))
        # Glow's affine inverse divides by sigmoid scales: latents off the training distribution can blow up
        return warn_if_diverged(torch.stack(frames, 1), "VideoFlow")

    @torch.no_grad()
    def out_of_sequence_bpp(self, context: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Bits/pixel of each candidate frame X_t placed right after `context` (B, c, ...): the paper's
        P(X_{c+1} = X_t | X_<=c). candidates (B, K, C, H, W) -> (B, K)."""
        B, K = candidates.shape[:2]
        out = []
        for k in range(K):
            clip = torch.cat([context, candidates[:, k:k + 1]], 1)
            lp = self.log_prob_frames(clip)[:, -1]
            out.append(flowkern.bits_per_dim(lp, self.frame_dims, self.cfg.n_bits))
        return torch.stack(out, 1)

    def config_dict(self) -> dict:
        d = asdict(self.cfg)
        d["dilations"] = list(d["dilations"])
        return d


def training_step_peak(cfg: VideoFlowConfig, batch: int, frames: int, device="meta"):
    """The real peak memory (flowkern.memory.PeakMemory: every storage alive) of one training step, forward and
    backward of the mean NLL, of a fresh VideoFlow(cfg) on `batch` clips of `frames` frames. On the meta device it
    runs on shapes alone: an estimate of the GPU's peak (no allocator rounding, no library workspaces)."""
    with torch.device(device):
        model = VideoFlow(cfg)
        video = torch.rand(batch, frames, cfg.in_channels, cfg.image_size, cfg.image_size) - 0.5
    mark_initialized(model)  # the data-dependent init is not part of a training step
    return peak_memory(lambda: (-model.log_prob_frames(video).mean()).backward(), model, video)


def memory_plan(cfg: VideoFlowConfig, device="meta", batch: int = 2, frames=(64, 128)) -> MemoryPlan:
    """A MemoryPlan of VideoFlow(cfg)'s training step from three measured steps (see training_step_peak)."""
    return MemoryPlan.fit(lambda b, t: training_step_peak(cfg, b, t, device).peak_bytes, batch, frames)
