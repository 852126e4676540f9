"""Memory benchmarks: training-step memory vs flow depth, vs clip length, and the large-image Glow workloads.

Memory as a user feels it: the real peak of one training step, every tensor alive in forward and backward (inputs,
parameters, gradients, saved activations and backward transients). On CUDA torch.cuda.max_memory_allocated; on CPU
flowkern.memory.PeakMemory, a dispatch-mode tracker of every storage. Models too large for this machine are measured
with the same tracker on the meta device (shapes only, no compute): an estimate, labelled so, checked against a real
measurement at a size that runs. Bytes saved for backward (a lower bound) are shown beside where they explain why.
Baselines: plain autograd, torch.utils.checkpoint over each flow step (what a user would try), flowkern reversible.
"""
import dataclasses

import torch
import torch.utils.checkpoint as ckpt
from torch import nn

import flowkern
from flowkern import FlowSequence, FlowStep, Glow
from flowkern.memory import cuda_peak_bytes, peak_memory, saved_tensor_bytes
from flowkern.nn import mark_initialized

MiB, GB = 2**20, 1e9


class CheckpointedSequence(nn.Module):
    """The standard alternative: torch.utils.checkpoint around every step (stores each step's input).
    The reentrant form saves its inputs through save_for_backward, so saved_tensor_bytes sees what it keeps (the
    non-reentrant form keeps them through hooks of its own, which would read as zero there)."""

    def __init__(self, steps):
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def forward(self, x, context=None):
        logdet = 0
        for step in self.steps:
            x, ld = ckpt.checkpoint(step, x, context, use_reentrant=True)
            logdet = logdet + ld
        return x, logdet


def step_peak(model, loss_fn, x):
    """Peak bytes of one training step, loss_fn().backward(), with the model's parameters and x alive throughout:
    CUDA's allocator peak on a GPU, else PeakMemory (CPU or meta device)."""
    def step():
        loss_fn().backward()
    if x.is_cuda:
        return cuda_peak_bytes(step) + sum(p.numel() * p.element_size() for p in model.parameters())
    return peak_memory(step, model, x).peak_bytes


def _initialised(model):
    return mark_initialized(model)  # ActNorm's init batch is not what is measured


def _flow_loss(model, x):
    def loss():
        y, ld = model(x)
        return (0.5 * (y * y).flatten(1).sum(1) - ld).mean()
    return loss


def memory_vs_depth(device, suite):
    """One Glow level (C=12 at 32x32, hidden 512 as in VideoFlow/BAIR) with K steps: real peak and saved bytes."""
    Ks = {"smoke": [2, 4], "quick": [4, 8, 16, 32, 64], "full": [4, 8, 16, 32, 64]}[suite]
    B, hidden = ({"smoke": (1, 16), "quick": (1, 512), "full": (16, 512)})[suite]
    S = 8 if suite == "smoke" else 32
    x = torch.randn(B, 12, S, S, device=device).requires_grad_(True)  # as inside a model
    rows = []
    for K in Ks:
        torch.manual_seed(0)
        plain = _initialised(FlowSequence([FlowStep(12, hidden) for _ in range(K)]).to(device))
        row = {"bench": "memory_vs_depth", "K": K, "shape": f"{B}x12x{S}x{S} hidden {hidden}"}
        for name, model in (("plain", plain), ("checkpoint", CheckpointedSequence(plain.steps)),
                            ("reversible", plain)):
            plain.reversible = name == "reversible"
            row[f"{name}_peak_MB"] = step_peak(model, _flow_loss(model, x), x) / MiB
            row[f"{name}_saved_MB"] = saved_tensor_bytes(_flow_loss(model, x)) / MiB
            for p in model.parameters():
                p.grad = None
        rows.append(row)
        del plain
    return rows


