"""Each modality's options (the values under `data.options.<name>` of a run config), apart from the
modality itself: they are plain dataclasses, so a config is checked whole when it is read, on a
training host and on an edge device without torch alike (racmkd.config.check_modality_options).
A new modality registers its options here under its name, beside its class in MODALITIES."""

from __future__ import annotations

import math
from dataclasses import dataclass

from racmkd.config import ConfigError
from racmkd.registry import MODALITY_OPTIONS

IMAGE_SIDE = 28  # MNIST digits' side, in pixels


def _require(ok: bool, message: str) -> None:
    """Refuse a value when the config is read: later, in the middle of a run, it would surface as a
    traceback from torch or numpy that names no key (the key is prefixed by `from_dict`)."""
    if not ok:
        raise ConfigError(message)


def _finite(*values: float) -> bool:
    """Whether every value is a finite number: YAML reads `.inf` and `.nan` as floats, which pass a
    `>= 0` check (inf) and end as NaN images or an OverflowError far from the key that set them."""
    return all(math.isfinite(v) for v in values)


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

    def __post_init__(self) -> None:
        _require(1 <= self.crop <= IMAGE_SIDE, f"crop {self.crop}: the centre crop of the {IMAGE_SIDE}x{IMAGE_SIDE} digit, 1-{IMAGE_SIDE} pixels")
        _require(
            len(self.levels) > 0 and all(1 <= r <= self.crop for r in self.levels),
            f"levels {list(self.levels)}: at least one resolution, each 1-{self.crop} (crop)",
        )
        _require(0 < self.pca_variance <= 1, f"pca_variance {self.pca_variance}: the share of variance the avmnist images keep, in (0, 1]")
        _require(
            _finite(self.rotation_deg, self.shift) and self.rotation_deg >= 0 and self.shift >= 0 and 0 <= self.zoom < 1,
            f"rotation_deg and shift must be finite numbers >= 0 and zoom in [0, 1) (0: none; a zoom of 1 may scale an image to nothing), got {self.rotation_deg}, {self.shift}, {self.zoom}",
        )


@MODALITY_OPTIONS.register("audio")
@dataclass(frozen=True)
class AudioOptions:
    """Options of the audio modality (data.options.audio)."""

    sample_rate: int = 8000
    duration: float = 1.0  # seconds; each recording's window is centred on its speech (signals.fix_length)
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

    def __post_init__(self) -> None:
        _require(
            self.sample_rate >= 1 and _finite(self.duration) and round(self.sample_rate * self.duration) >= 1,
            f"sample_rate {self.sample_rate} and duration {self.duration}: positive (Hz, seconds), finite, and the duration at least one sample long ({1 / max(self.sample_rate, 1):g} s)",
        )
        _require(
            1 <= self.win_length <= self.n_fft and self.hop_length >= 1,
            f"need 1 <= win_length <= n_fft and hop_length >= 1, got win_length {self.win_length}, n_fft {self.n_fft}, hop_length {self.hop_length}",
        )
        _require(
            0 <= self.f_min < self.f_max <= self.sample_rate / 2,
            f"need 0 <= f_min < f_max <= sample_rate / 2 ({self.sample_rate / 2:g} Hz), got f_min {self.f_min}, f_max {self.f_max}",
        )
        bins = self.n_fft // 2 + 1
        _require(
            len(self.levels) > 0 and all(1 <= mels <= bins and frames >= 1 for mels, frames in self.levels),
            f"levels {[list(level) for level in self.levels]}: at least one (mel bands, frames), bands 1-{bins} (n_fft // 2 + 1), frames >= 1",
        )
        for name in ("val_repetitions", "test_repetitions"):
            lo, hi = getattr(self, name)
            _require(0 <= lo <= hi, f"{name} {[lo, hi]}: a range of FSDD repetition indices, first <= last")
        _require(_finite(*self.snr_db) and self.snr_db[0] <= self.snr_db[1], f"snr_db {list(self.snr_db)}: a range of finite decibels, low <= high")
        _require(
            _finite(self.semitones) and self.semitones >= 0 and 0 <= self.stretch < 1,
            f"stretch {self.stretch} (in [0, 1)) and semitones {self.semitones} (a finite number >= 0)",
        )
        _require(self.masks >= 0 and 0 <= self.mask_fraction <= 1, f"masks {self.masks} (>= 0) and mask_fraction {self.mask_fraction} (in [0, 1])")


@MODALITY_OPTIONS.register("pen")
@dataclass(frozen=True)
class PenOptions:
    """Options of the pen modality (data.options.pen): pen trajectories of the UCI pen digits."""

    samples: int = 32  # points each trajectory is resampled to, along its path (the digits have 9-231 points, median 36-39)
    levels: tuple[tuple[int, int], ...] = ((32, 1), (16, 1), (8, 1), (4, 1))  # (windows, statistics) per level: 1 mean, 2 mean and standard deviation
    val_writers: tuple[int, int] = (26, 30)  # the training file's writers (inclusive) held out for validation: val is writer-independent, as test is
    rotation_deg: float = 10.0  # training augmentation: the trajectory rotated by up to this, and
    zoom: float = 0.10  # scaled by 1 +- zoom, about its centre

    def __post_init__(self) -> None:
        _require(self.samples >= 4, f"samples {self.samples}: at least 4 points along the path")
        _require(
            len(self.levels) > 0 and all(1 <= windows <= self.samples and statistics in (1, 2) for windows, statistics in self.levels),
            f"levels {[list(level) for level in self.levels]}: at least one (windows, statistics), windows 1-{self.samples} (samples), statistics 1 (mean) or 2 (mean and standard deviation)",
        )
        lo, hi = self.val_writers
        _require(1 <= lo <= hi, f"val_writers {[lo, hi]}: a range of the training file's writers (numbered from 1), first <= last")
        _require(
            _finite(self.rotation_deg) and self.rotation_deg >= 0 and 0 <= self.zoom < 1,
            f"rotation_deg (a finite number >= 0) and zoom (in [0, 1)), got {self.rotation_deg}, {self.zoom}",
        )
