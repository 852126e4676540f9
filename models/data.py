"""Video data for the flow models: procedural datasets (no download) and a loader for real video folders.

Every dataset yields uint8 clips of shape (T, C, H, W); use flowkern.preprocess to dequantize them.
Procedural datasets are deterministic functions of (seed, index), so a run (and its resumption) sees exactly the
same data, on any number of ranks.
"""
import functools
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
    """The Stochastic Movement dataset (Babaeizadeh et al. 2017, used by VideoFlow): on a gray background, a circle,
    square or triangle of random colour and size starts at the centre and moves in one of 8 directions at constant
    speed. Item i is a deterministic function of (seed, i). Speed and radii default to the 64x64 values (4 pixels per
    frame, radius 4-10) scaled by size / 64, so a smaller frame shows the same motion."""

    def __init__(self, num_videos: int = 10000, frames: int = 3, size: int = 64, speed: Optional[float] = None,
                 seed: int = 0, min_radius: Optional[float] = None, max_radius: Optional[float] = None,
                 colors: int = 8):
        _check_int("StochasticMovement", "num_videos", num_videos, minimum=0)
        _check_int("StochasticMovement", "frames", frames)
        _check_int("StochasticMovement", "size", size)
        _check_int("StochasticMovement", "colors", colors)
        _check_int("StochasticMovement", "seed", seed, minimum=0)  # numpy's seeds are non-negative
        scale = size / 64
        speed = 4.0 * scale if speed is None else speed
        min_radius = 4.0 * scale if min_radius is None else min_radius
        max_radius = 10.0 * scale if max_radius is None else max_radius
        if not 0 < min_radius <= max_radius:
            raise ValueError(f"StochasticMovement: expected 0 < min_radius <= max_radius, got {min_radius}, "
                             f"{max_radius}")
        self.num_videos, self.frames, self.size, self.speed, self.seed = num_videos, frames, size, speed, seed
        self.min_radius, self.max_radius = min_radius, max_radius
        # a discrete palette, as in the paper ("the colors of the shapes are discretized")
        rng = np.random.default_rng(12345)
        self.palette = rng.integers(0, 256, size=(colors, 3))

    background = 128

    def __len__(self):
        return self.num_videos

    def params(self, i: int):
        rng = np.random.default_rng([self.seed, i])
        kind = SHAPES[rng.integers(3)]
        color_index = int(rng.integers(len(self.palette)))
        return dict(kind=kind, color=self.palette[color_index], color_index=color_index,
                    radius=float(rng.uniform(self.min_radius, self.max_radius)), direction=int(rng.integers(8)))

    LABELS = ("shape", "direction", "color")

    def num_labels(self, kind: str) -> int:
        """How many values a label of this kind takes: 3 shapes, 8 directions, the palette's colours."""
        return {"shape": len(SHAPES), "direction": len(DIRECTIONS), "color": len(self.palette)}[_label_kind(kind)]

    def label(self, i: int, kind: str) -> int:
        """Clip i's label: its shape (the first frame shows it), its direction (the motion) or its colour."""
        p = self.params(i)
        return {"shape": SHAPES.index(p["kind"]), "direction": p["direction"],
                "color": p["color_index"]}[_label_kind(kind)]

    def position(self, i: int, t: float):
        """(y, x) of clip i's object centre at time t (frame index; any real t)."""
        dx, dy = DIRECTIONS[self.params(i)["direction"]]
        c = self.size / 2
        return c + dy * self.speed * t, c + dx * self.speed * t

    def render(self, i: int, times: Sequence[float]) -> torch.Tensor:
        """Clip i's object drawn at the given times: uint8 (len(times), 3, size, size). render(i, range(frames)) is
        clip i; other times give the counterfactual frames the motion tests compare (reversed, static)."""
        if not 0 <= i < self.num_videos:
            raise IndexError(f"StochasticMovement: index {i} out of range for {self.num_videos} videos")
        p = self.params(i)
        video = np.full((len(times), self.size, self.size, 3), self.background, dtype=np.uint8)
        for k, t in enumerate(times):
            cy, cx = self.position(i, t)
            video[k][_shape_mask(p["kind"], cy, cx, p["radius"], self.size)] = p["color"]
        return torch.from_numpy(video).permute(0, 3, 1, 2).contiguous()

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.render(i, range(self.frames))


