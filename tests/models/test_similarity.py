"""PSNR, SSIM and best-of-N prediction scores against copying the last frame."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import flowkern
from flowkern.models.data import StochasticMovingDigits
from flowkern.models.similarity import best_of_n, psnr, ssim


def test_psnr_on_a_hand_computed_case_and_ssim_bounds():
    a = np.zeros((1, 8, 8))
    assert psnr(a, a + 0.1) == pytest.approx(20.0)  # MSE 0.01 -> 10 log10(100)
    assert psnr(a, a) == float("inf")
    rng = np.random.default_rng(0)
    x = rng.random((3, 16, 16))
    assert ssim(x, x) == pytest.approx(1.0)
    noisy = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)
    assert 0 < ssim(x, noisy) < ssim(x, np.clip(x + 0.05 * rng.standard_normal(x.shape), 0, 1)) < 1


class Oracle(torch.nn.Module):
    """A 'model' whose every sample is the true clip, or (blank=True) black frames; diverge=True puts a NaN in the
    first clip's last frame, as a flow whose inverse diverged."""

    def __init__(self, clips, blank=False, diverge=False):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.cfg = SimpleNamespace(n_bits=8)
        self.truth, self.blank, self.diverge = flowkern.preprocess(clips, 8, noise=False), blank, diverge

    def generate(self, context, num_frames, temperature, generator=None):
        out = self.truth.clone()
        if self.blank:
            out[:, context.shape[1]:] = -0.5
        if self.diverge:  # the first clip's last frame
            out[0, -1, 0, 0, 0] = float("nan")
        return out


def test_best_of_n_scores_the_truth_perfectly_and_blank_frames_below_it():
    clips = torch.stack([StochasticMovingDigits(2, frames=5, size=32, glyph_size=14, seed=1)[i] for i in range(2)])
    perfect = best_of_n(Oracle(clips), clips, context=2, n=2, temperature=1.0)
    assert perfect["psnr"] == [100.0] * 3 and perfect["ssim"] == pytest.approx([1.0] * 3)
    assert all(c < 100 for c in perfect["copy_psnr"]) and all(c < 1 for c in perfect["copy_ssim"])
    blank = best_of_n(Oracle(clips, blank=True), clips, context=2, n=1, temperature=1.0)
    assert all(b < 100 for b in blank["psnr"]) and blank["copy_psnr"] == perfect["copy_psnr"]


def test_the_flat_baseline_is_the_last_frames_median_and_beats_copying_moving_digits():
    """Digits on black move away from where the copy puts them: the flat frame (here black) scores higher in PSNR and
    SSIM, so it is the bar a predictor of such clips has to clear, not only the copy."""
    clips = torch.stack([StochasticMovingDigits(4, frames=5, size=32, glyph_size=14, seed=1)[i] for i in range(4)])
    r = best_of_n(Oracle(clips), clips, context=2, n=1, temperature=1.0)
    last = clips[:, 1].double() / 255.0  # uint8 pictures in [0, 1], as the measure compares them
    flat = last.flatten(2).median(dim=2).values[..., None, None].expand_as(last).numpy()
    assert not flat.any()  # digits on black: the median is the background
    truth = clips[:, 2].double().numpy() / 255.0
    assert r["flat_psnr"][0] == pytest.approx(np.mean([psnr(f, t) for f, t in zip(flat, truth)]))
    assert r["flat_ssim"][0] == pytest.approx(np.mean([ssim(f, t) for f, t in zip(flat, truth)]))
    assert all(f > c for f, c in zip(r["flat_psnr"], r["copy_psnr"]))
    assert all(f > c for f, c in zip(r["flat_ssim"], r["copy_ssim"]))


def test_a_diverged_sample_scores_the_worst_and_is_counted():
    """A NaN frame must not pass for a black one (a uint8 cast of NaN): it scores PSNR 0 dB and SSIM 0."""
    clips = torch.stack([StochasticMovingDigits(2, frames=5, size=32, glyph_size=14, seed=1)[i] for i in range(2)])
    r = best_of_n(Oracle(clips, diverge=True), clips, context=2, n=1, temperature=1.0)
    assert r["diverged"] == [0.0, 0.0, 0.5]
    assert r["psnr"][:2] == [100.0, 100.0] and r["psnr"][2] == pytest.approx(50.0)  # (0 + 100) / 2
    assert r["ssim"][2] == pytest.approx(0.5)
