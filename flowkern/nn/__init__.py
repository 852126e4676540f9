"""Invertible modules. Each has forward(x, context=None) -> (y, logdet) and inverse(y, context=None) -> (x, logdet),
logdet of shape (B,) = log|det| of that direction's Jacobian."""
from flowkern.nn.actnorm import ActNorm2d, mark_initialized
from flowkern.nn.coupling import AffineCoupling, ZeroConv2d, coupling_network
from flowkern.nn.flowstep import FlowStep
from flowkern.nn.glow import Glow
from flowkern.nn.invconv import InvConv1x1, InvConv1x1LU
from flowkern.nn.sequence import FlowSequence, ReversibleSequence
from flowkern.nn.split import Split, TopPrior, standard_normal_logp
from flowkern.nn.squeeze import Squeeze2d, squeeze2d, unsqueeze2d

__all__ = ["ActNorm2d", "AffineCoupling", "ZeroConv2d", "coupling_network", "FlowStep", "Glow", "InvConv1x1",
           "InvConv1x1LU", "FlowSequence", "ReversibleSequence", "Split", "TopPrior", "standard_normal_logp",
           "Squeeze2d", "squeeze2d", "unsqueeze2d"]
