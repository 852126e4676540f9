"""How close predicted frames come to the truth: PSNR, SSIM and their best of N samples, against two predictors
that know nothing of motion: copying the last given frame, and a flat frame at the last given frame's median per
channel (its background, where the background is most of the frame). On sparse frames (digits on black) the flat
frame beats the copy, whose object is in the wrong place: a predictor must beat both. A sampled frame that is not finite (the flow's inverse diverged) scores the worst: PSNR 0 dB
(an error of the whole range everywhere), SSIM 0; the share of such frames is reported.

Frames are compared as uint8 pictures scaled to [0, 1] (what the model's samples become when saved). SSIM is
scikit-image's (Gaussian window of sigma 1.5, the population covariance: Wang et al. 2004's settings).
"""
from typing import Dict, Sequence

import numpy as np
import torch

from flowkern.models.video_io import to_uint8_frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two pictures in [0, 1] (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two pictures (C, H, W) in [0, 1]."""
    from skimage.metrics import structural_similarity
    return float(structural_similarity(a, b, data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def _pictures(frames: torch.Tensor, n_bits: int) -> np.ndarray:
    """Model-space frames (T, C, H, W) -> uint8 pictures scaled to [0, 1], (T, C, H, W) float64."""
    return to_uint8_frames(frames, n_bits).transpose(0, 3, 1, 2).astype(np.float64) / 255.0


@torch.no_grad()
def best_of_n(model, clips: torch.Tensor, context: int, n: int, temperature: float, seed: int = 0) -> Dict:
    """Continue uint8 clips (B, T, C, H, W) from their first `context` frames n times; per predicted step, the mean
    over clips of the best PSNR and the best SSIM among the n samples (each measure's own best), of copying the last
    given frame, and of a flat frame at its median. Returns {"psnr", "ssim", "copy_psnr", "copy_ssim", "flat_psnr",
    "flat_ssim", "diverged"}, lists of T - context values each ("diverged": the share of sampled frames that were
    not finite)."""
    import flowkern
    device = next(model.parameters()).device
    n_bits = model.cfg.n_bits
    truth = [_pictures(flowkern.preprocess(c, n_bits, noise=False), n_bits) for c in clips]
    given = flowkern.preprocess(clips[:, :context], n_bits, noise=False).to(device)
    horizon = clips.shape[1] - context
    g = torch.Generator(device=device).manual_seed(seed)
    best_psnr = np.full((len(clips), horizon), -np.inf)
    best_ssim = np.full((len(clips), horizon), -np.inf)
    diverged = np.zeros(horizon)
    for _ in range(n):
        video = model.generate(given, horizon, temperature, generator=g)
        finite = torch.isfinite(video[:, context:]).flatten(2).all(2).cpu().numpy()  # (B, horizon)
        diverged += (~finite).sum(0)
        for i, v in enumerate(video):
            pred = _pictures(v[context:].cpu(), n_bits)
            for k in range(horizon):
                p, q = (psnr(pred[k], truth[i][context + k]), ssim(pred[k], truth[i][context + k])) if finite[i, k] \
                    else (0.0, 0.0)
                best_psnr[i, k], best_ssim[i, k] = max(best_psnr[i, k], p), max(best_ssim[i, k], q)
    out = {"psnr": _finite_mean(best_psnr), "ssim": best_ssim.mean(0).tolist(),
           "diverged": (diverged / (n * len(clips))).tolist()}
    for name, guess in (("copy", lambda t: t[context - 1]),
                        ("flat", lambda t: np.broadcast_to(np.median(t[context - 1], axis=(1, 2), keepdims=True),
                                                           t[context - 1].shape))):
        scores = np.array([[(psnr(guess(t), t[context + k]), ssim(np.ascontiguousarray(guess(t)), t[context + k]))
                            for k in range(horizon)] for t in truth])  # (B, horizon, 2)
        out[f"{name}_psnr"], out[f"{name}_ssim"] = _finite_mean(scores[..., 0]), scores[..., 1].mean(0).tolist()
    return out


def _finite_mean(values: np.ndarray) -> Sequence[float]:
    """Per-step means over clips, PSNR's inf (an exact frame) capped at 100 dB so one exact match cannot make the
    mean infinite."""
    return np.minimum(values, 100.0).mean(0).tolist()
