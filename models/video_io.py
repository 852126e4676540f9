"""Writing videos (GIF / MP4 through imageio + PyAV) and PNG grids of frames. Each file is written under a temporary
name and renamed: a crash never leaves a half-written sample under its real name."""
import contextlib
import os

import numpy as np
import torch


def to_uint8_frames(video: torch.Tensor, n_bits: int = 8) -> np.ndarray:
    """(T, C, H, W) in [-0.5, 0.5] -> (T, H, W, 3) uint8."""
    import flowkern
    v = flowkern.postprocess(video.detach().cpu().float(), n_bits)
    if v.shape[1] == 1:
        v = v.expand(-1, 3, -1, -1)
    return v.permute(0, 2, 3, 1).contiguous().numpy()


def write_then_rename(path: str, write) -> None:
    """write(tmp) then rename tmp over path; tmp keeps the extension (imageio picks the format by it) and is
    removed on failure."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp-{os.getpid()}{ext}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_video(path: str, frames: np.ndarray, fps: int = 4) -> None:
    """frames (T, H, W, 3) uint8 -> GIF or MP4 by the path's extension."""
    import imageio.v3 as iio
    if path.lower().endswith(".gif"):
        write_then_rename(path, lambda tmp: iio.imwrite(tmp, frames, duration=1000 // fps, loop=0))
    else:
        write_then_rename(path, lambda tmp: iio.imwrite(tmp, frames, fps=fps, plugin="pyav", codec="libx264"))


def write_grid(path: str, videos: np.ndarray, pad: int = 2) -> None:
    """videos (N, T, H, W, 3) uint8 -> one PNG: a row per video, a column per frame."""
    import imageio.v3 as iio
    N, T, H, W, C = videos.shape
    grid = np.full((N * (H + pad) + pad, T * (W + pad) + pad, C), 255, dtype=np.uint8)
    for i in range(N):
        for t in range(T):
            y, x = pad + i * (H + pad), pad + t * (W + pad)
            grid[y:y + H, x:x + W] = videos[i, t]
    write_then_rename(path, lambda tmp: iio.imwrite(tmp, grid))
