"""Video datasets: the procedural ones follow their definitions; the folder loader reads what it is given or fails
clearly."""
import pickle

import numpy as np
import pytest
import torch

from flowkern.models.data import (DIRECTIONS, SHAPES, Labelled, StochasticMovement, StochasticMovingDigits, VideoFolder,
                                  read_video)


def centroid(frame, background=128):
    mask = (frame != background).any(0)
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return ys.float().mean().item(), xs.float().mean().item()


def test_stochastic_movement_is_deterministic_centred_and_moves_straight():
    ds = StochasticMovement(num_videos=50, frames=5, seed=3)
    assert torch.equal(ds[7], StochasticMovement(num_videos=50, frames=5, seed=3)[7])
    assert not torch.equal(ds[7], StochasticMovement(num_videos=50, frames=5, seed=4)[7])
    kinds = set()
    for i in range(30):
        v = ds[i]
        assert v.shape == (5, 3, 64, 64) and v.dtype == torch.uint8
        p = ds.params(i)
        kinds.add(p["kind"])
        cy, cx = centroid(v[0])
        assert abs(cy - 32) < 2.5 and abs(cx - 32) < 2.5  # starts at the centre
        steps = [np.subtract(centroid(v[t + 1]), centroid(v[t])) for t in range(4)]
        dx, dy = DIRECTIONS[p["direction"]]
        for s in steps:  # constant velocity along the sampled direction
            assert np.allclose(s, [dy * ds.speed, dx * ds.speed], atol=1.0)
    assert kinds == {"circle", "square", "triangle"}


def test_moving_digits_bounce_and_are_deterministic():
    ds = StochasticMovingDigits(num_videos=10, frames=20, seed=1)
    v = ds[2]
    assert v.shape == (20, 1, 64, 64) and v.dtype == torch.uint8
    assert torch.equal(v, StochasticMovingDigits(num_videos=10, frames=20, seed=1)[2])
    assert all(v[t].sum() > 0 for t in range(20))  # digits stay in the frame (they bounce)
    assert not torch.equal(v[0], v[-1])


def _write_videos(root):
    import imageio.v3 as iio
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(12, 32, 48, 3), dtype=np.uint8)
    iio.imwrite(root / "a.mp4", frames, fps=5, plugin="pyav", codec="libx264")
    iio.imwrite(root / "b.gif", frames[:9], duration=100, loop=0)
    np.save(root / "c.npy", frames[:10, :, :, 0])  # grayscale (T, H, W)
    np.savez(root / "d.npz", video=frames[:7].astype(np.float32) / 255.0)
    return frames


def test_video_folder_reads_mp4_gif_npy_npz_into_resized_clips(tmp_path):
    frames = _write_videos(tmp_path)
    assert read_video(str(tmp_path / "b.gif")).shape == (9, 32, 48, 3)
    ds = VideoFolder(str(tmp_path), frames=4, size=16, stride=4)
    # clips: a.mp4 12 frames -> 3, b.gif 9 -> 2, c.npy 10 -> 2, d.npz 7 -> 1
    assert len(ds) == 8
    clip = ds[0]
    assert clip.shape == (4, 3, 16, 16) and clip.dtype == torch.uint8
    gray = VideoFolder(str(tmp_path), frames=4, size=16, channels=1)[0]
    assert gray.shape == (4, 1, 16, 16)
    np.save(tmp_path / "rgba.npy", np.concatenate([frames[:5], np.full((5, 32, 48, 1), 255, np.uint8)], -1))
    rgba = VideoFolder(str(tmp_path), frames=5, size=32, extensions=("rgba.npy",))[0]
    ref_rgb = torch.nn.functional.interpolate(torch.from_numpy(frames[:5]).permute(0, 3, 1, 2).float(),
                                              size=(32, 32), mode="area").round()
    assert (rgba.float() - ref_rgb).abs().max() <= 1  # alpha dropped, colours kept
    npz = VideoFolder(str(tmp_path), frames=7, size=32, extensions=(".npz",))[0]
    ref = torch.from_numpy(frames[:7]).permute(0, 3, 1, 2).float()
    ref = torch.nn.functional.interpolate(ref, size=(32, 32), mode="area").round()
    assert (npz.float() - ref).abs().max() <= 1  # float [0, 1] arrays are scaled back to 8 bits


def test_video_folder_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        VideoFolder(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no video or array files"):
        VideoFolder(str(tmp_path))
    (tmp_path / "broken.mp4").write_bytes(b"definitely not a video")
    with pytest.raises(ValueError, match="broken.mp4"):
        VideoFolder(str(tmp_path))


def write_mp4(path, frames, keyframe_every):
    """H.264 (with B-frames: decode order differs from display order) and a fixed keyframe interval."""
    import av
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = keyframe_every
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())


def moving_pattern(num_frames, size):
    yy, xx = np.mgrid[0:size, 0:size]
    return np.stack([np.stack([xx * 5 + t * 7, yy * 3 + t * 11, xx + yy + t * 13], -1) % 256
                     for t in range(num_frames)]).astype(np.uint8)


