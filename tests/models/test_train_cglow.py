"""`python -m flowkern.models.train cglow`: per-frame head and tail metrics, labels from the data, exact resumption,
the NaN guard against a bad batch, samples, and refusals."""
import csv
import json
import os

import numpy as np
import pytest
import torch

from flowkern.models import evaluate as evaluate_cli
from flowkern.models import sample as sample_cli
from flowkern.models import train as train_cli
from flowkern.models.cglow import CGlow

ARGS = ["cglow", "--config", "tiny", "--batch-size", "4", "--frames", "3", "--eval-every", "2", "--ckpt-every", "2",
        "--eval-clips", "4", "--train-videos", "32", "--eval-videos", "8", "--warmup", "2", "--num-samples", "2",
        "--device", "cpu"]


def run(out, steps, *extra):
    train_cli.main(ARGS + ["--out", str(out), "--steps", str(steps), *extra])
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)


def test_training_logs_head_and_tail_bits_and_writes_a_loadable_checkpoint_and_samples(tmp_path):
    state = run(tmp_path, 4, "--variant", "state_label", "--label", "shape")
    assert state["config"]["variant"] == "state_label" and state["config"]["num_labels"] == 3  # the shapes
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    evals = state["metrics"]["eval_frames"]  # [step, frame 1, frame 2, frame 3] per evaluation
    assert [e[0] for e in evals] == [2, 4] and all(len(e) == 4 for e in evals)
    last, frames = rows[-1], evals[-1][1:]
    assert float(last["eval_head_bpp"]) == pytest.approx(frames[0], abs=1e-5)
    assert float(last["eval_tail_bpp"]) == pytest.approx(sum(frames[1:]) / 2, abs=1e-5)
    assert float(last["eval_bpp"]) == pytest.approx(sum(frames) / 3, abs=1e-5)  # CGlow's score: every frame
    assert last["continuation_acc"] != ""  # 3-frame Stochastic Movement clips: motion is measured
    model = train_cli.model_from_checkpoint(state, "checkpoint.pt")
    assert isinstance(model, CGlow)
    files = set(os.listdir(tmp_path / "samples"))
    assert {"step4-0.gif", "step4-scratch-0.gif", "step4-grid.png"} <= files
    sample_cli.main(["--checkpoint", str(tmp_path / "checkpoint.pt"), "--out", str(tmp_path / "s"), "--num", "2"])
    sample_cli.main(["--checkpoint", str(tmp_path / "checkpoint.pt"), "--out", str(tmp_path / "u"), "--num", "2",
                     "--unconditional", "--frames", "4"])
    assert "sample-1.gif" in os.listdir(tmp_path / "s") and "sample-1.gif" in os.listdir(tmp_path / "u")
    for extra in ([], ["--untrained"]):  # the evaluation command: per-frame bits (the head given the labels), motion
        name = "untrained" if extra else "trained"
        evaluate_cli.main(["--checkpoint", str(tmp_path / "checkpoint.pt"), "--clips", "4", "--temperatures", "0.5",
                           "--json", str(tmp_path / f"{name}.json"), *extra])
    trained, untrained = (json.load(open(tmp_path / f"{n}.json")) for n in ("trained", "untrained"))
    assert len(trained["per_frame_bpp"]) == 3 and trained["step"] == 4 and untrained["step"] == 0
    assert trained["per_frame_bpp"] != untrained["per_frame_bpp"]
    assert set(trained["likelihood_motion"]) >= {"bpp_true", "true_beats_reversed"}
    assert "continuation_accuracy" in trained["temperatures"]["0.5"]


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    full = run(tmp_path / "full", 5, "--variant", "state_label")
    run(tmp_path / "part", 2, "--variant", "state_label")
    resumed = run(tmp_path / "part", 5, "--variant", "state_label", "--resume")
    for k, v in full["model"].items():
        if torch.is_tensor(v):
            assert torch.equal(v, resumed["model"][k]), k
    assert [int(r["step"]) for r in csv.DictReader(open(tmp_path / "part" / "metrics.csv"))] == [1, 2, 3, 4, 5]


def test_a_bad_batch_is_skipped_and_the_run_goes_on_learning(tmp_path, monkeypatch):
    real = train_cli.dequantize

    def poisoned(clips, n_bits, seed, step, rank, device):
        out = real(clips, n_bits, seed, step, rank, device)
        return out * float("inf") if step == 2 else out  # the third step's batch

    monkeypatch.setattr(train_cli, "dequantize", poisoned)
    state = run(tmp_path, 6, "--variant", "state")
    assert state["metrics"]["skipped"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if torch.is_tensor(v) and v.is_floating_point())
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert rows[2]["skipped"] == "1" and rows[-1]["skipped"] == "1"  # only that one
    assert all(np.isfinite(float(r["train_bpp"])) for r in rows[3:])  # the steps after it trained normally


def test_a_labelled_folder_trains_with_its_sub_folders_as_labels(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("jump", "walk"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for k in range(10):
            np.save(tmp_path / "data" / name / f"{k}.npy", rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8))
    state = run(tmp_path / "run", 2, "--data", f"folder:{tmp_path / 'data'}", "--label", "folder", "--eval-clips", "2")
    assert state["config"]["num_labels"] == 2 and state["args"]["label"] == "folder"


@pytest.mark.parametrize("extra, message", [
    (["--data", "digits"], "--label shape: labels come from --data shapes"),
    (["--label", "folder"], "--label folder"),
    (["--image-size", "10"], "--image-size: expected a multiple of 4"),
])
def test_arguments_that_cannot_work_are_refused_before_any_work(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        run(tmp_path, 2, "--variant", "state_label", *extra)
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "metrics.csv")


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path, capsys):
    train_cli.main(["videoflow", "--config", "tiny", "--batch-size", "2", "--frames", "3", "--steps", "1",
                    "--train-videos", "8", "--eval-videos", "4", "--eval-clips", "2", "--num-samples", "1",
                    "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        run(tmp_path, 3, "--resume")
    assert exc.value.code == 2 and "holds a videoflow model, not cglow" in capsys.readouterr().err


def test_tbptt_trains_window_by_window_in_less_memory(tmp_path):
    """--tbptt: the training step runs backward one window at a time; its measured real peak (--measure-memory) is
    below the whole clip's at the same loss."""
    peaks, losses = {}, {}
    for name, extra in (("whole", []), ("windows", ["--tbptt", "2"])):
        state = run(tmp_path / name, 1, "--variant", "state", "--frames", "8", "--measure-memory", "--eval-every",
                    "0", *extra)
        peaks[name] = json.load(open(tmp_path / name / "memory.json"))["peak_MiB"]
        losses[name] = float(next(csv.DictReader(open(tmp_path / name / "metrics.csv")))["train_bpp"])
        assert state["config"]["tbptt"] == (2 if extra else None)
    assert peaks["windows"] < 0.8 * peaks["whole"]
    assert losses["windows"] == pytest.approx(losses["whole"], rel=1e-4)  # the same model, the same first batch
