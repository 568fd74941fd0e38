"""Audio and image processing, checked against values computed by hand; the deployment side's numpy
signals (racmkd.data.signals) held to the training side's torch features on real data."""

from __future__ import annotations

import math

import numpy as np
import torch

import pytest
import torch.nn.functional as F

from racmkd.data import audio as dsp
from racmkd.data import signals
from racmkd.data.image import affine_grid, center_crop, fit_pca, pca_reconstruct, random_affine, resize
from racmkd.registry import SIGNALS


def test_fix_length_centres_the_window_on_the_speech() -> None:
    padded, start, end = signals.fix_length(np.array([1.0, 2.0, 3.0]), 7)
    assert padded.tolist() == [0, 0, 1, 2, 3, 0, 0] and (start, end) == (2, 5)
    trimmed, start, end = signals.fix_length(np.ones(10), 4)
    assert trimmed.tolist() == [1, 1, 1, 1] and (start, end) == (0, 4) and signals.loudest_start(np.ones(10), 4) == 3  # steady: centred
    assert signals.speech_start(np.ones(10), 4) == 3
    # A word early in a noisy clip three times the window: the window holds it in its middle (centred
    # on the clip, it held noise; the loudest window had it wherever the noise tipped it).
    rng = np.random.default_rng(0)
    clip = (rng.standard_normal(3000) * 100).astype(np.int16)
    clip[200:900] = (rng.standard_normal(700) * 8000).astype(np.int16)
    assert signals.loudest_start(clip, 1000) <= 200
    trimmed, start, end = signals.fix_length(clip, 1000)
    first = signals.speech_start(clip, 1000)
    assert abs(first + 500 - 550) <= 50 and np.array_equal(trimmed, clip[first : first + 1000]) and (start, end) == (0, 1000)
    assert trimmed.dtype == np.int16
    # The word at the very end: the window reaches past the clip, the rest silence; the span says
    # which part of the window the recording fills.
    late = np.concatenate([clip[900:], clip[200:900]])  # (2800,) the word in the last 700 samples
    trimmed, start, end = signals.fix_length(late, 1000)
    first = signals.speech_start(late, 1000)
    assert abs(first + 500 - 2450) <= 50 and first + 1000 > 2800
    assert (start, end) == (0, 2800 - first) and np.array_equal(trimmed[:end], late[first:]) and not trimmed[end:].any()
    assert signals.loudest_start(np.array([9.0, np.nan, 0, 0, 0, 0]), 2) == 2  # NaN (refused by to_raw): the centre, not an error
    assert signals.speech_start(np.array([9.0, np.nan, 0, 0, 0, 0]), 2) == 2
    assert signals.speech_start(np.array([np.nan, 1.0]), 4) == -1  # NaN in a short one: centred
    with pytest.raises(ValueError, match="1-D"):
        signals.speech_start(np.ones((1, 3)), 4)
    assert signals.speech_start(np.zeros(10), 4) == 3  # silence: centred
    # A window of exactly the model's length (the dataset's, noise added after placing) is heard as it is.
    assert signals.speech_start(clip[:1000], 1000) == 0
    assert np.array_equal(signals.fix_length(clip[:1000], 1000)[0], clip[:1000]) and signals.fix_length(clip[:1000], 1000)[1:] == (0, 1000)
    assert signals.fix_length(np.zeros(3, dtype=np.int16), 7)[1:] == (2, 5)
    # A short recording with its word early: the word, not the recording, in the window's middle
    # (where it is in every other recording, long or short, training or serving).
    short = np.zeros(600)
    short[50:150] = 1.0
    window, start, end = signals.fix_length(short, 1000)
    assert signals.speech_start(short, 1000) == -400 and (start, end) == (400, 1000) and window[450:550].all() and window.sum() == 100