def glow_vs_depth(device, suite):
    """A whole 3-level Glow at a reduced size where activations, not parameters, dominate (128x128x3, batch 48,
    hidden 16): real peak of a training step vs steps per level K, plain autograd vs reversible. The parameters and
    their gradients (params_MB each) grow with K whatever the method."""
    Ks, B, S, hidden = ([1, 2], 2, 8, 8) if suite == "smoke" else ([4, 16, 64], 48, 128, 16)
    x = (torch.rand(B, 3, S, S, device=device) - 0.5).requires_grad_(True)
    rows = []
    for K in Ks:
        row = {"bench": "glow_vs_depth", "K": K, "shape": f"{B}x3x{S}x{S} L=3 hidden {hidden}"}
        for name in ("plain", "reversible"):
            torch.manual_seed(0)
            glow = _initialised(Glow(3, levels=3, steps=K, hidden=hidden, reversible=name == "reversible").to(device))
            row[f"{name}_peak_MB"] = step_peak(glow, lambda: -glow.log_prob(x).mean(), x) / MiB
            row["params_MB"] = sum(p.numel() * p.element_size() for p in glow.parameters()) / MiB
            glow = None  # free it before the next model
        rows.append(row)
    for row in rows:
        row["reversible_vs_smallest_K"] = row["reversible_peak_MB"] / rows[0]["reversible_peak_MB"]
    return rows


def _videoflow_cfg(name, memory_saving, **overrides):
    from flowkern.models import VIDEOFLOW_CONFIGS
    return dataclasses.replace(VIDEOFLOW_CONFIGS[name], reversible=memory_saving, checkpoint_prior=memory_saving,
                               **overrides)


def videoflow_per_frame(device, suite):
    """VideoFlow (2 levels, 32x32, batch 2, hidden 64, the `shapes` prior) with K = 4 and 12 steps per level: the real
    peak of a training step vs clip length T, and the memory each extra frame adds, in latent sizes (one frame's
    latents for the batch: 2 x 3 x 32 x 32 floats), plain autograd vs flowkern (reversible flow, chunked recompute,
    checkpointed prior)."""
    from flowkern.models.videoflow import training_step_peak
    Ks, Ts, size = ([1], [4, 8], 16) if suite == "smoke" else ([4, 12], [8, 16, 32, 64], 32)
    latent = 2 * 3 * size * size * 4
    rows = []
    for K in Ks:
        for mode, saving in (("plain", False), ("flowkern", True)):
            cfg = _videoflow_cfg("shapes", saving, image_size=size, levels=2, steps=K, hidden=64)
            peaks = [training_step_peak(cfg, 2, T, device).peak_bytes for T in Ts]
            row = {"bench": "videoflow_per_frame", "K": K, "mode": mode,
                   **{f"T={T}_MiB": p / MiB for T, p in zip(Ts, peaks)},
                   "per_frame_latents": (peaks[-1] - peaks[-2]) / (Ts[-1] - Ts[-2]) / latent}
            rows.append(row)
    return rows


def cglow_per_frame(device, suite):
    """CGlow (`small`: 3 levels x 4 steps, hidden 64, 32x32, variant "state", batch 2): the real peak of a training
    step vs clip length T and the memory each extra frame adds, in frames (2 x 3 x 32 x 32 floats), plain autograd vs
    flowkern's reversible levels, with the state's gradient through the whole clip and truncated to 4 frames."""
    from flowkern.models.cglow import CONFIGS, training_step_peak
    name, Ts = ("tiny", [3, 5]) if suite == "smoke" else ("small", [8, 16, 32])
    size = CONFIGS[name].image_size
    frame = 2 * 3 * size * size * 4
    rows = []
    for mode, reversible, tbptt in (("plain", False, None), ("flowkern", True, None), ("flowkern, tbptt 4", True, 4)):
        cfg = dataclasses.replace(CONFIGS[name], variant="state", num_labels=0, reversible=reversible, tbptt=tbptt)
        peaks = [training_step_peak(cfg, 2, T, device).peak_bytes for T in Ts]
        rows.append({"bench": "cglow_per_frame", "mode": mode, **{f"T={T}_MiB": p / MiB for T, p in zip(Ts, peaks)},
                     "per_frame_frames": (peaks[-1] - peaks[-2]) / (Ts[-1] - Ts[-2]) / frame})
    return rows


