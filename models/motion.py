"""Measures of whether a video model learned motion, on Stochastic Movement (flowkern.models.data).

- Per-frame held-out bits/pixel: log p(x_t | x_<t) for each t.
- Likelihood motion tests: after the first c frames of a clip, is the true frame c+1 more likely than the same
  motion reversed (the object one step back from frame c) and than a static copy of frame c?
- Continuation accuracy of samples: the fraction of sampled frames c+1 (given the true frames 1..c, c >= 2, where
  the direction is fixed) whose object centroid moves within 22.5 degrees of the clip's direction (chance: 1/8).
- First-frame choice: how many of the 8 directions the sampled second frames (given only the first frame, where
  the object sits at the centre) cover.
The object is found by colour: pixels whose largest channel difference from the background exceeds half of the
object colour's.
"""
import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

import flowkern
from flowkern.models.data import DIRECTIONS, StochasticMovement
from flowkern.models.video_io import to_uint8_frames

TOLERANCE_DEG = 22.5  # half the angle between neighbouring directions


def object_centroid(frame: np.ndarray, color: np.ndarray, background: int = StochasticMovement.background):
    """(y, x) centroid of the object in a uint8 frame (3, H, W), or None when no pixel looks like it."""
    diff = np.abs(frame.astype(np.int32) - background).max(0)
    need = 0.5 * np.abs(np.asarray(color, dtype=np.int32) - background).max()
    ys, xs = np.nonzero(diff > need)
    if len(ys) == 0:
        return None
    return float(ys.mean()) + 0.5, float(xs.mean()) + 0.5


def direction_of(before, after, min_move: float) -> Optional[int]:
    """The nearest of the 8 directions of the move before -> after ((y, x) pairs), None if it moved less than
    min_move pixels or an end is missing."""
    if before is None or after is None:
        return None
    dy, dx = after[0] - before[0], after[1] - before[1]
    if math.hypot(dy, dx) < min_move:
        return None
    return int(round(math.atan2(dy, dx) / (math.pi / 4))) % 8


def moves_along(before, after, direction: int, min_move: float) -> bool:
    """True when the move before -> after is at least min_move pixels and within TOLERANCE_DEG of `direction`."""
    if before is None or after is None:
        return False
    dy, dx = after[0] - before[0], after[1] - before[1]
    if math.hypot(dy, dx) < min_move:
        return False
    ux, uy = DIRECTIONS[direction]
    cos = (dx * ux + dy * uy) / math.hypot(dy, dx)
    return cos >= math.cos(math.radians(TOLERANCE_DEG))


def _frames(model, clips: torch.Tensor, device, generator=None) -> torch.Tensor:
    """uint8 clips -> the model's input: dequantized with `generator`'s noise, or without noise (the bins' lower
    edges, as generate's contexts are given) when None."""
    return flowkern.preprocess(clips, model.cfg.n_bits, noise=generator is not None, generator=generator).to(device)


def _device(model):
    return next(model.parameters()).device


@torch.no_grad()
def per_frame_bpp(model, dataset, indices: Sequence[int], batch_size: int = 16, seed: int = 0,
                  label_kind: Optional[str] = None) -> List[float]:
    """Mean held-out bits/pixel of each frame t of the clips, log p(x_t | x_<t), with uniform dequantization noise
    (seeded) as in training: the density at the bins' centres alone is not the bits/pixel of the data. label_kind:
    the clips' labels (dataset.label(j, label_kind)) go to a label-conditioned model, as do those of a dataset of
    (clip, label) pairs."""
    device, out = _device(model), []
    g = torch.Generator().manual_seed(seed)
    for i in range(0, len(indices), batch_size):
        idx = indices[i:i + batch_size]
        items = [dataset[j] for j in idx]
        if isinstance(items[0], tuple):  # (clip, label) pairs
            items, labels = [c for c, _ in items], [lab for _, lab in items]
        else:
            labels = None if label_kind is None else [dataset.label(j, label_kind) for j in idx]
        labels = [] if labels is None else [torch.tensor(labels, device=device)]
        lp = model.log_prob_frames(_frames(model, torch.stack(items), device, g), *labels)
        out.append(flowkern.bits_per_dim(lp, model.frame_dims, model.cfg.n_bits).double().cpu())
    return torch.cat(out).mean(0).tolist()


