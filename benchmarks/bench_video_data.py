"""Video loader throughput: clips/s of flowkern.models.data.VideoFolder reading H.264 mp4 files that this module
writes itself (small frames, a keyframe every KEYFRAME_EVERY frames as cameras and encoders commonly use), for
shuffled access (each clip from a random file and place, as a training DataLoader asks) and in order, on long and
on short videos. Also the time to build the dataset (count frames, check every file)."""
import os
import random
import statistics
import tempfile
import time

import numpy as np

from flowkern.models.data import VideoFolder

KEYFRAME_EVERY = 30
SUITES = {
    # videos: [(how many, frames each)], frame size, frames per clip, clips per timed pass, passes (median taken)
    "smoke": dict(videos=[(1, 24), (3, 8)], size=16, frames=4, clips=4, rounds=1),
    "quick": dict(videos=[(2, 300), (20, 30)], size=64, frames=8, clips=20, rounds=3),
    "full": dict(videos=[(4, 1000), (100, 30)], size=128, frames=16, clips=200, rounds=5),
}
ACCESS = ("shuffled", "in order")


def write_mp4(path, num_frames, size, fps=30):
    """A moving colour pattern (compresses like real footage, unlike noise), H.264 with a fixed keyframe interval."""
    import av
    yy, xx = np.mgrid[0:size, 0:size]
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = KEYFRAME_EVERY
        for t in range(num_frames):
            rgb = np.stack([xx * 3 + t * 5, yy * 2 + t * 3, xx + yy + t], -1) % 256
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")))
        container.mux(stream.encode())  # flush the encoder


def _case(root, num, length, cfg, access, seed=0):
    folder = os.path.join(root, f"{num}x{length}")
    if not os.path.isdir(folder):
        os.makedirs(folder)
        for i in range(num):
            write_mp4(os.path.join(folder, f"v{i}.mp4"), length, cfg["size"])
    t0 = time.perf_counter()
    ds = VideoFolder(folder, frames=cfg["frames"], size=cfg["size"])
    build_s = time.perf_counter() - t0
    order = list(range(len(ds)))
    if access == "shuffled":
        random.Random(seed).shuffle(order)
    order = (order * (1 + cfg["clips"] // len(order)))[:cfg["clips"]]
    ds[order[-1]]  # warm-up: imports, codec initialisation
    passes = []
    for _ in range(cfg["rounds"]):
        t0 = time.perf_counter()
        for i in order:
            ds[i]
        passes.append(time.perf_counter() - t0)
    seconds = statistics.median(passes)
    return {"bench": "video_data", "videos": f"{num} x {length} frames", "frame_size": f"{cfg['size']}x{cfg['size']}",
            "clip_frames": cfg["frames"], "access": access, "clips": len(order), "clips_per_s": len(order) / seconds,
            "build_s": build_s}


def run(suite="quick", tmp_dir=None, progress=None):
    """Rows of clips/s per (videos, access). Writes its videos under tmp_dir (default: a temporary folder)."""
    cfg = SUITES[suite]
    with tempfile.TemporaryDirectory(dir=tmp_dir) as root:
        rows = []
        for num, length in cfg["videos"]:
            for access in ACCESS:
                rows.append(_case(root, num, length, cfg, access))
                if progress is not None:
                    progress.update(1)
        return rows


def count(suite):
    return len(SUITES[suite]["videos"]) * len(ACCESS)


if __name__ == "__main__":
    import sys
    for row in run(sys.argv[1] if len(sys.argv) > 1 else "quick"):
        print(row)
