"""Memory-saving reversible backprop for chains of invertible steps.

`reversible_forward(steps, x, context)` runs the steps under no_grad and keeps for backward only the chain's output,
its context and (implicitly) the parameters. Backward walks the steps in reverse: it reconstructs each step's input
by inverting the step from its output, recomputes that one step with grad enabled, and backpropagates through it.
So activation memory does not grow with depth; the price is one extra inverse and one extra forward per step in
backward. Steps with a `reversible_backward` (FlowStep) do better: they reconstruct and differentiate with one extra
coupling-network forward per step, as checkpointing does.

Rules:
- A data-dependent init (ActNorm) needs the real forward: while any module in the chain says `needs_init()`, the
  chain runs with plain autograd (so the first training batch costs normal memory), then reversibly.
- Under torch.no_grad() (inference) there is no reversible machinery at all.
- Forward and backward walk the chain for `chunk` samples at a time (the steps act on each sample alone, as every
  flowkern layer does once ActNorm is initialised), so their transients do not grow with the batch; gradients are the same up
  to float reassociation of the parameter sums. One gradient copy per parameter, accumulated in place.
- Autocast state is recorded in forward and restored around the recomputed forward ops only; gradients are taken
  outside it, so backward runs in the forward's dtypes (the flow's algebra in fp32), as in plain autograd.
- Parameter and context gradients are returned through autograd (not accumulated on the side), so
  DistributedDataParallel's reducer hooks fire as usual.
- Inverting from outputs accumulates rounding error. `verify=True` keeps every step's true input (costing the
  memory reversibility saves), measures the reconstruction error per step in backward, stores it in
  `drift` and raises ReconstructionError past `verify_tol` (max abs error relative to the input's max abs value).
"""
from typing import List, Optional, Sequence

import torch
from torch import nn


# Samples the reversible forward and backward process at once: bounds their transients (a coupling network's
# activations, and their gradients in backward) to this many samples whatever the batch, e.g. the B*T frames of a clip.
DEFAULT_RECOMPUTE_CHUNK = 32


class ReconstructionError(RuntimeError):
    """Raised in verify mode when inverting a step from its output drifts too far from the step's true input."""


def needs_plain_forward(steps: Sequence[nn.Module]) -> bool:
    """True while a data-dependent init (ActNorm2d.needs_init()) is pending."""
    return any(callable(getattr(m, "needs_init", None)) and m.needs_init() for step in steps for m in step.modules())


class Verify:
    """Verify-mode settings and record: the tolerance, and the per-step drift measured in the last backward (the true
    inputs it is measured against are saved with the forward's graph)."""

    def __init__(self, tol: float):
        self.tol = tol
        self.drift: List[float] = []


def _autocast_state():
    states = {}
    for dev in ("cuda", "cpu"):
        if torch.is_autocast_enabled(dev):
            states[dev] = torch.get_autocast_dtype(dev)
    return states


class _ReversibleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, steps, verify, chunk, x, context, *params):
        ctx.steps, ctx.verify, ctx.chunk = steps, verify, chunk
        ctx.autocast = _autocast_state()
        B = x.shape[0]
        chunk = B if chunk is None else chunk
        logdet = torch.zeros(B, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32, device=x.device)
        y, true_inputs = None, [None] * len(steps)  # true inputs: verify mode only
        with torch.no_grad():
            # chunk by chunk, like backward: the steps' transients are a chunk's, whatever the batch
            for rows in _chunks(B, chunk):
                h = x[rows]
                c = None if context is None else context[rows]
                for i, step in enumerate(steps):
                    if verify is not None:
                        true_inputs[i] = _place(true_inputs[i], rows, h.detach(), B, chunk)
                    h, ld = step(h, c)
                    logdet[rows] += ld
                y = _place(y, rows, h, B, chunk)
        # The parameters are saved too (references, no memory): autograd then raises, as for plain autograd, when
        # one is modified in place between forward and backward (an optimizer step would give stale gradients).
        ctx.num_params = len(params)
        ctx.save_for_backward(y, context, *params, *(t for t in true_inputs if t is not None))
        return y, logdet

    @staticmethod
    def backward(ctx, dy, dlogdet):
        if torch.is_grad_enabled():
            raise RuntimeError("flowkern reversible backprop does not support double backward (create_graph=True, "
                               "as for Hessian-vector products or gradient penalties): it recomputes each step inside "
                               "backward and keeps no graph of it. Build the model with reversible=False for second "
                               "derivatives.")
        y, context, *rest = ctx.saved_tensors
        true_inputs = rest[ctx.num_params:]
        steps, verify = ctx.steps, ctx.verify
        params_of = [[p for p in step.parameters() if p.requires_grad] for step in steps]
        ctx_needs_grad = context is not None and ctx.needs_input_grad[4]
        if verify is not None:
            verify.drift = [0.0] * len(steps)
        autocasts = [torch.autocast(dev, dtype=dt) for dev, dt in ctx.autocast.items()]
        grads, owned = {}, set()  # owned: gradients this backward allocated, safe to accumulate into in place
        B = y.shape[0]
        chunk = B if ctx.chunk is None else ctx.chunk
        dx, dctx = None, None
        # The steps act on each sample alone, so backward walks the whole chain for one chunk of samples at a time:
        # the recomputed activations are a chunk's, whatever the batch (frames of a clip, for a video model).
        for rows in _chunks(B, chunk):
            yc, dyc, dldc = y[rows], dy[rows], dlogdet[rows]
            cc = None if context is None else context[rows]
            for i in reversed(range(len(steps))):
                xc, dyc, dc, step_grads = _step_backward(steps[i], yc, cc, dyc, dldc, ctx_needs_grad, params_of[i],
                                                         autocasts)
                _check_drift(verify, true_inputs, rows, i, steps[i], xc)
                if dc is not None:
                    if dctx is None:
                        dctx = dc if chunk >= B else torch.zeros_like(context)
                    if dctx is not dc:
                        dctx[rows] += dc
                for p, gp in step_grads.items():
                    if gp is None:
                        continue
                    if p in owned:
                        grads[p] += gp  # in place: one gradient copy, however many chunks
                    elif p in grads:
                        grads[p] = grads[p] + gp
                        owned.add(p)
                    else:
                        grads[p] = gp
                yc = xc
            dx = _place(dx, rows, dyc, B, chunk)
        all_params = [p for ps in params_of for p in ps]
        return (None, None, None, dx, dctx) + tuple(grads.get(p) for p in all_params)