def test_video_folder_decodes_only_each_clips_frames(tmp_path, monkeypatch):
    import av
    write_mp4(tmp_path / "long.mp4", moving_pattern(60, 32), keyframe_every=10)
    reference = read_video(str(tmp_path / "long.mp4"))  # every frame, decoded in order
    decoded = [0]
    real_open = av.open

    class CountingContainer:  # counts the frames decoded through av.open, whoever calls it
        def __init__(self, container):
            self._container = container

        def __getattr__(self, name):
            return getattr(self._container, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._container.__exit__(*exc)

        def decode(self, *args, **kwargs):
            for frame in self._container.decode(*args, **kwargs):
                decoded[0] += 1
                yield frame

    monkeypatch.setattr(av, "open", lambda *a, **k: CountingContainer(real_open(*a, **k)))
    ds = VideoFolder(str(tmp_path), frames=4, size=32)
    assert len(ds) == 15 and decoded[0] == 0  # the frame count comes from the container's metadata
    for i in [11, 2, 14, 0, 7]:  # shuffled
        decoded[0] = 0
        clip = ds[i]
        assert 4 <= decoded[0] <= 4 + 10  # from the keyframe before the clip to its last frame, no further
        assert torch.equal(clip, torch.from_numpy(reference[4 * i:4 * i + 4]).permute(0, 3, 1, 2))
    assert len(pickle.dumps(ds)) < 60 * 32 * 32 * 3 // 10  # what DataLoader workers get holds no decoded video


def test_video_folder_clips_match_the_whole_file_in_any_order(tmp_path):
    frames = moving_pattern(40, 24)
    write_mp4(tmp_path / "a.mp4", frames, keyframe_every=6)
    import imageio.v3 as iio
    iio.imwrite(tmp_path / "b.gif", frames[:11], duration=100, loop=0)
    np.save(tmp_path / "c.npy", frames[:13])
    np.savez(tmp_path / "d.npz", video=frames[:9].astype(np.float64) / 255.0)
    whole = {f: read_video(str(tmp_path / f)) for f in ("a.mp4", "b.gif", "c.npy", "d.npz")}
    assert [len(v) for v in whole.values()] == [40, 11, 13, 9]
    assert np.array_equal(whole["c.npy"], frames[:13]) and np.array_equal(whole["d.npz"], frames[:9])
    ds = VideoFolder(str(tmp_path), frames=3, size=24, stride=2)
    order = np.random.default_rng(0).permutation(len(ds))
    for i in order:
        path, start = ds.index[i]
        want = whole[path.rsplit("/", 1)[1]][start:start + 3]
        assert torch.equal(ds[i], torch.from_numpy(want).permute(0, 3, 1, 2)), (path, start)


def test_loader_benchmark_runs_and_cleans_up(tmp_path):
    import importlib.util
    import os
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("bench_video_data",
                                                  os.path.join(root, "benchmarks", "bench_video_data.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.run("smoke", tmp_dir=str(tmp_path))
    assert len(rows) == bench.count("smoke")
    assert {r["access"] for r in rows} == {"shuffled", "in order"}
    assert all(r["bench"] == "video_data" and r["clips_per_s"] > 0 for r in rows)  # no speed is asserted
    assert os.listdir(tmp_path) == []  # its videos were written to a temporary folder, then removed


def test_stochastic_movement_labels_are_the_clip_parameters():
    """Labels for label-conditioned models: the shape (what the first frame shows), the direction, the colour; the
    clips themselves unchanged by adding them (same random draws)."""
    ds = StochasticMovement(num_videos=40, frames=3, size=32, seed=4)
    assert ds.num_labels("shape") == 3 and ds.num_labels("direction") == 8 and ds.num_labels("color") == 8
    pairs = Labelled(ds, "direction")
    assert len(pairs) == 40 and pairs.num_labels == 8
    for i in range(40):
        clip, direction = pairs[i]
        assert torch.equal(clip, ds[i])
        p = ds.params(i)
        assert direction == p["direction"] and ds.label(i, "shape") == SHAPES.index(p["kind"])
        assert (ds.palette[ds.label(i, "color")] == p["color"]).all()
        (y0, x0), (y1, x1) = centroid(clip[0]), centroid(clip[2])
        dx, dy = DIRECTIONS[direction]
        assert (x1 - x0) * dx + (y1 - y0) * dy > 0  # the label is the way the object moves
    assert len({ds.label(i, "shape") for i in range(40)}) == 3
    with pytest.raises(ValueError, match="label kind must be one of"):
        Labelled(ds, "size")


def test_video_folder_labels_from_class_sub_folders(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("walk", 2), ("jump", 1)):
        (tmp_path / name / "deeper").mkdir(parents=True)
        for k in range(n):
            np.save(tmp_path / name / f"{k}.npy", rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
    np.save(tmp_path / "walk" / "deeper" / "x.npy", rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8))
    ds = VideoFolder(str(tmp_path) + "/", frames=3, size=8)
    pairs = Labelled(ds, "folder")
    assert ds.classes == ["jump", "walk"] and pairs.num_labels == 2
    labels = [pairs[i][1] for i in range(len(pairs))]
    want = [0 if "jump" in path else 1 for path, _ in ds.index]
    assert labels == want and set(labels) == {0, 1}
    assert torch.equal(pairs[0][0], ds[0])
    with pytest.raises(ValueError, match="only label kind is 'folder'"):
        ds.label(0, "shape")
    with pytest.raises(ValueError, match="only label kind is 'folder'"):
        Labelled(ds, "direction")
    np.save(tmp_path / "loose.npy", rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="one sub-folder per class, but .*loose.npy"):
        Labelled(VideoFolder(str(tmp_path), frames=3, size=8), "folder")
