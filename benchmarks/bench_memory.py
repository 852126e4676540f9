"""Memory benchmarks: activation memory vs flow depth, vs clip length, and the large-image Glow workload.

Memory is what autograd holds for backward: peak CUDA memory of a training step on GPU; on CPU the bytes of saved
tensors (flowkern.memory.saved_tensor_bytes, each storage once, parameters excluded), which is device-independent.
Baselines: plain autograd, torch.utils.checkpoint over each flow step (what a user would try), flowkern reversible.
"""
import torch
import torch.utils.checkpoint as ckpt
from torch import nn

import flowkern
from flowkern import FlowSequence, FlowStep, Glow
from flowkern.memory import cuda_peak_bytes, saved_tensor_bytes


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


def _videoflow(cfg_name, memory_saving, device):
    import dataclasses

    from flowkern.models import VIDEOFLOW_CONFIGS, VideoFlow
    cfg = dataclasses.replace(VIDEOFLOW_CONFIGS[cfg_name], reversible=memory_saving, checkpoint_prior=memory_saving)
    with torch.device(device):
        m = VideoFlow(cfg)
    for mod in m.modules():  # ActNorm counts as initialised (its init batch is not what is measured)
        if isinstance(mod, flowkern.ActNorm2d):
            mod.mark_initialized()
    return m, cfg


def memory_vs_clip_length(device, suite, budget_bytes):
    """VideoFlow (`bair` config; `tiny` for smoke) training-step memory vs clip length T at batch 8: plain autograd
    vs flowkern (reversible flow + checkpointed prior), in GB (1e9 bytes).
    GPU: peak CUDA memory of forward + backward. CPU: bytes saved for backward, measured on the meta device (shapes
    only, no compute: the bair model is far too slow for a CPU), and for flowkern also its backward transient (one
    frame's prior and one flow step recomputed for all B*T frames), so flowkern_peak_est = saved + transient. Plain
    autograd's own transients are not added (its numbers are a lower bound). The longest T within `budget_bytes`
    comes from a linear fit in T of the peak (GPU) or of saved (+ transient) bytes (CPU)."""
    cfg_name, B, Ts = ("tiny", 1, [3, 4]) if suite == "smoke" else ("bair", 8, [4, 8, 13, 26])
    meas_dev = "cuda" if device == "cuda" else "meta"
    GB = 1e9
    rows = []
    prior_transient = None
    for T in Ts:
        row = {"bench": "memory_vs_clip_length", "T": T, "shape": f"{B}x{T}x3x64x64 VideoFlow {cfg_name}"}
        for mode, saving in (("plain", False), ("flowkern", True)):
            m, cfg = _videoflow(cfg_name, saving, meas_dev)
            size = cfg.image_size
            try:
                if meas_dev == "cuda":
                    v = torch.rand(B, T, 3, size, size, device="cuda") - 0.5
                    row[f"{mode}_GB"] = cuda_peak_bytes(lambda: (-m.log_prob_frames(v).mean()).backward()) / GB
                else:
                    v = torch.empty(B, T, 3, size, size, device="meta")
                    row[f"{mode}_GB"] = saved_tensor_bytes(lambda: m.log_prob_frames(v).sum()) / GB
            except torch.cuda.OutOfMemoryError:
                row[f"{mode}_GB"] = None  # does not fit
            if meas_dev == "meta" and saving:
                if prior_transient is None:
                    n = cfg.context
                    z = [torch.empty((B, n) + sh, device="meta") for sh in m.latent_shapes]
                    hs = [torch.empty((B, m.glow.splits[i].c1) + m.latent_shapes[i][1:], device="meta")
                          for i in range(cfg.levels - 1)]
                    prior_transient = max(saved_tensor_bytes(
                        lambda i=i: m.priors[i](z[i], hs[i] if i < len(hs) else None)[0].sum())
                        for i in range(cfg.levels))
                x = torch.empty(B * T, 4 * cfg.in_channels, size // 2, size // 2, device="meta", requires_grad=True)
                step = saved_tensor_bytes(lambda: m.glow.flows[0].steps[0](x)[0].sum())
                row["flowkern_peak_est_GB"] = row["flowkern_GB"] + (prior_transient + step) / GB
            m = None  # free the model before the next one
            if meas_dev == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
    budget = budget_bytes / GB
    for mode, key in (("plain", "plain_GB"), ("flowkern", "flowkern_peak_est_GB" if meas_dev == "meta"
                                               else "flowkern_GB")):
        pts = [(r["T"], r[key]) for r in rows if r.get(key) is not None]
        if len(pts) >= 2:
            (t0, m0), (t1, m1) = pts[0], pts[-1]
            slope = (m1 - m0) / (t1 - t0)
            rows[-1][f"{mode}_longest_T"] = int((budget - (m0 - slope * t0)) // slope) if slope > 0 else None
    rows[-1]["budget_GB"] = budget
    return rows


def glow_memory(levels, steps, hidden, batch, size, device):
    """(plain, reversible) training-step memory in GB of a Glow on size x size x 3 images. GPU: peak CUDA memory of
    forward + backward (None if it does not fit). CPU: bytes saved for backward on the meta device (shapes only)."""
    meas_dev = "cuda" if device == "cuda" else "meta"
    out = []
    for reversible in (False, True):
        with torch.device(meas_dev):
            glow = Glow(3, levels=levels, steps=steps, hidden=hidden, reversible=reversible)
        for mod in glow.modules():  # the init batch is not what is measured
            if isinstance(mod, flowkern.ActNorm2d):
                mod.mark_initialized()
        try:
            if meas_dev == "cuda":
                x = torch.rand(batch, 3, size, size, device="cuda") - 0.5
                out.append(cuda_peak_bytes(lambda: (-glow.log_prob(x).mean()).backward()) / 1e9)
            else:
                x = torch.empty(batch, 3, size, size, device="meta")
                out.append(saved_tensor_bytes(lambda: glow.log_prob(x).sum()) / 1e9)
        except torch.cuda.OutOfMemoryError:
            out.append(None)
        glow = None
        if meas_dev == "cuda":
            torch.cuda.empty_cache()
    return out


def _metric(device):
    return "peak CUDA GB (fwd+bwd)" if device == "cuda" else "GB saved for backward (meta device)"


def large_image(device, suite):
    """The published large-image workload: 3-level Glow at 256x256, batch 8, hidden 256, K steps per level (an open
    normflows benchmark peaks near 40 GB at K=64 on a 40 GB A100)."""
    if suite == "smoke":
        return []
    rows = []
    for K in [4, 8, 16, 32, 64]:
        plain, rev = glow_memory(3, K, 256, 8, 256, device)
        rows.append({"bench": "large_image", "K": K, "shape": "8x3x256x256 L=3 hidden 256", "metric": _metric(device),
                     "plain_GB": plain, "reversible_GB": rev})
    return rows


def glow_batch64(device, suite):
    """The reversible-backprop issue's workload: a 3-level, 32-step, hidden-512 Glow on 64x64x3 at batch 64."""
    if suite == "smoke":
        return []
    plain, rev = glow_memory(3, 32, 512, 64, 64, device)
    return [{"bench": "glow_batch64", "shape": "64x3x64x64 L=3 K=32 hidden 512", "metric": _metric(device),
             "plain_GB": plain, "reversible_GB": rev}]


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
    ax.set_yscale("log")  # plain autograd, checkpointing and reversible differ by orders of magnitude
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
