"""flowkern: fast, memory-saving normalizing-flow kernels for PyTorch, and video flow models built on them."""
from flowkern import memory, ops
from flowkern._ext import cuda_status, native_available
from flowkern.backend import get_backend, set_backend, use_backend
from flowkern.nn import (ActNorm2d, AffineCoupling, FlowSequence, FlowStep, Glow, InvConv1x1, InvConv1x1LU,
                         ReversibleSequence, Split, Squeeze2d, TopPrior)
from flowkern.reversible import ReconstructionError
from flowkern.dequantization import bits_per_dim, postprocess, preprocess

__version__ = "0.1.0"

__all__ = ["ops", "memory", "cuda_status", "native_available", "get_backend", "set_backend", "use_backend", "ActNorm2d",
           "AffineCoupling", "FlowSequence", "ReversibleSequence", "ReconstructionError", "FlowStep", "Glow",
           "InvConv1x1", "InvConv1x1LU", "Split", "Squeeze2d", "TopPrior", "bits_per_dim", "postprocess", "preprocess"]