def test_a_model_saved_before_the_speech_window_hears_recordings_as_it_learned_them() -> None:
    """Models made before AudioSpec.window learned recordings padded centred (a longer one cut to its
    loudest second); their checkpoints and contracts name no window. Served with the speech window,
    a short recording's word moved (FSDD's: a median 441 samples), which cost the low student 13
    points (benchmarks/audio_windows.py); fine-tuned on the dataset, it would learn another window."""
    from racmkd.compress.artifacts import specs_from_contract
    from racmkd.config import ConfigError
    from racmkd.data.paths import DataError

    old = specs_from_contract({"model": "m", "inputs": {"audio": {"spec": {"n_mels": 16, "n_frames": 8}}}})["audio"]
    assert old.window == "loudest" and signals.AudioSpec().window == "speech"
    short = np.zeros(600, dtype=np.float32)
    short[50:150] = 0.5
    assert SIGNALS.create("audio").to_raw(short, old)[0, 3700:4300].tolist() == short.tolist()  # padded centred in 8000, as it learned
    assert SIGNALS.create("audio").to_raw(short, signals.AudioSpec(n_mels=16, n_frames=8))[0, 3950:4050].min() == 0.5  # its word centred
    clip = np.zeros(3000, dtype=np.float32)
    clip[2500:2700] = 0.5
    assert signals.fix_length(clip, 1000, "loudest")[0][800:].min() == 0.5  # the loudest second, the word at its end
    with pytest.raises(ConfigError, match="window 'centre'"):
        signals.AudioSpec(window="centre")
    with pytest.raises(ValueError, match="window 'centre'"):
        signals.fix_length(clip, 1000, "centre")
    from racmkd.data.modalities import AudioModality
    from racmkd.models.inference import BatchFeatures

    batch = BatchFeatures({"audio": AudioModality()}, {"audio": torch.zeros(1, 8000)})
    with pytest.raises(DataError, match="train it again on this data"):
        batch.get({"audio": old})
    assert batch.get({"audio": signals.AudioSpec(n_mels=16, n_frames=8)})["audio"].shape == (1, 1, 16, 8)


def test_a_window_placed_clean_then_noised_then_placed_again_is_the_noisy_recording_placed() -> None:
    """Training (a recording placed clean, noise added over it, placed again: dsp.centre_on_energy)
    and serving (the noisy recording placed as it comes: signals.fix_length) give the same window
    (where the clean window held the whole recording: 2,912 of FSDD's 2,980 short ones)."""
    rng = np.random.default_rng(3)
    recordings = []
    for n, at in ((600, 50), (500, 380), (700, 300)):
        wave = rng.standard_normal(n) * 0.01
        wave[at : at + 100] += rng.standard_normal(100)  # a word early, late, mid
        recordings.append(wave)
    served, trained = [], []
    for wave in recordings:
        noise = rng.standard_normal(len(wave)) * 0.3  # about 0 dB over the word's part
        served.append(signals.fix_length(wave + noise, 1000)[0])
        window, lo, hi = signals.fix_length(wave, 1000)
        assert hi - lo == len(wave)  # (the whole recording in its clean window: one cut there has lost what serving keeps)
        first = max(signals.speech_start(wave, 1000), 0)
        window = window.copy()
        window[lo:hi] += noise[first : first + hi - lo]
        trained.append(window)
    placed = dsp.centre_on_energy(torch.from_numpy(np.stack(trained)))
    assert torch.allclose(placed, torch.from_numpy(np.stack(served)), atol=1e-12)
    unplaced = torch.from_numpy(np.stack(trained))
    assert not torch.allclose(unplaced, placed)  # (the noise did move them)
    silent = torch.zeros(2, 1000)
    assert torch.equal(dsp.centre_on_energy(silent), silent)


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
    assert math.isclose(float(signals.mel_to_hz(signals.hz_to_mel(1000.0))), 1000.0, rel_tol=1e-9)
    assert math.isclose(float(signals.hz_to_mel(1000.0)), 1000.0, rel_tol=1e-3)  # HTK: 1 kHz ~ 1000 mel


def sine(freq: float, n: int = 8000, rate: int = 8000) -> torch.Tensor:
    return torch.sin(2 * math.pi * freq * torch.arange(n) / rate)[None]


def test_power_spectrogram_peaks_at_the_tone() -> None:
    power = dsp.power_spectrogram(sine(1000.0), 512, 400, 256)
    assert power.shape == (1, 257, signals.frames_for(8000, 512, 256)) == (1, 257, 32)
    assert int(power[0, :, 16].argmax()) == 64  # 1000 Hz / (8000 / 512) Hz per bin
    same = signals.power_spectrogram(sine(1000.0).numpy(), 512, 400, 256)  # numpy, frames first
    assert same.shape == (1, 32, 257) and int(same[0, 16].argmax()) == 64
    np.testing.assert_allclose(same.transpose(0, 2, 1), power.numpy(), rtol=1e-4, atol=1e-4 * float(power.max()))


