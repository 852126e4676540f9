"""Training-step time of one FlowStep and one Glow level as VideoFlow uses them on BAIR (64x64 frames squeezed to
C=12 at 32x32, coupling hidden 512): eager reference vs torch.compile of the reference vs flowkern (fused kernels)
vs flowkern reversible. Each step is forward + backward of a Glow-style loss."""
import copy

import torch

import flowkern
from flowkern import FlowSequence, FlowStep

CONFIGS = {
    # name: (batch, channels, size, hidden, steps)
    "smoke": [("flowstep", 2, 12, 8, 16, 1), ("level", 2, 12, 8, 16, 2)],
    "quick": [("flowstep", 4, 12, 32, 512, 1), ("level", 4, 12, 32, 512, 4)],
    "full": [("flowstep", 16, 12, 32, 512, 1), ("level", 16, 12, 32, 512, 8), ("level", 16, 12, 32, 512, 24)],
}


def _loss(model, x):
    y, ld = model(x)
    return (0.5 * (y * y).flatten(1).sum(1) - ld).mean()


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
        base = FlowSequence([FlowStep(C, hidden) for _ in range(K)]).to(device).train()
        x = torch.randn(B, C, S, S, device=device)
        with flowkern.use_backend("torch"):
            base(x)  # ActNorm data-dependent init, once, shared by every variant
        variants = {"eager": (base, "torch"), "flowkern": (copy.deepcopy(base), "auto")}
        rev = copy.deepcopy(base)
        rev.reversible = True
        variants["flowkern_reversible"] = (rev, "auto")
        if compile_baseline and (name == "flowstep" or suite == "full"):
            variants["compiled"] = (torch.compile(copy.deepcopy(base), dynamic=False), "torch")
        with flowkern.use_backend("auto"):
            resolved = flowkern.backend.resolve(x)
        t = timer({k: _train_step(m, x, bk) for k, (m, bk) in variants.items()})
        row = {"bench": "train_step", "op": f"{name} K={K}", "shape": f"{B}x{C}x{S}x{S} hidden {hidden}",
               "pass": "fwd+bwd", "backend": resolved,
               "eager_ms": 1e3 * t["eager"], "flowkern_ms": 1e3 * t["flowkern"],
               "flowkern_reversible_ms": 1e3 * t["flowkern_reversible"],
               "speedup_vs_eager": t["eager"] / t["flowkern"],
               "reversible_overhead": t["flowkern_reversible"] / t["flowkern"]}
        if "compiled" in t:
            row.update(compiled_ms=1e3 * t["compiled"], speedup_vs_compiled=t["compiled"] / t["flowkern"])
        if progress is not None:
            progress.update(1)
        yield row


def count(suite):
    return len(CONFIGS[suite])
