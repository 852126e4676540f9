"""normflows adapter: flowkern's fused Glow step as a normflows Flow.

    import normflows as nf
    from flowkern.compat.normflows import GlowBlock

    flows_ += [GlowBlock(channels * 2 ** (L + 1 - i), hidden_channels, split_mode="channel", scale=True)]
    # instead of nf.flows.GlowBlock(...): same arguments, same model (MultiscaleFlow, NormalizingFlow, ...)

Directions follow normflows: forward(z) maps latent -> data (the generative direction, used by sample()) and
inverse(x) maps data -> latent (used by log_prob() / forward_kld(), i.e. training); each returns log|det| of the
Jacobian of the direction it evaluates. flowkern's FlowStep is written data -> latent, so inverse() runs the
FlowStep's forward (the fused, reversible training path) and forward() its inverse.

The block is the same transform as nf.flows.GlowBlock with the defaults (scale=True, scale_map="sigmoid",
split_mode="channel", leaky=0, init_zeros=True, net_actnorm=False): read data -> latent, ActNorm -> invertible 1x1 conv
(LU if use_lu) -> affine coupling whose passthrough half is the first C/2 channels, z_b = (x_b - shift) *
sigmoid(scale + 2), with the same coupling network (conv3x3-ReLU-conv1x1-ReLU-zero conv3x3); scale=False is the
additive coupling. `GlowBlock.from_normflows(block)` (and `convert_glow_blocks(model)`) copy an nf.flows.GlowBlock's
parameters, so a trained normflows model computes the same log_prob through flowkern. Differences:
- other scale maps, split modes, leaky ReLUs and net_actnorm are not implemented (ValueError);
- with an odd number of channels flowkern passes C // 2 channels through, normflows (C + 1) // 2: both are valid
  flows, but their parameters do not map onto each other;
- ActNorm initialises from the first batch seen data -> latent in training mode (normflows: the first call in either
  direction) and uses the biased standard deviation (normflows: unbiased, + 1e-6);
- context: the block can be conditional (context_channels; ConditionalNormalizingFlow passes `context=`): an image
  context (B, c, H, W) at the block's resolution, or a vector (B, c) broadcast over H x W, feeds every coupling network.

Reversible backprop: reversible=True trains the block's steps with flowkern's memory-saving reversible backprop; the
block keeps only its output for backward. normflows' containers call each flow with ordinary autograd, so hold a
level's K steps in one block (steps=K) to get reversibility across them.
"""
from typing import Optional

import torch
from torch import nn

try:
    from normflows.flows import Flow
    from normflows.flows import GlowBlock as _NFGlowBlock
except ImportError as e:  # pragma: no cover - exercised only without normflows
    raise ImportError("flowkern.compat.normflows needs normflows (pip install normflows)") from e

from flowkern.nn.flowstep import FlowStep
from flowkern.nn.invconv import InvConv1x1LU
from flowkern.nn.sequence import FlowSequence
from flowkern.reversible import DEFAULT_RECOMPUTE_CHUNK

__all__ = ["GlowBlock", "convert_glow_blocks"]