@pytest.mark.parametrize(
    ("n_fft", "win_length", "hop_length", "samples"), [(511, 400, 250, 8000), (401, 401, 200, 8000), (512, 512, 256, 8192), (64, 48, 16, 1000)]
)
def test_the_numpy_stft_is_torchs_for_odd_sizes_and_whole_hops(n_fft: int, win_length: int, hop_length: int, samples: int) -> None:
    """The frames are a strided view of the padded signal: every frame must lie inside it (an odd
    FFT length with a whole number of hops once read one sample past its end)."""
    waves = torch.randn(3, samples, generator=torch.Generator().manual_seed(n_fft))
    window = torch.hann_window(win_length)
    expected = (
        torch.stft(waves, n_fft, hop_length, win_length, window, center=True, pad_mode="constant", return_complex=True).abs().pow(2).transpose(1, 2).numpy()
    )
    got = signals.power_spectrogram(waves.numpy(), n_fft, win_length, hop_length)
    assert got.shape == expected.shape == (3, signals.frames_for(samples, n_fft, hop_length), n_fft // 2 + 1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.max()))
    with pytest.raises(ValueError, match="win_length <= n_fft"):
        signals.power_spectrogram(waves.numpy(), n_fft, n_fft + 1, hop_length)


@pytest.mark.parametrize("align_corners", [True, False])
def test_affine_grid_is_torchs(align_corners: bool) -> None:
    theta = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0))
    for height, width in ((257, 32), (24, 24), (1, 7)):
        ours = affine_grid(theta, height, width, align_corners)
        assert torch.allclose(ours, F.affine_grid(theta, [5, 1, height, width], align_corners=align_corners), atol=1e-5)


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


@pytest.mark.parametrize(("size_in", "size_out"), [(24, 16), (24, 12), (24, 8), (28, 10), (13, 5), (16, 24)])
def test_resize_matrices_are_torch_antialiased_bilinear(size_in: int, size_out: int) -> None:
    images = torch.rand(4, size_in, size_in, generator=torch.Generator().manual_seed(size_in))
    reference = F.interpolate(images[:, None], size=(size_out, size_out), mode="bilinear", antialias=True, align_corners=False)[:, 0]
    torch.testing.assert_close(resize(images, size_out), reference, atol=2e-6, rtol=0)
    np.testing.assert_allclose(signals.resize(images.numpy(), size_out), reference.numpy(), atol=2e-6)
    np.testing.assert_allclose(signals.resize_matrix(size_in, size_out).sum(axis=1), 1.0, atol=1e-6)  # every output a weighted mean


def test_adaptive_pooling_matrix_matches_torch() -> None:
    x = torch.rand(2, 5, 32)
    for frames in (32, 16, 8, 7):
        np.testing.assert_allclose(x.numpy() @ signals.pooling_matrix(32, frames), F.adaptive_avg_pool1d(x, frames).numpy(), atol=1e-6)


def test_signals_compute_the_training_features_on_real_data(tiny_dataset) -> None:  # noqa: ANN001
    """The edge runtime's numpy preprocessing gives what the models were trained on, at every level."""
    rows = torch.arange(64)
    raw = tiny_dataset.raw_batch("test", rows)
    for name, modality in tiny_dataset.modalities.items():
        signal = SIGNALS.create(name)
        for level in range(modality.n_levels):
            spec = modality.spec(level)
            expected = modality.features(raw[name], spec).numpy()
            got = signal.features(raw[name].numpy(), spec)
            assert got.dtype == np.float32 and got.shape == expected.shape == (64, *signal.feature_shape(spec))
            np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)  # log-mel: float32 FFTs differ by ~3e-4 in the quietest bands
        if name == "audio":  # band selection picks rows, in the order given
            spec = modality.reduce(modality.spec(1), bands=(5, 0, 17))
            np.testing.assert_allclose(signal.features(raw[name].numpy(), spec), modality.features(raw[name], spec).numpy(), atol=1e-3, rtol=0)


