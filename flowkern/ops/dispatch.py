"""How a fused op reaches its kernel: which backend runs it, which kernel that is, and which autograd path calls it.

- `pick_backend(x, max_channels, inputs)`: the backend for tensor x (flowkern.backend), or the reference when "auto"
  chose a GPU backend whose kernel cannot take x's channel count, or when an input carries a forward-mode tangent.
- `launch(kernel, backend, **params)`: the one place that calls a kernel. `params` are the fields of the op's params
  struct in csrc/kernels.h, by the same names: tensors (every output allocated by the caller) and sizes. The C++ and
  CUDA kernels get them in that struct (tensors as data pointers); the Triton launchers get them as attributes of a
  namespace (tensors as tensors). A batch above MAX_LAUNCH_BATCH samples is split into several launches on every
  backend, so no kernel ever sees more samples than a GPU grid axis holds.
- `FusedOp`: a kernel-backed function with its autograd formula, called the same way in eager mode and under
  torch.compile (its torch.library registration is in registry.py).
"""
import contextlib
import functools
import importlib
from types import SimpleNamespace
from typing import Callable, Optional

import torch
import torch.autograd.forward_ad as fwAD

from flowkern import _ext, backend as _backend
from flowkern.ops.checks import needs_grad

# The params struct of each op (csrc/kernels.h); a kernel's op is its name without the pass: channel_affine_fwd.
_PARAMS = {"channel_affine": "ChannelAffineParams", "affine_coupling": "AffineCouplingParams",
           "actnorm_invconv": "ActNormInvConvParams"}
# The fields of each op's params that hold one row per sample: a batch split slices them. The others (matrices,
# reductions the kernels accumulate into, GPU scratch reused launch after launch on one stream) pass whole.
_PER_SAMPLE = {"channel_affine": ("x", "y", "dy", "dx"),
               "affine_coupling": ("x", "y", "h", "ld_part", "ld", "dy", "dld", "dx", "dh"),
               "actnorm_invconv": ("x", "y", "ld", "dy", "dld", "dx")}
# Samples per launch: a GPU grid axis other than x holds at most 65535 blocks.
MAX_LAUNCH_BATCH = 65535


def carries_tangent(tensors) -> bool:
    """Whether one of `tensors` is a dual tensor of forward-mode AD (torch.autograd.forward_ad)."""
    if getattr(fwAD, "_current_level", 0) < 0:  # no dual level open: nothing can carry one (the common case, free)
        return False
    return any(isinstance(t, torch.Tensor) and fwAD.unpack_dual(t).tangent is not None for t in tensors)


def pick_backend(x: torch.Tensor, max_channels: Optional[Callable[[str], Optional[int]]] = None,
                 inputs: tuple = ()) -> str:
    """The concrete backend ("torch", "cpu", "triton" or "cuda") for an op on x. max_channels(backend) gives the
    largest channel count that backend's kernel takes (None: no limit): above it, "auto" falls back to the reference
    and a forced backend raises. inputs: the tensors the op is differentiable in; when one carries a forward-mode
    tangent the op runs its reference whatever the backend, whose torch ops propagate it (the kernels have no
    forward-mode formula, and would drop it silently)."""
    if carries_tangent(inputs):
        return "torch"
    name = _backend.resolve(x)
    limit = max_channels(name) if max_channels is not None and name != "torch" else None
    if limit is not None and x.shape[1] > limit:
        if _backend.get_backend() == "auto":
            return "torch"
        raise ValueError(f"backend {name!r} supports at most {limit} channels here, got {x.shape[1]}; "
                         "use backend 'auto' or 'torch'")
    return name


def triton_kernels(op: str):
    """flowkern.ops.triton.<op>, imported on first use: flowkern works without triton installed."""
    return importlib.import_module(f"flowkern.ops.triton.{op}")


