"""Train a video flow: `python -m flowkern.models.train videoflow --config shapes --out runs/shapes`.

Multi-GPU: `torchrun --nproc_per_node=N -m flowkern.models.train videoflow ...` (DistributedDataParallel; the
batch size is per process; ActNorm's data-dependent init is all-reduced across ranks). Without a GPU the same
command runs one or more CPU processes on the gloo backend.

Reproducible and resumable: the clips of step s, and their dequantization noise, are functions of (seed, s), and
checkpoints carry the model, optimizer, step and RNG state, so `--resume` continues exactly as an uninterrupted run
would. Checkpoints are written to a temporary file and renamed (never lost half-written) and load with
torch.load(..., weights_only=True).
"""
import argparse
import copy
import csv
import dataclasses
import math
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler
from tqdm import tqdm

import flowkern
from flowkern.models.data import StochasticMovement, StochasticMovingDigits, VideoFolder
from flowkern.models.video_io import to_uint8_frames, write_grid, write_video
from flowkern.models.videoflow import CONFIGS, VideoFlow, VideoFlowConfig
from flowkern.memory import keep_freed_cpu_memory


# ---------------------------------------------------------------------------------------------- data
def make_datasets(args, cfg):
    """(train, held-out) datasets of uint8 clips (T, C, H, W)."""
    kind = args.data
    if kind == "shapes":
        mk = lambda seed, n: StochasticMovement(n, frames=args.frames, size=cfg.image_size, seed=seed)  # noqa: E731
    elif kind == "digits":
        mk = lambda seed, n: StochasticMovingDigits(n, frames=args.frames, size=cfg.image_size, seed=seed,  # noqa
                                                    channels=cfg.in_channels)
    elif kind.startswith("folder:"):
        full = VideoFolder(kind.split(":", 1)[1], frames=args.frames, size=cfg.image_size, channels=cfg.in_channels)
        n_eval = max(1, len(full) // 10)
        idx = list(range(len(full)))
        return torch.utils.data.Subset(full, idx[:-n_eval]), torch.utils.data.Subset(full, idx[-n_eval:])
    else:
        raise ValueError(f"--data must be shapes, digits or folder:PATH, got {kind!r}")
    return mk(args.seed, args.train_videos), mk(args.seed + 1_000_003, args.eval_videos)  # disjoint seeds


def batch_at(dataset, sampler, step, batch_size):
    """The (rank's) clips of global step `step`: a pure function of (seed, step)."""
    per_epoch = len(sampler) // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch size {batch_size} exceeds the {len(sampler)} clips per process")
    epoch, i = divmod(step, per_epoch)
    sampler.set_epoch(epoch)
    idx = list(sampler)[i * batch_size:(i + 1) * batch_size]
    return torch.stack([dataset[j] for j in idx])


def dequantize(clips, n_bits, seed, step, rank, device):
    g = torch.Generator().manual_seed(hash((seed, step, rank)) % (2**63))
    return flowkern.preprocess(clips, n_bits=n_bits, generator=g).to(device)


# ---------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path, model, opt, step, args, cfg, metrics):
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
             "config": _plain(dataclasses.asdict(cfg)), "args": _plain(vars(args)), "metrics": metrics,
             "rng_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash leaves the previous checkpoint intact


def _plain(d):
    """Only types that torch.load(weights_only=True) accepts."""
    out = {}
    for k, v in d.items():
        if isinstance(v, tuple):
            v = list(v)
        if v is None or isinstance(v, (bool, int, float, str, list, dict)):
            out[k] = v
    return out


def load_checkpoint(path, map_location="cpu"):
    return torch.load(path, map_location=map_location, weights_only=True)


def config_from(d) -> VideoFlowConfig:
    fields = {f.name for f in dataclasses.fields(VideoFlowConfig)}
    d = {k: v for k, v in d.items() if k in fields}
    if "dilations" in d:
        d["dilations"] = tuple(d["dilations"])
    return VideoFlowConfig(**d)


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, dataset, args, cfg, device, rank, world):
    """Mean bits/pixel of the target frames (those after the first `context`) over the held-out clips."""
    model.eval()
    total, count = torch.zeros((), device=device, dtype=torch.float64), torch.zeros((), device=device)
    idx = list(range(rank, min(len(dataset), args.eval_clips), world))
    for i in range(0, len(idx), args.batch_size):
        clips = torch.stack([dataset[j] for j in idx[i:i + args.batch_size]])
        video = dequantize(clips, cfg.n_bits, args.seed + 7, -1, i, device)  # fixed noise: comparable evals
        bpp = model.bits_per_pixel(video, from_frame=min(cfg.context, video.shape[1] - 1))
        total += bpp.double().sum()
        count += bpp.numel()
    if world > 1:
        dist.all_reduce(total)
        dist.all_reduce(count)
    model.train()
    return (total / count.clamp_min(1)).item()