@torch.no_grad()
def likelihood_motion_tests(model, dataset: StochasticMovement, indices: Sequence[int], c: int = 2,
                            batch_size: int = 16, seed: int = 0) -> Dict[str, float]:
    """Bits/pixel of frame c+1 after the true frames 1..c, for the true frame (object at time c), the motion
    reversed (time c-2: one step back from frame c) and a static copy (time c-1); and how often the true frame wins.
    Every candidate gets the same dequantization noise (seeded), as does the context."""
    if c < 1:
        raise ValueError(f"likelihood_motion_tests: expected c >= 1 context frames, got {c}")
    device = _device(model)
    bpp = {"true": [], "reversed": [], "static": []}
    times = {"true": c, "reversed": c - 2, "static": c - 1}
    for i in range(0, len(indices), batch_size):
        idx = indices[i:i + batch_size]
        context = _frames(model, torch.stack([dataset.render(j, range(c)) for j in idx]), device,
                          torch.Generator().manual_seed(seed + i))
        for name, t in times.items():
            cand = _frames(model, torch.stack([dataset.render(j, [t]) for j in idx]), device,
                           torch.Generator().manual_seed(seed + i + 1))  # the same noise for every candidate
            bpp[name].append(model.out_of_sequence_bpp(context, cand)[:, 0].double().cpu())
    bpp = {k: torch.cat(v) for k, v in bpp.items()}
    return {"bpp_true": bpp["true"].mean().item(), "bpp_reversed": bpp["reversed"].mean().item(),
            "bpp_static": bpp["static"].mean().item(),
            "true_beats_reversed": (bpp["true"] < bpp["reversed"]).double().mean().item(),
            "true_beats_static": (bpp["true"] < bpp["static"]).double().mean().item()}


@torch.no_grad()
def continuation_accuracy(model, dataset: StochasticMovement, indices: Sequence[int], c: int = 2,
                          temperature: float = 0.5, seed: int = 0, batch_size: int = 16) -> Dict[str, float]:
    """Sample frame c+1 after the true frames 1..c of each clip; the fraction whose object moved from its place in
    frame c within TOLERANCE_DEG of the clip's direction (by at least a quarter of a step), and the fraction where
    an object was found at all."""
    if c < 2:
        raise ValueError(f"continuation_accuracy: expected c >= 2 given frames (the direction is then fixed), got {c}")
    device = _device(model)
    g = torch.Generator(device=device).manual_seed(seed)
    right = found = 0
    for i in range(0, len(indices), batch_size):
        idx = indices[i:i + batch_size]
        video = model.generate(_frames(model, torch.stack([dataset.render(j, range(c)) for j in idx]), device), 1,
                               temperature, generator=g)
        for j, v in zip(idx, video):
            p = dataset.params(j)
            sampled = object_centroid(to_uint8_frames(v[c:], model.cfg.n_bits)[0].transpose(2, 0, 1), p["color"])
            found += sampled is not None
            right += moves_along(dataset.position(j, c - 1), sampled, p["direction"], dataset.speed / 4)
    n = len(indices)
    return {"continuation_accuracy": right / n, "object_found": found / n}


@torch.no_grad()
def first_frame_choice(model, dataset: StochasticMovement, indices: Sequence[int], temperature: float = 0.5,
                       seed: int = 0, batch_size: int = 16) -> Dict[str, object]:
    """Sample frame 2 after the true first frame (object at the centre) of each clip; the directions the sampled
    objects moved in (nearest of 8; moves under a quarter of a step count as none), and how many of the 8 appear."""
    device = _device(model)
    g = torch.Generator(device=device).manual_seed(seed)
    counts = [0] * 8
    still = 0
    for i in range(0, len(indices), batch_size):
        idx = indices[i:i + batch_size]
        video = model.generate(_frames(model, torch.stack([dataset.render(j, [0]) for j in idx]), device), 1,
                               temperature, generator=g)
        for j, v in zip(idx, video):
            p = dataset.params(j)
            sampled = object_centroid(to_uint8_frames(v[1:], model.cfg.n_bits)[0].transpose(2, 0, 1), p["color"])
            d = direction_of(dataset.position(j, 0), sampled, dataset.speed / 4)
            if d is None:
                still += 1
            else:
                counts[d] += 1
    return {"directions_covered": sum(k > 0 for k in counts), "direction_counts": counts,
            "no_move": still / len(indices)}