def _label_kind(kind: str) -> str:
    if kind not in StochasticMovement.LABELS:
        raise ValueError(f"StochasticMovement: label kind must be one of {StochasticMovement.LABELS}, got {kind!r}")
    return kind


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
        owner = "StochasticMovingDigits"
        _check_int(owner, "num_videos", num_videos, minimum=0)
        for name, value in (("frames", frames), ("size", size), ("glyph_size", glyph_size)):
            _check_int(owner, name, value)
        _check_int(owner, "digits", digits, minimum=0)
        _check_int(owner, "seed", seed, minimum=0)  # numpy's seeds are non-negative
        _check_channels(owner, channels)
        self.num_videos, self.frames, self.size, self.digits, self.seed = num_videos, frames, size, digits, seed
        self.channels = channels
        self.glyphs = _digit_glyphs(glyph_size)
        h, w = max(g.shape[0] for g in self.glyphs), max(g.shape[1] for g in self.glyphs)
        if max(h, w) > size:  # a digit must fit in the frame to move and bounce in it
            raise ValueError(f"{owner}: digits drawn at glyph_size {glyph_size} are up to {h}x{w} pixels, larger "
                             f"than size {size}: use a smaller glyph_size or a larger size")

    def __len__(self):
        return self.num_videos

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < self.num_videos:
            raise IndexError(f"StochasticMovingDigits: index {i} out of range for {self.num_videos} videos")
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
# no guessing from the values (one 1.01 must not rescale a whole video): one rule per dtype
VALUE_RULES = ("Accepted frame values, by array dtype: uint8 as is; other integer dtypes must lie in [0, 255]; float "
               "dtypes must be finite and lie in [0, 1] (they are multiplied by 255 and rounded; store uint8 for 0..255 "
               "values); bool and any other dtype are refused. Decoded video frames are always uint8.")


def _to_uint8(arr: np.ndarray, path: str, first_frame: int = 0) -> np.ndarray:
    """Frames (T, ...) of any accepted dtype as uint8 (see VALUE_RULES); else ValueError naming the file, the first
    offending value and its frame."""
    if arr.dtype == np.uint8:
        return arr
    kind = arr.dtype.kind
    if kind in "iu":
        bad, rule = (arr < 0) | (arr > 255), "integer frames must lie in [0, 255]"
    elif kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            bad, rule = ~finite, "float frames must be finite (and lie in [0, 1])"
        else:
            bad, rule = (arr < 0) | (arr > 1), "float frames must lie in [0, 1] (scaled by 255; use uint8 for 0..255)"
    else:
        raise ValueError(f"{path}: dtype {arr.dtype} is not accepted. {VALUE_RULES}")
    if bad.any():
        where = tuple(np.argwhere(bad)[0])
        raise ValueError(f"{path}: {rule}, found {arr[where]:.6g} at frame {first_frame + where[0]}")
    if kind == "f":  # float32 at least: float16 cannot hold 255 * x to the nearest integer
        return np.rint(arr.astype(np.promote_types(arr.dtype, np.float32)) * 255).astype(np.uint8)
    return arr.astype(np.uint8)


class _ArrayVideo:
    """Frames in a .npy (memory-mapped: a clip reads only its frames) or .npz file (the array is read whole for each
    clip, so prefer .npy for long videos). Shape, dtype and every value are checked at construction."""

    CHECK_FRAMES = 256  # values are checked this many frames at a time: bounded memory for huge arrays

    def __init__(self, path: str):
        self.path = path
        self.key = None
        arr = self._load()
        if arr.ndim not in (3, 4):
            raise ValueError(f"{path}: expected frames of shape (T, H, W) or (T, H, W, C), got {arr.shape}")
        channels = arr.shape[3] if arr.ndim == 4 else 1
        if channels not in (1, 3, 4):
            raise ValueError(f"{path}: expected 1, 3 or 4 channels (channels last, shape (T, H, W, C)), got "
                             f"{channels} (shape {arr.shape})")
        if 0 in arr.shape[1:3]:
            raise ValueError(f"{path}: frames of size {arr.shape[1]}x{arr.shape[2]} are empty")
        for t in range(0, len(arr), self.CHECK_FRAMES):
            _to_uint8(np.asarray(arr[t:t + self.CHECK_FRAMES]), path, t)
        self.num_frames = len(arr)

    def _load(self) -> np.ndarray:
        try:
            if self.path.lower().endswith(".npy"):
                return np.load(self.path, mmap_mode="r")
            with np.load(self.path) as npz:
                keys = npz.files
                if self.key is None and ("video" in keys or len(keys) == 1):
                    self.key = "video" if "video" in keys else keys[0]
                if self.key is not None:
                    return npz[self.key]
        except Exception as e:  # noqa: BLE001 - every reader error (zip, pickle, format) becomes one clear message
            raise ValueError(f"{self.path}: cannot read: {type(e).__name__}: {e}") from e
        raise ValueError(f"{self.path}: holds arrays {', '.join(keys) or '(none)'} and none is named 'video': name "
                         "the frames array 'video'")

    def read(self, start: int, stop: int) -> np.ndarray:
        arr = np.array(self._load()[start:stop])  # a copy: the memory map is read-only
        arr = arr[..., None] if arr.ndim == 3 else arr
        return _to_uint8(arr, self.path, start)


