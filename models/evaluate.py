"""Measure what a checkpoint learned: `python -m flowkern.models.evaluate --checkpoint runs/x/checkpoint.pt`.

For VideoFlow and CGlow alike, prints per-frame held-out bits/pixel (CGlow: frame 1 is its head's, given the clip's
label where it takes one) and, on Stochastic Movement, the motion measures of flowkern.models.motion:
the likelihood motion tests (true next frame vs the motion reversed and vs a static copy), the continuation accuracy
of sampled frames and the first-frame choice, over a --temperatures sweep. Clips come from --data-seed, by default a
seed neither the training nor the training command's held-out set used (a video folder: its held-out tail). --json
writes the numbers to a file (never over an existing one unless --overwrite). The checkpoint is loaded with
torch.load(..., weights_only=True). --untrained measures a fresh model of the checkpoint's config instead (ActNorm
initialised on training clips, as training starts): CGlow's paper reports that as its "Glow + init" row.
"""
import argparse
import json
import os
from types import SimpleNamespace

import torch

from flowkern.models.data import StochasticMovement, StochasticMovingDigits
from flowkern.models.similarity import best_of_n
from flowkern.models.motion import (continuation_accuracy, first_frame_choice, likelihood_motion_tests,
                                    per_frame_bpp)
from flowkern.models.train import (INIT_FRAMES, CheckpointError, UsageError, atomic_write, clip_frames, clips_of,
                                   dequantize, glyph_size, label_kind, load_checkpoint, make_datasets,
                                   model_from_checkpoint, nonnegative_int, positive_int)

FRESH_SEED_OFFSET = 2_000_003  # the training command uses seed (training) and seed + 1_000_003 (held out)


