"""The motion measures (flowkern.models.motion) and the evaluation command, checked with oracle models whose answers
are known: the true continuation scores 1, the reversed and the static ones 0."""
import json

import numpy as np
import pytest
import torch
from torch import nn

import flowkern
from flowkern.models import evaluate as evaluate_cli
from flowkern.models import motion
from flowkern.models import train as train_cli
from flowkern.models.data import DIRECTIONS, StochasticMovement

DATA = StochasticMovement(40, frames=3, size=32, seed=5)


def test_size_scaled_defaults_keep_the_64x64_motion():
    assert (DATA.speed, DATA.min_radius, DATA.max_radius) == (2.0, 2.0, 5.0)
    big = StochasticMovement(4, size=64)
    assert (big.speed, big.min_radius, big.max_radius) == (4.0, 4.0, 10.0)
    assert torch.equal(DATA[3], DATA.render(3, range(3)))


@pytest.mark.parametrize("i", range(0, 40, 7))
def test_centroid_finds_the_object_where_it_was_drawn(i):
    p = DATA.params(i)
    for t in range(3):
        y, x = motion.object_centroid(DATA.render(i, [t])[0].numpy(), p["color"])
        cy, cx = DATA.position(i, t)
        assert abs(x - cx) < 0.6 and abs(y - cy) < 0.6  # every shape's centroid is its centre, up to the pixels


def test_an_empty_frame_has_no_object():
    frame = np.full((3, 32, 32), StochasticMovement.background, dtype=np.uint8)
    assert motion.object_centroid(frame, DATA.palette[0]) is None


def test_move_classification():
    start = (16.0, 16.0)
    for d, (ux, uy) in enumerate(DIRECTIONS):
        end = (16 + 2 * uy, 16 + 2 * ux)
        assert motion.moves_along(start, end, d, 0.5)
        assert not motion.moves_along(start, end, (d + 1) % 8, 0.5)  # 45 degrees off
        assert not motion.moves_along(end, start, d, 0.5)  # reversed
        assert motion.direction_of(start, end, 0.5) == d
    assert not motion.moves_along(start, (16.1, 16.0), 0, 0.5)  # too small a move to have a direction
    assert motion.direction_of(start, None, 0.5) is None


class Oracle(nn.Module):
    """Continues each given clip with its object at time `shift` steps after the last given frame (1: the truth,
    -1: the motion reversed, 0: a static copy); scores candidates by their distance to that frame. The measures
    visit the clips in the order of `indices`; the oracle follows it (a first frame alone does not tell clips
    apart) and checks that the context it gets is that clip's."""

    def __init__(self, dataset, shift, indices):
        super().__init__()
        self.dataset, self.shift, self.todo = dataset, shift, list(indices)
        self.cfg = type("cfg", (), {"n_bits": 8})
        self.w = nn.Parameter(torch.zeros(()))

    @staticmethod
    def _same(a, b):  # up to dequantization noise
        return bool((a - b).abs().max() < 1 / 256)

    def _clip(self, j, times):
        return flowkern.preprocess(self.dataset.render(j, times), 8, noise=False)

    def _next(self, context, advance=True):
        c = context.shape[1]
        if advance:
            idx, self.todo = self.todo[:len(context)], self.todo[len(context):]
        else:  # two frames fix the clip (up to identical clips)
            idx = [next(j for j in range(len(self.dataset)) if self._same(self._clip(j, range(c)), clip))
                   for clip in context]
        out = []
        for j, clip in zip(idx, context):
            assert self._same(self._clip(j, range(c)), clip)
            out.append(self._clip(j, [c - 1 + self.shift])[0])
        return torch.stack(out)

    def generate(self, context, num_frames, temperature, generator=None):
        assert num_frames == 1
        return torch.cat([context, self._next(context).unsqueeze(1)], 1)

    def out_of_sequence_bpp(self, context, candidates):
        return (candidates[:, 0] - self._next(context, advance=False)).abs().flatten(1).mean(1, keepdim=True)


@pytest.mark.parametrize("shift,expected", [(1, 1.0), (-1, 0.0), (0, 0.0)])
def test_continuation_accuracy_of_oracles(shift, expected):
    r = motion.continuation_accuracy(Oracle(DATA, shift, range(24)), DATA, list(range(24)), c=2,
                                     temperature=0.5)
    assert r["continuation_accuracy"] == expected and r["object_found"] == 1.0


def test_first_frame_choice_counts_the_directions_sampled():
    idx = list(range(40))
    r = motion.first_frame_choice(Oracle(DATA, 1, idx), DATA, idx)
    truth = np.bincount([DATA.params(j)["direction"] for j in idx], minlength=8).tolist()
    assert r["direction_counts"] == truth and r["directions_covered"] == sum(k > 0 for k in truth)
    still = motion.first_frame_choice(Oracle(DATA, 0, idx), DATA, idx)
    assert still["no_move"] == 1.0 and still["directions_covered"] == 0


def test_likelihood_motion_tests_compare_the_right_frames():
    r = motion.likelihood_motion_tests(Oracle(DATA, 1, ()), DATA, list(range(16)), c=2)
    assert r["bpp_true"] < 1 / 256 < min(r["bpp_reversed"], r["bpp_static"])  # up to the noise
    assert r["true_beats_reversed"] == r["true_beats_static"] == 1.0
    back = motion.likelihood_motion_tests(Oracle(DATA, -1, ()), DATA, list(range(16)), c=2)
    assert back["bpp_reversed"] < 1 / 256 and back["true_beats_reversed"] == 0.0


def test_evaluation_command_on_a_trained_checkpoint(tmp_path, capsys):
    train_cli.main(["videoflow", "--config", "tiny", "--context", "1", "--batch-size", "2", "--frames", "3",
                    "--eval-every", "0", "--eval-clips", "4", "--train-videos", "16", "--eval-videos", "4",
                    "--warmup", "1", "--device", "cpu", "--out", str(tmp_path / "run"), "--steps", "2"])
    capsys.readouterr()
    out = tmp_path / "eval.json"
    argv = ["--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--clips", "6", "--temperatures", "0,0.5",
            "--json", str(out)]
    evaluate_cli.main(argv)
    text = capsys.readouterr().out
    r = json.load(open(out))
    assert len(r["per_frame_bpp"]) == 3 and all(b > 0 for b in r["per_frame_bpp"])
    assert set(r["temperatures"]) == {"0.0", "0.5"} and "continuation accuracy" in text
    assert r["data_seed"] == 0 + evaluate_cli.FRESH_SEED_OFFSET
    with pytest.raises(SystemExit):  # never over an existing file
        evaluate_cli.main(argv)
    assert "exists" in capsys.readouterr().err