class GlowBlock(Flow):
    """Drop-in for normflows.flows.GlowBlock, running flowkern FlowSteps (fused kernels, optional reversible backprop).

    Args as nf.flows.GlowBlock (channels, hidden_channels, scale, scale_map, split_mode, leaky, init_zeros, use_lu,
    net_actnorm; only the Glow defaults are implemented), plus:
      context_channels: channels of an optional context (conditional coupling networks).
      steps: number of FlowSteps in this block (one nf GlowBlock each).
      reversible: train the block's steps with reversible backprop (only the block's output kept for backward).
      recompute_chunk: samples the reversible forward/backward process at once (None: the whole batch).
    """

    def __init__(self, channels: int, hidden_channels: int, scale: bool = True, scale_map: str = "sigmoid",
                 split_mode: str = "channel", leaky: float = 0.0, init_zeros: bool = True, use_lu: bool = True,
                 net_actnorm: bool = False, *, context_channels: int = 0, steps: int = 1, reversible: bool = False,
                 recompute_chunk: Optional[int] = DEFAULT_RECOMPUTE_CHUNK):
        super().__init__()
        unsupported = [f"{k}={v!r}" for k, v, ok in (
            ("scale_map", scale_map, scale_map == "sigmoid" or not scale), ("split_mode", split_mode,
                                                                             split_mode == "channel"),
            ("leaky", leaky, leaky == 0), ("init_zeros", init_zeros, init_zeros),
            ("net_actnorm", net_actnorm, not net_actnorm)) if not ok]
        if unsupported:
            raise ValueError("flowkern GlowBlock implements Glow's block (scale_map='sigmoid', split_mode='channel', "
                             "leaky=0, init_zeros=True, net_actnorm=False); got " + ", ".join(unsupported) +
                             ": use nf.flows.GlowBlock for these")
        if channels < 2:
            raise ValueError(f"flowkern GlowBlock needs at least 2 channels, got {channels}")
        if steps < 1:
            raise ValueError(f"flowkern GlowBlock needs steps >= 1, got {steps}")
        self.channels, self.context_channels = channels, context_channels
        self.flow = FlowSequence([FlowStep(channels, hidden_channels, context_channels, scale, use_lu)
                                  for _ in range(steps)], reversible=reversible, recompute_chunk=recompute_chunk)

    @property
    def steps(self):
        """The FlowSteps (a ModuleList), in the data -> latent order."""
        return self.flow.steps

    def _context(self, context, z):
        if context is not None and context.dim() == 2:  # a vector context, broadcast over the image
            context = context[:, :, None, None].expand(-1, -1, z.shape[2], z.shape[3])
        return None if context is None else context.to(z.dtype)

    def forward(self, z, context=None):
        """Latent -> data (sampling): (x, log|det dx/dz|)."""
        return self.flow.inverse(z, self._context(context, z))

    def inverse(self, x, context=None):
        """Data -> latent (log_prob, training): (z, log|det dz/dx|)."""
        return self.flow(x, self._context(context, x))

    @torch.no_grad()
    def load_normflows(self, *blocks: "_NFGlowBlock") -> "GlowBlock":
        """Copy the parameters of nf.flows.GlowBlock(s) (one per step, in the order normflows applies them in its
        forward, latent -> data) into this block, so it computes the same transform. Returns self."""
        if len(blocks) != len(self.steps):
            raise ValueError(f"this block has {len(self.steps)} steps, got {len(blocks)} normflows blocks")
        # normflows' forward (latent -> data) runs its blocks in list order; flowkern's steps run data -> latent
        for step, block in zip(reversed(list(self.steps)), blocks):
            _load_step(step, block)
        return self

    @classmethod
    def from_normflows(cls, *blocks: "_NFGlowBlock", reversible: bool = False,
                       recompute_chunk: Optional[int] = DEFAULT_RECOMPUTE_CHUNK) -> "GlowBlock":
        """A flowkern GlowBlock computing the same transform as nf.flows.GlowBlock(s) (several: consecutive blocks
        of one level, in normflows' list order, merged into one block of as many steps), parameters copied."""
        if not blocks:
            raise ValueError("from_normflows needs at least one nf.flows.GlowBlock")
        coupling, conv = _parts(blocks[0])[1:3]
        net = coupling.flows[1].param_map.net
        out = cls(blocks[0].flows[-1].s.shape[1], net[0].out_channels, scale=coupling.flows[1].scale,
                  use_lu=conv.use_lu, steps=len(blocks), reversible=reversible, recompute_chunk=recompute_chunk)
        out.to(device=net[0].weight.device, dtype=net[0].weight.dtype)
        return out.load_normflows(*blocks)


