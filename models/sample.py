"""Sample videos from a trained checkpoint: `python -m flowkern.models.sample --checkpoint runs/x/checkpoint.pt`.

Continues held-out clips of the checkpoint's dataset from their first frames (VideoFlow: its context length; CGlow:
one frame), or samples whole clips with --unconditional (a label-conditioned CGlow: labels 0, 1, 2, ... in turn),
and writes GIF + MP4 videos and a PNG grid. The checkpoint is loaded
with torch.load(..., weights_only=True). Files already in --out are not replaced unless --overwrite is given.
"""
import argparse
import os
from types import SimpleNamespace

import torch

import flowkern
from flowkern.models.train import (CheckpointError, UsageError, clip_frames, clips_of, load_checkpoint,
                                   make_datasets, model_from_checkpoint, nonnegative_float, nonnegative_int,
                                   positive_int, sample_context)
from flowkern.models.video_io import to_uint8_frames, write_grid, write_video


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m flowkern.models.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by flowkern.models.train")
    p.add_argument("--out", default="samples")
    p.add_argument("--num", type=positive_int, default=4)
    p.add_argument("--frames", type=clip_frames, default=None,
                   help="total frames per video (default: the training clips')")
    p.add_argument("--temperature", type=nonnegative_float, default=0.7)
    p.add_argument("--unconditional", action="store_true")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace sample files already in --out")
    args = p.parse_args(argv)

    names = [f"sample-{i}.{ext}" for i in range(args.num) for ext in ("gif", "mp4")] + ["samples-grid.png"]
    clobbered = [n for n in names if os.path.exists(os.path.join(args.out, n))]
    if clobbered and not args.overwrite:
        p.error(f"--out: {os.path.join(args.out, clobbered[0])} exists: choose another --out, or pass --overwrite "
                "to replace the samples there")
    try:
        state = load_checkpoint(args.checkpoint, required=("model", "config", "args"))
        model = model_from_checkpoint(state, args.checkpoint)
    except CheckpointError as e:
        p.error(f"--checkpoint: {e}")
    cfg = model.cfg
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    train_args = SimpleNamespace(**state["args"])
    frames = args.frames or train_args.frames
    g = torch.Generator(device=device).manual_seed(args.seed)
    if args.unconditional and getattr(train_args, "model", "videoflow") == "rfn":
        p.error("--unconditional: the RFN does not model a first frame; it continues given frames (leave it out)")
    if args.unconditional:
        n_labels = getattr(cfg, "num_labels", 0)
        labels = {"labels": torch.arange(args.num, device=device) % n_labels} if n_labels else {}
        video = model.generate(None, frames, args.temperature, batch_size=args.num, generator=g, **labels)
    else:
        train_args.frames = frames
        try:
            _, held_out = make_datasets(train_args, cfg)
        except UsageError as e:
            p.error(f"--checkpoint: cannot rebuild the held-out clips of its training data ({e}); "
                    "use --unconditional")
        clips, _ = clips_of([held_out[i] for i in range(min(args.num, len(held_out)))])
        c = min(sample_context(train_args, cfg), frames - 1)
        context = flowkern.preprocess(clips[:, :c], cfg.n_bits, noise=False).to(device)
        video = model.generate(context, frames - c, args.temperature, generator=g)
    out = [to_uint8_frames(v, cfg.n_bits) for v in video]
    for i, f in enumerate(out):
        write_video(os.path.join(args.out, f"sample-{i}.gif"), f)
        write_video(os.path.join(args.out, f"sample-{i}.mp4"), f)
    import numpy as np
    write_grid(os.path.join(args.out, "samples-grid.png"), np.stack(out))
    print(f"wrote {len(out)} videos ({frames} frames, temperature {args.temperature}) to {args.out}")


if __name__ == "__main__":
    main()
