"""Memory benchmarks: activation memory vs flow depth, vs clip length, and the large-image Glow workload.

Memory is what autograd holds for backward: peak CUDA memory of a training step on GPU; on CPU the bytes of saved
tensors (flowkern.utils.saved_tensor_bytes, each storage once, parameters excluded), which is device-independent.
Baselines: plain autograd, torch.utils.checkpoint over each flow step (what a user would try), flowkern reversible.
"""
import torch
import torch.utils.checkpoint as ckpt
from torch import nn

import flowkern
from flowkern import FlowSequence, FlowStep, Glow
from flowkern.utils import cuda_peak_bytes, saved_tensor_bytes


class CheckpointedSequence(nn.Module):
    """The standard alternative: torch.utils.checkpoint around every step (stores each step's input).
    The reentrant form saves its inputs through save_for_backward, so saved_tensor_bytes sees what it keeps (the
    non-reentrant form keeps them through hooks of its own, which would read as zero here)."""

    def __init__(self, steps):
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def forward(self, x, context=None):
        logdet = 0
        for step in self.steps:
            x, ld = ckpt.checkpoint(step, x, context, use_reentrant=True)
            logdet = logdet + ld
        return x, logdet


def _measure(model, x, device, context=None):
    """Bytes held for backward (CPU) or peak bytes of forward+backward (CUDA) for one training step."""
    x = x.detach().requires_grad_(True)  # as inside a model; reentrant checkpoint needs it too

    def step():
        y, ld = model(x, context) if context is not None else model(x)
        if isinstance(y, (list, tuple)):
            y = torch.cat([t.flatten(1) for t in y], 1)
        loss = (0.5 * (y * y).flatten(1).sum(1) - ld).mean()
        return loss

    if device == "cuda":
        return cuda_peak_bytes(lambda: step().backward())
    return saved_tensor_bytes(step)


def _init(model, x):
    with torch.no_grad():  # data-dependent init outside the measurement
        model.train()
        model(x)


def memory_vs_depth(device, suite):
    """A Glow level (C=12 at 32x32, hidden 512 as in VideoFlow/BAIR) with K steps."""
    Ks = {"smoke": [2, 4], "quick": [4, 8, 16, 32, 64], "full": [4, 8, 16, 32, 64]}[suite]
    B, hidden = ({"smoke": (1, 16), "quick": (1, 512), "full": (16, 512)})[suite]
    S = 8 if suite == "smoke" else 32
    x = torch.randn(B, 12, S, S, device=device)
    rows = []
    for K in Ks:
        torch.manual_seed(0)
        steps = [FlowStep(12, hidden) for _ in range(K)]
        plain = FlowSequence(steps).to(device)
        with torch.no_grad():
            plain(x)  # init ActNorm (plain mode)
        res = {"plain": _measure(plain, x, device),
               "checkpoint": _measure(CheckpointedSequence(plain.steps), x, device)}
        plain.reversible = True
        res["reversible"] = _measure(plain, x, device)
        rows.append({"bench": "memory_vs_depth", "K": K, "shape": f"{B}x12x{S}x{S} hidden {hidden}",
                     **{f"{k}_MB": v / 2**20 for k, v in res.items()}})
        del plain, steps
    return rows


def memory_vs_clip_length(device, suite, budget_bytes):
    """Per-frame 3-level Glow (64x64x3, hidden 512) over B*T frames, until a video model lands. Longest clip that fits
    `budget_bytes` (linear fit of memory in T: activation memory is linear in the number of frames)."""
    Ts = {"smoke": [1, 2], "quick": [1, 2, 4], "full": [2, 4, 8, 13, 26]}[suite]
    K, hidden, S = ({"smoke": (2, 16, 16), "quick": (8, 512, 64), "full": (24, 512, 64)})[suite]
    rows = []
    torch.manual_seed(0)
    glow = Glow(3, levels=3, steps=K, hidden=hidden).to(device)
    _init(glow, torch.rand(2, 3, S, S, device=device) - 0.5)
    for T in Ts:
        x = torch.rand(T, 3, S, S, device=device) - 0.5
        res = {}
        for mode in ("plain", "reversible"):
            for f in glow.flows:
                f.reversible = mode == "reversible"
            res[mode] = _measure(_LogProb(glow), x, device)
        rows.append({"bench": "memory_vs_clip_length", "T": T, "shape": f"1x{T}x3x{S}x{S} L=3 K={K} hidden {hidden}",
                     **{f"{k}_MB": v / 2**20 for k, v in res.items()}})
    # linear fit bytes = a + b*T per mode; longest T within the budget
    for mode in ("plain", "reversible"):
        ts = [r["T"] for r in rows]
        ms = [r[f"{mode}_MB"] * 2**20 for r in rows]
        b = (ms[-1] - ms[0]) / max(ts[-1] - ts[0], 1)
        a = ms[0] - b * ts[0]
        rows[-1][f"{mode}_longest_T_in_budget"] = int((budget_bytes - a) // b) if b > 0 else None
    rows[-1]["budget_GB"] = budget_bytes / 2**30
    return rows


class _LogProb(nn.Module):
    def __init__(self, glow):
        super().__init__()
        self.glow = glow

    def forward(self, x):
        return torch.zeros(x.shape[0], 1, device=x.device), -self.glow.log_prob(x)


def large_image(device, suite):
    """The published large-image workload: 3-level Glow at 256x256, batch 8, hidden 256, K steps per level.
    On CPU the plain-autograd bytes are measured at batch 1 and K in {4, 8} and scaled linearly to batch 8 and larger K
    (activation memory is linear in both); reversible is measured directly at batch 1 and scaled by 8."""
    if suite == "smoke":
        return []
    Ks = [4, 8, 16, 32, 64]
    rows = []
    if device == "cuda":
        B, measured_Ks = 8, Ks
    else:
        B, measured_Ks = 1, [4, 8]
    meas = {}
    for K in measured_Ks:
        torch.manual_seed(0)
        glow = Glow(3, levels=3, steps=K, hidden=256).to(device)
        _init(glow, torch.rand(1, 3, 256, 256, device=device) - 0.5)
        x = torch.rand(B, 3, 256, 256, device=device) - 0.5
        res = {}
        for mode in ("plain", "reversible"):
            for f in glow.flows:
                f.reversible = mode == "reversible"
            res[mode] = _measure(_LogProb(glow), x, device)
        meas[K] = res
        del glow
    for K in Ks:
        if K in meas:
            plain, rev, how = meas[K]["plain"] * 8 / B, meas[K]["reversible"] * 8 / B, (
                "measured" if B == 8 else "measured at batch 1, x8")
        else:
            k0, k1 = measured_Ks[0], measured_Ks[-1]
            slope = (meas[k1]["plain"] - meas[k0]["plain"]) / (k1 - k0)
            plain = (meas[k1]["plain"] + slope * (K - k1)) * 8 / B
            rev = meas[k1]["reversible"] * 8 / B
            how = "extrapolated (linear in K and batch)"
        rows.append({"bench": "large_image", "K": K, "shape": "8x3x256x256 L=3 hidden 256",
                     "plain_GB": plain / 2**30, "reversible_GB": rev / 2**30, "how": how})
    return rows


def plot(rows, path, key, ylabel, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xs = [r[key] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for col in [c for c in rows[0] if c.endswith("_MB") or c.endswith("_GB")]:
        ax.plot(xs, [r[col] for r in rows], marker="o", label=col.rsplit("_", 1)[0])
    ax.set_xlabel(key)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
