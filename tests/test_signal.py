"""Audio and image processing, checked against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import torch

from racmkd.data import audio as dsp
from racmkd.data.image import center_crop, fit_pca, pca_reconstruct, random_affine, resize


def test_fix_length_centres_padding_and_trimming() -> None:
    padded, start, end = dsp.fix_length(torch.tensor([1.0, 2.0, 3.0]), 7)
    assert padded.tolist() == [0, 0, 1, 2, 3, 0, 0] and (start, end) == (2, 5)
    trimmed, start, end = dsp.fix_length(torch.arange(10.0), 4)
    assert trimmed.tolist() == [3, 4, 5, 6] and (start, end) == (0, 4)


def test_noise_std_gives_the_requested_snr() -> None:
    std = dsp.noise_std_for_snr(torch.tensor([0.01]), torch.tensor([10.0]))
    assert math.isclose(float(std), math.sqrt(0.001), rel_tol=1e-6)
    noise = torch.randn(200000, generator=torch.Generator().manual_seed(0)) * std
    assert abs(10 * math.log10(0.01 / float(noise.pow(2).mean())) - 10.0) < 0.05


def test_mel_filterbank_rows_are_normalised_and_ordered() -> None:
    bank = dsp.mel_filterbank(257, 64, 8000, 0.0, 4000.0)
    assert bank.shape == (64, 257)
    assert torch.allclose(bank.sum(1), torch.ones(64))
    centres = (bank * torch.arange(257)).sum(1)
    assert torch.all(centres[1:] > centres[:-1])
    assert math.isclose(float(dsp.mel_to_hz(dsp.hz_to_mel(torch.tensor(1000.0)))), 1000.0, rel_tol=1e-5)
    assert math.isclose(float(dsp.hz_to_mel(torch.tensor(1000.0))), 1000.0, rel_tol=1e-3)  # HTK: 1 kHz ~ 1000 mel


def sine(freq: float, n: int = 8000, rate: int = 8000) -> torch.Tensor:
    return torch.sin(2 * math.pi * freq * torch.arange(n) / rate)[None]


def test_power_spectrogram_peaks_at_the_tone() -> None:
    power = dsp.power_spectrogram(sine(1000.0), 512, 400, 256)
    assert power.shape == (1, 257, dsp.frames_for(8000, 256)) == (1, 257, 32)
    assert int(power[0, :, 16].argmax()) == 64  # 1000 Hz / (8000 / 512) Hz per bin


def test_stretch_and_shift_identity_pitch_and_tempo() -> None:
    power = dsp.power_spectrogram(sine(1000.0), 512, 400, 256)
    same = dsp.stretch_and_shift(power, torch.ones(1), torch.ones(1))
    assert torch.allclose(same, power, atol=1e-4 * float(power.max()))
    up = dsp.stretch_and_shift(power, torch.ones(1), torch.tensor([2 ** (7 / 12)]))  # a fifth up
    assert abs(int(up[0, :, 16].argmax()) - 64 * 2 ** (7 / 12)) <= 1
    click = torch.zeros(1, 257, 33)
    click[0, :, 8] = 1.0  # 8 frames left of the centre
    faster = dsp.stretch_and_shift(click, torch.tensor([2.0]), torch.ones(1))
    assert int(faster[0, 100].argmax()) == 12  # twice the tempo: half as far from the centre


def test_log_mel_pools_frames() -> None:
    power = torch.full((2, 257, 32), 2.0)
    power[:, :, 16:] = 4.0  # the second half of the frames is louder
    out = dsp.log_mel(power, dsp.mel_filterbank(257, 16, 8000, 0, 4000), 8)
    assert out.shape == (2, 16, 8)
    assert torch.allclose(out[..., :4], torch.full_like(out[..., :4], math.log(2.0)), atol=1e-5)
    assert torch.allclose(out[..., 4:], torch.full_like(out[..., 4:], math.log(4.0)), atol=1e-5)


def test_crop_resize_and_identity_affine() -> None:
    images = torch.rand(3, 28, 28)
    assert torch.equal(center_crop(images, 24), images[:, 2:26, 2:26])
    assert resize(center_crop(images, 24), 12).shape == (3, 12, 12)
    same = random_affine(images, torch.Generator().manual_seed(0), 0.0, 0.0, 0.0)
    assert torch.allclose(same, images, atol=1e-5)
    moved = random_affine(images, torch.Generator().manual_seed(0), 10.0, 0.1, 0.1)
    assert not torch.allclose(moved, images, atol=1e-2)


def test_pca_keeps_the_fewest_components_reaching_the_variance() -> None:
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(3, 16))
    data = (rng.normal(size=(500, 3)) * [10, 3, 1]) @ basis + 128
    images = np.clip(data, 0, 255).astype(np.uint8).reshape(500, 4, 4)
    pca, kept = fit_pca(images, 0.5)
    ratios = np.cumsum(pca.explained_variance_ratio_)
    assert ratios[kept - 1] >= 0.5 and (kept == 1 or ratios[kept - 2] < 0.5)
    recon = pca_reconstruct(images, pca, pca.n_components_)
    assert recon.dtype == np.uint8 and np.abs(recon.astype(int) - images.astype(int)).max() <= 1
