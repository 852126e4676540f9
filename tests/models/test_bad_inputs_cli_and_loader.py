"""Bad input fails fast and clearly: one table for the commands (train, sample), one for the loader (VideoFolder and
the procedural datasets). Every row checks the error type and that the message names the argument or file and
what is expected."""
import dataclasses
import os
import re

import numpy as np
import pytest
import torch

from flowkern.models import sample as sample_cli
from flowkern.models import train as train_cli
from flowkern.models.data import StochasticMovement, StochasticMovingDigits, VideoFolder
from flowkern.models.videoflow import CONFIGS, VideoFlow

# ---------------------------------------------------------------------------------------------- commands
TRAIN = ["videoflow", "--config", "tiny", "--batch-size", "2", "--frames", "3", "--steps", "2", "--warmup", "1",
         "--eval-clips", "2", "--train-videos", "8", "--eval-videos", "2", "--num-samples", "1", "--device", "cpu"]


class NotATensor:
    """Pickled by reference: a weights-only load must refuse it."""


def write_checkpoint(out, step=4):
    """A real (untrained) tiny checkpoint, written as the training command writes it, without training."""
    args = train_cli.parser().parse_args(TRAIN + ["--out", str(out)])
    cfg = dataclasses.replace(CONFIGS["tiny"])
    model = VideoFlow(cfg)
    os.makedirs(out, exist_ok=True)
    train_cli.save_checkpoint(os.path.join(out, "checkpoint.pt"), model, torch.optim.Adam(model.parameters()),
                              step, args, cfg, {})
    return os.path.join(out, "checkpoint.pt")


