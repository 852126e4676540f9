"""The training command: logs, atomic weights-only checkpoints, exact resumption, the NaN guard, samples, DDP."""
import csv
import dataclasses
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

import _workers

from flowkern.models import sample as sample_cli
from flowkern.models import train as train_cli
from flowkern.models.videoflow import training_step_peak

ARGS = ["videoflow", "--config", "tiny", "--batch-size", "2", "--frames", "3", "--eval-every", "2",
        "--ckpt-every", "2", "--eval-clips", "4", "--train-videos", "64", "--eval-videos", "8", "--warmup", "2",
        "--num-samples", "2", "--device", "cpu"]


def run(out, steps, *extra):
    train_cli.main(ARGS + ["--out", str(out), "--steps", str(steps), *extra])
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)


def test_training_writes_logs_checkpoint_and_samples(tmp_path):
    state = run(tmp_path, 4)
    assert state["step"] == 4 and state["config"]["levels"] == 2
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert rows[1]["eval_bpp"] and float(rows[1]["eval_bpp"]) > 0
    files = os.listdir(tmp_path / "samples")
    assert {"step4-0.gif", "step4-0.mp4", "step4-grid.png"} <= set(files)
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]  # the atomic write left no temporary file
    sample_cli.main(["--checkpoint", str(tmp_path / "checkpoint.pt"), "--out", str(tmp_path / "s"), "--num", "2"])
    assert "sample-0.gif" in os.listdir(tmp_path / "s")


def test_memory_budget_picks_the_clip_length_and_the_first_step_already_saves_memory(tmp_path):
    """--memory-budget --fit frames picks the longest clip the plan fits; ActNorm initialises on a short no-grad batch,
    so the first step (measured with --measure-memory) runs with the memory-saving paths: its real peak is within
    the budget, where plain autograd's would be several times it."""
    budget_gb = 0.02
    train_cli.main(ARGS + ["--out", str(tmp_path), "--steps", "1", "--memory-budget", str(budget_gb), "--fit",
                           "frames", "--measure-memory", "--eval-every", "0", "--sample-every", "0"])
    report = json.load(open(tmp_path / "memory.json"))
    frames = report["frames"]
    assert frames > 40  # far more than the tiny model's batch would allow with plain autograd
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["args"]["frames"] == frames
    assert report["peak_MiB"] * 2**20 <= 1.1 * budget_gb * 1e9
    plain = dataclasses.replace(train_cli.config_from(state["config"]), reversible=False, checkpoint_prior=False)
    assert training_step_peak(plain, 2, frames, "meta").peak_bytes > 3 * budget_gb * 1e9


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    full = run(tmp_path / "full", 6)
    run(tmp_path / "part", 4)
    with open(tmp_path / "part" / "metrics.csv", "a") as f:  # a crash after step 4's checkpoint logged step 5
        f.write("5,9.9,0,0,0,,0\n")
    resumed = run(tmp_path / "part", 6, "--resume")
    assert resumed["step"] == 6
    for k, v in full["model"].items():
        if torch.is_tensor(v):
            assert torch.equal(v, resumed["model"][k]), k
    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "part" / "metrics.csv"))]
    assert steps == [1, 2, 3, 4, 5, 6]  # the stale row 5 was replaced, not duplicated


def test_nan_guard_skips_the_step_and_restores_the_last_good_state(tmp_path, monkeypatch):
    real = train_cli.dequantize

    def poisoned(clips, n_bits, seed, step, rank, device):
        out = real(clips, n_bits, seed, step, rank, device)
        return out * float("nan") if step == 2 else out

    monkeypatch.setattr(train_cli, "dequantize", poisoned)
    state = run(tmp_path, 4)
    assert state["metrics"]["skipped"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if torch.is_tensor(v))


HEADER = ",".join(train_cli.LOG_HEADER)


def test_an_existing_run_is_never_overwritten_unless_asked(tmp_path, capsys):
    run(tmp_path, 4)
    log = (tmp_path / "metrics.csv").read_text()
    with pytest.raises(SystemExit) as exc:  # same out, no --resume: refused before any work
        run(tmp_path, 2)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and str(tmp_path) in err
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 4  # the run is intact
    assert (tmp_path / "metrics.csv").read_text() == log
    state = run(tmp_path, 2, "--overwrite")  # asked explicitly: a clean new run
    assert state["step"] == 2
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == HEADER and lines.count(HEADER) == 1
    assert [int(r["step"]) for r in csv.DictReader(open(tmp_path / "metrics.csv"))] == [1, 2]
    assert not [f for f in os.listdir(tmp_path / "samples") if f.startswith("step4")]  # no stale samples