@torch.no_grad()
def write_samples(model, dataset, args, cfg, device, tag):
    model.eval()
    n = min(args.num_samples, len(dataset))
    clips = torch.stack([dataset[j] for j in range(n)])
    ctx_frames = min(cfg.context, clips.shape[1] - 1)
    context = flowkern.preprocess(clips[:, :ctx_frames], cfg.n_bits, noise=False).to(device)
    g = torch.Generator(device=device).manual_seed(args.seed)
    video = model.generate(context, args.frames - ctx_frames, temperature=args.temperature, generator=g)
    frames = [to_uint8_frames(v, cfg.n_bits) for v in video]
    out = os.path.join(args.out, "samples")
    for i, f in enumerate(frames):
        write_video(os.path.join(out, f"{tag}-{i}.gif"), f)
    write_video(os.path.join(out, f"{tag}-0.mp4"), frames[0])
    real = [to_uint8_frames(flowkern.preprocess(c, cfg.n_bits, noise=False), cfg.n_bits) for c in clips]
    import numpy as np
    write_grid(os.path.join(out, f"{tag}-grid.png"), np.stack([x for pair in zip(real, frames) for x in pair]))
    model.train()


# ---------------------------------------------------------------------------------------------- training
def train(args):
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if torch.cuda.is_available() and args.device != "cpu":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        keep_freed_cpu_memory()  # no page faults on reallocating each step's activations
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "checkpoint.pt")

    cfg = dataclasses.replace(CONFIGS[args.config])
    overrides = {"levels": args.levels, "steps": args.flow_steps, "hidden": args.hidden, "context": args.context,
                 "n_bits": args.n_bits, "image_size": args.image_size}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    resume = load_checkpoint(ckpt_path) if args.resume and os.path.exists(ckpt_path) else None
    if resume is not None:
        cfg = config_from(resume["config"])
    torch.manual_seed(args.seed)
    model = VideoFlow(cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    start, metrics = 0, {}
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        start, metrics = resume["step"], resume.get("metrics", {})
        torch.set_rng_state(resume["rng_cpu"])
    ddp = torch.nn.parallel.DistributedDataParallel(model) if distributed else model

    train_set, eval_set = make_datasets(args, cfg)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed,
                                 drop_last=True)
    log_path = os.path.join(args.out, "metrics.csv")
    if rank == 0 and start > 0 and os.path.exists(log_path):  # drop rows logged after the checkpoint we resume from
        with open(log_path, newline="") as f:
            rows = [r for r in csv.reader(f) if not r or not r[0].isdigit() or int(r[0]) <= start]
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerows(rows)
    log = open(log_path, "a", newline="") if rank == 0 else None
    writer = csv.writer(log) if log else None
    if writer and start == 0:
        writer.writerow(["step", "train_bpp", "lr", "grad_norm", "skipped", "eval_bpp", "seconds"])
    tb = None
    if args.tensorboard and rank == 0:
        from torch.utils.tensorboard import SummaryWriter
        tb = SummaryWriter(os.path.join(args.out, "tb"))

    good = _snapshot(model, opt)
    skipped = metrics.get("skipped", 0)
    t0 = time.time() - metrics.get("seconds", 0.0)  # the seconds column counts training time across resumes
    D = cfg.in_channels * cfg.image_size ** 2
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, disable=rank != 0, desc="train")
    for step in bar:
        lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
        for group in opt.param_groups:
            group["lr"] = lr
        video = dequantize(batch_at(train_set, sampler, step, args.batch_size), cfg.n_bits, args.seed, step, rank,
                           device)
        loss = -ddp(video).mean() / D  # nats per dimension; DDP's hooks run on forward (= log_prob_frames)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        finite = torch.isfinite(loss.detach()) & torch.isfinite(gnorm)
        if world > 1:  # every rank must take the same decision
            finite = finite.float()
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            finite = finite.bool()
        if not bool(finite):  # NaN/Inf guard: skip this step and restore the last good state
            skipped += 1
            model.load_state_dict(good[0])
            opt.load_state_dict(good[1])
            continue
        opt.step()
        if (step + 1) % args.snapshot_every == 0:
            good = _snapshot(model, opt)
        train_bpp = (loss.item() + cfg.n_bits * math.log(2)) / math.log(2)
        eval_bpp = ""
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            eval_bpp = evaluate(model, eval_set, args, cfg, device, rank, world)
            metrics.setdefault("eval", []).append([step + 1, eval_bpp])
        metrics["skipped"], metrics["seconds"] = skipped, time.time() - t0
        if rank == 0:
            bar.set_postfix(bpp=f"{train_bpp:.3f}", eval=eval_bpp if eval_bpp == "" else f"{eval_bpp:.3f}")
            writer.writerow([step + 1, f"{train_bpp:.5f}", f"{lr:.3g}", f"{gnorm.item():.4g}", skipped,
                             eval_bpp if eval_bpp == "" else f"{eval_bpp:.5f}", f"{time.time() - t0:.1f}"])
            log.flush()
            if tb:
                tb.add_scalar("train/bpp", train_bpp, step + 1)
                if eval_bpp != "":
                    tb.add_scalar("eval/bpp", eval_bpp, step + 1)
            if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
                save_checkpoint(ckpt_path, model, opt, step + 1, args, cfg, metrics)
            if args.sample_every and ((step + 1) % args.sample_every == 0 or step + 1 == args.steps):
                write_samples(model, eval_set, args, cfg, device, f"step{step + 1}")
    if log:
        log.close()
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return model, metrics