def broken_file(path, kind):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if kind == "empty":
        open(path, "wb").close()
    elif kind == "truncated":
        good = write_checkpoint(os.path.join(os.path.dirname(path), "good"))
        with open(good, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[:len(data) // 2])
    elif kind == "foreign":
        torch.save({"model": NotATensor()}, path)
    elif kind == "bare tensor":
        torch.save(torch.zeros(3), path)
    return path


def train_with(*extra, setup=None):
    def argv(tmp):
        if setup:
            setup(tmp)
        return train_cli.main, TRAIN + ["--out", str(tmp / "run"), *extra]
    return argv


def sample_with(*extra, checkpoint=None, setup=None):
    def argv(tmp):
        ckpt = checkpoint(tmp) if checkpoint else str(tmp / "missing.pt")
        if setup:
            setup(tmp)
        return sample_cli.main, ["--checkpoint", ckpt, "--out", str(tmp / "s"), "--num", "1", *extra]
    return argv


def run_ckpt(tmp):
    return write_checkpoint(tmp / "run")


def touch(*names):
    def setup(tmp):
        for name in names:
            os.makedirs(os.path.dirname(tmp / name), exist_ok=True)
            (tmp / name).write_text("step,train_bpp\n")
    return setup


COMMAND_ROWS = [
    # (id, command + argv, what stderr must say)
    ("steps 0", train_with("--steps", "0"), r"--steps: expected a positive integer, got '0'"),
    ("batch size 0", train_with("--batch-size", "0"), r"--batch-size: expected a positive integer"),
    ("batch size -1", train_with("--batch-size", "-1"), r"--batch-size: expected a positive integer"),
    ("frames 1", train_with("--frames", "1"), r"--frames: expected an integer >= 2"),
    ("eval every -1", train_with("--eval-every", "-1"), r"--eval-every: expected 0 \(only at the end\)"),
    ("ckpt every -1", train_with("--ckpt-every", "-1"), r"--ckpt-every: expected 0 \(only at the end\)"),
    ("sample every -1", train_with("--sample-every", "-1"), r"--sample-every: expected 0 \(only at the end\)"),
    ("snapshot every 0", train_with("--snapshot-every", "0"), r"--snapshot-every: expected a positive integer"),
    ("eval clips 0", train_with("--eval-clips", "0"), r"--eval-clips: expected a positive integer"),
    ("num samples 0", train_with("--num-samples", "0"), r"--num-samples: expected a positive integer"),
    ("train videos 0", train_with("--train-videos", "0"), r"--train-videos: expected a positive integer"),
    ("eval videos 0", train_with("--eval-videos", "0"), r"--eval-videos: expected a positive integer"),
    ("lr 0", train_with("--lr", "0"), r"--lr: expected a positive number"),
    ("lr nan", train_with("--lr", "nan"), r"--lr: expected a positive number"),
    ("clip 0", train_with("--clip", "0"), r"--clip: expected a positive number"),
    ("warmup -1", train_with("--warmup", "-1"), r"--warmup: expected a non-negative integer"),
    ("temperature -1", train_with("--temperature", "-1"), r"--temperature: expected a non-negative number"),
    ("seed -1", train_with("--seed", "-1"), r"--seed: expected a non-negative integer"),
    ("levels 0", train_with("--levels", "0"), r"--levels: expected a positive integer"),
    ("hidden 0", train_with("--hidden", "0"), r"--hidden: expected a positive integer"),
    ("context 0", train_with("--context", "0"), r"--context: expected a positive integer"),
    ("n-bits 9", train_with("--n-bits", "9"), r"--n-bits: expected an integer from 1 to 8"),
    ("image size not divisible", train_with("--image-size", "10"), r"--image-size: expected a multiple of 4"),
    ("data unknown", train_with("--data", "mnist"), r"--data: expected shapes, digits or folder:PATH"),
    ("data missing folder", train_with("--data", "folder:/no/such/dir"), r"--data: .*not a directory"),
    ("data broken video", train_with("--data", "folder:{tmp}", setup=lambda t: (t / "bad.mp4").write_bytes(b"xx")),
     r"--data: .*bad\.mp4"),
    ("batch larger than data", train_with("--batch-size", "8", "--train-videos", "4"),
     r"--batch-size 8: expected at most the 4 training clips per process"),
    ("out is a file", train_with(setup=lambda t: (t / "run").write_text("")), r"--out: .*not a directory"),
    ("fit without budget", train_with("--fit", "frames"), r"--fit and --memory-budget go together"),
    ("budget without fit", train_with("--memory-budget", "1"), r"--fit and --memory-budget go together"),
    ("budget 0", train_with("--memory-budget", "0", "--fit", "batch"), r"--memory-budget: expected a positive number"),
    ("budget too small", train_with("--memory-budget", "1e-6", "--fit", "frames"),
     r"--memory-budget 1e-06: not even 2-frame clips fit"),
    ("recompute chunk 0", train_with("--recompute-chunk", "0"), r"--recompute-chunk: expected a positive integer"),
    ("clobber a checkpoint", train_with(setup=run_ckpt), r"--out: .*holds a run.*--resume.*--overwrite"),
    ("clobber a log", train_with(setup=touch("run/metrics.csv")), r"--out: .*holds a run.*--resume.*--overwrite"),
    ("resume and overwrite", train_with("--resume", "--overwrite"), r"--overwrite: not allowed with argument"),
    ("resume empty", train_with("--resume", setup=lambda t: broken_file(str(t / "run" / "checkpoint.pt"), "empty")),
     r"--resume: .*checkpoint\.pt: the file is empty"),
    ("resume truncated", train_with("--resume", setup=lambda t: broken_file(str(t / "run" / "checkpoint.pt"),
                                                                            "truncated")),
     r"--resume: .*checkpoint\.pt: cannot read it as a torch checkpoint \(truncated"),
    ("resume foreign", train_with("--resume", setup=lambda t: broken_file(str(t / "run" / "checkpoint.pt"),
                                                                          "foreign")),
     r"--resume: .*checkpoint\.pt: .*not tensors and plain values"),
    ("resume other model", train_with("--resume", "--steps", "6", "--hidden", "32", setup=run_ckpt),
     r"--resume: .*other model arguments: --hidden 16 in the checkpoint, 32 now"),
    ("resume nothing to do", train_with("--resume", "--steps", "4", setup=run_ckpt),
     r"--steps 4: the checkpoint in .* is already at step 4"),
    ("sample missing checkpoint", sample_with(), r"--checkpoint: .*missing\.pt: no such file"),
    ("sample empty checkpoint", sample_with(checkpoint=lambda t: broken_file(str(t / "c.pt"), "empty")),
     r"--checkpoint: .*c\.pt: the file is empty"),
    ("sample truncated checkpoint", sample_with(checkpoint=lambda t: broken_file(str(t / "c.pt"), "truncated")),
     r"--checkpoint: .*c\.pt: cannot read it as a torch checkpoint \(truncated"),
    ("sample foreign checkpoint", sample_with(checkpoint=lambda t: broken_file(str(t / "c.pt"), "foreign")),
     r"--checkpoint: .*c\.pt: .*not tensors and plain values"),
    ("sample bare tensor", sample_with(checkpoint=lambda t: broken_file(str(t / "c.pt"), "bare tensor")),
     r"--checkpoint: .*c\.pt: not a checkpoint of flowkern.models.train \(expected a dict"),
    ("sample num 0", sample_with("--num", "0", checkpoint=run_ckpt), r"--num: expected a positive integer"),
    ("sample frames 1", sample_with("--frames", "1", checkpoint=run_ckpt), r"--frames: expected an integer >= 2"),
    ("sample temperature -1", sample_with("--temperature", "-1", checkpoint=run_ckpt),
     r"--temperature: expected a non-negative number"),
    ("sample seed -1", sample_with("--seed", "-1", checkpoint=run_ckpt), r"--seed: expected a non-negative integer"),
    ("sample clobber", sample_with(checkpoint=run_ckpt, setup=touch("s/sample-0.gif")),
     r"--out: .*sample-0\.gif exists.*--overwrite"),
]


@pytest.mark.parametrize("make, message", [r[1:] for r in COMMAND_ROWS], ids=[r[0] for r in COMMAND_ROWS])
def test_commands_reject_bad_input(tmp_path, capsys, make, message):
    command, argv = make(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exc:
        command(argv)
    assert exc.value.code == 2  # argparse's usage error: nothing ran
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "weights_only=False" not in err  # the wrong advice for an untrusted file
    assert not os.path.exists(tmp_path / "run" / "samples")  # failed before any work


# ---------------------------------------------------------------------------------------------- loader
def array_file(name, arr, **folder_args):
    def make(tmp):
        if name.endswith(".npz"):
            np.savez(tmp / name, **arr) if isinstance(arr, dict) else np.savez(tmp / name, video=arr)
        else:
            np.save(tmp / name, arr)
        return lambda: VideoFolder(str(tmp), frames=2, size=8, **folder_args)
    return make


def video_file(name, write):
    def make(tmp):
        write(str(tmp / name))
        return lambda: VideoFolder(str(tmp), frames=2, size=8)
    return make


def audio_only(path):
    import av
    with av.open(path, "w") as c:
        stream = c.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        c.mux(stream.encode(frame))
        c.mux(stream.encode())


def frames_with(dtype, value, at=(1, 2, 3, 0), shape=(4, 8, 8, 3)):
    arr = np.full(shape, 0.5 if np.issubdtype(np.dtype(dtype), np.floating) else 7, dtype=dtype)
    arr[at] = value
    return arr


def folder_args(**kw):
    def make(tmp):
        np.save(tmp / "ok.npy", np.zeros((4, 8, 8, 3), np.uint8))
        return lambda: VideoFolder(str(tmp), **kw)
    return make


def just(fn):
    return lambda tmp: fn


LOADER_ROWS = [
    # (id, make(tmp) -> call, error type, message)
    ("float above 1", array_file("v.npy", frames_with(np.float32, 1.01)), ValueError,
     r"v\.npy: float frames must lie in \[0, 1\].*1\.01 at frame 1"),
    ("float NaN", array_file("v.npy", frames_with(np.float64, np.nan)), ValueError,
     r"v\.npy: float frames must be finite.*nan at frame 1"),
    ("float negative", array_file("v.npy", frames_with(np.float32, -0.5)), ValueError,
     r"v\.npy: float frames must lie in \[0, 1\].*-0\.5 at frame 1"),
    ("float 0-255", array_file("v.npy", frames_with(np.float32, 200.0)), ValueError,
     r"v\.npy: float frames must lie in \[0, 1\].*200"),
    ("bool", array_file("v.npy", np.ones((4, 8, 8, 3), bool)), ValueError, r"v\.npy: dtype bool is not accepted"),
    ("complex", array_file("v.npy", np.ones((4, 8, 8, 3), np.complex64)), ValueError,
     r"v\.npy: dtype complex64 is not accepted"),
    ("int above 255", array_file("v.npy", frames_with(np.int16, 300)), ValueError,
     r"v\.npy: integer frames must lie in \[0, 255\].*300 at frame 1"),
    ("int negative", array_file("v.npy", frames_with(np.int32, -1)), ValueError,
     r"v\.npy: integer frames must lie in \[0, 255\].*-1 at frame 1"),
    ("npz float above 1", array_file("d.npz", frames_with(np.float32, 1.5)), ValueError,
     r"d\.npz: float frames must lie in \[0, 1\].*1\.5"),
    ("npz several arrays", array_file("d.npz", {"a": np.zeros((4, 8, 8)), "b": np.zeros(3)}), ValueError,
     r"d\.npz: holds arrays a, b and none is named 'video'"),
    ("1-D array", array_file("v.npy", np.zeros(10, np.uint8)), ValueError,
     r"v\.npy: expected frames of shape \(T, H, W\) or \(T, H, W, C\).*got \(10,\)"),
    ("channels first", array_file("v.npy", np.zeros((4, 3, 8, 8), np.uint8)), ValueError,
     r"v\.npy: expected 1, 3 or 4 channels \(channels last.*got 8"),
    ("2 channels", array_file("v.npy", np.zeros((4, 8, 8, 2), np.uint8)), ValueError,
     r"v\.npy: expected 1, 3 or 4 channels \(channels last.*got 2"),
    ("empty mp4", video_file("e.mp4", lambda p: open(p, "wb").close()), ValueError, r"e\.mp4: cannot read"),
    ("not a video", video_file("n.mp4", lambda p: open(p, "wb").write(b"not a video")), ValueError,
     r"n\.mp4: cannot read"),
    ("audio only", video_file("a.mp4", audio_only), ValueError, r"a\.mp4: has no video stream"),
    ("frames 0", folder_args(frames=0), ValueError, r"VideoFolder: frames must be a positive integer, got 0"),
    ("size 0", folder_args(size=0), ValueError, r"VideoFolder: size must be a positive integer, got 0"),
    ("stride 0", folder_args(stride=0), ValueError, r"VideoFolder: stride must be a positive integer"),
    ("channels 2", folder_args(channels=2), ValueError, r"VideoFolder: channels must be 1 or 3, got 2"),
    ("missing folder", just(lambda: VideoFolder("/no/such/dir")), ValueError, r"/no/such/dir.*not a directory"),
    ("empty folder", lambda tmp: (lambda: VideoFolder(str(tmp))), ValueError, r"no video or array files"),
    ("movement frames 0", just(lambda: StochasticMovement(frames=0)), ValueError,
     r"StochasticMovement: frames must be a positive integer, got 0"),
    ("movement videos -1", just(lambda: StochasticMovement(num_videos=-1)), ValueError,
     r"StochasticMovement: num_videos must be a non-negative integer, got -1"),
    ("movement size 0", just(lambda: StochasticMovement(size=0)), ValueError,
     r"StochasticMovement: size must be a positive integer"),
    ("movement seed -1", just(lambda: StochasticMovement(seed=-1)), ValueError,
     r"StochasticMovement: seed must be a non-negative integer, got -1"),
    ("movement radii", just(lambda: StochasticMovement(min_radius=5, max_radius=2)), ValueError,
     r"StochasticMovement: expected 0 < min_radius <= max_radius"),
    ("movement index", just(lambda: StochasticMovement(num_videos=3)[3]), IndexError,
     r"StochasticMovement: index 3 out of range for 3 videos"),
    ("digits bigger than frame", just(lambda: StochasticMovingDigits(size=16)), ValueError,
     r"StochasticMovingDigits: digits drawn at glyph_size 28 are up to 20x15 pixels, larger than size 16"),
    ("digits channels", just(lambda: StochasticMovingDigits(channels=2)), ValueError,
     r"StochasticMovingDigits: channels must be 1 or 3, got 2"),
    ("digits frames 0", just(lambda: StochasticMovingDigits(frames=0)), ValueError,
     r"StochasticMovingDigits: frames must be a positive integer, got 0"),
]


@pytest.mark.parametrize("make, error, message", [r[1:] for r in LOADER_ROWS], ids=[r[0] for r in LOADER_ROWS])
def test_loader_rejects_bad_input(tmp_path, make, error, message):
    build = make(tmp_path)
    with pytest.raises(error, match=message):
        build()  # (but for the index row) the constructor: problems surface before training, not at a bad clip