def device_guard(x: torch.Tensor):
    """Make x's GPU the current device for a launch (kernels launch on the current device and stream)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def _kernel(kernel: str, backend: str):
    """(kernel function, params struct class or None for Triton), looked up once per kernel and backend."""
    op = kernel.rsplit("_", 1)[0]
    if backend == "triton":
        return getattr(triton_kernels(op), kernel), None
    return getattr(getattr(_ext._C, backend), kernel), getattr(_ext._C, _PARAMS[op])


def launch(kernel: str, backend: str, **params) -> None:
    """Run `kernel` (e.g. "channel_affine_fwd") on backend "cpu", "cuda" or "triton". The first of params is a data
    tensor (x or y): it sets the dtype and the device. params["B"] is the batch: above MAX_LAUNCH_BATCH it is split
    into launches of at most that many samples (every kernel accumulates its reductions, so the parts add up)."""
    B = params["B"]
    if B <= MAX_LAUNCH_BATCH:
        return _launch(kernel, backend, params)
    per_sample = _PER_SAMPLE[kernel.rsplit("_", 1)[0]]
    for b0 in range(0, B, MAX_LAUNCH_BATCH):
        b1 = min(B, b0 + MAX_LAUNCH_BATCH)
        part = {k: (v[b0:b1] if k in per_sample and v is not None else v) for k, v in params.items()}
        part["B"] = b1 - b0
        _launch(kernel, backend, part)


def _launch(kernel: str, backend: str, params: dict) -> None:
    fn, params_struct = _kernel(kernel, backend)
    x = next(iter(params.values()))
    if params_struct is None:  # Triton: the same fields, tensors as tensors
        with device_guard(x):
            fn(SimpleNamespace(**params))
        return
    # Tensors as data pointers, None as null. `params` keeps holding the tensors until the kernel returns: a caller
    # may pass a temporary (a dtype conversion) whose only reference is here.
    args = {name: (value.data_ptr() if isinstance(value, torch.Tensor) else 0 if value is None else value)
            for name, value in params.items()}
    if backend == "cpu":
        code = fn(params_struct(dtype=_ext.DTYPE_CODES[x.dtype], nthreads=torch.get_num_threads(), **args))
    else:
        with device_guard(x):
            stream = torch.cuda.current_stream(x.device).cuda_stream
            code = fn(params_struct(dtype=_ext.DTYPE_CODES[x.dtype], stream=stream, **args))
    _ext.check(code, kernel, backend)


class FusedOp:
    """A kernel-backed function `impl(*args)` (it allocates its outputs and launches) with its autograd formula.

    Calling it picks how it runs:
    - under torch.compile: the torch.library op of the same name (registry.py), a single node in the graph;
    - eager, when an input needs grad: an autograd.Function with the same impl and formula, which skips
      custom_op's dispatch (~50 us a call with autograd on CPU, as much as the kernel at Glow-step sizes);
    - eager without grad: impl alone.
    The formula is `setup_context(ctx, inputs, output)` and `backward(ctx, *grads, bwd=...)`, where bwd computes the
    backward kernel's pass: in eager mode its impl, or with create_graph=True (double backward) its `reference`, the
    same function in differentiable torch ops; under torch.compile its registered op.
    """

    def __init__(self, impl: Callable, setup_context: Optional[Callable] = None, backward: Optional[Callable] = None,
                 bwd: Optional["FusedOp"] = None, reference: Optional[Callable] = None):
        self.name, self.impl, self.reference = impl.__name__, impl, reference
        self.setup_context, self.backward, self.bwd = setup_context, backward, bwd
        self.eager = None if backward is None else self._eager_function()

    def registered(self):
        return getattr(torch.ops.flowkern, self.name).default

    def __call__(self, *args):
        if torch.compiler.is_compiling():
            return self.registered()(*args)
        if self.eager is not None and needs_grad(*args):
            return self.eager.apply(*args)
        return self.impl(*args)

    def _eager_function(self):
        fused = self

        class Function(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *args):
                out = fused.impl(*args)
                fused.setup_context(ctx, args, out)
                return out

            @staticmethod
            def backward(ctx, *grads):
                kernel = fused.bwd
                if kernel is not None:  # grad mode is on in backward only under create_graph=True
                    kernel = kernel.reference if torch.is_grad_enabled() else kernel.impl
                return fused.backward(ctx, *grads, bwd=kernel)

        Function.__name__ = Function.__qualname__ = f"{self.name}_function"
        return Function