def test_signals_check_raw_inputs() -> None:
    image, audio = SIGNALS.create("image"), SIGNALS.create("audio")
    digit = np.arange(784, dtype=np.uint8).reshape(28, 28)
    np.testing.assert_allclose(image.to_raw(digit, signals.ImageSpec()), digit[None] / 255.0, atol=1e-7)
    assert image.to_raw(digit[:, :, None].astype(np.float32) / 255, signals.ImageSpec()).shape == (1, 28, 28)
    nan, infinite = np.full((28, 28), 0.5, np.float32), np.full((28, 28), 0.5)
    nan[3, 4], infinite[5, 6] = np.nan, -np.inf
    for bad, message in (
        (np.zeros((28, 27)), "28x28"),
        (np.full((28, 28), 3.0), r"\[0, 1\]"),
        (nan, "finite"),
        (infinite, "finite"),
        (np.full((28, 28), 256, dtype=np.int64), "got int64 outside 0-255"),
        (np.eye(28, dtype=np.int64), r"got int64 of 0 and 1 alone \(a binary image"),  # not read as 0-255: near black
        (np.zeros((28, 28), dtype=np.uint16), r"got uint16 \(16-bit pixels: scale them to 8 bits\)"),  # another scale, whatever its values
        (np.zeros((28, 28), dtype=complex), "uint8"),
    ):
        with pytest.raises(ValueError, match=message):
            image.to_raw(bad, signals.ImageSpec())
    as_list = image.to_raw(digit.astype(np.int64).tolist(), signals.ImageSpec())  # whole pixels as Python ints: 0-255, as the server takes them
    assert np.array_equal(as_list, image.to_raw(digit, signals.ImageSpec()))
    assert image.to_raw([[0] * 28] * 28, signals.ImageSpec()).max() == 0.0  # blank: a dead input, answered from the rest, not refused
    spec = signals.AudioSpec()
    tone = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)  # 1 s at 16 kHz
    raw = audio.to_raw(tone, spec, sample_rate=16000)
    assert raw.shape == (1, 8000) and raw.dtype == np.float32  # resampled to the model's 8 kHz
    assert audio.to_raw((tone[:4000] * 32767).astype(np.int16), spec).shape == (1, 8000)  # padded, centred
    for bad, message in (
        (np.zeros((2, 100)), "mono"),
        (np.array([0.0, np.nan]), "NaN"),
        (np.array([0.0, np.inf], np.float32), "NaN"),
        (np.array([1e300]), "float32's range"),
        (np.zeros(10, dtype=np.int32), "int16"),
    ):
        with pytest.raises(ValueError, match=message):
            audio.to_raw(bad, spec)
    near_the_limit = np.tile(np.float32([3.3e38, -3.3e38]), 2000)  # finite, but interpolated beyond float32's range
    assert np.isfinite(audio.to_raw(near_the_limit, spec)).all()  # (at the model's rate: nothing interpolated)
    with pytest.raises(ValueError, match="resampled from 4000 Hz.*float32's range"):
        audio.to_raw(near_the_limit, spec, sample_rate=4000)
    for rate in (8000.0, np.int64(8000), True):  # the usual rate given otherwise still goes through its checks
        if rate is True:
            with pytest.raises(ValueError, match="whole number"):
                audio.to_raw(tone[:8000], spec, sample_rate=rate)
        else:
            assert audio.to_raw(tone[:8000], spec, sample_rate=rate).shape == (1, 8000)
    kept = tone[:8000].copy()
    audio.to_raw(kept, spec)[0, :] = 0.0  # what a caller gets is its own: the input stays as it was
    np.testing.assert_array_equal(kept, tone[:8000])
    assert audio.input_quality(np.zeros((1, 8000), np.float32)) == 0.0 and audio.input_quality(raw) == 0.0  # a steady tone: no speech
    syllables = audio.to_raw(tone * (np.arange(16000) // 2000 % 2), spec, sample_rate=16000)  # the tone in bursts
    assert audio.input_quality(syllables) == 1.0
    assert image.input_quality(np.full((1, 28, 28), 0.5, np.float32)) == 0.0


def test_a_dark_digit_on_a_light_background_is_refused(shared_root) -> None:  # noqa: ANN001
    """A dark digit on white (a scan, a drawing app) was read with confidence as another digit."""
    from racmkd.data.mnist import load_mnist

    image_signal, audio_signal = SIGNALS.create("image"), SIGNALS.create("audio")
    digits, _ = load_mnist(shared_root / "mnist", "test")
    spec = signals.ImageSpec()
    for digit in digits[:50]:  # MNIST's own digits pass, as uint8 and as floats, clean or noisy
        assert image_signal.to_raw(digit, spec).shape == (1, 28, 28)
        noisy = np.clip(digit / 255 + 0.5 * np.random.default_rng(0).standard_normal((28, 28)), 0, 1)
        image_signal.to_raw(noisy, spec)
    for inverted in (255 - digits[0], 1 - digits[0] / 255.0):
        with pytest.raises(ValueError, match=r"light background .* invert it"):
            image_signal.to_raw(inverted, spec)
    assert image_signal.to_raw(np.full((28, 28), 255, np.uint8), spec).max() == 1  # a blank white image stays a dead input, judged as such later
    with pytest.raises(ValueError, match="holds no samples"):
        audio_signal.to_raw(np.zeros(0, np.float32), signals.AudioSpec())


def test_a_short_sound_padded_with_silence_is_no_dead_input() -> None:
    """One click, padded to 8000 samples, fell between the 1024 values the dead check looked at:
    `predict(audio=np.array([0.0, 0.5, 0.0]))` was refused as silent. (A lone sample is a constant
    recording: no sound, see the next test.)"""
    audio, spec = SIGNALS.create("audio"), signals.AudioSpec()
    click = audio.to_raw(np.array([0.0, 0.5, 0.0], np.float32), spec)
    assert audio.input_quality(click) == 1.0
    assert audio.input_quality(audio.to_raw(np.array([0.0], np.float32), spec)) == 0.0  # silence still is


def test_a_recording_without_speech_in_it_is_a_dead_input(tiny_dataset) -> None:  # noqa: ANN001
    """Only a constant or silent recording counted dead: a microphone giving mains hum, its own hiss
    or an offset, peak-normalised to full scale, was fused with the image as speech (hum: 0.087
    accuracy on 300 test pairs, the image alone 0.650). A steady loudness is no speech."""
    audio, spec = SIGNALS.create("audio"), signals.AudioSpec()
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 8000
    steady = {
        "hum": 0.02 * np.sin(2 * np.pi * 50 * t + 1.0),
        "hiss": 1e-3 * rng.standard_normal(8000),
        "offset and hiss": 0.2 + 1e-3 * rng.standard_normal(8000),
        "hum and hiss, clipped": np.clip(0.8 * np.sin(2 * np.pi * 50 * t) + 0.5 * rng.standard_normal(8000), -1, 1),
    }
    for name, wave in steady.items():
        assert audio.input_quality(audio.to_raw(wave.astype(np.float32), spec)) == 0.0, name
    assert audio.input_quality((steady["hum"] * 32767).astype(np.int16)[None]) == 0.0  # int16 as given (its squares overflowed)
    recordings = tiny_dataset.raw_batch("test", torch.arange(40))["audio"].numpy()
    assert all(audio.input_quality(r[None]) == 1.0 for r in recordings)  # real speech, with the protocol's noise
    assert all(audio.input_quality(np.clip(r * 3, -1, 1)[None]) == 1.0 for r in recordings)  # loud, clipped: still speech
    assert audio.input_quality(np.stack([steady["hum"], recordings[0]]).astype(np.float32)) == 1.0  # a batch: dead only if each is
    gated = audio.to_raw((np.sin(np.arange(8000) / 3) * (np.arange(8000) // 1000 % 2)).astype(np.float32), spec)
    assert audio.input_quality(gated) == 1.0  # digital silence between sounds (a noise gate's) is no steady source


def test_an_image_of_noise_alone_is_a_dead_input(shared_root) -> None:  # noqa: ANN001
    """Only a constant image counted dead: a camera giving salt-and-pepper noise was fused with a
    clean recording as a digit (0.667 on 300 test pairs, the recording alone 0.953)."""
    from racmkd.data.mnist import load_mnist

    image, spec = SIGNALS.create("image"), signals.ImageSpec()
    rng = np.random.default_rng(0)
    for noise in (rng.random((28, 28)), (rng.random((28, 28)) > 0.5) * 255, np.clip(0.5 + 0.3 * rng.standard_normal((28, 28)), 0, 1)):
        assert image.input_quality(image.to_raw(np.asarray(noise).astype(np.float32 if noise.max() <= 1 else np.uint8), spec)) == 0.0
    digits, _ = load_mnist(shared_root / "mnist", "test")
    for digit in digits[:200]:
        assert image.input_quality(image.to_raw(digit, spec)) == 1.0
        assert (
            image.input_quality(image.to_raw(np.clip(digit / 255 + 0.3 * rng.standard_normal((28, 28)), 0, 1).astype(np.float32), spec)) == 1.0
        )  # noisy: still a digit
    assert image.input_quality(np.stack([rng.random((28, 28)), digits[0] / 255]).astype(np.float32)) == 1.0  # a batch: dead only if each is


def test_a_constant_recording_of_any_length_is_a_dead_input() -> None:
    """A constant recording shorter than the window was padded with zeros first: the step made it
    look live, and 7,999 samples of 0.5 were answered (p = 0.99) where 8,000 were refused. Big-endian
    int16 is int16 (it was refused as "expected int16 ... got >i2")."""
    audio, spec = SIGNALS.create("audio"), signals.AudioSpec()
    for length in (1, 4000, 7999, 8000, 20000):
        assert audio.input_quality(audio.to_raw(np.full(length, 0.5, np.float32), spec)) == 0.0, length
        assert audio.input_quality(audio.to_raw(np.full(length, 16384, np.int16), spec)) == 0.0, length
    assert audio.input_quality(audio.to_raw(np.array([0.0, 0.0, 1.0, 0.0, 0.0], np.float32), spec)) == 1.0  # a click is not constant
    tone = (np.sin(np.arange(6000) / 4) * 5000).astype(np.int16)
    np.testing.assert_array_equal(audio.to_raw(tone.astype(">i2"), spec), audio.to_raw(tone, spec))


def test_any_sample_rate_resamples_fast_and_the_usual_ones_exactly() -> None:
    """44,101 Hz (co-prime with 8 kHz) made resample_poly build a 900,000-tap filter, 146 ms a call;
    the nearest ratio with factors of at most 1000 is off by at most RESAMPLE_MAX_ERROR (it said 3e-4;
    383,800 Hz to 8 kHz is off by 5.2e-4). The usual rates keep their exact ratios (training
    resamples with them too)."""
    for rate, ratio in ((16000, (1, 2)), (44100, (80, 441)), (48000, (1, 6)), (22050, (160, 441)), (4000, (2, 1))):
        assert signals.resample_ratio(rate, 8000).as_integer_ratio() == ratio
    for rate, to_rate in ((44101, 8000), (12345, 8000), (7999, 8000), (1009, 8000), (383_999, 8000), (383_800, 8000), (320_163, 16000), (374_660, 22050)):
        ratio = signals.resample_ratio(rate, to_rate)  # (the last three: the worst of each target rate over 1-384 kHz)
        assert max(ratio.as_integer_ratio()) <= signals.MAX_RESAMPLE_FACTOR and abs(float(ratio) * rate / to_rate - 1) <= signals.RESAMPLE_MAX_ERROR
    assert abs(float(signals.resample_ratio(383_800, 8000)) * 383_800 / 8000 - 1) > 5e-4  # the bound is tight, not loose
    t = np.arange(44101) / 44101
    tone = signals.resample(np.sin(2 * np.pi * 440 * t).astype(np.float32), 44101, 8000)
    expected = np.sin(2 * np.pi * 440 * np.arange(len(tone)) / 8000)
    assert abs(len(tone) - 8000) <= 1 and np.abs(tone - expected)[100:-100].max() < 0.01  # (the edges ring: the filter's zero padding)


def test_the_resampling_filter_is_scipys_designed_once_per_ratio() -> None:
    """resample_poly designs its filter on every call (0.73 ms of a 44.1 kHz request's 1.9): the same
    filter, kept per ratio, gives the same samples bit for bit."""
    from scipy.signal import resample_poly

    rng = np.random.default_rng(0)
    signals.resample_taps.cache_clear()
    for rate in (16000, 22050, 44100, 44101):
        ratio = signals.resample_ratio(rate, 8000)
        for wave in (rng.standard_normal(rate).astype(np.float32) * 0.3, rng.standard_normal(rate) * 0.3, (rng.standard_normal(rate) * 1000).astype(np.int16)):
            assert np.array_equal(signals.resample(wave, rate, 8000), resample_poly(wave, ratio.numerator, ratio.denominator).astype(np.float32)), (
                rate,
                wave.dtype,
            )
            signals.resample(wave, rate, 8000)
    assert signals.resample_taps.cache_info().hits >= 12 and signals.resample_taps.cache_info().currsize == 8  # 4 ratios x (float32, float64)


def test_the_resampler_is_imported_when_the_audio_signal_is_made() -> None:
    """scipy.signal took 745 ms to import on the first request at 16 kHz: now it is made ready when
    the audio signal is (a runtime or predictor loading)."""
    signals.polyphase_resampler.cache_clear()
    SIGNALS.create("audio")
    assert signals.polyphase_resampler.cache_info().currsize == 1


def test_reading_a_contract_makes_no_signal() -> None:
    """Reading an exported model's specs (profile, registry checks) parses them without making the
    signals, so it pays for none of their set-up (audio's import of scipy.signal)."""
    from racmkd.compress.artifacts import specs_from_contract

    signals.polyphase_resampler.cache_clear()
    specs = specs_from_contract({"model": "m", "inputs": {"audio": {"spec": {"n_mels": 16, "n_frames": 8, "window": "speech"}}, "image": {"spec": {}}}})
    assert specs["audio"] == signals.AudioSpec(n_mels=16, n_frames=8) and specs["image"] == signals.ImageSpec()
    assert signals.polyphase_resampler.cache_info().currsize == 0


def test_a_configured_sample_rate_resamples_training_recordings_as_serving_does(shared_root) -> None:  # noqa: ANN001
    """FSDD is 8 kHz; a config asking for 16 kHz gets its recordings resampled, so the features a
    model trains on equal those a predictor computes from the user's 8 kHz waveform."""
    from racmkd.data.fsdd import load_fsdd
    from racmkd.data.modalities import MODALITIES

    modality = MODALITIES.create("audio", protocol="clean", sample_rate=16000)
    recording = load_fsdd(shared_root / "fsdd" / "recordings")[0]
    window, _, _ = signals.fix_length(modality._at_rate(recording.samples), modality.samples)
    assert window.dtype == np.int16 and window.shape == (16000,)
    spec = modality.spec(1)
    trained_on = modality.features(torch.from_numpy(window[None]).float() / 32768.0, spec).numpy()
    served = SIGNALS.create("audio").features(SIGNALS.create("audio").to_raw(recording.samples.astype(np.int16), spec, sample_rate=8000), spec)
    np.testing.assert_allclose(served, trained_on, atol=1e-2, rtol=0)  # (the dataset keeps the resampled recording as int16; unresampled, they differed by 20)


@pytest.mark.parametrize(
    ("modality", "spec", "message"),
    [
        ("audio", {"sample_rate": -5}, "sample_rate -5: each must be a whole number >= 1"),  # failed in resampling: "up and down must be >= 1"
        ("audio", {"samples": 0}, "samples 0: each must be"),  # a zero-size array deep in the log-mel
        ("audio", {"win_length": 600}, "win_length 600 is longer than n_fft 512"),
        ("audio", {"f_max": 9000.0}, r"f_max <= sample_rate / 2"),
        ("audio", {"bands": [3, 3]}, "distinct mel band indices"),
        ("image", {"crop": 0}, "crop and resolution must be whole numbers of pixels >= 1"),  # answered from an empty image
    ],
)
def test_a_hand_damaged_contract_spec_is_refused_by_name(modality: str, spec: dict, message: str) -> None:
    from racmkd.compress.artifacts import ExportError, specs_from_contract

    with pytest.raises(ExportError, match=rf"model 'edited': its contract's inputs are damaged .*{message}"):
        specs_from_contract({"model": "edited", "inputs": {modality: {"spec": spec}}})
