"""Training-step time of one FlowStep and one Glow level as VideoFlow uses them on BAIR (64x64 frames squeezed to
C=12 at 32x32, coupling hidden 512), of a whole Glow, and of a level over the frames of several clips (a batch larger
than the reversible recompute chunk): eager reference vs torch.compile of the reference vs flowkern (fused kernels)
vs flowkern reversible (and, where the batch exceeds the chunk, reversible without chunking). Each step is forward +
backward of a Glow-style loss. On CUDA every variant runs with TF32 off (the coupling networks' convolutions in fp32,
flowkern's included), and the eager step once more with TF32 on (eager_tf32_ms): fused_op_bench.time_tf32_off."""
import copy

import torch

import flowkern
from fused_op_bench import time_tf32_off
from flowkern import FlowSequence, FlowStep, Glow
from flowkern.reversible import DEFAULT_RECOMPUTE_CHUNK

CONFIGS = {
    # name: (batch, channels, size, hidden, steps); a glow's channels are its input's, its steps per level (3 levels)
    "smoke": [("flowstep", 2, 12, 8, 16, 1), ("level", 2, 12, 8, 16, 2), ("glow", 2, 3, 8, 8, 1),
              ("level", 40, 12, 4, 8, 2)],
    "quick": [("flowstep", 4, 12, 32, 512, 1), ("level", 4, 12, 32, 512, 4), ("glow", 8, 3, 32, 128, 8),
              ("level", 96, 12, 16, 128, 4)],
    "full": [("flowstep", 16, 12, 32, 512, 1), ("level", 16, 12, 32, 512, 8), ("level", 16, 12, 32, 512, 24),
             ("glow", 64, 3, 64, 512, 32), ("level", 520, 12, 32, 512, 8)],
}


def _model(name, C, hidden, K):
    if name == "glow":
        return Glow(C, levels=3, steps=K, hidden=hidden)
    return FlowSequence([FlowStep(C, hidden) for _ in range(K)])


def _loss(model, x):
    if isinstance(model, Glow) or isinstance(getattr(model, "_orig_mod", None), Glow):
        return -model.log_prob(x).mean()
    y, ld = model(x)
    return (0.5 * (y * y).flatten(1).sum(1) - ld).mean()


def _set_reversible(model, reversible, chunk=DEFAULT_RECOMPUTE_CHUNK):
    for m in model.modules():
        if isinstance(m, FlowSequence):
            m.reversible, m.recompute_chunk = reversible, chunk


def _train_step(model, x, backend):
    def run():
        with flowkern.use_backend(backend):
            loss = _loss(model, x)
        loss.backward()
        for p in model.parameters():
            p.grad = None
    return run


def run(device, timer, suite="quick", compile_baseline=True, progress=None):
    for name, B, C, S, hidden, K in CONFIGS[suite]:
        torch.manual_seed(0)
        base = _model(name, C, hidden, K).to(device).train()
        x = torch.rand(B, C, S, S, device=device) - 0.5
        with flowkern.use_backend("torch"):
            _loss(base, x)  # ActNorm data-dependent init, once, shared by every variant
        variants = {"eager": (base, "torch"), "flowkern": (copy.deepcopy(base), "auto")}
        rev = copy.deepcopy(base)
        _set_reversible(rev, True)
        variants["flowkern_reversible"] = (rev, "auto")
        chunked = B > DEFAULT_RECOMPUTE_CHUNK
        if chunked:  # the batch is recomputed in chunks: time it against one whole-batch recompute
            unchunked = copy.deepcopy(base)
            _set_reversible(unchunked, True, None)
            variants["flowkern_reversible_unchunked"] = (unchunked, "auto")
        if compile_baseline and (name == "flowstep" or suite == "full"):
            variants["compiled"] = (torch.compile(copy.deepcopy(base), dynamic=False), "torch")
        with flowkern.use_backend("auto"):
            resolved = flowkern.backend.resolve(x)
        t = time_tf32_off(timer, {k: _train_step(m, x, bk) for k, (m, bk) in variants.items()}, device)
        row = {"bench": "train_step", "op": f"{name} K={K}" + (" x3 levels" if name == "glow" else ""),
               "shape": f"{B}x{C}x{S}x{S} hidden {hidden}",
               "pass": "fwd+bwd", "backend": resolved,
               "eager_ms": 1e3 * t["eager"], "flowkern_ms": 1e3 * t["flowkern"],
               "flowkern_reversible_ms": 1e3 * t["flowkern_reversible"],
               "speedup_vs_eager": t["eager"] / t["flowkern"],
               "reversible_overhead": t["flowkern_reversible"] / t["flowkern"]}
        if chunked:
            row.update(flowkern_reversible_unchunked_ms=1e3 * t["flowkern_reversible_unchunked"],
                       chunking_overhead=t["flowkern_reversible"] / t["flowkern_reversible_unchunked"])
        if "compiled" in t:
            row.update(compiled_ms=1e3 * t["compiled"], speedup_vs_compiled=t["compiled"] / t["flowkern"])
        if "eager_tf32" in t:
            row.update(eager_tf32_ms=1e3 * t["eager_tf32"], speedup_vs_eager_tf32=t["eager_tf32"] / t["flowkern"])
        if progress is not None:
            progress.update(1)
        yield row


def count(suite):
    return len(CONFIGS[suite])
