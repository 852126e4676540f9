"""Train a video flow: `python -m flowkern.models.train videoflow --config shapes --out runs/shapes`, or
`python -m flowkern.models.train cglow --config small --variant state --out runs/cglow-state`, or
`python -m flowkern.models.train rfn --config small --data digits --out runs/rfn`.

Multi-GPU: `torchrun --nproc_per_node=N -m flowkern.models.train videoflow ...` (DistributedDataParallel; the
batch size is per process; ActNorm's data-dependent init is all-reduced across ranks). Without a GPU the same
command runs one or more CPU processes on the gloo backend.

Reproducible and resumable: the clips of step s, and their dequantization noise, are functions of (seed, s), and
checkpoints carry the model, optimizer, step and RNG state, so `--resume` continues exactly as an uninterrupted run
would. Checkpoints are written to a temporary file, flushed to disk and renamed (never lost half-written) and load
with torch.load(..., weights_only=True). A run is never overwritten: an --out that holds one needs --resume (continue
it) or --overwrite (start again).

Every value is checked before any work starts; a problem exits with status 2 and a message naming the argument. A run
whose every step was skipped by the NaN/Inf guard exits with status 1.
"""
import argparse
import contextlib
import copy
import csv
import dataclasses
import math
import os
import pickle
import re
import shutil
import sys
import time

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler
from tqdm import tqdm

import flowkern
from flowkern.models.cglow import CONFIGS as CGLOW_CONFIGS, VARIANTS as CGLOW_VARIANTS, CGlow, CGlowConfig
from flowkern.models.data import Labelled, StochasticMovement, StochasticMovingDigits, VideoFolder
from flowkern.models.motion import continuation_accuracy
from flowkern.models.rfn import CONFIGS as RFN_CONFIGS, EXTRACTORS, RFN, RFNConfig
from flowkern.models.video_io import to_uint8_frames, write_grid, write_video
from flowkern.models.videoflow import CONFIGS, VideoFlow, VideoFlowConfig
from flowkern.memory import keep_freed_cpu_memory
from flowkern.nn.coupling import COUPLING_NETS, COUPLING_SCALES


# ---------------------------------------------------------------------------------------------- data
def glyph_size(image_size: int) -> int:
    """Digit glyphs for `digits` clips: SM-MNIST's 28-pixel digits in 64x64 frames, scaled to the frame."""
    return max(4, round(28 * image_size / 64))


def label_kind(args):
    """The label a model trains on (CGlow's variant "state_label": --label), or None."""
    return args.label if getattr(args, "variant", None) == "state_label" else None


def make_datasets(args, cfg):
    """(train, held-out) datasets of uint8 clips (T, C, H, W), or of (clip, label) pairs when the model takes
    labels."""
    kind, labels = args.data, label_kind(args)
    if kind == "shapes":
        mk = lambda seed, n: StochasticMovement(n, frames=args.frames, size=cfg.image_size,  # noqa: E731
                                                speed=getattr(args, "speed", None), seed=seed)
    elif kind == "digits":
        mk = lambda seed, n: StochasticMovingDigits(n, frames=args.frames, size=cfg.image_size, seed=seed,  # noqa
                                                    channels=cfg.in_channels, glyph_size=glyph_size(cfg.image_size))
    elif kind.startswith("folder:"):
        try:  # every file is checked here, before training
            full = VideoFolder(kind.split(":", 1)[1], frames=args.frames, size=cfg.image_size,
                               channels=cfg.in_channels)
            full = Labelled(full, labels) if labels else full
        except ValueError as e:
            raise UsageError(f"--data: {e}") from e
        n_eval = max(1, len(full) // 10)
        idx = list(range(len(full)))
        return torch.utils.data.Subset(full, idx[:-n_eval]), torch.utils.data.Subset(full, idx[-n_eval:])
    else:
        raise UsageError(f"--data: expected shapes, digits or folder:PATH, got {kind!r}")
    try:
        train_set, eval_set = mk(args.seed, args.train_videos), mk(args.seed + 1_000_003, args.eval_videos)  # disjoint
    except ValueError as e:
        raise UsageError(f"--data {kind}: {e}") from None
    if labels:
        try:
            return Labelled(train_set, labels), Labelled(eval_set, labels)
        except ValueError as e:
            raise UsageError(f"--label: {e}") from e
    return train_set, eval_set


def clips_of(items):
    """(clips (B, T, C, H, W), labels (B,) or None) from dataset items: clips, or (clip, label) pairs."""
    if isinstance(items[0], tuple):
        return torch.stack([c for c, _ in items]), torch.tensor([lab for _, lab in items])
    return torch.stack(items), None


def batch_at(dataset, sampler, step, batch_size):
    """The (rank's) clips of global step `step`: a pure function of (seed, step)."""
    per_epoch = len(sampler) // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch size {batch_size} exceeds the {len(sampler)} clips per process")
    epoch, i = divmod(step, per_epoch)
    sampler.set_epoch(epoch)
    idx = list(sampler)[i * batch_size:(i + 1) * batch_size]
    return clips_of([dataset[j] for j in idx])


def random_windows(clips, window, seed, step, rank):
    """A random `window`-frame stretch of each clip (the reference's training windows); a function of (seed, step,
    rank). window None: the whole clips."""
    if window is None:
        return clips
    T = clips.shape[1]  # resolve_config checked window <= T
    g = torch.Generator().manual_seed(hash((seed, step, rank, 1)) % (2**63))
    starts = torch.randint(0, T - window + 1, (clips.shape[0],), generator=g).tolist()
    return torch.stack([c[s:s + window] for c, s in zip(clips, starts)])


def dequantize(clips, n_bits, seed, step, rank, device):
    g = torch.Generator().manual_seed(hash((seed, step, rank)) % (2**63))
    return flowkern.preprocess(clips, n_bits=n_bits, generator=g).to(device)


# ---------------------------------------------------------------------------------------------- errors
class UsageError(ValueError):
    """A problem with the command's arguments or files, found before any work: the command exits with status 2."""


class CheckpointError(UsageError):
    """A checkpoint file that cannot be used; the message names the file and what is wrong."""


class TrainingFailed(RuntimeError):
    """The run did its end-of-run work but learned nothing: the command exits with status 1."""


# ---------------------------------------------------------------------------------------------- files
TMP_MARK = ".tmp-"  # temporaries are PATH.tmp-PID: ignorable, and removable once PID is dead


def atomic_write(path, write):
    """write(tmp_path), flush it to disk, rename it over `path` and flush the folder: a crash leaves the old file or
    the new one, never half of one. On any failure (Ctrl-C included) the temporary file is removed."""
    tmp = f"{path}{TMP_MARK}{os.getpid()}"
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _fsync_dir(folder):
    """Make a rename durable (POSIX; Windows cannot open folders)."""
    if os.name == "posix":
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale_temporaries(folder):
    """Temporary files of writers killed outright (no finally ran): removed once their process is gone."""
    if os.name != "posix" or not os.path.isdir(folder):  # os.kill(pid, 0) would terminate the process on Windows
        return
    for name in os.listdir(folder):
        m = re.search(re.escape(TMP_MARK) + r"(\d+)(\.\w+)?$", name)
        if not m:
            continue
        pid = int(m.group(1))
        try:
            if pid != os.getpid():
                os.kill(pid, 0)
                continue  # its writer is alive (another run?): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, owned by someone else
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, name))


