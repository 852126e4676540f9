"""CGlow (Donahue, "Label-Conditioned Next-Frame Video Generation with Neural Flows") on flowkern.

A video is generated frame by frame by two conditional Glows:
- the head models frame 1, conditioned (variant "state_label") on a learned per-label image of the frame's size;
- the tail models frame t >= 2 given a context of [state s_t, previous frame x_{t-1}], where the context processor
  s_t = s_{t-1} + conv(32->S)(ReLU(conv(S+C -> 32)(ActNorm([s_{t-1}, x_{t-1}])))), s_1 = 0, carries every earlier
  frame in S (16) channels.
A conditioning pyramid feeds each context into every level of its Glow: one stride-2 conv + ReLU per level, channels
kept, so level l (at H / 2^(l+1)) sees the context at its own resolution (flowkern.Glow's context pyramid): its
couplings, split prior and top prior.

The variants of the paper's Table I (`variant`):
    "init"         independent frames: neither Glow is conditioned
    "prev_frame"   the tail sees x_{t-1}
    "state"        the tail sees [s_t, x_{t-1}]
    "state_label"  and the head sees the label's learned image
Likelihood and sampling build the context through the same function (`_tail_context`), so a sample is the inverse
of the likelihood's map for the same frames.
"""
from dataclasses import asdict, dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

import flowkern
from flowkern import ActNorm2d, Glow
from flowkern.memory import peak_memory
from flowkern.models.generation import warn_if_diverged
from flowkern.nn import mark_initialized

VARIANTS = ("init", "prev_frame", "state", "state_label")


@dataclass
class CGlowConfig:
    in_channels: int = 3
    image_size: int = 64
    levels: int = 4
    steps: int = 32
    hidden: int = 512
    affine: bool = False  # the paper's couplings are additive
    variant: str = "state_label"
    state_channels: int = 16
    processor_hidden: int = 32
    num_labels: int = 0  # > 0 with variant "state_label"
    n_bits: int = 8
    reversible: bool = True
    tbptt: Optional[int] = None  # frames the state's gradient flows back through (None: the whole clip)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"CGlowConfig: variant must be one of {VARIANTS}, got {self.variant!r}")
        if (self.variant == "state_label") != (self.num_labels > 0):
            raise ValueError(f"CGlowConfig: variant 'state_label' needs num_labels > 0, and only it takes labels "
                             f"(variant {self.variant!r}, num_labels {self.num_labels})")
        if self.tbptt is not None and self.tbptt < 1:
            raise ValueError(f"CGlowConfig: tbptt must be >= 1 frames or None, got {self.tbptt}")

    @property
    def tail_context_channels(self) -> int:
        return {"init": 0, "prev_frame": self.in_channels}.get(self.variant, self.state_channels + self.in_channels)


CONFIGS = {
    # the paper's appendix A: 4 levels x 32 steps on 3x64x64, state of 16 channels, Moments in Time's 201 labels
    "paper": CGlowConfig(num_labels=201),
    # a CPU-sized model for the ablation on Stochastic Movement
    "small": CGlowConfig(image_size=32, levels=3, steps=4, hidden=64, num_labels=3),
    "tiny": CGlowConfig(image_size=8, levels=2, steps=1, hidden=8, num_labels=3, state_channels=4, processor_hidden=8),
}


class ConditioningPyramid(nn.Module):
    """A context at the input resolution -> one tensor per Glow level: a stride-2 3x3 conv + ReLU per level, channels
    kept (level l's tensor is at H / 2^(l+1), where level l's flow runs)."""

    def __init__(self, channels: int, levels: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in range(levels))

    def forward(self, context: torch.Tensor) -> List[torch.Tensor]:
        out = []
        for conv in self.convs:
            context = F.relu(conv(context))
            out.append(context)
        return out


