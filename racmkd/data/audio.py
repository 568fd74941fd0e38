"""Audio signal processing in torch for training batches: noise at a target SNR, log-mel
spectrograms and spectrogram-domain augmentation.

torchaudio has no CPU build here, so the few pieces we need are written out; each is small and
checked against hand-computed values in tests/test_signal.py. The deployment side computes the same
features in numpy (racmkd.data.signals, which also owns the mel filters both use).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from racmkd.data import signals
from racmkd.data.image import affine_grid


def noise_std_for_snr(signal_power: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """Standard deviation of white noise that gives `snr_db` against a signal of mean power `signal_power`."""
    return torch.sqrt(signal_power / torch.pow(10.0, snr_db / 10.0))


def centre_on_energy(wave: torch.Tensor) -> torch.Tensor:
    """Windows (B, n) each shifted, zeros shifted in, so that its energy centroid sits mid-window:
    `racmkd.data.signals.speech_start`'s placement of a recording no longer than the window (start =
    floor(centroid - n / 2 + 0.5), in float64 as there). The dataset places a recording clean, and
    noise added over it moves its centroid towards the recording's middle (a median 38, 101 and 208
    samples at 10, 5 and 0 dB SNR over FSDD's test recordings), while the predictor places a noisy
    recording as it comes: placed again after the noise, the models learn the placement they are
    served (unplaced, the high student heard noisy recordings at 0 dB 0.936 as evaluated but 0.896
    as served, the critical one 0.812 and 0.718; placed again, the two agree within 0.6 points at
    0-10 dB, benchmarks/audio_windows.py). A silent or non-finite window stays as it is."""
    n = wave.shape[-1]
    energy = wave.to(torch.float64).square()
    total = energy.sum(-1)
    centroid = (energy @ torch.arange(n, dtype=torch.float64)) / torch.where(total > 0, total, 1.0)
    start = torch.floor(centroid - n / 2 + 0.5)
    start = torch.where((total > 0) & torch.isfinite(start), start, 0.0).to(torch.int64)
    index = torch.arange(n) + start[:, None]  # (B, n) where each output sample comes from
    inside = (index >= 0) & (index < n)
    return torch.where(inside, wave.gather(-1, index.clamp(0, n - 1)), torch.zeros((), dtype=wave.dtype))


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """The mel filters of `racmkd.data.signals.mel_filterbank` (n_mels, n_freqs), as a tensor: training
    and deployment use the very same weights."""
    return torch.from_numpy(signals.mel_filterbank(n_freqs, n_mels, sample_rate, f_min, f_max).copy())


def power_spectrogram(wave: torch.Tensor, n_fft: int, win_length: int, hop_length: int) -> torch.Tensor:
    """|STFT|^2 of a batch of waveforms (B, L) -> (B, n_fft // 2 + 1, frames), Hann window, centred frames."""
    window = torch.hann_window(win_length, device=wave.device)
    spec = torch.stft(wave, n_fft, hop_length, win_length, window, center=True, pad_mode="constant", return_complex=True)
    return spec.real.square() + spec.imag.square()


def stretch_and_shift(power: torch.Tensor, time_rate: torch.Tensor, pitch_factor: torch.Tensor) -> torch.Tensor:
    """Time-stretch and pitch-shift a batch of power spectrograms (B, F, T), one rate/factor per sample.

    A phase vocoder changes a recording's tempo without its pitch; its magnitude spectrogram is the
    original's, resampled along time. A pitch shift by a factor p scales every frequency by p. The
    log-mel features throw the phase away, so both are done here as one resampling of the power
    spectrogram (time about the centre frame, frequency about 0 Hz), batched and cheap.
    """
    b = power.shape[0]
    theta = torch.zeros(b, 2, 3, dtype=power.dtype, device=power.device)
    theta[:, 0, 0] = time_rate  # output x reads input x * rate: rate > 1 speeds the recording up
    theta[:, 1, 0] = 0.0
    theta[:, 1, 1] = 1.0 / pitch_factor  # output bin f reads input bin f / p
    theta[:, 1, 2] = 1.0 / pitch_factor - 1.0  # keeps 0 Hz (y = -1 in grid coordinates) fixed
    grid = affine_grid(theta, power.shape[1], power.shape[2], align_corners=True)
    out = F.grid_sample(power.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.squeeze(1)


def log_mel(power: torch.Tensor, filterbank: torch.Tensor, n_frames: int, floor: float = 1e-6) -> torch.Tensor:
    """Mel bands of a power spectrogram (B, F, T) -> log, average-pooled in time to `n_frames` -> (B, n_mels, n_frames)."""
    mel = torch.matmul(filterbank, power)  # (B, n_mels, T)
    if mel.shape[-1] != n_frames:
        mel = F.adaptive_avg_pool1d(mel, n_frames)
    return torch.log(mel + floor)


def spec_augment(features: torch.Tensor, masks: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """SpecAugment (Park et al. 2019) on log-mel features (B, F, T): `masks` frequency bands and
    `masks` time spans per sample, each up to `fraction` of its axis, set to the sample's mean.
    Spans are drawn as shares of the axis and a bin is masked when its centre falls inside: the
    same generator state masks the same frequencies and times at any number of bands and frames,
    so a teacher on 64 x 32 and a student on 16 x 16 see one augmented sample (spans drawn in each
    input's own bins masked unrelated parts: the distillation targets described another input)."""
    b, n_freq, n_time = features.shape
    out = features.clone()
    fill = features.mean(dim=(1, 2))  # (B,)
    for axis, size in ((1, n_freq), (2, n_time)):
        centres = (torch.arange(size) + 0.5) / size  # each bin's centre, as a share of the axis
        for _ in range(masks):
            width = torch.rand(b, generator=generator) * fraction
            start = torch.rand(b, generator=generator) * (1 - width)
            hit = (centres[None, :] >= start[:, None]) & (centres[None, :] < (start + width)[:, None])  # (B, size)
            mask = hit[:, :, None] if axis == 1 else hit[:, None, :]
            out = torch.where(mask, fill[:, None, None], out)
    return out


def peak_normalise(wave: torch.Tensor) -> torch.Tensor:
    """Scale each waveform (B, L) to a peak of 1 so that recording gain does not change the features."""
    peak = wave.abs().amax(dim=-1, keepdim=True)
    return wave / torch.clamp(peak, min=1e-8)