# ---------------------------------------------------------------------------------------------- checkpoints
TRAIN_KEYS = ("model", "optimizer", "step", "config", "args", "metrics", "rng_cpu")


def save_checkpoint(path, model, opt, step, args, cfg, metrics):
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
             "config": _plain(dataclasses.asdict(cfg)), "args": _plain(vars(args)), "metrics": metrics,
             "rng_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _plain(d):
    """Only types that torch.load(weights_only=True) accepts."""
    out = {}
    for k, v in d.items():
        if isinstance(v, tuple):
            v = list(v)
        if v is None or isinstance(v, (bool, int, float, str, list, dict)):
            out[k] = v
    return out


def load_checkpoint(path, map_location="cpu", required=TRAIN_KEYS):
    """A checkpoint of this command, loaded with weights_only=True (a file from elsewhere cannot run code). Raises
    CheckpointError naming the file and what is wrong with it."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: the file is empty")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's message advises weights_only=False: wrong for a file we do not know, so it is not passed on
        raise CheckpointError(f"{path}: holds Python objects that are not tensors and plain values (or is not a torch "
                              "file); it was not loaded, since unpickling them could run arbitrary code") from None
    except Exception as e:  # noqa: BLE001 - zip, EOF, key errors from a damaged file all mean the same here
        detail = str(e).split(". ")[0]
        raise CheckpointError(f"{path}: cannot read it as a torch checkpoint (truncated, damaged, or another "
                              f"format): {type(e).__name__}: {detail}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint of flowkern.models.train (expected a dict with "
                              f"{', '.join(required)}; it holds a {type(state).__name__})")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a checkpoint of flowkern.models.train (it lacks {', '.join(missing)})")
    if not (isinstance(state["config"], dict) and isinstance(state["args"], dict)) or (
            "step" in required and not isinstance(state["step"], int)):
        raise CheckpointError(f"{path}: not a checkpoint of flowkern.models.train (its config, args or step is "
                              "malformed)")
    return state


MODELS = {"videoflow": (VideoFlow, VideoFlowConfig), "cglow": (CGlow, CGlowConfig), "rfn": (RFN, RFNConfig)}


# A config field a checkpoint predates takes the value the model had before the field existed, not today's default.
FIELDS_ADDED = {"rfn": {"coupling_scale": "sigmoid"}}


def config_from(d, model: str = "videoflow"):
    """The config of `model` from a checkpoint's plain dict."""
    cls = MODELS[model][1]
    fields = {f.name for f in dataclasses.fields(cls)}
    d = {**FIELDS_ADDED.get(model, {}), **{k: v for k, v in d.items() if k in fields}}
    if "dilations" in d:
        d["dilations"] = tuple(d["dilations"])
    return cls(**d)


def model_name(state) -> str:
    """The model a checkpoint holds (checkpoints from before CGlow hold a VideoFlow)."""
    name = state["args"].get("model", "videoflow")
    if name not in MODELS:
        raise CheckpointError(f"its model {name!r} is not one of {', '.join(MODELS)}")
    return name


def model_from_checkpoint(state, path):
    """The model (VideoFlow, CGlow or RFN) a checkpoint describes, with its weights; CheckpointError if they do not fit
    its config."""
    try:
        name = model_name(state)
        model = MODELS[name][0](config_from(state["config"], name))
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: its weights do not fit its config: {str(e).splitlines()[0]}") from None
    return model


FLAG_OF_FIELD = {"levels": "--levels", "steps": "--flow-steps", "hidden": "--hidden", "context": "--context",
                 "n_bits": "--n-bits", "image_size": "--image-size", "recompute_chunk": "--recompute-chunk",
                 "skip": "--skip", "affine": "--coupling", "coupling_net": "--coupling-net",
                 "pad_context": "--pad-context", "prior_blocks": "--prior-blocks", "prior_hidden": "--prior-hidden",
                 "prior_channels": "--prior-channels", "advect": "--advect",
                 "advect_corr": "--advect-corr", "advect_mixture": "--advect-mixture"}
CGLOW_FLAG_OF_FIELD = {"levels": "--levels", "steps": "--flow-steps", "hidden": "--hidden", "n_bits": "--n-bits",
                       "image_size": "--image-size", "affine": "--coupling", "variant": "--variant",
                       "state_channels": "--state-channels", "tbptt": "--tbptt", "num_labels": "--label (its classes)"}
RFN_FLAG_OF_FIELD = {"levels": "--levels", "steps": "--flow-steps", "hidden": "--hidden", "n_bits": "--n-bits",
                     "image_size": "--image-size", "affine": "--coupling", "extractor": "--extractor",
                     "h_channels": "--h-channels", "z_channels": "--z-channels", "base_width": "--base-width",
                     "a_channels": "--a-channels", "smoothing": "--smoothing", "res_q": "--res-q",
                     "overshooting": "--overshooting", "coupling_scale": "--coupling-scale"}