class ContextProcessor(nn.Module):
    """s_t = s_{t-1} + conv2(ReLU(conv1(ActNorm([s_{t-1}, x_{t-1}])))): the state that carries the clip so far."""

    def __init__(self, state_channels: int, in_channels: int, hidden: int):
        super().__init__()
        self.norm = ActNorm2d(state_channels + in_channels)
        self.conv1 = nn.Conv2d(state_channels + in_channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, state_channels, 3, padding=1)

    def forward(self, state: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
        u, _ = self.norm(torch.cat([state, frame], 1))
        return state + self.conv2(F.relu(self.conv1(u)))


class CGlow(nn.Module):
    def __init__(self, cfg: CGlowConfig):
        super().__init__()
        self.cfg = cfg
        c, L = cfg.in_channels, cfg.levels
        head_ctx = c if cfg.num_labels else 0
        tail_ctx = cfg.tail_context_channels

        def glow(ctx):
            return Glow(c, L, cfg.steps, cfg.hidden, affine=cfg.affine, context_channels=(ctx,) * L if ctx else 0,
                        reversible=cfg.reversible)
        self.head, self.tail = glow(head_ctx), glow(tail_ctx)
        self.label_images = nn.Parameter(torch.randn(cfg.num_labels, c, cfg.image_size, cfg.image_size)) \
            if cfg.num_labels else None
        self.head_pyramid = ConditioningPyramid(head_ctx, L) if head_ctx else None
        self.tail_pyramid = ConditioningPyramid(tail_ctx, L) if tail_ctx else None
        self.processor = ContextProcessor(cfg.state_channels, c, cfg.processor_hidden) \
            if cfg.variant in ("state", "state_label") else None

    @property
    def frame_dims(self) -> int:
        return self.cfg.in_channels * self.cfg.image_size ** 2

    def _check(self, video: torch.Tensor, labels: Optional[torch.Tensor], labels_needed: bool = True):
        cfg = self.cfg
        want = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if video.dim() != 5 or tuple(video.shape[2:]) != want:
            raise ValueError(f"CGlow: expected a video of shape (B, T, {want[0]}, {want[1]}, {want[2]}), got "
                             f"{tuple(video.shape)}")
        if labels_needed or labels is not None:
            self._check_labels(labels, video.shape[0])

    def _check_labels(self, labels, batch):
        n = self.cfg.num_labels
        if not n:
            if labels is not None:
                raise ValueError(f"CGlow: variant {self.cfg.variant!r} takes no labels")
            return
        if labels is None or labels.shape != (batch,) or labels.dtype not in (torch.int32, torch.int64):
            got = None if labels is None else f"{tuple(labels.shape)} {labels.dtype}"
            raise ValueError(f"CGlow: variant 'state_label' needs integer labels of shape ({batch},), got {got}")
        if labels.numel() and labels.device.type != "meta" and (int(labels.min()) < 0 or int(labels.max()) >= n):
            raise ValueError(f"CGlow: labels must lie in [0, {n}), got {int(labels.min())}..{int(labels.max())}")

    def _head_context(self, labels: Optional[torch.Tensor]):
        return None if self.head_pyramid is None else self.head_pyramid(self.label_images[labels])

    def _tail_context(self, state: Optional[torch.Tensor], prev: torch.Tensor):
        """(context pyramid or None, next state) for the frame after `prev` given the state before it: the one
        path both the likelihood and sampling take."""
        if self.cfg.variant == "init":
            return None, state
        if self.processor is None:
            return self.tail_pyramid(prev), state
        if state is None:  # s_1 = 0
            state = prev.new_zeros(prev.shape[0], self.cfg.state_channels, *prev.shape[2:])
        state = self.processor(state, prev)
        return self.tail_pyramid(torch.cat([state, prev], 1)), state

    def _log_prob_windows(self, video: torch.Tensor, labels: Optional[torch.Tensor]):
        """Yields log p of the frames window by window, (B, w) each: the head's frame with the first `tbptt` tail
        frames, then `tbptt` tail frames at a time (one window: the whole clip). No gradient crosses a window: the
        state is detached at its start (truncated backprop through the state chain)."""
        self._check(video, labels)
        T, w = video.shape[1], self.cfg.tbptt or video.shape[1]
        out = [self.head.log_prob(video[:, 0], self._head_context(labels))]
        state = None
        for t in range(1, T):
            if t > 1 and (t - 1) % w == 0:
                yield torch.stack(out, 1)
                out, state = [], None if state is None else state.detach()
            ctx, state = self._tail_context(state, video[:, t - 1])
            out.append(self.tail.log_prob(video[:, t], ctx))
        yield torch.stack(out, 1)

    def log_prob_frames(self, video: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """log p(x_t | x_<t [, label]) in nats for every frame: (B, T). video (B, T, C, H, W) in [-0.5, 0.5]."""
        return torch.cat(list(self._log_prob_windows(video, labels)), 1)

    def backward_by_window(self, video: torch.Tensor, labels: Optional[torch.Tensor] = None,
                           weight: float = 1.0) -> torch.Tensor:
        """Accumulate the gradients of -weight * (sum of every frame's log p) one `tbptt` window at a time, each
        window's graph freed before the next is built: the gradients of log_prob_frames(...).sum() (the same
        truncation), in the memory of one window rather than of the clip. Returns the log p (B, T), detached."""
        parts = []
        for lp in self._log_prob_windows(video, labels):
            (-weight * lp.sum()).backward()
            parts.append(lp.detach())
        return torch.cat(parts, 1)

    def forward(self, video, labels=None):
        return self.log_prob_frames(video, labels)

    def bits_per_pixel_frames(self, video, labels=None) -> torch.Tensor:
        """Bits per sub-pixel of each frame given the earlier ones: (B, T)."""
        return flowkern.bits_per_dim(self.log_prob_frames(video, labels), self.frame_dims, self.cfg.n_bits)

    @torch.no_grad()
    def generate(self, context: Optional[torch.Tensor], num_frames: int, temperature: float = 1.0,
                 batch_size: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Continue `context` (B, c, C, H, W) in [-0.5, 0.5] by num_frames frames (context None: from scratch, the
        head's frame first; B from batch_size or labels), every prior's std scaled by temperature. The same call as
        VideoFlow.generate, plus the labels of variant "state_label". Returns (B, c + num_frames, C, H, W)."""
        size = (self.cfg.image_size,) * 2
        if context is not None:  # only the head reads labels: a continuation needs none
            B = context.shape[0]
            self._check(context, labels, labels_needed=False)
            frames = list(context.unbind(1))
        else:
            B = batch_size if batch_size is not None else (None if labels is None else labels.shape[0])
            if B is None:
                raise ValueError("CGlow.generate: give a context, labels or a batch_size")
            self._check_labels(labels, B)
            frames = [self.head.sample(B, temperature, self._head_context(labels), size, generator)]
            num_frames -= 1
        state = self._state_before_last(frames)
        for _ in range(num_frames):
            ctx, state = self._tail_context(state, frames[-1])
            frames.append(self.tail.sample(B, temperature, ctx, size, generator))
        return warn_if_diverged(torch.stack(frames, 1), "CGlow")

    def _state_before_last(self, frames: List[torch.Tensor]) -> Optional[torch.Tensor]:
        """The state after every frame but the last (None for the variants without one, or a single frame)."""
        state = None
        for frame in frames[:-1]:
            _, state = self._tail_context(state, frame)
        return state

    @torch.no_grad()
    def out_of_sequence_bpp(self, context: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Bits/pixel of each candidate frame placed right after `context` (B, c, ...), as the tail scores it:
        candidates (B, K, C, H, W) -> (B, K). (VideoFlow's measure of the same name, for the motion tests.)"""
        self._check(context, None, labels_needed=False)
        frames = list(context.unbind(1))
        ctx, _ = self._tail_context(self._state_before_last(frames), frames[-1])
        return torch.stack([flowkern.bits_per_dim(self.tail.log_prob(candidates[:, k], ctx), self.frame_dims,
                                                  self.cfg.n_bits) for k in range(candidates.shape[1])], 1)

    def config_dict(self) -> dict:
        return asdict(self.cfg)



def training_step_peak(cfg: CGlowConfig, batch: int, frames: int, device="meta"):
    """The real peak memory (flowkern.memory.PeakMemory: every storage alive) of one training step, forward and
    backward of the mean per-frame NLL, of a fresh CGlow(cfg) on `batch` clips of `frames` frames (labels 0 where the
    variant takes them); with cfg.tbptt, window by window (backward_by_window), as training runs it. On the meta
    device it runs on shapes alone."""
    with torch.device(device):
        model = CGlow(cfg)
        video = torch.rand(batch, frames, cfg.in_channels, cfg.image_size, cfg.image_size) - 0.5
        labels = torch.zeros(batch, dtype=torch.long) if cfg.num_labels else None
    mark_initialized(model)  # the data-dependent init is not part of a training step
    if cfg.tbptt is None:
        step = lambda: (-model.log_prob_frames(video, labels).mean()).backward()  # noqa: E731
    else:
        step = lambda: model.backward_by_window(video, labels, 1.0 / (batch * frames))  # noqa: E731
    return peak_memory(step, model, video)