def rfn_memory(device, suite):
    """The RFN: (1) the real peak of a training step of the `small` model (SM-MNIST 32x32, batch 2) at 4 and 8
    frames beside the meta-device estimate of the same step; (2) at the thesis's BAIR setting (`bair`: 64x64, L=4,
    K=10, batch 35, 10-frame clips), on the meta device, plain autograd vs flowkern's reversible levels: the peak of
    a training step plus Adam's two moments, the longest clip and the largest K (steps per level) that fit 32 GB
    (the thesis's V100) and 80 GB, from a MemoryPlan (three measured steps) and a line through K = 5 and 10."""
    from flowkern.memory import MemoryPlan
    from flowkern.models.rfn import CONFIGS, RFN, training_step_peak
    small, big, B, T = ("tiny", "tiny", 2, 4) if suite == "smoke" else ("small", "bair", 35, 10)
    check = []
    for mode, reversible in (("plain", False), ("flowkern", True)):
        cfg = dataclasses.replace(CONFIGS[small], reversible=reversible)
        for frames in (T,) if suite == "smoke" else (4, 8):
            real = training_step_peak(cfg, 2, frames, "cpu").peak_bytes
            meta = training_step_peak(cfg, 2, frames, "meta").peak_bytes
            check.append({"bench": "rfn_check", "config": small, "mode": mode, "T": frames, "real_MiB": real / MiB,
                          "meta_MiB": meta / MiB, "meta_over_real": meta / real})

    def adam_bytes(cfg):  # Adam's exp_avg and exp_avg_sq: two more copies of the parameters
        with torch.device("meta"):
            return 2 * sum(p.numel() * p.element_size() for p in RFN(cfg).parameters())
    plans = []
    for mode, reversible in (("plain", False), ("flowkern", True)):
        cfg = dataclasses.replace(CONFIGS[big], reversible=reversible)
        # fitted at the setting's own batch: from batch 2 the line misses batch 35 by 10-25% (fixed costs that are
        # not per clip, transients that are)
        plan = MemoryPlan.fit(lambda b, t: training_step_peak(cfg, b, t, "meta").peak_bytes, B, (T // 2, T))
        plan.fixed += adam_bytes(cfg)
        by_k = {k: training_step_peak(dataclasses.replace(cfg, steps=k), B, T, "meta").peak_bytes +
                adam_bytes(dataclasses.replace(cfg, steps=k)) for k in (5, 10)}
        slope = (by_k[10] - by_k[5]) / 5
        row = {"bench": "rfn_plan", "config": f"{big} (K={cfg.steps}), batch {B}, {T} frames", "mode": mode,
               "peak_GB": plan.peak(B, T) / GB, "per_frame_MB": plan.per_frame * B / 1e6}
        for budget in (32, 80):
            row[f"longest_clip_{budget}GB"] = plan.longest_clip(budget * GB, B)
            row[f"largest_K_{budget}GB"] = max(0, int((budget * GB - by_k[5]) // slope) + 5) if slope > 0 else None
        plans.append(row)
    return check, plans


def videoflow_bair_estimate(device, suite, budget_bytes):
    """VideoFlow `bair` (the paper's model) at 64x64: the training step's peak vs clip length T at batch 8, and at the
    paper's batch 40 on full 13-frame clips, plain autograd vs flowkern; the longest clip within the budget at batch 8
    and the largest batch on 13-frame clips (a MemoryPlan fitted to three measured steps). On a GPU measured; else
    estimated on the meta device, whose peak equals the real one at a size that runs (the `check` row)."""
    from flowkern.models.videoflow import memory_plan, training_step_peak
    meas = "cuda" if device == "cuda" else "meta"
    label = "measured (CUDA)" if meas == "cuda" else "estimate (meta device)"
    if suite == "smoke":
        cfg_name, shapes = "tiny", [(1, 3), (1, 4)]
    else:
        cfg_name, shapes = "bair", [(8, 4), (8, 8), (8, 13), (8, 26), (40, 13)]
    rows = []
    for B, T in shapes:
        row = {"bench": "videoflow_bair", "batch": B, "T": T, "measure": label}
        for mode, saving in (("plain", False), ("flowkern", True)):
            try:
                row[f"{mode}_GB"] = training_step_peak(_videoflow_cfg(cfg_name, saving), B, T, meas).peak_bytes / GB
            except torch.cuda.OutOfMemoryError:
                row[f"{mode}_GB"] = None  # does not fit
            if meas == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
    plan_rows = []
    for mode, saving in (("plain", False), ("flowkern", True)):
        plan = memory_plan(_videoflow_cfg(cfg_name, saving), meas, batch=2,  # past the prior's first frames
                           frames=(4, 8) if suite == "smoke" else (64, 128))
        plan_rows.append({"bench": "videoflow_bair_plan", "mode": mode, "measure": label,
                          "fixed_GB": plan.fixed / GB, "per_clip_GB": plan.per_clip / GB,
                          "per_frame_MB": plan.per_frame / 1e6, "budget_GB": budget_bytes / GB,
                          "longest_clip_at_batch_8": plan.longest_clip(budget_bytes, 8),
                          "largest_batch_at_13_frames": plan.largest_batch(budget_bytes, 13)})
    # the meta-device estimate against a real measurement where one runs here
    small = _videoflow_cfg("shapes", True, image_size=32, levels=2, steps=4, hidden=64)
    real, est = (training_step_peak(small, 2, 16, d).peak_bytes for d in (device, "meta"))
    check = {"bench": "videoflow_estimate_check", "model": "shapes prior, 2 levels, K=4, hidden 64, 32x32",
             "batch": 2, "T": 16, f"{device}_MiB": real / MiB, "meta_MiB": est / MiB, "meta_over_real": est / real}
    return rows, plan_rows, [check]


def glow_memory(levels, steps, hidden, batch, size, device):
    """(plain, reversible) peak GB of a training step of a Glow on size x size x 3 images: measured on a GPU (None if
    it does not fit), else estimated on the meta device."""
    meas = "cuda" if device == "cuda" else "meta"
    out = []
    for reversible in (False, True):
        with torch.device(meas):
            glow = _initialised(Glow(3, levels=levels, steps=steps, hidden=hidden, reversible=reversible))
            x = torch.rand(batch, 3, size, size) - 0.5
        try:
            out.append(step_peak(glow, lambda: -glow.log_prob(x).mean(), x) / GB)
        except torch.cuda.OutOfMemoryError:
            out.append(None)
        glow = None
        if meas == "cuda":
            torch.cuda.empty_cache()
    return out


def _metric(device):
    return "peak GB, measured (CUDA)" if device == "cuda" else "peak GB, estimate (meta device)"


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
    """A large-image training workload: a 3-level, 32-step, hidden-512 Glow on 64x64x3 at batch 64."""
    if suite == "smoke":
        return []
    plain, rev = glow_memory(3, 32, 512, 64, 64, device)
    return [{"bench": "glow_batch64", "shape": "64x3x64x64 L=3 K=32 hidden 512", "metric": _metric(device),
             "plain_GB": plain, "reversible_GB": rev}]


def plot(rows, path, key, columns, ylabel, title):
    """Log-scale curves of `columns` against `key`; ylabel names the measure and its unit."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for col in columns:
        pts = [(r[key], r[col]) for r in rows if r.get(col) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=col)
    ax.set_xlabel(key)
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")  # plain autograd, checkpointing and reversible differ by orders of magnitude
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