def resolve_config(args):
    """The model config: --config with the command line's overrides."""
    if args.model == "cglow":
        return resolve_cglow_config(args)
    if args.model == "rfn":
        return resolve_rfn_config(args)
    overrides = {"levels": args.levels, "steps": args.flow_steps, "hidden": args.hidden, "context": args.context,
                 "n_bits": args.n_bits, "image_size": args.image_size, "recompute_chunk": args.recompute_chunk,
                 "skip": args.skip, "affine": None if args.coupling is None else args.coupling == "affine",
                 "coupling_net": args.coupling_net, "pad_context": args.pad_context,
                 "prior_blocks": args.prior_blocks, "prior_hidden": args.prior_hidden, "advect": args.advect,
                 "advect_corr": args.advect_corr, "advect_mixture": args.advect_mixture}
    try:
        cfg = dataclasses.replace(CONFIGS[args.config], **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as e:  # a combination the config refuses, e.g. --advect with --no-skip
        raise UsageError(str(e)) from None
    if args.prior_channels is not None:  # "input" stands for None, the input's width
        cfg = dataclasses.replace(cfg, prior_channels=None if args.prior_channels == "input" else args.prior_channels)
    T = args.window or args.frames
    if args.window is not None and args.window > args.frames:
        raise UsageError(f"--window {args.window}: expected at most --frames ({args.frames})")
    first = cfg.first_conditioned
    if args.targets_only and T <= first:
        raise UsageError(f"--targets-only: {T}-frame training clips have no frame after the first {first} "
                         f"(context): use longer clips (--frames/--window), a shorter --context, or --no-targets-only")
    if cfg.image_size % 2 ** cfg.levels:  # each level halves the frame
        raise UsageError(f"--image-size: expected a multiple of {2 ** cfg.levels} (2 ** levels, levels "
                         f"{cfg.levels}), got {cfg.image_size}")
    return cfg


def num_labels(args, kind) -> int:
    """Classes of label `kind` in --data, checked before training."""
    if args.data.startswith("folder:"):
        if kind != "folder":
            raise UsageError(f"--label {kind}: a folder's label is its sub-folder: use --label folder")
        try:
            return VideoFolder(args.data.split(":", 1)[1], frames=args.frames, size=8, channels=1).num_labels("folder")
        except ValueError as e:
            raise UsageError(f"--data: {e}") from e
    if args.data != "shapes" or kind == "folder":
        raise UsageError(f"--label {kind}: labels come from --data shapes ({', '.join(StochasticMovement.LABELS)}) "
                         f"or a labelled folder (folder), not from --data {args.data}")
    return StochasticMovement(1, frames=2, size=8).num_labels(kind)


def resolve_cglow_config(args) -> CGlowConfig:
    overrides = {"levels": args.levels, "steps": args.flow_steps, "hidden": args.hidden, "n_bits": args.n_bits,
                 "image_size": args.image_size, "affine": None if args.coupling is None else args.coupling == "affine",
                 "state_channels": args.state_channels, "tbptt": args.tbptt, "variant": args.variant}
    base = CGLOW_CONFIGS[args.config]
    overrides["num_labels"] = num_labels(args, args.label) if args.variant == "state_label" else 0
    try:
        cfg = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as e:
        raise UsageError(str(e)) from None
    if cfg.image_size % 2 ** cfg.levels:
        raise UsageError(f"--image-size: expected a multiple of {2 ** cfg.levels} (2 ** levels, levels "
                         f"{cfg.levels}), got {cfg.image_size}")
    return cfg


def resolve_rfn_config(args) -> RFNConfig:
    overrides = {"levels": args.levels, "steps": args.flow_steps, "hidden": args.hidden, "n_bits": args.n_bits,
                 "image_size": args.image_size, "affine": None if args.coupling is None else args.coupling == "affine",
                 "extractor": args.extractor, "h_channels": args.h_channels, "z_channels": args.z_channels,
                 "base_width": args.base_width, "a_channels": args.a_channels, "smoothing": args.smoothing,
                 "res_q": args.res_q, "overshooting": args.overshooting, "coupling_scale": args.coupling_scale}
    try:
        return dataclasses.replace(RFN_CONFIGS[args.config], **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as e:
        raise UsageError(f"--config {args.config} with the overrides: {e}") from None


def kl_weight(args, done) -> float:
    """The RFN's beta at step `done`: linear from --beta-start to 1 over --beta-steps steps, then 1."""
    return 1.0 if args.beta_steps == 0 else args.beta_start + (1.0 - args.beta_start) * min(1.0, done / args.beta_steps)


def fit_to_memory(args, cfg):
    """--memory-budget with --fit: set --frames or --batch-size from a memory plan of the model (meta device)."""
    if args.model != "videoflow":
        return
    if (args.fit is None) != (args.memory_budget is None):
        raise UsageError("--fit and --memory-budget go together: --memory-budget GB --fit frames|batch")
    if args.fit is None:
        return
    from flowkern.models.videoflow import memory_plan
    plan = memory_plan(cfg, "meta", batch=2, frames=(64, 128))  # long clips: the peak is convex in the length
    budget = args.memory_budget * 1e9
    if args.fit == "frames":
        frames = plan.longest_clip(budget, args.batch_size)
        if frames < 2:
            raise UsageError(f"--memory-budget {args.memory_budget:g}: not even 2-frame clips fit at --batch-size "
                             f"{args.batch_size} (about {plan.peak(args.batch_size, 2) / 1e9:.3g} GB)")
        args.frames = frames
    else:
        batch = plan.largest_batch(budget, args.frames)
        if batch < 1:
            raise UsageError(f"--memory-budget {args.memory_budget:g}: not even one {args.frames}-frame clip fits "
                             f"(about {plan.peak(1, args.frames) / 1e9:.3g} GB)")
        args.batch_size = batch
    print(f"memory plan: {plan.fixed / 1e9:.3g} GB + {plan.per_clip / 1e6:.3g} MB per clip + "
          f"{plan.per_frame / 1e6:.3g} MB per frame -> --batch-size {args.batch_size} --frames {args.frames} "
          f"(about {plan.peak(args.batch_size, args.frames) / 1e9:.3g} GB of {args.memory_budget:g})", flush=True)


def _config_differences(saved, cfg, saved_args, args):
    diffs = []
    flags = {"cglow": CGLOW_FLAG_OF_FIELD, "rfn": RFN_FLAG_OF_FIELD}.get(args.model, FLAG_OF_FIELD)
    for f in dataclasses.fields(cfg):
        old, new = getattr(saved, f.name), getattr(cfg, f.name)
        if old != new:
            flag = flags.get(f.name)
            diffs.append(f"{flag} {old} in the checkpoint, {new} now" if flag else
                         f"--config {saved_args.get('config')} in the checkpoint, {args.config} now ({f.name} {old} "
                         f"vs {new})")
    return diffs


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_frames(model, dataset, args, cfg, device, rank, world) -> list:
    """Held-out bits/pixel of each frame given the earlier ones, averaged over the first --eval-clips clips (fixed
    dequantization noise, so evaluations are comparable): a list of T values (RFN: T - 1, frames 2..T, its ELBO at
    beta 1)."""
    model.eval()
    beta = getattr(model, "beta", None)
    if beta is not None:
        model.beta = 1.0
    total, count = None, torch.zeros((), device=device, dtype=torch.float64)
    idx = list(range(rank, min(len(dataset), args.eval_clips), world))
    for i in range(0, len(idx), args.batch_size):
        clips, labels = clips_of([dataset[j] for j in idx[i:i + args.batch_size]])
        video = dequantize(clips, cfg.n_bits, args.seed + 7, -1, i, device)  # fixed noise: comparable evals
        lp = model.log_prob_frames(video) if labels is None else model.log_prob_frames(video, labels.to(device))
        bpp = flowkern.bits_per_dim(lp, model.frame_dims, cfg.n_bits).double().sum(0)
        total = bpp if total is None else total + bpp
        count += clips.shape[0]
    if total is None:
        total = torch.zeros(args.frames - (args.model == "rfn"), device=device, dtype=torch.float64)
    if world > 1:
        dist.all_reduce(total)
        dist.all_reduce(count)
    model.train()
    if beta is not None:
        model.beta = beta
    if count.item() == 0:  # never log a perfect score of nothing
        raise RuntimeError("evaluate: no held-out clip was evaluated")
    return (total / count).tolist()


def evaluate_score(frames, model, args) -> float:
    """The run's held-out score from per-frame bits/pixel: the mean over the frames the model predicts (VideoFlow:
    those after its first `context`; CGlow: every frame, the head's and the tail's)."""
    first = 0 if args.model in ("cglow", "rfn") else min(model.first_conditioned, len(frames) - 1)
    return sum(frames[first:]) / len(frames[first:])


def evaluate(model, dataset, args, cfg, device, rank, world) -> float:
    return evaluate_score(evaluate_frames(model, dataset, args, cfg, device, rank, world), model, args)


def motion_measurable(dataset, args) -> bool:
    """Continuation accuracy needs Stochastic Movement clips of at least 3 frames (2 given, 1 sampled)."""
    return isinstance(unlabelled(dataset), StochasticMovement) and args.frames >= 3


def unlabelled(dataset):
    return dataset.dataset if isinstance(dataset, Labelled) else dataset


def continuation_accuracy_of(model, dataset, args) -> float:
    """flowkern.models.motion's continuation accuracy (frame 3 sampled after frames 1-2) on the first --eval-clips
    held-out clips at --temperature; the same sampling noise at every evaluation."""
    model.eval()
    try:
        return continuation_accuracy(model, unlabelled(dataset), list(range(min(len(dataset), args.eval_clips))), c=2,
                                     temperature=args.temperature, seed=args.seed + 11,
                                     batch_size=args.batch_size)["continuation_accuracy"]
    finally:
        model.train()


@torch.no_grad()
def sample_context(args, cfg) -> int:
    """Given frames before the sampled ones: VideoFlow's context; CGlow's 1; the RFN's warm-up, half the clip."""
    return {"cglow": 1, "rfn": max(1, args.frames // 2)}.get(args.model, getattr(cfg, "context", 1))


def write_samples(model, dataset, args, cfg, device, tag):
    """Held-out clips continued from their first frames (VideoFlow: its `context`; CGlow: one), as GIFs, an MP4 and
    a grid of rows real / sampled; CGlow also samples whole clips from scratch (with the held-out clips' labels),
    as a third row per clip and {tag}-scratch-*.gif."""
    model.eval()
    n = min(args.num_samples, len(dataset))
    clips, labels = clips_of([dataset[j] for j in range(n)])
    ctx_frames = min(sample_context(args, cfg), clips.shape[1] - 1)
    context = flowkern.preprocess(clips[:, :ctx_frames], cfg.n_bits, noise=False).to(device)
    g = torch.Generator(device=device).manual_seed(args.seed)
    video = model.generate(context, args.frames - ctx_frames, temperature=args.temperature, generator=g)
    frames = [to_uint8_frames(v, cfg.n_bits) for v in video]
    out = os.path.join(args.out, "samples")
    for i, f in enumerate(frames):
        write_video(os.path.join(out, f"{tag}-{i}.gif"), f)
    write_video(os.path.join(out, f"{tag}-0.mp4"), frames[0])
    real = [to_uint8_frames(flowkern.preprocess(c, cfg.n_bits, noise=False), cfg.n_bits) for c in clips]
    rows = [real, frames]
    if args.model == "cglow":
        scratch = model.generate(None, args.frames, temperature=args.temperature, batch_size=n, generator=g,
                                 labels=None if labels is None else labels.to(device))
        rows.append([to_uint8_frames(v, cfg.n_bits) for v in scratch])
        for i, f in enumerate(rows[-1]):
            write_video(os.path.join(out, f"{tag}-scratch-{i}.gif"), f)
    import numpy as np
    write_grid(os.path.join(out, f"{tag}-grid.png"), np.stack([x for group in zip(*rows) for x in group]))
    model.train()


# ---------------------------------------------------------------------------------------------- training
INIT_FRAMES = 8  # frames per clip of the batch ActNorm initialises from
LOG_HEADER = ["step", "train_bpp", "lr", "grad_norm", "skipped", "eval_bpp", "seconds", "continuation_acc"]
CGLOW_LOG_HEADER = LOG_HEADER + ["eval_head_bpp", "eval_tail_bpp"]  # frame 1 (the head), frames 2.. (the tail)
RFN_LOG_HEADER = LOG_HEADER + ["beta"]  # the KL's weight in that step's loss
RUN_FILES = ("checkpoint.pt", "metrics.csv")  # an --out holding one of these holds a run
RUN_FOLDERS = ("samples", "tb")


def prepare(args):
    """Every check that needs the files (the --out folder, the checkpoint, the data), before any rank writes:
    (cfg, checkpoint state or None, train set, eval set). Raises UsageError."""
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out: {args.out} exists and is not a directory")
    cfg = resolve_config(args)
    fit_to_memory(args, cfg)
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    existing = [f for f in RUN_FILES if os.path.exists(os.path.join(args.out, f))]
    if existing and not (args.resume or args.overwrite):
        raise UsageError(f"--out: {args.out} holds a run ({', '.join(existing)}): pass --resume to continue it, "
                         "--overwrite to replace it, or choose another --out")
    resume = None
    if args.resume and os.path.exists(ckpt_path):
        try:
            resume = load_checkpoint(ckpt_path)
        except CheckpointError as e:
            raise UsageError(f"--resume: {e}") from None
        saved = resume["args"].get("model", "videoflow")
        if saved != args.model:
            raise UsageError(f"--resume: the checkpoint in {args.out} holds a {saved} model, not {args.model}")
        diffs = _config_differences(config_from(resume["config"], saved), cfg, resume["args"], args)
        if diffs:  # the checkpoint's model is what would train: say so rather than record arguments it did not use
            raise UsageError(f"--resume: the checkpoint in {args.out} was trained with other model arguments: "
                             f"{'; '.join(diffs)}. Resume with the checkpoint's values, or train into another --out")
        if resume["step"] >= args.steps:
            raise UsageError(f"--steps {args.steps}: the checkpoint in {args.out} is already at step "
                             f"{resume['step']}; give a larger --steps to train further")
    train_set, eval_set = make_datasets(args, cfg)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    per_process = len(DistributedSampler(train_set, num_replicas=world, rank=rank, drop_last=True))
    if per_process < args.batch_size:
        raise UsageError(f"--batch-size {args.batch_size}: expected at most the {per_process} training clips per "
                         f"process ({len(train_set)} clips over {world} processes; see --train-videos or --data)")
    return cfg, resume, train_set, eval_set


def _start_log(path, start, header):
    """The metrics log, holding exactly the rows up to `start` (rows a crashed run logged after the checkpoint we
    resume from are dropped), rewritten atomically."""
    rows = []
    if start > 0 and os.path.exists(path):
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and r[0].isdigit() and int(r[0]) <= start]

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([header] + rows)
    atomic_write(path, write)


def learning_rate(args, done):
    """Linear warm-up to --lr over --warmup steps; from --decay-from on, linear decay to --lr * --decay-to at
    --steps."""
    lr = args.lr * min(1.0, done / max(1, args.warmup))
    if args.decay_from is not None and done > args.decay_from:
        frac = min(1.0, (done - args.decay_from) / max(1, args.steps - args.decay_from))
        lr *= 1.0 - (1.0 - args.decay_to) * frac
    return lr


def target_frames(args, model) -> int:
    """The first frame the loss counts: with --targets-only, the frames the latent prior network predicts (after
    the first `context`, or after the first with pad_context), as the reference trains; else 0 (every frame)."""
    T = args.window or args.frames
    return min(model.first_conditioned, T - 1) if getattr(args, "targets_only", False) else 0


def _due(done, every):
    return every > 0 and done % every == 0


def train(args):
    cfg, resume, train_set, eval_set = prepare(args)  # before any process writes anything
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        dist.barrier()  # every rank has checked --out before rank 0 writes to it
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if torch.cuda.is_available() and args.device != "cpu":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        keep_freed_cpu_memory()  # no page faults on reallocating each step's activations
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    log_path = os.path.join(args.out, "metrics.csv")
    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
        if args.overwrite:  # asked for explicitly: the old run's files go, so nothing stale mixes with the new
            for name in RUN_FILES:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(args.out, name))
            for name in RUN_FOLDERS:
                shutil.rmtree(os.path.join(args.out, name), ignore_errors=True)
        for folder in (args.out, os.path.join(args.out, "samples")):
            _remove_stale_temporaries(folder)

    torch.manual_seed(args.seed)
    try:
        model = (model_from_checkpoint(resume, ckpt_path) if resume else MODELS[args.model][0](cfg)).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=tuple(args.adam_betas), eps=args.adam_eps)
        if resume:
            opt.load_state_dict(resume["optimizer"])
    except CheckpointError as e:
        raise UsageError(f"--resume: {e}") from None
    except ValueError as e:
        raise UsageError(f"--resume: {ckpt_path}: its optimizer state does not fit the model: {e}") from None
    start, metrics = 0, {}
    if resume is not None:
        start, metrics = resume["step"], resume["metrics"]
        torch.set_rng_state(resume["rng_cpu"])
    ddp = torch.nn.parallel.DistributedDataParallel(model) if distributed else model

    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed,
                                 drop_last=True)
    if rank == 0:
        _start_log(log_path, start, {"cglow": CGLOW_LOG_HEADER, "rfn": RFN_LOG_HEADER}.get(args.model, LOG_HEADER))
    log = open(log_path, "a", newline="") if rank == 0 else None
    writer = csv.writer(log) if log else None
    tb = None
    if args.tensorboard and rank == 0:
        from torch.utils.tensorboard import SummaryWriter
        tb = SummaryWriter(os.path.join(args.out, "tb"))

    if resume is None:
        # ActNorm's data-dependent init, on the first batch's first frames without grad: a chain whose init is
        # pending trains with plain autograd, so a long clip's first step would need plain autograd's memory.
        clips, labels = batch_at(train_set, sampler, 0, args.batch_size)
        init = dequantize(random_windows(clips, args.window, args.seed, 0, rank), cfg.n_bits, args.seed, 0, rank,
                          device)
        with torch.no_grad():
            model(init[:, :INIT_FRAMES], *([] if labels is None else [labels.to(device)]))
    good = _snapshot(model, opt)
    skipped, skipped_here = metrics.get("skipped", 0), 0
    t0 = time.time() - metrics.get("seconds", 0.0)  # the seconds column counts training time across resumes
    D = cfg.in_channels * cfg.image_size ** 2
    first = target_frames(args, model)
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, disable=rank != 0, desc="train")
    for step in bar:
        done, last = step + 1, step + 1 == args.steps
        lr = learning_rate(args, done)
        for group in opt.param_groups:
            group["lr"] = lr
        if args.model == "rfn":
            model.beta = kl_weight(args, done)
        clips, labels = batch_at(train_set, sampler, step, args.batch_size)
        clips = random_windows(clips, args.window, args.seed, step, rank)
        extra = [] if labels is None else [labels.to(device)]
        video = dequantize(clips, cfg.n_bits, args.seed, step, rank, device)
        opt.zero_grad(set_to_none=True)
        with _measured(args.measure_memory and step == start and rank == 0, model, video, args) as mem:
            # nats per dimension of the target frames; DDP's hooks run on forward (= log_prob_frames)
            if args.model == "cglow" and cfg.tbptt is not None and not distributed:
                # truncated backprop through the state: backward window by window, in one window's memory
                lp = model.backward_by_window(video, *extra, weight=1.0 / (video.shape[0] * video.shape[1] * D))
                loss = -lp.mean() / D
            else:
                loss = -ddp(video, *extra)[:, first:].mean() / D
                loss.backward()
        if mem is not None:
            _write_memory_report(os.path.join(args.out, "memory.json"), mem, video, done)
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        finite = torch.isfinite(loss.detach()) & torch.isfinite(gnorm)
        if world > 1:  # every rank must take the same decision
            finite = finite.float()
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            finite = finite.bool()
        if bool(finite):
            opt.step()
            if done % args.snapshot_every == 0:
                good = _snapshot(model, opt)
        else:  # NaN/Inf guard: skip this step and restore the last good state; the end-of-run work still happens
            skipped += 1
            skipped_here += 1
            model.load_state_dict(good[0])
            opt.load_state_dict(good[1])
        train_bpp = (loss.item() + cfg.n_bits * math.log(2)) / math.log(2)
        eval_bpp, acc, head_tail = "", "", ["", ""]
        if last or _due(done, args.eval_every):
            per_frame = evaluate_frames(model, eval_set, args, cfg, device, rank, world)
            eval_bpp = evaluate_score(per_frame, model, args)
            metrics.setdefault("eval", []).append([done, eval_bpp])
            metrics.setdefault("eval_frames", []).append([done] + per_frame)
            if args.model == "cglow":
                head_tail = [f"{per_frame[0]:.5f}", f"{sum(per_frame[1:]) / max(1, len(per_frame) - 1):.5f}"]
            if rank == 0 and motion_measurable(eval_set, args):
                acc = continuation_accuracy_of(model, eval_set, args)
                metrics.setdefault("continuation", []).append([done, acc])
        metrics["skipped"], metrics["seconds"] = skipped, time.time() - t0
        if rank == 0:
            bar.set_postfix(bpp=f"{train_bpp:.3f}", eval=eval_bpp if eval_bpp == "" else f"{eval_bpp:.3f}")
            writer.writerow([done, f"{train_bpp:.5f}", f"{lr:.3g}", f"{gnorm.item():.4g}", skipped,
                             eval_bpp if eval_bpp == "" else f"{eval_bpp:.5f}", f"{time.time() - t0:.1f}",
                             acc if acc == "" else f"{acc:.4f}"] + (head_tail if args.model == "cglow" else []) +
                            ([f"{model.beta:.4g}"] if args.model == "rfn" else []))
            log.flush()
            if tb:
                if bool(finite):
                    tb.add_scalar("train/bpp", train_bpp, done)
                if eval_bpp != "":
                    tb.add_scalar("eval/bpp", eval_bpp, done)
            if last or _due(done, args.ckpt_every):
                save_checkpoint(ckpt_path, model, opt, done, args, cfg, metrics)
            if last or _due(done, args.sample_every):
                write_samples(model, eval_set, args, cfg, device, f"step{done}")
    if log:
        log.close()
    if distributed:
        del ddp  # its reducer holds the process group: release it before tearing the group down
        dist.barrier()
        dist.destroy_process_group()
    if skipped_here == args.steps - start:
        raise TrainingFailed(f"all {skipped_here} steps of this run were skipped by the NaN/Inf guard (the loss or "
                             f"the gradient norm was never finite): nothing was learned. The checkpoint, log and "
                             f"samples are in {args.out}; try a lower --lr or --clip, and check the data")
    return model, metrics


