from typing import Iterable

from torch import nn


class FlowSequence(nn.Module):
    """A chain of invertible steps, each following forward(x, context) -> (y, logdet) and
    inverse(y, context) -> (x, logdet). The context is passed to every step."""

    def __init__(self, steps: Iterable[nn.Module]):
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def __len__(self):
        return len(self.steps)

    def forward(self, x, context=None):
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
