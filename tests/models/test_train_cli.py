"""The training command: logs, atomic weights-only checkpoints, exact resumption, the NaN guard, samples, DDP."""
import csv
import os
import socket

import torch
import torch.multiprocessing as mp

import _workers

from flowkern.models import sample as sample_cli
from flowkern.models import train as train_cli

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