def _chunks(n: int, chunk: int):
    """Row slices of `chunk` samples covering n."""
    return (slice(i, i + chunk) for i in range(0, n, chunk))


def _place(full: Optional[torch.Tensor], rows: slice, part: torch.Tensor, n: int, chunk: int) -> torch.Tensor:
    """Write a chunk's rows into the full-batch tensor (allocated on the first chunk; the part itself when one chunk
    covers the batch)."""
    if chunk >= n:
        return part
    if full is None:
        full = part.new_empty((n,) + part.shape[1:])
    full[rows] = part
    return full


def _step_backward(step, y, context, dy, dlogdet, ctx_needs_grad, params, autocasts):
    """One step's backward from its output: (x, dx, dcontext or None, {param: grad})."""
    fast = getattr(step, "reversible_backward", None)
    if fast is not None:  # the step knows a cheaper backward from its output (FlowStep)
        return fast(y, context, dy, dlogdet, ctx_needs_grad, autocast=lambda: _entered(autocasts))
    # generic: invert from the output, recompute the step with grad, backpropagate
    with torch.no_grad(), _entered(autocasts):
        x = step.inverse(y, context)[0]
    return _recompute_backward(step, x, context, dy, dlogdet, ctx_needs_grad, params, autocasts)


def _check_drift(verify, true_inputs, rows, i, step, x):
    if verify is None:
        return
    true_x = true_inputs[i][rows]
    err = ((x - true_x).abs().max() / true_x.abs().max().clamp_min(1e-30)).item()
    verify.drift[i] = max(verify.drift[i], err)
    if err > verify.tol:
        raise ReconstructionError(f"reversible step {i} ({type(step).__name__}): reconstruction error {err:.3g} "
                                  f"exceeds verify_tol={verify.tol:g}")


def _recompute_backward(step, x, context, dy, dlogdet, ctx_needs_grad, params, autocasts):
    """Generic backward of one step from its reconstructed input: recompute with grad, then autograd.grad."""
    x = x.detach().requires_grad_(True)
    c = context.detach().requires_grad_(True) if ctx_needs_grad else context
    with torch.enable_grad(), _entered(autocasts):
        y_re, ld = step(x, c)
    # a volume-preserving step (Squeeze2d) returns a constant logdet: differentiate what has a graph
    outs = [(o, go) for o, go in ((y_re, dy), (ld, dlogdet.to(ld.dtype))) if o.requires_grad]
    if not outs:  # the step depends on neither x nor parameters
        return x.detach(), torch.zeros_like(x), None, {}
    inputs = [x] + ([c] if ctx_needs_grad else []) + params
    g = torch.autograd.grad([o for o, _ in outs], inputs, [go for _, go in outs], allow_unused=True)
    k = 2 if ctx_needs_grad else 1
    dx = g[0] if g[0] is not None else torch.zeros_like(x)
    return x.detach(), dx, (g[1] if ctx_needs_grad else None), dict(zip(params, g[k:]))


class _entered:
    """Enter a list of context managers (autocast per device) together."""

    def __init__(self, managers):
        self.managers = managers

    def __enter__(self):
        for m in self.managers:
            m.__enter__()

    def __exit__(self, *exc):
        for m in reversed(self.managers):
            m.__exit__(*exc)
        return False


def reversible_forward(steps: Sequence[nn.Module], x: torch.Tensor, context: Optional[torch.Tensor] = None,
                       verify: Optional["Verify"] = None, chunk: Optional[int] = DEFAULT_RECOMPUTE_CHUNK):
    """Run `steps` (each forward(x, context) -> (y, logdet) with an exact inverse, acting on each sample alone)
    reversibly. Backward recomputes `chunk` samples at a time (None: the whole batch at once). Returns (y, logdet)."""
    params = [p for step in steps for p in step.parameters() if p.requires_grad]
    return _ReversibleFunction.apply(steps, verify, chunk, x, context, *params)
