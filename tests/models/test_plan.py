"""The planner (flowkern.models.plan): FLOPs and memory of a training step from shapes alone."""
import dataclasses

import torch
from torch import nn

from flowkern.models import plan as plan_cli
from flowkern.models.videoflow import CONFIGS

TINY = CONFIGS["tiny"]


def test_flop_counter_counts_a_known_network():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 5, 7, requires_grad=True)
    with plan_cli._CountFlops() as c:
        conv(x).sum().backward()
    forward = 2 * 2 * 6 * 5 * 7 * 4 * 9  # 2 FLOPs per multiply-add, per output element and tap
    assert c.total == 3 * forward  # backward: the input's gradient and the weight's


def test_step_flops_are_linear_in_batch_and_grow_with_frames():
    f = [plan_cli.training_step_flops(TINY, b, 3) for b in (1, 2, 3)]
    assert f[0] > 0 and f[2] - f[1] == f[1] - f[0]
    assert plan_cli.training_step_flops(TINY, 1, 5) > f[0]


def test_plan_report_fits_its_budget(capsys):
    r = plan_cli.plan(dataclasses.replace(TINY), 2, 3, 0.01)
    m = r["memory"]
    assert r["params_flow"] > 0 and r["params_prior"] > 0
    assert 0 < m["step_peak_bytes"] and m["longest_clip"] >= 3
    assert m["fixed_bytes"] + 2 * m["per_clip_bytes"] + 2 * m["longest_clip"] * m["per_frame_bytes"] <= 0.01e9
    plan_cli.main(["--config", "tiny", "--batch-size", "2", "--frames", "3", "--budget", "0.01"])
    assert "training step, batch 2 x 3 frames" in capsys.readouterr().out
