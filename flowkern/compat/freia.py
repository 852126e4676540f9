"""FrEIA adapter: flowkern's fused Glow step as a FrEIA invertible module.

    from FrEIA.framework import SequenceINN
    from flowkern.compat.freia import GlowStep

    inn = SequenceINN(12, 16, 16)
    for _ in range(8):
        inn.append(GlowStep, hidden=256)            # instead of e.g. AllInOneBlock, subnet_constructor=...
    z, log_jac_det = inn(x)                         # x -> z and log|det dz/dx|, as with FrEIA's own blocks
    x_rev, _ = inn(z, rev=True)

GlowStep follows FrEIA's InvertibleModule interface: the constructor takes (dims_in, dims_c=None, **kwargs),
forward(x, c=[], rev=False, jac=True) takes and returns a tuple of one tensor and returns log|det J| of the direction
evaluated (J for rev=False, -J for rev=True), and output_dims(input_dims) is the identity. It works in SequenceINN and
GraphINN and mixes with FrEIA's own modules (permutations, splits, reshapes).

What it computes: `steps` (default 1) flowkern FlowSteps, each ActNorm -> invertible 1x1 conv (LU by default) ->
Glow affine coupling (s = sigmoid(h_s + 2); additive with affine=False), with the coupling network
conv3x3-ReLU-conv1x1-ReLU-zero-initialised conv3x3 of width `hidden`. ActNorm initialises itself from the first batch
it sees in training mode (x -> z direction), as in Glow.

Conditions (dims_c): as with FrEIA's coupling blocks, each condition is an image (c_k, H, W) with the input's spatial
size; the conditions are concatenated along channels and fed to every coupling network (the FlowStep's context).
A vector condition (c_k,) is also accepted and broadcast over H x W (FrEIA's own convolutional blocks reject those).

Reversible backprop: reversible=True trains the block's steps with flowkern's memory-saving reversible backprop
(flowkern.reversible): the block keeps only its output (and condition) for backward, however many steps it holds,
and recomputes the rest in backward. FrEIA's containers run their nodes with ordinary autograd, so reversibility
holds within a block: put a level's steps in one block (steps=K) to get it across them.
"""
from typing import List, Optional, Sequence, Tuple

import torch

try:
    from FrEIA.modules import InvertibleModule
except ImportError as e:  # pragma: no cover - exercised only without FrEIA
    raise ImportError("flowkern.compat.freia needs FrEIA (pip install FrEIA)") from e

from flowkern.nn.flowstep import FlowStep
from flowkern.nn.sequence import FlowSequence
from flowkern.reversible import DEFAULT_RECOMPUTE_CHUNK

__all__ = ["GlowStep"]


class GlowStep(InvertibleModule):
    """`steps` flowkern FlowSteps (ActNorm, 1x1 conv, affine coupling; fused kernels) as one FrEIA module.

    Args (besides FrEIA's dims_in and dims_c):
      hidden: width of the coupling networks (Glow: 512).
      affine: affine coupling (True) or additive (False).
      lu: LU-parametrised 1x1 conv (True) or a plain one (False).
      steps: number of FlowSteps in this block.
      reversible: train the block's steps with reversible backprop (only the block's output is kept for backward).
      recompute_chunk: samples the reversible forward/backward process at once (None: the whole batch).
    """

    def __init__(self, dims_in: Sequence[Tuple[int, ...]], dims_c: Optional[Sequence[Tuple[int, ...]]] = None,
                 hidden: int = 512, affine: bool = True, lu: bool = True, steps: int = 1, reversible: bool = False,
                 recompute_chunk: Optional[int] = DEFAULT_RECOMPUTE_CHUNK):
        super().__init__(dims_in, dims_c)
        if len(self.dims_in) != 1:
            raise ValueError(f"GlowStep takes one input, got dims_in={self.dims_in}")
        shape = tuple(self.dims_in[0])
        if len(shape) != 3:
            raise ValueError(f"GlowStep works on images (C, H, W), got input dims {shape}")
        if steps < 1:
            raise ValueError(f"GlowStep needs steps >= 1, got {steps}")
        channels, height, width = shape
        context_channels = 0
        for dc in self.dims_c:
            dc = tuple(dc)
            if len(dc) == 1 or (len(dc) == 3 and dc[1:] == (height, width)):
                context_channels += dc[0]
            else:
                raise ValueError(f"GlowStep: a condition must be (c, {height}, {width}) like the input {shape} (or a "
                                 f"vector (c,), broadcast over H x W), got {dc}")
        self.context_channels = context_channels
        self.flow = FlowSequence([FlowStep(channels, hidden, context_channels, affine, lu) for _ in range(steps)],
                                 reversible=reversible, recompute_chunk=recompute_chunk)

    @property
    def steps(self):
        """The FlowSteps (a ModuleList)."""
        return self.flow.steps

    def _context(self, c, x: torch.Tensor) -> Optional[torch.Tensor]:
        c = [] if c is None else list(c)
        if len(c) != len(self.dims_c):
            raise ValueError(f"GlowStep built with {len(self.dims_c)} condition(s) (dims_c={self.dims_c}), "
                             f"got {len(c)}")
        if not c:
            return None
        parts = []
        for t, dc in zip(c, self.dims_c):
            if tuple(t.shape[1:]) != tuple(dc):
                raise ValueError(f"GlowStep: condition of shape {tuple(t.shape)} does not match dims_c entry {dc}")
            if t.dim() == 2:  # a vector condition, broadcast over the image
                t = t[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
            parts.append(t.to(x.dtype))
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)

    def forward(self, x_or_z, c=None, rev: bool = False, jac: bool = True):
        """x -> z (rev=False) with log|det dz/dx|, or z -> x (rev=True) with log|det dx/dz| = minus that.
        The log-determinant is always returned (FrEIA allows it with jac=False)."""
        if torch.is_tensor(x_or_z):
            x_or_z = (x_or_z,)
        if len(x_or_z) != 1:
            raise ValueError(f"GlowStep takes one input tensor, got {len(x_or_z)}")
        x = x_or_z[0]
        context = self._context(c, x)
        out, logdet = self.flow.inverse(x, context) if rev else self.flow(x, context)
        return (out,), logdet

    def output_dims(self, input_dims: List[Tuple[int, ...]]) -> List[Tuple[int, ...]]:
        if len(input_dims) != 1:
            raise ValueError(f"GlowStep takes one input, got {len(input_dims)}")
        return input_dims
