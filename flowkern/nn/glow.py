from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from flowkern.nn._checks import check_input
from flowkern.nn.flowstep import FlowStep
from flowkern.nn.sequence import FlowSequence
from flowkern.nn.split import Split, TopPrior, standard_normal_logp
from flowkern.reversible import DEFAULT_RECOMPUTE_CHUNK
from flowkern.nn.squeeze import squeeze2d, unsqueeze2d


class Glow(nn.Module):
    """Multi-scale Glow (Kingma & Dhariwal 2018).

    Each of `levels` levels: squeeze -> `steps` FlowSteps -> split (all but the last), whose half z2 gets a
    learned Gaussian prior p(z2 | z1 [, context]); the top latent gets a learned prior too. Latents are returned
    standardised (Split), so `encode` and `decode` are exact inverses and `log_prob` = sum log N(eps) + logdet.

    reversible=True trains each level's steps with memory-saving reversible backprop (flowkern.reversible), whose
    backward recomputes `recompute_chunk` samples at a time (None: the whole batch).
    context: optional (B, context_channels, H, W) tensor at the input resolution; each level squeezes it along
    with x, so level l's couplings and priors see context_channels * 4^(l+1) channels at their resolution.
    A context pyramid instead: context_channels a sequence of one channel count per level, and the context a
    sequence of tensors, level l's (B, context_channels[l], H / 2^(l+1), W / 2^(l+1)) at that level's resolution
    (a conditioning network's features: CGlow's label and state pyramids, the RFN's conditioning network).
    coupling_net: the couplings' NN, "glow", "gatu" or "actnorm" (flowkern.nn.coupling_network).
    prior_scale: the split and top priors' std from their convs: "exp" (Glow) or "softplus" (flowkern.nn.split).
    coupling_scale: the affine couplings' scale, "sigmoid" (Glow) or "tanh" (a learned clamp of log s;
    flowkern.nn.AffineCoupling).
    """

    def __init__(self, in_channels: int, levels: int, steps: int, hidden: int = 512, affine: bool = True,
                 lu: bool = True, context_channels: Union[int, Sequence[int]] = 0, learn_priors: bool = True,
                 reversible: bool = False, recompute_chunk: Optional[int] = DEFAULT_RECOMPUTE_CHUNK,
                 coupling_net: str = "glow", prior_scale: str = "exp", coupling_scale: str = "sigmoid"):
        super().__init__()
        if levels < 1 or steps < 1:
            raise ValueError(f"Glow needs levels >= 1 and steps >= 1, got levels={levels}, steps={steps}")
        self.pyramid = not isinstance(context_channels, int)
        if self.pyramid:
            context_channels = tuple(int(c) for c in context_channels)
            if len(context_channels) != levels or min(context_channels) < 1:
                raise ValueError(f"Glow: a context pyramid needs one positive channel count per level ({levels}), "
                                 f"got context_channels={context_channels}")
        self.in_channels, self.levels, self.context_channels = in_channels, levels, context_channels
        self.flows = nn.ModuleList()
        self.splits = nn.ModuleList()
        c, ctx = in_channels, 0 if self.pyramid else context_channels
        for level in range(levels):
            c, ctx = c * 4, context_channels[level] if self.pyramid else ctx * 4
            steps_here = (FlowStep(c, hidden, ctx, affine, lu, coupling_net, coupling_scale) for _ in range(steps))
            self.flows.append(FlowSequence(steps_here, reversible=reversible, recompute_chunk=recompute_chunk))
            if level < levels - 1:
                self.splits.append(Split(c, ctx, learn_priors, prior_scale))
                c = c // 2
        self.top = TopPrior(c, ctx, learn_priors, prior_scale)
        self.image_size: Optional[Tuple[int, int]] = None  # remembered from the data, saved in the state_dict

    # the image size rides in the state_dict (plain ints: loads with weights_only=True)
    def get_extra_state(self):
        return {"image_size": list(self.image_size) if self.image_size else []}

    def set_extra_state(self, state):
        size = state.get("image_size") or []
        self.image_size = tuple(int(v) for v in size) if size else None

    def _check(self, x, context):
        check_input(self, x, self.in_channels)
        H, W = x.shape[2:]
        f = 2 ** self.levels
        if H % f or W % f:
            raise ValueError(f"Glow with {self.levels} levels needs height and width divisible by {f}, got {H}x{W}")
        if self.pyramid:
            if not isinstance(context, (list, tuple)) or len(context) != self.levels:
                got = type(context).__name__ if not isinstance(context, (list, tuple)) else f"{len(context)} tensors"
                raise ValueError(f"Glow: built with a context pyramid, so the context must be a list of {self.levels} "
                                 f"tensors (one per level), got {got}")
            for level, (ctx, c) in enumerate(zip(context, self.context_channels)):
                want = (x.shape[0], c, H >> (level + 1), W >> (level + 1))
                if not isinstance(ctx, torch.Tensor) or tuple(ctx.shape) != want:
                    got = tuple(ctx.shape) if isinstance(ctx, torch.Tensor) else type(ctx).__name__
                    raise ValueError(f"Glow: level {level}'s context must have shape {want} for input "
                                     f"{tuple(x.shape)}, got {got}")
        elif self.context_channels:
            want = (x.shape[0], self.context_channels, H, W)
            if context is None or tuple(context.shape) != want:
                got = None if context is None else tuple(context.shape)
                raise ValueError(f"Glow: context must have shape {want} for input {tuple(x.shape)}, got {got}")
        elif context is not None:
            raise ValueError("Glow: got a context tensor but was built with context_channels=0")

    def _level_contexts(self, context) -> List[Optional[torch.Tensor]]:
        if self.pyramid and context is not None:
            return list(context)
        out = []
        for _ in range(self.levels):
            context = None if context is None else squeeze2d(context)
            out.append(context)
        return out

    def encode_levels(self, x, context=None):
        """Like encode, also returning hs: hs[l] (l < levels-1) is the half kept at level l's split, i.e. the
        representation of the higher levels' latents z^(>l) (what VideoFlow's prior of level l conditions on)."""
        self._check(x, context)
        if self.image_size is None:
            self.image_size = (x.shape[2], x.shape[3])
        ctxs = self._level_contexts(context)
        logdet, zs, hs, h = 0, [], [], x
        for level, (flow, ctx) in enumerate(zip(self.flows, ctxs)):
            h, ld = flow(squeeze2d(h), ctx)
            logdet = logdet + ld
            if level < self.levels - 1:
                split = self.splits[level]
                y, ld = split(h, ctx)
                h, z = y[:, :split.c1], y[:, split.c1:]
                hs.append(h)
            else:
                z, ld = self.top(h, ctx)
            zs.append(z)
            logdet = logdet + ld
        return zs, hs, logdet

    def encode(self, x, context=None) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """x (B, C, H, W) -> (latents, logdet): one standardised latent per level (finest first), logdet (B,)
        of the whole map x -> latents."""
        zs, _, logdet = self.encode_levels(x, context)
        return zs, logdet

    def decode_level(self, level: int, z: torch.Tensor, h: Optional[torch.Tensor] = None, context=None):
        """Invert one level: from its latent z and (below the top) the kept half h = hs[level], return
        (the level's input, logdet). Decoding level by level, top first, lets a prior condition each level's
        latent on the levels above (VideoFlow)."""
        ctx = self._level_contexts(context)[level] if context is not None else None
        if level == self.levels - 1:
            u, logdet = self.top.inverse(z, ctx)
        else:
            u, logdet = self.splits[level].inverse(torch.cat([h, z], 1), ctx)
        u, ld = self.flows[level].inverse(u, ctx)
        return unsqueeze2d(u), logdet + ld

    def decode(self, zs: Sequence[torch.Tensor], context=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Exact inverse of encode: latents -> (x, logdet of the map latents -> x)."""
        if len(zs) != self.levels:
            raise ValueError(f"Glow.decode: expected {self.levels} latents (one per level), got {len(zs)}")
        logdet, h = 0, None
        for level in reversed(range(self.levels)):
            h, ld = self.decode_level(level, zs[level], h, context)
            logdet = logdet + ld
        return h, logdet

    def forward(self, x, context=None):
        return self.encode(x, context)

    def inverse(self, zs, context=None):
        return self.decode(zs, context)

    def log_prob(self, x, context=None) -> torch.Tensor:
        """log p(x) in nats per sample, shape (B,), for continuous x (see flowkern.bits_per_dim)."""
        zs, logdet = self.encode(x, context)
        return logdet + sum(standard_normal_logp(z) for z in zs)

    def latent_shapes(self, height: int, width: int) -> List[Tuple[int, int, int]]:
        shapes, c = [], self.in_channels
        for level in range(self.levels):
            c, height, width = c * 4, height // 2, width // 2
            if level < self.levels - 1:
                shapes.append((self.splits[level].c2, height, width))
                c = self.splits[level].c1
            else:
                shapes.append((c, height, width))
        return shapes

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, context=None, image_size=None,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Draw n samples with every prior's std scaled by `temperature` (0 gives the deterministic mode).
        The size comes from `image_size`, else the context, else the data seen in training."""
        if context is not None and self.pyramid:  # level 0's context is at half the input resolution
            context_size = tuple(2 * v for v in context[0].shape[2:])
        else:
            context_size = None if context is None else tuple(context.shape[2:])
        size = image_size or context_size or self.image_size
        if size is None:
            raise ValueError("Glow.sample: pass image_size=(H, W) (the model has not seen data yet)")
        p = next(self.parameters())
        zs = [temperature * torch.randn((n,) + s, device=p.device, dtype=p.dtype, generator=generator)
              for s in self.latent_shapes(*size)]
        return self.decode(zs, context)[0]