class _EncodedVideo:
    """A video file read with PyAV. The frame count and size come from the container's metadata (a decode counts
    the frames only when the container does not say). A clip is decoded from the keyframe at or before its first
    frame, found by its timestamp (constant frame rate); if the timestamps do not lead to exactly the clip's frames
    (variable frame rate, GIF delays), it is decoded from the start, counting frames."""

    def __init__(self, path: str):
        import av
        self.path = path
        try:
            with av.open(path) as container:
                if not container.streams.video:
                    raise ValueError(f"{path}: has no video stream")
                stream = container.streams.video[0]
                self.width, self.height = stream.codec_context.width, stream.codec_context.height
                rate, self.time_base, self.start_pts = stream.average_rate, stream.time_base, stream.start_time or 0
                self.seconds_per_frame = 1 / rate if rate and self.time_base else None
                self.seekable = bool(stream.frames) and self.seconds_per_frame is not None \
                    and not path.lower().endswith(".gif")
                self.num_frames = stream.frames or sum(1 for _ in container.decode(stream))
        except (av.FFmpegError, OSError) as e:
            raise ValueError(f"{path}: cannot read as a video: {type(e).__name__}: {e}") from e
        if not self.width or not self.height:
            raise ValueError(f"{path}: the video stream does not say its frame size")

    def _decode(self, start: int, stop: int, seek: bool):
        """Frames start..stop-1 as (T, H, W, 3) uint8, or None if decoding did not meet exactly those frames."""
        import av
        frames = []
        with av.open(self.path) as container:
            stream = container.streams.video[0]
            if seek:  # lands on the keyframe at or before frame `start`
                container.seek(self.start_pts + int(start * self.seconds_per_frame / self.time_base), stream=stream)
            for count, frame in enumerate(container.decode(stream)):
                if seek and frame.pts is None:
                    return None
                i = round((frame.pts - self.start_pts) * self.time_base / self.seconds_per_frame) if seek else count
                if i >= stop:
                    break
                if i >= start:
                    if i != start + len(frames):
                        return None
                    frames.append(frame.reformat(format="rgb24").to_ndarray())  # ~10x faster than to_ndarray(format=)
        return np.stack(frames) if len(frames) == stop - start else None

    def read(self, start: int, stop: int) -> np.ndarray:
        import av
        try:
            frames = self._decode(start, stop, seek=self.seekable and start > 0)
            if frames is None:
                frames = self._decode(start, stop, seek=False)
        except (av.FFmpegError, OSError) as e:
            raise ValueError(f"{self.path}: cannot decode frames {start}..{stop - 1}: {type(e).__name__}: {e}") from e
        if frames is None:
            raise ValueError(f"{self.path}: cannot decode frames {start}..{stop - 1}: the file has fewer frames than "
                             f"its metadata says ({self.num_frames}), or is damaged")
        return frames


def _open_video(path: str):
    """The file's frame source; its problems (unreadable, no video stream, shape, dtype, values) raise ValueError
    naming the file."""
    if path.lower().endswith(ARRAY_EXTENSIONS):
        return _ArrayVideo(path)
    return _EncodedVideo(path)


def read_video(path: str) -> np.ndarray:
    """All frames of a video file or array file as uint8 (T, H, W, C). Raises ValueError naming the file if it cannot
    be read or holds values outside VALUE_RULES."""
    video = _open_video(path)
    return video.read(0, video.num_frames)


