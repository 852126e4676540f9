"""Plan a VideoFlow training run before renting a GPU: `python -m flowkern.models.plan --config shapes --batch-size 16`.

Everything runs on the meta device (shapes only, no memory, no compute), so a GPU-sized config plans on a laptop:
- parameters of the flow and of the prior;
- FLOPs of one training step (forward, backward and every recomputation of the memory-saving paths, as dispatched:
  torch.utils.flop_counter), and the step time they take at the GPU's dense fp32 and TF32 peaks (a lower bound:
  the elementwise ops, launches and the fused kernels' memory traffic come on top);
- the real peak memory of a step (flowkern.memory.PeakMemory: every tensor alive, backward transients included;
  no allocator rounding or library workspaces) as fixed + per clip + per frame, and what fits a memory budget.
"""
import argparse
import dataclasses

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

import flowkern
from flowkern.nn import mark_initialized
from flowkern.models.videoflow import CONFIGS, VideoFlow, VideoFlowConfig, memory_plan

# H100 SXM dense peaks (FLOP/s): fp32 on the CUDA cores, TF32 on the tensor cores
PEAKS = {"fp32": 67e12, "tf32": 495e12}


class _CountFlops(TorchDispatchMode):
    """torch's FLOP formulas (matmuls, convolutions, attention) over every op dispatched. FlopCounterMode itself
    tracks modules with autograd hooks, which fail inside the reversible engine's autograd.Function."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


def training_step_flops(cfg: VideoFlowConfig, batch: int, frames: int) -> int:
    """FLOPs (2 per multiply-add) of one training step of a fresh VideoFlow(cfg), counted on the meta device."""
    with torch.device("meta"):
        model = VideoFlow(cfg)
        video = torch.rand(batch, frames, cfg.in_channels, cfg.image_size, cfg.image_size) - 0.5
    mark_initialized(model)  # the data-dependent init is not part of a training step
    with _CountFlops() as counter:
        (-model.log_prob_frames(video).mean()).backward()
    return counter.total


def plan(cfg: VideoFlowConfig, batch: int, frames: int, budget_gb: float) -> dict:
    with torch.device("meta"):
        model = VideoFlow(cfg)
    flow = sum(p.numel() for p in model.glow.parameters())
    flops = training_step_flops(cfg, batch, frames)
    mem = memory_plan(cfg, "meta", batch=2, frames=(16, 32))
    budget = budget_gb * 1e9
    return {"params_flow": flow, "params_prior": sum(p.numel() for p in model.parameters()) - flow,
            "batch": batch, "frames": frames, "step_flops": flops,
            "step_ms_at_peak": {k: 1e3 * flops / v for k, v in PEAKS.items()},
            "memory": {"fixed_bytes": mem.fixed, "per_clip_bytes": mem.per_clip, "per_frame_bytes": mem.per_frame,
                       "step_peak_bytes": mem.peak(batch, frames), "budget_gb": budget_gb,
                       "longest_clip": mem.longest_clip(budget, batch),
                       "largest_batch": mem.largest_batch(budget, frames)}}


def report(name: str, r: dict) -> str:
    m = r["memory"]
    t = r["step_ms_at_peak"]
    return "\n".join([
        f"{name}: flow {r['params_flow'] / 1e6:.1f}M parameters, prior {r['params_prior'] / 1e6:.1f}M",
        f"training step, batch {r['batch']} x {r['frames']} frames: {r['step_flops'] / 1e12:.2f} TFLOP, at least "
        f"{t['fp32']:.0f} ms at the H100's fp32 peak, {t['tf32']:.0f} ms at its TF32 peak",
        f"real peak memory: {m['fixed_bytes'] / 1e9:.2f} GB + {m['per_clip_bytes'] / 1e6:.1f} MB per clip + "
        f"{m['per_frame_bytes'] / 1e6:.1f} MB per frame = {m['step_peak_bytes'] / 1e9:.2f} GB for this step",
        f"in {m['budget_gb']:g} GB: clips of up to {m['longest_clip']} frames at batch {r['batch']}, or a batch of "
        f"up to {m['largest_batch']} clips of {r['frames']} frames"])


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m flowkern.models.plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="shapes")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--budget", type=float, default=80.0, help="GB of GPU memory")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.frames < 2 or not args.budget > 0:
        p.error(f"expected --batch-size >= 1, --frames >= 2 and --budget > 0, got {args.batch_size}, {args.frames}, "
                f"{args.budget}")
    print(report(args.config, plan(dataclasses.replace(CONFIGS[args.config]), args.batch_size, args.frames,
                                   args.budget)))


if __name__ == "__main__":
    main()
