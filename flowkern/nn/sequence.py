from typing import Iterable, List, Optional

import torch
from torch import nn

from flowkern.reversible import DEFAULT_RECOMPUTE_CHUNK, Verify, needs_plain_forward, reversible_forward


class FlowSequence(nn.Module):
    """A chain of invertible steps, each following forward(x, context) -> (y, logdet) and
    inverse(y, context) -> (x, logdet). The context is passed to every step.

    reversible=True trains with memory-saving reversible backprop (flowkern.reversible): only the chain's output
    and context are kept for backward, whatever the depth. verify=True additionally measures how far inverting each
    step drifts from its true input (see `last_drift`) and raises ReconstructionError past verify_tol.
    recompute_chunk: samples the reversible backward recomputes at once (None: the whole batch), which bounds its
    transient memory whatever the batch (e.g. the B*T frames of a clip).
    """

    def __init__(self, steps: Iterable[nn.Module], reversible: bool = False, verify: bool = False,
                 verify_tol: float = 1e-3, recompute_chunk: Optional[int] = DEFAULT_RECOMPUTE_CHUNK):
        super().__init__()
        self.steps = nn.ModuleList(steps)
        self.reversible = reversible
        self.verify = verify
        self.verify_tol = verify_tol
        if recompute_chunk is not None and recompute_chunk < 1:
            raise ValueError(f"FlowSequence: recompute_chunk must be a positive number of samples or None, got "
                             f"{recompute_chunk}")
        self.recompute_chunk = recompute_chunk
        self._last_verify = None

    def __len__(self):
        return len(self.steps)

    def _use_reversible(self, x, context) -> bool:
        if not self.reversible or not torch.is_grad_enabled() or needs_plain_forward(self.steps):
            return False
        return (x.requires_grad or (context is not None and context.requires_grad)
                or any(p.requires_grad for p in self.parameters()))

    def forward(self, x, context=None):
        if self._use_reversible(x, context):
            self._last_verify = Verify(self.verify_tol) if self.verify else None
            return reversible_forward(list(self.steps), x, context, self._last_verify, self.recompute_chunk)
        logdet = 0
        for step in self.steps:
            x, ld = step(x, context)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y, context=None):
        logdet = 0
        for step in reversed(self.steps):
            y, ld = step.inverse(y, context)
            logdet = logdet + ld
        return y, logdet

    @property
    def last_drift(self) -> List[float]:
        """Per-step reconstruction error measured in the last reversible backward (verify mode)."""
        return list(self._last_verify.drift) if self._last_verify is not None else []


class ReversibleSequence(FlowSequence):
    """FlowSequence with reversible backprop on: wrap any chain of invertible modules.

    >>> seq = ReversibleSequence([FlowStep(12, 512) for _ in range(32)])
    >>> y, logdet = seq(x, context)   # activation memory independent of the number of steps
    """

    def __init__(self, steps: Iterable[nn.Module], verify: bool = False, verify_tol: float = 1e-3,
                 recompute_chunk: Optional[int] = DEFAULT_RECOMPUTE_CHUNK):
        super().__init__(steps, reversible=True, verify=verify, verify_tol=verify_tol, recompute_chunk=recompute_chunk)