def temperatures(text):
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        values = []
    if not values or any(not (v >= 0) or v == float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative numbers, got {text!r}")
    return values


def parser():
    p = argparse.ArgumentParser(prog="python -m flowkern.models.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by flowkern.models.train")
    p.add_argument("--clips", type=positive_int, default=256, help="held-out clips per measure")
    p.add_argument("--frames", type=clip_frames, default=None, help="frames per clip (default: the training clips')")
    p.add_argument("--data-seed", type=nonnegative_int, default=None,
                   help=f"seed of the evaluation clips (default: the training seed + {FRESH_SEED_OFFSET}, never seen "
                        "in training or its held-out evaluation)")
    p.add_argument("--temperatures", type=temperatures, default=[0.0, 0.3, 0.5, 0.7, 1.0],
                   help="comma-separated sampling temperatures for the motion measures")
    p.add_argument("--context", type=positive_int, default=2,
                   help="given frames before the sampled one in the continuation measures (>= 2)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="sampling seed")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--best-of", type=nonnegative_int, default=0,
                   help="predict the frames after the first --context ones N times per clip and report, per step, the "
                        "best PSNR and SSIM against the truth beside copying the last given frame and a flat frame at its "
                        "median (0: skip)")
    p.add_argument("--untrained", action="store_true",
                   help="evaluate a freshly initialised model of the checkpoint's config, not its weights")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    return p


def evaluate_checkpoint(model, dataset, args, label_kind=None) -> dict:
    idx = list(range(min(args.clips, len(dataset))))
    first = dataset[0]
    frames = int((first[0] if isinstance(first, tuple) else first).shape[0])
    out = {"clips": len(idx), "frames": frames,
           "per_frame_bpp": per_frame_bpp(model, dataset, idx, args.batch_size, args.seed, label_kind)}
    out["first_frame"] = frames - len(out["per_frame_bpp"]) + 1  # the RFN scores frames 2..T
    if args.best_of:
        clips = clips_of([dataset[j] for j in idx])[0]
        out["prediction"] = {str(t): best_of_n(model, clips, args.context, args.best_of, t, args.seed)
                             for t in args.temperatures}
    if not isinstance(dataset, StochasticMovement):
        return out
    out["likelihood_motion"] = likelihood_motion_tests(model, dataset, idx, args.context, args.batch_size, args.seed)
    out["temperatures"] = {}
    for t in args.temperatures:
        out["temperatures"][str(t)] = {
            **continuation_accuracy(model, dataset, idx, args.context, t, args.seed, args.batch_size),
            **first_frame_choice(model, dataset, idx, t, args.seed, args.batch_size)}
    return out


def report(r: dict) -> str:
    lines = [f"{r['clips']} held-out clips",
             "per-frame bits/pixel (log p(x_t | x_<t)): " + ", ".join(f"t={t + 1}: {b:.4f}"
                                                                       for t, b in enumerate(r["per_frame_bpp"],
                                                                                             r["first_frame"] - 1))]
    for t, v in r.get("prediction", {}).items():
        steps = range(1, len(v["psnr"]) + 1)
        def row(values, fmt):
            return " ".join(format(x, fmt) for x in values)
        lines.append(f"temperature {t}, best of {r['best_of']}, predicted steps {steps.start}..{steps.stop - 1}: "
                     f"PSNR {row(v['psnr'], '.2f')} (copying the last frame: {row(v['copy_psnr'], '.2f')}; a flat "
                     f"frame at its median: {row(v['flat_psnr'], '.2f')}); SSIM {row(v['ssim'], '.3f')} (copy: "
                     f"{row(v['copy_ssim'], '.3f')}; flat: {row(v['flat_ssim'], '.3f')}); sampled frames not "
                     f"finite: {row(v['diverged'], '.3f')}")
    if "likelihood_motion" in r:
        m = r["likelihood_motion"]
        lines.append(f"likelihood motion tests: bits/pixel of the next frame true {m['bpp_true']:.4f}, reversed "
                     f"{m['bpp_reversed']:.4f}, static {m['bpp_static']:.4f}; true beats reversed in "
                     f"{m['true_beats_reversed']:.1%}, static in {m['true_beats_static']:.1%} of clips")
        lines.append("temperature | continuation accuracy | object found | first-frame directions covered | "
                     "no move | direction counts")
        for t, v in r["temperatures"].items():
            lines.append(f"{t:>11} | {v['continuation_accuracy']:21.3f} | {v['object_found']:12.3f} | "
                         f"{v['directions_covered']:29d} | {v['no_move']:7.3f} | {v['direction_counts']}")
    return "\n".join(lines)


def untrained_like(model, train_args, device):
    """A fresh model of `model`'s config, its ActNorms initialised on a batch of the training clips (the training
    command's first batch): what training starts from."""
    torch.manual_seed(train_args.seed)
    fresh = type(model)(model.cfg).to(device)
    train_set, _ = make_datasets(train_args, model.cfg)
    clips, labels = clips_of([train_set[j] for j in range(min(len(train_set), train_args.batch_size))])
    video = dequantize(clips, model.cfg.n_bits, train_args.seed, 0, 0, device)
    with torch.no_grad():
        fresh(video[:, :INIT_FRAMES], *([] if labels is None else [labels.to(device)]))
    return fresh.eval()


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if args.context < 2:
        p.error(f"--context: expected >= 2 given frames (the direction is fixed from the second), got {args.context}")
    if args.json and os.path.exists(args.json) and not args.overwrite:
        p.error(f"--json: {args.json} exists: choose another file, or pass --overwrite")
    try:
        state = load_checkpoint(args.checkpoint, required=("model", "config", "args"))
        model = model_from_checkpoint(state, args.checkpoint)
    except CheckpointError as e:
        p.error(f"--checkpoint: {e}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    train_args = SimpleNamespace(**state["args"])
    frames = args.frames or max(train_args.frames, args.context + 1)
    if frames <= args.context:
        p.error(f"--frames {frames}: expected more than --context ({args.context})")
    data_seed = train_args.seed + FRESH_SEED_OFFSET if args.data_seed is None else args.data_seed
    cfg = model.cfg
    if train_args.data == "shapes":
        dataset = StochasticMovement(args.clips, frames=frames, size=cfg.image_size,
                                     speed=getattr(train_args, "speed", None), seed=data_seed)
    elif train_args.data == "digits":
        dataset = StochasticMovingDigits(args.clips, frames=frames, size=cfg.image_size, seed=data_seed,
                                         channels=cfg.in_channels, glyph_size=glyph_size(cfg.image_size))
    else:  # a video folder: the training command's held-out tail
        train_args.frames = frames
        try:
            _, dataset = make_datasets(train_args, model.cfg)
        except UsageError as e:
            p.error(f"--checkpoint: cannot rebuild its data ({e})")
    if args.untrained:
        model = untrained_like(model, train_args, device)
    r = evaluate_checkpoint(model, dataset, args, label_kind(train_args) if train_args.data == "shapes" else None)
    r.update(checkpoint=args.checkpoint, step=0 if args.untrained else state.get("step"), data_seed=data_seed,
             best_of=args.best_of)
    print(report(r))
    if args.json:
        def write(tmp):
            with open(tmp, "w") as f:
                json.dump(r, f, indent=1)
        atomic_write(args.json, write)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