@contextlib.contextmanager
def _measured(enabled, model, video, args):
    """Yields a PeakMemory tracking the step when enabled (on CUDA, the allocator's peak is recorded too)."""
    if not enabled:
        yield None
        return
    from flowkern.memory import PeakMemory
    if video.is_cuda:
        torch.cuda.reset_peak_memory_stats(video.device)
    with PeakMemory(model, video) as mem:
        yield mem
    mem.cuda_peak = torch.cuda.max_memory_allocated(video.device) if video.is_cuda else None


def _write_memory_report(path, mem, video, step):
    import json
    MiB = 2**20
    report = {"step": step, "batch": video.shape[0], "frames": video.shape[1],
              "measure": "flowkern.memory.PeakMemory: every tensor storage alive in forward and backward",
              "peak_MiB": mem.peak_bytes / MiB, "at_peak_MiB": {k: v / MiB for k, v in mem.breakdown().items()}}
    if mem.cuda_peak is not None:
        report["cuda_max_memory_allocated_MiB"] = mem.cuda_peak / MiB

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
    atomic_write(path, write)
    print(f"memory: real peak of training step {step}: {report['peak_MiB']:.1f} MiB "
          f"({', '.join(f'{k} {v:.1f}' for k, v in report['at_peak_MiB'].items())}) -> {path}", flush=True)


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


