"""Video data for the flow models: procedural datasets (no download) and a loader for real video folders.

Every dataset yields uint8 clips of shape (T, C, H, W); use flowkern.preprocess to dequantize them.
Procedural datasets are deterministic functions of (seed, index), so a run (and its resumption) sees exactly the
same data, on any number of ranks.
"""
import math
import os
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

SHAPES = ("circle", "square", "triangle")
DIRECTIONS = [(math.cos(a), math.sin(a)) for a in np.arange(8) * (math.pi / 4)]  # 8 compass directions


def _shape_mask(kind: str, cy: float, cx: float, r: float, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dy, dx = yy - cy, xx - cx
    if kind == "circle":
        return dx * dx + dy * dy <= r * r
    if kind == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    # upward equilateral triangle inscribed in the circle of radius r: apex at -r, base at +r/2
    return (dy <= 0.5 * r) & (np.abs(dx) <= (dy + r) / math.sqrt(3))


class StochasticMovement(Dataset):
    """The Stochastic Movement dataset (Babaeizadeh et al. 2017, used by VideoFlow): on a gray 64x64 background, a
    circle, square or triangle of random colour and size starts at the centre and moves in one of 8 directions at
    constant speed. Item i is a deterministic function of (seed, i)."""

    def __init__(self, num_videos: int = 10000, frames: int = 3, size: int = 64, speed: float = 4.0, seed: int = 0,
                 min_radius: float = 4.0, max_radius: float = 10.0, colors: int = 8):
        self.num_videos, self.frames, self.size, self.speed, self.seed = num_videos, frames, size, speed, seed
        self.min_radius, self.max_radius = min_radius, max_radius
        # a discrete palette, as in the paper ("the colors of the shapes are discretized")
        rng = np.random.default_rng(12345)
        self.palette = rng.integers(0, 256, size=(colors, 3))

    def __len__(self):
        return self.num_videos

    def params(self, i: int):
        rng = np.random.default_rng([self.seed, i])
        return dict(kind=SHAPES[rng.integers(3)], color=self.palette[rng.integers(len(self.palette))],
                    radius=float(rng.uniform(self.min_radius, self.max_radius)), direction=int(rng.integers(8)))

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < self.num_videos:
            raise IndexError(i)
        p = self.params(i)
        dx, dy = DIRECTIONS[p["direction"]]
        video = np.full((self.frames, self.size, self.size, 3), 128, dtype=np.uint8)
        c = self.size / 2
        for t in range(self.frames):
            mask = _shape_mask(p["kind"], c + dy * self.speed * t, c + dx * self.speed * t, p["radius"], self.size)
            video[t][mask] = p["color"]
        return torch.from_numpy(video).permute(0, 3, 1, 2).contiguous()


def _digit_glyphs(height: int) -> List[np.ndarray]:
    """Binary glyphs of 0-9 rendered with Pillow's bundled font (no MNIST download)."""
    from PIL import Image, ImageDraw, ImageFont
    font = ImageFont.load_default(size=int(height * 1.1))
    glyphs = []
    for d in range(10):
        img = Image.new("L", (height * 2, height * 2), 0)
        ImageDraw.Draw(img).text((height // 2, 0), str(d), fill=255, font=font)
        a = np.array(img) > 127
        ys, xs = np.nonzero(a)
        glyphs.append(a[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
    return glyphs


class StochasticMovingDigits(Dataset):
    """SM-MNIST-style clips (Denton & Fergus 2018) with rendered digit glyphs: `digits` white digits on black move
    with constant velocity and bounce off the walls; at each bounce the velocity is re-sampled. Deterministic in
    (seed, index)."""

    def __init__(self, num_videos: int = 10000, frames: int = 10, size: int = 64, digits: int = 2,
                 glyph_size: int = 28, seed: int = 0, channels: int = 1):
        self.num_videos, self.frames, self.size, self.digits, self.seed = num_videos, frames, size, digits, seed
        self.channels = channels
        self.glyphs = _digit_glyphs(glyph_size)

    def __len__(self):
        return self.num_videos

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < self.num_videos:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i])
        video = np.zeros((self.frames, self.size, self.size), dtype=np.uint8)
        for _ in range(self.digits):
            g = self.glyphs[rng.integers(10)]
            gh, gw = g.shape
            y, x = rng.uniform(0, self.size - gh), rng.uniform(0, self.size - gw)
            vy, vx = rng.uniform(-4, 4), rng.uniform(-4, 4)
            for t in range(self.frames):
                yi, xi = int(round(y)), int(round(x))
                video[t, yi:yi + gh, xi:xi + gw] |= (g * 255).astype(np.uint8)
                y, x = y + vy, x + vx
                if y < 0 or y > self.size - gh:  # bounce: new random speed, pointing back inside
                    y = min(max(y, 0), self.size - gh)
                    vy = math.copysign(rng.uniform(1, 4), -vy)
                    vx = rng.uniform(-4, 4)
                if x < 0 or x > self.size - gw:
                    x = min(max(x, 0), self.size - gw)
                    vx = math.copysign(rng.uniform(1, 4), -vx)
                    vy = rng.uniform(-4, 4)
        out = torch.from_numpy(video)[:, None]
        return out.expand(-1, self.channels, -1, -1).contiguous()


VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
ARRAY_EXTENSIONS = (".npy", ".npz")


def read_video(path: str) -> np.ndarray:
    """All frames of a video file or array file as uint8 (T, H, W, C). Raises ValueError naming the file if it cannot
    be read."""
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in ARRAY_EXTENSIONS:
            arr = np.load(path)
            if isinstance(arr, np.lib.npyio.NpzFile):
                keys = list(arr.keys())
                arr = arr["video"] if "video" in keys else arr[keys[0]]
        else:
            import imageio.v3 as iio
            arr = iio.imread(path, index=None, plugin="pyav" if ext != ".gif" else None)
    except Exception as e:  # noqa: BLE001 - every reader error becomes one clear message
        raise ValueError(f"cannot read video file {path!r}: {type(e).__name__}: {e}") from e
    arr = np.asarray(arr)
    if arr.ndim == 3:  # (T, H, W) grayscale
        arr = arr[..., None]
    if arr.ndim != 4:
        raise ValueError(f"{path!r}: expected frames of shape (T, H, W[, C]), got array of shape {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return arr


class VideoFolder(Dataset):
    """Clips of `frames` frames (every `stride` frames) from each video or .npy/.npz array in a folder, resized to
    `size` x `size` (area interpolation) and given `channels` channels. Unreadable files raise a clear error at
    construction; videos shorter than one clip are skipped (listed in `self.too_short`)."""

    def __init__(self, root: str, frames: int = 13, size: int = 64, stride: Optional[int] = None, channels: int = 3,
                 extensions: Sequence[str] = VIDEO_EXTENSIONS + ARRAY_EXTENSIONS):
        if not os.path.isdir(root):
            raise ValueError(f"VideoFolder: {root!r} is not a directory")
        self.frames, self.size, self.stride, self.channels = frames, size, stride or frames, channels
        self.files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs
                            if f.lower().endswith(tuple(extensions)))
        if not self.files:
            raise ValueError(f"VideoFolder: no video or array files ({', '.join(extensions)}) under {root!r}")
        self.index, self.too_short, self._cache = [], [], {}
        for path in self.files:
            n = read_video(path).shape[0]  # fails here, at construction, for unreadable files
            if n < frames:
                self.too_short.append(path)
            for start in range(0, n - frames + 1, self.stride):
                self.index.append((path, start))
        if not self.index:
            raise ValueError(f"VideoFolder: no video under {root!r} has {frames} frames")

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        path, start = self.index[i]
        if path not in self._cache:
            self._cache = {path: read_video(path)}  # keep the last file: clips are read file by file
        clip = torch.from_numpy(self._cache[path][start:start + self.frames]).permute(0, 3, 1, 2).float()
        if clip.shape[1] == 4:  # RGBA (GIFs often are): drop alpha
            clip = clip[:, :3]
        if clip.shape[1] == 3 and self.channels == 1:
            clip = clip.mean(1, keepdim=True)
        elif clip.shape[1] == 1 and self.channels == 3:
            clip = clip.expand(-1, 3, -1, -1)
        elif clip.shape[1] != self.channels:
            raise ValueError(f"{path!r}: frames have {clip.shape[1]} channels, cannot make {self.channels}")
        if clip.shape[-2:] != (self.size, self.size):
            clip = torch.nn.functional.interpolate(clip, size=(self.size, self.size), mode="area")
        return clip.round().clamp(0, 255).to(torch.uint8)