def poison(monkeypatch, steps):
    real = train_cli.dequantize

    def poisoned(clips, n_bits, seed, step, rank, device):
        out = real(clips, n_bits, seed, step, rank, device)
        return out * float("nan") if step in steps else out

    monkeypatch.setattr(train_cli, "dequantize", poisoned)


def test_a_skipped_last_step_still_saves_evaluates_and_samples(tmp_path, monkeypatch):
    poison(monkeypatch, {3})  # the last of 4 steps
    state = run(tmp_path, 4, "--ckpt-every", "100", "--eval-every", "100")
    assert state["step"] == 4 and state["metrics"]["skipped"] == 1
    assert [s for s, _ in state["metrics"]["eval"]] == [4]
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert rows[-1]["step"] == "4" and rows[-1]["skipped"] == "1" and float(rows[-1]["eval_bpp"]) > 0
    assert "step4-0.gif" in os.listdir(tmp_path / "samples")


def test_a_run_whose_every_step_is_skipped_fails_loudly(tmp_path, monkeypatch, capsys):
    run(tmp_path, 2)  # (a NaN first batch already fails loudly: ActNorm's data-dependent init refuses it)
    poison(monkeypatch, {2, 3})
    with pytest.raises(SystemExit) as exc:
        run(tmp_path, 4, "--resume")
    assert exc.value.code == 1
    assert "all 2 steps of this run were skipped" in capsys.readouterr().err
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and state["metrics"]["skipped"] == 2  # the end-of-run work was done


def test_checkpoints_are_durable_and_leave_no_temporary_files(tmp_path, monkeypatch):
    run(tmp_path, 2)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"checkpoint.pt.tmp-{dead.pid}"  # a writer killed mid-save (no finally ran)
    stale.write_bytes(b"half a checkpoint")
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    run(tmp_path, 4, "--resume")
    assert not stale.exists()  # cleaned up at start-up: its writer is dead
    assert len(synced) >= 2  # the checkpoint file, then its folder after the rename

    def interrupted(obj, f):  # a kill (Ctrl-C) in the middle of writing
        open(f, "wb").write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli.torch, "save", interrupted)
    model = torch.nn.Linear(1, 1)
    with pytest.raises(KeyboardInterrupt):
        train_cli.save_checkpoint(str(tmp_path / "checkpoint.pt"), model, torch.optim.Adam(model.parameters()), 5,
                                  train_cli.parser().parse_args(ARGS), train_cli.CONFIGS["tiny"], {})
    monkeypatch.undo()
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 4  # the last good one is intact


def test_two_process_gloo_training_keeps_ranks_identical(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_workers.ddp_train_rank, args=(2, port, str(tmp_path), ARGS), nprocs=2, join=True,
                       start_method="spawn")
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k, v in a.items():
        if torch.is_tensor(v):
            assert torch.equal(v, b[k]), k  # same init (ActNorm all-reduced) and same all-reduced updates
    assert (tmp_path / "checkpoint.pt").exists()


def test_random_windows_are_reproducible_stretches_of_each_clip():
    clips = torch.arange(4 * 6).view(4, 6, 1, 1, 1).expand(4, 6, 1, 2, 2)
    w = train_cli.random_windows(clips, 3, 0, 7, 0)
    assert w.shape == (4, 3, 1, 2, 2)
    starts = w[:, 0, 0, 0, 0] - torch.arange(4) * 6
    assert ((starts >= 0) & (starts <= 3)).all()
    assert torch.equal(w, clips[torch.arange(4)[:, None], starts[:, None] + torch.arange(3)])
    assert torch.equal(w, train_cli.random_windows(clips, 3, 0, 7, 0))
    assert len({tuple(train_cli.random_windows(clips, 3, 0, s, 0)[:, 0, 0, 0, 0].tolist()) for s in range(8)}) > 1
    assert train_cli.random_windows(clips, None, 0, 7, 0) is clips