# ---------------------------------------------------------------------------------------------- arguments
def _int_check(test, expected):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not test(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    parse.__name__ = expected  # argparse names the type in some messages
    return parse


def _float_check(test, expected):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and test(value)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    parse.__name__ = expected
    return parse


positive_int = _int_check(lambda v: v > 0, "a positive integer")
nonnegative_int = _int_check(lambda v: v >= 0, "a non-negative integer")
every_int = _int_check(lambda v: v >= 0, "0 (only at the end) or a positive integer")
clip_frames = _int_check(lambda v: v >= 2, "an integer >= 2 (context and predicted frames)")
n_bits_int = _int_check(lambda v: 1 <= v <= 8, "an integer from 1 to 8")
positive_float = _float_check(lambda v: v > 0, "a positive number")
nonnegative_float = _float_check(lambda v: v >= 0, "a non-negative number")
unit_float = _float_check(lambda v: 0 <= v <= 1, "a number from 0 to 1")
adam_beta = _float_check(lambda v: 0 <= v < 1, "a number in [0, 1)")


def advect_size(text):
    k = int(text)
    if k < 0 or (k and k % 2 == 0):
        raise argparse.ArgumentTypeError(f"expected 0 or an odd kernel size, got {text}")
    return k


def prior_width(text):
    if text == "input":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'input', got {text!r}") from None


def data_source(text):
    if text in ("shapes", "digits"):
        return text
    if text.startswith("folder:"):
        if not os.path.isdir(text.split(":", 1)[1]):
            raise argparse.ArgumentTypeError(f"{text}: not a directory")
        return text
    raise argparse.ArgumentTypeError(f"expected shapes, digits or folder:PATH, got {text!r}")


def _add_run_arguments(v, default_out, default_frames):
    """The arguments every model's training shares: data, run folder, optimisation, evaluation, checkpoints."""
    v.add_argument("--data", type=data_source, default="shapes",
                   help="shapes | digits | folder:PATH (videos or .npy/.npz; see flowkern.models.data.VALUE_RULES)")
    v.add_argument("--out", default=default_out, help="the run's folder; one that holds a run needs --resume or "
                                                      "--overwrite")
    v.add_argument("--steps", type=positive_int, default=2000, help="total steps (with --resume: counting the "
                                                                     "checkpoint's)")
    v.add_argument("--batch-size", type=positive_int, default=8, help="per process")
    v.add_argument("--frames", type=clip_frames, default=default_frames, help="frames per clip of the dataset")
    v.add_argument("--lr", type=positive_float, default=3e-4)
    v.add_argument("--warmup", type=nonnegative_int, default=200, help="linear learning-rate warm-up steps (0: none)")
    v.add_argument("--decay-from", type=nonnegative_int, default=None,
                   help="decay the learning rate linearly from this step to --lr * --decay-to at --steps")
    v.add_argument("--decay-to", type=unit_float, default=0.0, help="the final fraction of --lr (with --decay-from)")
    v.add_argument("--adam-betas", type=adam_beta, nargs=2, default=(0.85, 0.997), metavar=("B1", "B2"),
                   help="Adam's betas (default: VideoFlow's reference)")
    v.add_argument("--adam-eps", type=positive_float, default=1e-6, help="Adam's epsilon (default: VideoFlow's "
                                                                         "reference)")
    v.add_argument("--clip", type=positive_float, default=50.0, help="gradient-norm clipping")
    v.add_argument("--eval-every", type=every_int, default=200, help="evaluate every N steps (0: only at the end; "
                                                                     "always at the end)")
    v.add_argument("--eval-clips", type=positive_int, default=64)
    v.add_argument("--ckpt-every", type=every_int, default=200, help="checkpoint every N steps (0: only at the end; "
                                                                     "always at the end)")
    v.add_argument("--snapshot-every", type=positive_int, default=50,
                   help="in-memory last-good state for the NaN guard")
    v.add_argument("--sample-every", type=every_int, default=0, help="write sample videos every N steps (0: only at "
                                                                     "the end; always at the end)")
    v.add_argument("--num-samples", type=positive_int, default=4)
    v.add_argument("--temperature", type=nonnegative_float, default=0.7)
    v.add_argument("--speed", type=positive_float, default=None,
                   help="shapes: pixels the object moves per frame (default: 4 * image size / 64, the paper's motion "
                        "scaled to the frame)")
    v.add_argument("--train-videos", type=positive_int, default=20000)
    v.add_argument("--eval-videos", type=positive_int, default=256)
    v.add_argument("--seed", type=nonnegative_int, default=0)
    again = v.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue from OUT/checkpoint.pt if it exists (same model arguments)")
    again.add_argument("--overwrite", action="store_true",
                       help="delete the run in OUT (checkpoint, log, samples) and start again")
    v.add_argument("--tensorboard", action="store_true")
    v.add_argument("--device", choices=["auto", "cpu"], default="auto")
    for name in ("levels", "flow-steps", "hidden"):
        v.add_argument(f"--{name}", type=positive_int, default=None, help="override the config's value")
    v.add_argument("--n-bits", type=n_bits_int, default=None, help="override the config's value")
    v.add_argument("--coupling", choices=["affine", "additive"], default=None, help="override the config's value")
    v.add_argument("--image-size", type=positive_int, default=None,
                   help="override the config's value (a multiple of 2 ** levels)")
    v.add_argument("--measure-memory", action="store_true",
                   help="measure the real peak memory of the first training step (every tensor alive) and write it "
                        "to OUT/memory.json")


def parser():
    p = argparse.ArgumentParser(prog="python -m flowkern.models.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="model", required=True)
    v = sub.add_parser("videoflow", help="VideoFlow (Kumar et al. 2020)")
    v.add_argument("--config", choices=sorted(CONFIGS), default="shapes")
    _add_run_arguments(v, "runs/videoflow", 3)
    v.add_argument("--window", type=clip_frames, default=None,
                   help="train on a random WINDOW-frame stretch of each clip, as the reference does (default: whole "
                        "clips); held-out evaluation uses whole clips")
    v.add_argument("--targets-only", action=argparse.BooleanOptionalAction, default=True,
                   help="the loss counts only the frames after the first `context` (the reference's targets), not "
                        "the first frames' unconditional likelihood")
    for name in ("context", "prior-blocks", "prior-hidden"):
        v.add_argument(f"--{name}", type=positive_int, default=None, help="override the config's value")
    v.add_argument("--prior-channels", type=prior_width, default=None,
                   help="override the config's width of the prior network's residual stream: N, or 'input' (the "
                        "width of its input, as in the reference code)")
    v.add_argument("--skip", action=argparse.BooleanOptionalAction, default=None,
                   help="override the config's latent skip (prior mean = previous latent + delta; the paper has it, "
                        "the reference code not)")
    v.add_argument("--advect", type=advect_size, default=None,
                   help="override the config's advection: 0 (off), or an odd K: the prior's mean moves the previous "
                        "latent by a K x K kernel it predicts per clip (needs the latent skip)")
    v.add_argument("--advect-mixture", action=argparse.BooleanOptionalAction, default=None,
                   help="override the config's value: the advection's taps weigh a mixture of shifted copies (a "
                        "sample picks one) instead of blending them (needs --advect)")
    v.add_argument("--advect-corr", action=argparse.BooleanOptionalAction, default=None,
                   help="override the config's value: the advection kernel also sees how well each of its offsets "
                        "matches the move between the last two latents (needs --advect and --context >= 2)")
    v.add_argument("--pad-context", action=argparse.BooleanOptionalAction, default=None,
                   help="override the config's value: frames with fewer than --context previous latents use the "
                        "prior network over a zero-padded window (else the first-frame prior)")
    v.add_argument("--coupling-net", choices=list(COUPLING_NETS), default=None,
                   help="override the config's coupling network: glow (ReLU) or gatu (ActNorm + gated units)")
    v.add_argument("--recompute-chunk", type=positive_int, default=None,
                   help="override the config's value: frames the reversible backward recomputes at once")
    v.add_argument("--memory-budget", type=positive_float, default=None,
                   help="GB one training step may use per process; with --fit, the clip length or batch size is "
                        "picked to fit, from a memory plan of the model measured on the meta device")
    v.add_argument("--fit", choices=["frames", "batch"], default=None,
                   help="what --memory-budget picks: the longest clip at --batch-size, or the largest batch of "
                        "--frames-frame clips")

    c = sub.add_parser("cglow", help="CGlow (Donahue: label-conditioned next-frame video generation with flows)")
    c.add_argument("--config", choices=sorted(CGLOW_CONFIGS), default="small")
    _add_run_arguments(c, "runs/cglow", 4)
    c.add_argument("--variant", choices=CGLOW_VARIANTS, default="state_label",
                   help="the paper's Table I: init (independent frames), prev_frame (the tail sees the previous "
                        "frame), state (and the state), state_label (and the head sees the clip's label)")
    c.add_argument("--label", choices=StochasticMovement.LABELS + ("folder",), default="shape",
                   help="with --variant state_label: the label (shapes: shape, direction or color; a labelled "
                        "folder: folder, its sub-folder)")
    c.add_argument("--state-channels", type=positive_int, default=None, help="override the config's value")
    c.add_argument("--tbptt", type=positive_int, default=None,
                   help="frames the state's gradient flows back through (truncated backprop; default: the whole "
                        "clip)")
    c.set_defaults(window=None)  # whole clips: the state starts at the first frame

    r = sub.add_parser("rfn", help="the Recurrent Flow Network (SRNN + conditional Glow; Glissov & Konradsen)")
    r.add_argument("--config", choices=sorted(RFN_CONFIGS), default="small")
    _add_run_arguments(r, "runs/rfn", 10)
    r.set_defaults(data="digits", window=None)
    r.add_argument("--extractor", choices=EXTRACTORS, default=None,
                   help="override the config's feature extractor: vgg (max-pool, nearest up-sampling) or dcgan "
                        "(stride-2 convs, transposed convs)")
    for name in ("h-channels", "z-channels", "a-channels", "base-width"):
        r.add_argument(f"--{name}", type=positive_int, default=None, help="override the config's value")
    r.add_argument("--smoothing", action=argparse.BooleanOptionalAction, default=None,
                   help="override the config's value: the posterior reads a backward ConvLSTM over the clip")
    r.add_argument("--res-q", action=argparse.BooleanOptionalAction, default=None,
                   help="override the config's value: the posterior's mean is the prior's plus a residual")
    r.add_argument("--overshooting", type=positive_int, default=None,
                   help="override the config's value: latent overshooting over D steps (1: off)")
    r.add_argument("--coupling-scale", choices=COUPLING_SCALES, default=None,
                   help="override the config's value: the affine couplings' scale, tanh (the thesis's clamp, "
                        "log s = s_scale * tanh(h) + s_shift, both learned; the default) or sigmoid (Glow's)")
    r.add_argument("--beta-start", type=unit_float, default=1e-7,
                   help="the KL's weight at step 0, raised linearly to 1 over --beta-steps (the thesis: 1e-7 to 1)")
    r.add_argument("--beta-steps", type=nonnegative_int, default=1000,
                   help="steps of the KL weight's linear warm-up (0: beta 1 throughout)")
    return p


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    try:
        train(args)
    except UsageError as e:  # found before any work: a usage error, with the command's usage
        p.error(str(e))
    except TrainingFailed as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    sys.exit(main())
