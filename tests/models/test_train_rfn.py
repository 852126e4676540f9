"""`python -m flowkern.models.train rfn`: the KL weight's warm-up, the ELBO's held-out bits, resumption, samples."""
import csv
import json
import os

import pytest
import torch

from flowkern import AffineCoupling
from flowkern.models import evaluate as evaluate_cli
from flowkern.models import sample as sample_cli
from flowkern.models import train as train_cli
from flowkern.models.rfn import RFN

ARGS = ["rfn", "--config", "tiny", "--batch-size", "4", "--frames", "4", "--eval-every", "2", "--ckpt-every", "2",
        "--eval-clips", "4", "--train-videos", "32", "--eval-videos", "8", "--warmup", "2", "--num-samples", "2",
        "--device", "cpu"]


def run(out, steps, *extra):
    train_cli.main(ARGS + ["--out", str(out), "--steps", str(steps), *extra])
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)


def test_kl_weight_warms_up_linearly_from_beta_start_to_one():
    args = train_cli.parser().parse_args(["rfn", "--beta-start", "1e-7", "--beta-steps", "10"])
    assert args.data == "digits" and args.frames == 10  # SM-MNIST, 10-frame clips: the thesis's setting
    assert train_cli.kl_weight(args, 0) == pytest.approx(1e-7)
    assert train_cli.kl_weight(args, 5) == pytest.approx(0.5, abs=1e-6)
    assert train_cli.kl_weight(args, 10) == train_cli.kl_weight(args, 99) == 1.0
    args.beta_steps = 0
    assert train_cli.kl_weight(args, 0) == 1.0


def test_training_logs_beta_and_the_elbos_held_out_bits_and_resumes_exactly(tmp_path):
    full = run(tmp_path / "full", 4, "--beta-steps", "4")
    rows = list(csv.DictReader(open(tmp_path / "full" / "metrics.csv")))
    assert [float(r["beta"]) for r in rows] == pytest.approx([0.25, 0.5, 0.75, 1.0], abs=1e-6)
    evals = full["metrics"]["eval_frames"]
    assert [len(e) for e in evals] == [4, 4]  # [step, frames 2..4]: the first frame is context only
    assert float(rows[-1]["eval_bpp"]) == pytest.approx(sum(evals[-1][1:]) / 3, abs=1e-5)
    model = train_cli.model_from_checkpoint(full, "checkpoint.pt")
    assert isinstance(model, RFN) and model.beta == 1.0
    run(tmp_path / "part", 2, "--beta-steps", "4")
    resumed = run(tmp_path / "part", 4, "--beta-steps", "4", "--resume")
    for k, v in full["model"].items():
        if torch.is_tensor(v):
            assert torch.equal(v, resumed["model"][k]), k
    assert os.path.exists(tmp_path / "full" / "samples" / "step4-grid.png")
    sample_cli.main(["--checkpoint", str(tmp_path / "full" / "checkpoint.pt"), "--out", str(tmp_path / "s"),
                     "--num", "2", "--frames", "6"])
    assert "sample-1.gif" in os.listdir(tmp_path / "s")
    evaluate_cli.main(["--checkpoint", str(tmp_path / "full" / "checkpoint.pt"), "--clips", "4", "--json",
                       str(tmp_path / "e.json")])
    r = json.load(open(tmp_path / "e.json"))
    assert r["first_frame"] == 2 and len(r["per_frame_bpp"]) == 3


def test_unmodellable_requests_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run(tmp_path / "a", 1, "--image-size", "18")
    assert exc.value.code == 2 and "multiple of 2 ** levels" in capsys.readouterr().err
    run(tmp_path / "b", 1, "--eval-every", "0")
    with pytest.raises(SystemExit) as exc:
        sample_cli.main(["--checkpoint", str(tmp_path / "b" / "checkpoint.pt"), "--out", str(tmp_path / "s"),
                         "--unconditional"])
    assert exc.value.code == 2 and "does not model a first frame" in capsys.readouterr().err


def test_the_coupling_scale_is_a_flag_that_rides_in_the_checkpoint(tmp_path, capsys):
    ckpt = run(tmp_path / "t", 2)  # the thesis's tanh clamp by default
    assert ckpt["config"]["coupling_scale"] == "tanh"
    model = train_cli.model_from_checkpoint(ckpt, "checkpoint.pt")
    assert {m.scale for m in model.modules() if isinstance(m, AffineCoupling)} == {"tanh"}
    with pytest.raises(SystemExit) as exc:  # a resume may not change the architecture
        run(tmp_path / "t", 4, "--coupling-scale", "sigmoid", "--resume")
    assert exc.value.code == 2 and "--coupling-scale tanh in the checkpoint, sigmoid now" in capsys.readouterr().err
    sig = run(tmp_path / "s", 2, "--coupling-scale", "sigmoid")
    assert {m.scale for m in train_cli.model_from_checkpoint(sig, "checkpoint.pt").modules()
            if isinstance(m, AffineCoupling)} == {"sigmoid"}


def test_a_checkpoint_from_before_the_coupling_scale_loads_as_the_sigmoid_it_was(tmp_path):
    ckpt = run(tmp_path / "s", 2, "--coupling-scale", "sigmoid")
    del ckpt["config"]["coupling_scale"]  # as written before the field existed
    model = train_cli.model_from_checkpoint(ckpt, "checkpoint.pt")
    assert model.cfg.coupling_scale == "sigmoid"