def test_learning_rate_warms_up_then_decays():
    args = train_cli.parser().parse_args(["videoflow", "--lr", "1e-3", "--warmup", "10", "--steps", "110",
                                          "--decay-from", "10", "--decay-to", "0.1"])
    lr = [train_cli.learning_rate(args, s) for s in (1, 10, 60, 110)]
    assert lr == pytest.approx([1e-4, 1e-3, 5.5e-4, 1e-4])
    assert args.adam_betas == (0.85, 0.997) and args.adam_eps == 1e-6  # the reference's Adam


@pytest.mark.parametrize("targets_only", [True, False])
def test_targets_only_loss_leaves_the_first_frames_prior_untrained(tmp_path, targets_only):
    """The reference trains on the frames after the conditioning ones: the first frame's (unconditional) prior gets
    no gradient with --targets-only, and learns without it."""
    flag = "--targets-only" if targets_only else "--no-targets-only"
    state = run(tmp_path, 2, "--context", "1", flag, "--eval-every", "0", "--sample-every", "0")
    top = state["config"]["levels"] - 1
    first_prior = [v for k, v in state["model"].items() if k.startswith(f"first_priors.{top}.")]
    assert first_prior and all(v.dtype.is_floating_point for v in first_prior)
    assert all(not v.any() for v in first_prior) == targets_only  # zero-initialised; moved only if trained


def test_window_and_targets_only_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_cli.main(ARGS + ["--out", str(tmp_path / "a"), "--steps", "1", "--window", "4"])
    assert "--window 4: expected at most --frames (3)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_cli.main(ARGS + ["--out", str(tmp_path / "b"), "--steps", "1", "--window", "2", "--context", "2"])
    assert "no frame after the first 2" in capsys.readouterr().err


def test_adam_beta_of_one_is_refused_as_an_argument(capsys):
    with pytest.raises(SystemExit):
        train_cli.parser().parse_args(["videoflow", "--adam-betas", "0.9", "1"])
    assert "--adam-betas: expected a number in [0, 1), got '1'" in capsys.readouterr().err


def test_model_overrides_reach_the_config():
    """Every model flag lands in the config the run trains (the prior network's size included), and a bad value is
    refused by argparse with the flag's name."""
    args = train_cli.parser().parse_args(
        ["videoflow", "--config", "shapes-small", "--levels", "2", "--image-size", "16", "--prior-blocks", "4",
         "--prior-hidden", "96", "--prior-channels", "input", "--no-skip", "--coupling", "affine",
         "--coupling-net", "gatu", "--no-pad-context", "--advect", "0", "--no-advect-corr", "--no-advect-mixture"])
    cfg = train_cli.resolve_config(args)
    assert (cfg.levels, cfg.image_size, cfg.prior_blocks, cfg.prior_hidden, cfg.prior_channels) == (2, 16, 4, 96, None)
    assert (cfg.skip, cfg.affine, cfg.coupling_net, cfg.pad_context) == (False, True, "gatu", False)
    assert (cfg.advect, cfg.advect_corr, cfg.advect_mixture) == (0, False, False)
    cfg = train_cli.resolve_config(train_cli.parser().parse_args(["videoflow", "--config", "tiny", "--advect", "3",
                                                                  "--advect-corr"]))
    assert (cfg.advect, cfg.advect_corr) == (3, True)
    with pytest.raises(train_cli.UsageError, match="advect_mixture needs advect"):  # the mixture's components
        train_cli.resolve_config(train_cli.parser().parse_args(["videoflow", "--config", "shapes-small",
                                                                "--advect", "0", "--no-advect-corr"]))
    with pytest.raises(train_cli.UsageError, match="advect must be 0"):  # the advection moves the skip's latent
        train_cli.resolve_config(train_cli.parser().parse_args(["videoflow", "--config", "shapes-small",
                                                                "--no-skip"]))
    with pytest.raises(SystemExit):
        train_cli.parser().parse_args(["videoflow", "--advect", "4"])
    args = train_cli.parser().parse_args(["videoflow", "--config", "shapes-small", "--prior-channels", "64"])
    assert train_cli.resolve_config(args).prior_channels == 64
    assert train_cli.resolve_config(train_cli.parser().parse_args(["videoflow", "--config", "shapes-small"])) \
        == train_cli.CONFIGS["shapes-small"]
    with pytest.raises(SystemExit):
        train_cli.parser().parse_args(["videoflow", "--prior-channels", "wide"])
