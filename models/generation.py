"""What every video model's sampling shares."""
import warnings

import torch


def warn_if_diverged(video: torch.Tensor, owner: str) -> torch.Tensor:
    """Warn (RuntimeWarning) when sampled frames of `video` (B, T, ...) are not finite: a flow's inverse can diverge on
    latents off its training distribution (its couplings divide by scales, its priors multiply by exp(logs)), and
    a NaN frame must not pass silently into a saved video or a metric. Returns video."""
    bad = ~torch.isfinite(video.flatten(2)).all(2)  # (B, T)
    if bad.any():
        # stacklevel 4: past this function, generate and no_grad's wrapper, to the caller of generate
        warnings.warn(f"{owner}.generate: {int(bad.any(1).sum())} of {video.shape[0]} videos have non-finite frames "
                      f"(first at frame {int(bad.any(0).nonzero()[0])}): the flow's inverse diverged on the sampled "
                      f"latents; a lower temperature or a longer-trained model helps", RuntimeWarning, stacklevel=4)
    return video