def _check_int(owner: str, name: str, value, minimum: int = 1):
    """minimum 1: a positive integer; 0: a non-negative one."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a positive integer" if minimum == 1 else "a non-negative integer"
        raise ValueError(f"{owner}: {name} must be {kind}, got {value!r}")


def _check_channels(owner: str, channels):
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"{owner}: channels must be 1 or 3, got {channels!r}")


class VideoFolder(Dataset):
    """Clips of `frames` frames (every `stride` frames) from each video or .npy/.npz array in a folder, resized to
    `size` x `size` (area interpolation) and given `channels` channels (RGB mean for 1; alpha dropped).

    Construction reads every file's metadata (video files: readable, a video stream, frame count and size; arrays:
    shape, channels, dtype and every value, see VALUE_RULES, through a memory map for .npy) and raises a ValueError
    naming the file, so a bad file stops the run before training, not at its first clip. Videos shorter than one
    clip are skipped (listed in `self.too_short`). A clip decodes only its own frames (from the keyframe before it)
    and nothing is cached: memory stays at about one clip per reader, and the dataset pickles small for DataLoader
    workers."""

    def __init__(self, root: str, frames: int = 13, size: int = 64, stride: Optional[int] = None, channels: int = 3,
                 extensions: Sequence[str] = VIDEO_EXTENSIONS + ARRAY_EXTENSIONS):
        _check_int("VideoFolder", "frames", frames)
        _check_int("VideoFolder", "size", size)
        if stride is not None:
            _check_int("VideoFolder", "stride", stride)
        _check_channels("VideoFolder", channels)
        if not os.path.isdir(root):
            raise ValueError(f"VideoFolder: {root!r} is not a directory")
        self.frames, self.size, self.stride, self.channels = frames, size, stride or frames, channels
        self.root = os.path.normpath(root)
        self.files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs
                            if f.lower().endswith(tuple(extensions)))
        if not self.files:
            raise ValueError(f"VideoFolder: no video or array files ({', '.join(extensions)}) under {root!r}")
        self.videos = {path: _open_video(path) for path in self.files}  # every file's problems surface here
        self.index, self.too_short = [], []
        for path, video in self.videos.items():
            if video.num_frames < frames:
                self.too_short.append(path)
            for start in range(0, video.num_frames - frames + 1, self.stride):
                self.index.append((path, start))
        if not self.index:
            raise ValueError(f"VideoFolder: no video under {root!r} has {frames} frames")

    def __len__(self):
        return len(self.index)

    @functools.cached_property
    def classes(self) -> List[str]:
        """The class names of a labelled folder: its sub-folders that hold videos, sorted (label k = classes[k])."""
        names = sorted({os.path.relpath(path, self.root).split(os.sep)[0] for path in self.files})
        loose = [f for f in self.files if os.path.normpath(os.path.dirname(f)) == self.root]
        if loose:
            raise ValueError(f"VideoFolder: labels come from one sub-folder per class, but {loose[0]!r} sits in "
                             f"{self.root!r} itself")
        return names

    def num_labels(self, kind: str = "folder") -> int:
        _folder_kind(kind)
        return len(self.classes)

    def label(self, i: int, kind: str = "folder") -> int:
        """The class of clip i: the index of its file's top sub-folder in `classes`."""
        _folder_kind(kind)
        path = self.index[i][0]
        return self.classes.index(os.path.relpath(path, self.root).split(os.sep)[0])

    def __getitem__(self, i):
        path, start = self.index[i]
        clip = torch.from_numpy(self.videos[path].read(start, start + self.frames)).permute(0, 3, 1, 2).float()
        if clip.shape[1] == 4:  # RGBA: drop alpha
            clip = clip[:, :3]
        if clip.shape[1] == 3 and self.channels == 1:
            clip = clip.mean(1, keepdim=True)
        elif clip.shape[1] == 1 and self.channels == 3:
            clip = clip.expand(-1, 3, -1, -1)
        if clip.shape[-2:] != (self.size, self.size):
            clip = torch.nn.functional.interpolate(clip, size=(self.size, self.size), mode="area")
        return clip.round().clamp(0, 255).to(torch.uint8)


def _folder_kind(kind: str) -> None:
    if kind != "folder":
        raise ValueError(f"VideoFolder: its only label kind is 'folder' (one sub-folder per class), got {kind!r}")


class Labelled(Dataset):
    """(clip, label) pairs of a dataset with labels (StochasticMovement: kind "shape", "direction" or "color";
    VideoFolder: "folder", one sub-folder per class): what a label-conditioned model (CGlow) trains on."""

    def __init__(self, dataset, kind: str):
        self.dataset, self.kind = dataset, kind
        self.num_labels = dataset.num_labels(kind)  # checks the kind (and a folder's layout) now, not mid-run

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i], self.dataset.label(i, self.kind)