def _parts(block):
    """(actnorm, coupling, invconv) of an nf.flows.GlowBlock, checked to be the Glow configuration."""
    if not isinstance(block, _NFGlowBlock):
        raise TypeError(f"expected a normflows.flows.GlowBlock, got {type(block).__name__}")
    flows = list(block.flows)
    if len(flows) != 3:
        raise ValueError("a normflows GlowBlock with one channel (no 1x1 conv) has no flowkern equivalent")
    coupling, conv, actnorm = flows
    split, affine = coupling.flows[0], coupling.flows[1]
    net = list(affine.param_map.net)
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    acts = [m for m in net if not isinstance(m, nn.Conv2d)]
    ok = (split.mode == "channel" and (affine.scale_map == "sigmoid" or not affine.scale) and len(convs) == 3
          and len(net) == 5 and all(isinstance(a, nn.LeakyReLU) and a.negative_slope == 0 for a in acts)
          and [c.kernel_size for c in convs] == [(3, 3), (1, 1), (3, 3)] and all(c.bias is not None for c in convs))
    if not ok:
        raise ValueError("only normflows GlowBlocks with scale_map='sigmoid', split_mode='channel', leaky=0 and "
                         "net_actnorm=False map onto flowkern's FlowStep")
    channels = actnorm.s.shape[1]
    if channels % 2:
        raise ValueError(f"a normflows GlowBlock with an odd number of channels ({channels}) passes (C + 1) // 2 "
                         "channels through its coupling, flowkern C // 2: the parameters do not map")
    return actnorm, coupling, conv


def _load_step(step: FlowStep, block) -> None:
    actnorm, coupling, conv = _parts(block)
    affine = coupling.flows[1]
    C = step.num_channels
    if (actnorm.s.shape[1] != C or step.coupling.affine != bool(affine.scale)
            or isinstance(step.invconv, InvConv1x1LU) != bool(conv.use_lu)):
        raise ValueError("normflows block and flowkern step differ in channels, scale or use_lu")
    # ActNorm: normflows (data -> latent) z = (x - t) * exp(-s); flowkern y = exp(log_scale) * (x + bias)
    step.actnorm.log_scale.copy_(-actnorm.s.reshape(C))
    step.actnorm.bias.copy_(-actnorm.t.reshape(C))
    step.actnorm.mark_initialized(bool(actnorm.data_dep_init_done > 0))
    # 1x1 conv: normflows' inverse (data -> latent) is conv2d with W = P L U, as flowkern's y = W x
    ic = step.invconv
    if conv.use_lu:
        ic.P.copy_(conv.P)
        ic.sign_s.copy_(conv.sign_S)
        ic.lower.copy_(torch.tril(conv.L, -1))
        ic.upper.copy_(torch.triu(conv.U, 1))
        ic.log_s.copy_(conv.log_S)
    else:
        ic.W.copy_(conv.W)
    # coupling network: same layers. normflows' output interleaves (shift, scale) channels and, data -> latent,
    # computes z_b = (x_b - shift) * sigmoid(scale + 2); flowkern's output is the blocks (h_t, h_s), with
    # z_b = (x_b + h_t) * sigmoid(h_s + 2): h_t = -shift, h_s = scale
    src = [m for m in affine.param_map.net if isinstance(m, nn.Conv2d)]
    net = step.coupling.nn
    dst = [net[0], net[2], net[4].conv]
    for d, s in zip(dst[:2], src[:2]):
        d.weight.copy_(s.weight)
        d.bias.copy_(s.bias)
    w, b = src[2].weight, src[2].bias
    if affine.scale:
        dst[2].weight.copy_(torch.cat([-w[0::2], w[1::2]]))
        dst[2].bias.copy_(torch.cat([-b[0::2], b[1::2]]))
    else:  # additive: z_b = x_b - param
        dst[2].weight.copy_(-w)
        dst[2].bias.copy_(-b)
    net[4].logs.zero_()  # normflows' last conv has no learned output scale


def convert_glow_blocks(model: nn.Module, reversible: bool = False) -> nn.Module:
    """Replace, in place, every nf.flows.GlowBlock inside `model` (e.g. a MultiscaleFlow) by a flowkern GlowBlock with
    the same parameters; returns the model. A trained normflows Glow then computes the same log_prob with flowkern."""
    for name, child in list(model.named_children()):
        if isinstance(child, _NFGlowBlock):
            setattr(model, name, GlowBlock.from_normflows(child, reversible=reversible))
        else:
            convert_glow_blocks(child, reversible)
    return model
