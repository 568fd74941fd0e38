"""Each modality's options (the values under `data.options.<name>` of a run config), apart from the
modality itself: they are plain dataclasses, so a config is checked whole when it is read, on a
training host and on an edge device without torch alike (racmkd.config.check_modality_options).
A new modality registers its options here under its name, beside its class in MODALITIES."""

from __future__ import annotations

from dataclasses import dataclass

from racmkd.registry import MODALITY_OPTIONS


@MODALITY_OPTIONS.register("image")
@dataclass(frozen=True)
class ImageOptions:
    """Options of the image modality (data.options.image)."""

    crop: int = 24  # centre crop of the 28x28 digit (the seed paper's 24x24)
    levels: tuple[int, ...] = (24, 16, 12, 8)  # input resolution per level
    pca_variance: float = 0.25  # avmnist: keep the fewest PCA components that explain this much variance
    rotation_deg: float = 10.0
    shift: float = 0.10
    zoom: float = 0.10


@MODALITY_OPTIONS.register("audio")
@dataclass(frozen=True)
class AudioOptions:
    """Options of the audio modality (data.options.audio)."""

    sample_rate: int = 8000
    duration: float = 1.0  # seconds; recordings are padded or trimmed, centred
    n_fft: int = 512
    win_length: int = 400  # 50 ms
    hop_length: int = 256  # 32 frames per second
    f_min: float = 0.0
    f_max: float = 4000.0
    levels: tuple[tuple[int, int], ...] = ((64, 32), (32, 32), (32, 16), (16, 16))  # (mel bands, frames) per level
    val_repetitions: tuple[int, int] = (5, 9)  # FSDD repetition indices (inclusive) held out for validation
    test_repetitions: tuple[int, int] = (0, 4)  # the official test split
    snr_db: tuple[float, float] = (0.0, 10.0)  # avmnist: white noise at an SNR drawn from this range
    stretch: float = 0.10  # time-stretch rate in 1 +- stretch
    semitones: float = 2.0  # pitch shift in +- semitones
    masks: int = 0  # SpecAugment: this many frequency and this many time masks per training sample
    mask_fraction: float = 0.125  # each mask covers up to this share of the bands / frames