def _snapshot(model, opt):
    """The last good (model, optimizer) state for the NaN guard, kept in host memory (not doubling GPU memory)."""
    def to_host(obj):
        if torch.is_tensor(obj):
            return obj.detach().to("cpu", copy=True)
        if isinstance(obj, dict):
            return {k: to_host(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(to_host(v) for v in obj)
        return copy.deepcopy(obj)
    return to_host(model.state_dict()), to_host(opt.state_dict())


def parser():
    p = argparse.ArgumentParser(prog="python -m flowkern.models.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="model", required=True)
    v = sub.add_parser("videoflow", help="VideoFlow (Kumar et al. 2020)")
    v.add_argument("--config", choices=sorted(CONFIGS), default="shapes")
    v.add_argument("--data", default="shapes", help="shapes | digits | folder:PATH (videos or .npy/.npz)")
    v.add_argument("--out", default="runs/videoflow")
    v.add_argument("--steps", type=int, default=2000)
    v.add_argument("--batch-size", type=int, default=8, help="per process")
    v.add_argument("--frames", type=int, default=3, help="frames per training clip (whole clips, not windows)")
    v.add_argument("--lr", type=float, default=3e-4)
    v.add_argument("--warmup", type=int, default=200, help="linear learning-rate warm-up steps")
    v.add_argument("--clip", type=float, default=50.0, help="gradient-norm clipping")
    v.add_argument("--eval-every", type=int, default=200)
    v.add_argument("--eval-clips", type=int, default=64)
    v.add_argument("--ckpt-every", type=int, default=200)
    v.add_argument("--snapshot-every", type=int, default=50, help="in-memory last-good state for the NaN guard")
    v.add_argument("--sample-every", type=int, default=0, help="write sample videos every N steps (0: at the end)")
    v.add_argument("--num-samples", type=int, default=4)
    v.add_argument("--temperature", type=float, default=0.7)
    v.add_argument("--train-videos", type=int, default=20000)
    v.add_argument("--eval-videos", type=int, default=256)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    v.add_argument("--tensorboard", action="store_true")
    v.add_argument("--device", choices=["auto", "cpu"], default="auto")
    for name in ("levels", "flow-steps", "hidden", "context", "n-bits", "image-size"):
        v.add_argument(f"--{name}", type=int, default=None, help="override the config's value")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.sample_every == 0:
        args.sample_every = args.steps
    train(args)


if __name__ == "__main__":
    sys.exit(main())
