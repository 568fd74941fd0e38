"""The imu modality's training half (torch): where its items come from, how training batches are
augmented, and its features for a spec, the same as the signal's (racmkd_imu.signal)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from racmkd.config import ConfigError, DataConfig
from racmkd.data.modalities import SPLITS, Bank, Modality, seeded_noise
from racmkd.data.paths import DataError
from racmkd.data.signals import principal_axes
from racmkd.registry import MODALITIES
from racmkd_imu.data import FOLDER, IMU_PEN_DIGITS_SHA256, download, load_recordings, split_of
from racmkd_imu.signal import AXES, NAME, ImuOptions, ImuSpec, imu_trace


class ImuModality(Modality):
    """A pen's IMU writing digits (racmkd_imu.data): every recording resampled to one trace
    (6 axes x samples), split by recording (one writer: see `split_of`)."""

    name = NAME
    options_type = ImuOptions
    teacher_encoder = "cnn2d"  # a (6, 1, steps) input: the axes as channels, a 1-high image
    student_encoder = "dscnn2d"
    data_folders = (FOLDER,)
    # PCA (fewer components) is a level's design, not a reduction: a network trained on 6 channels
    # has no weights for 3 others (data.options.imu.levels).
    reductions: ClassVar[dict[str, str]] = {"length": "time steps, by average pooling (32 -> 16 -> 8 -> 4)"}
    principal: tuple[tuple[float, ...], tuple[tuple[float, ...], ...]] | None = None  # (centre, axes), by `fit`

    def download(self, root: Path) -> None:
        download(root)

    def load_banks(self, root: Path, cfg: DataConfig) -> dict[str, Bank]:
        recordings = load_recordings(root / FOLDER, IMU_PEN_DIGITS_SHA256)
        banks = {}
        for split in SPLITS:
            kept = [(number, digit, readings) for number, digit, readings in recordings if split_of(number) == split]
            if not kept:
                raise DataError(f"{root / FOLDER}: no {split} recordings (racmkd_imu.data.split_of); the set is incomplete, fetch it again")
            traces = np.stack([imu_trace(readings, self.options.samples) for _, _, readings in kept])  # (R, 6, samples)
            banks[split] = Bank(
                torch.from_numpy(traces), torch.tensor([digit for _, digit, _ in kept]), [f"readings_{number}_digit_{digit}" for number, digit, _ in kept]
            )
        return banks

    @property
    def n_levels(self) -> int:
        return len(self.options.levels)

    def fit(self, train: Bank) -> None:
        """The principal axes of the training traces, which a PCA level projects onto."""
        centre, axes = principal_axes(train.data.numpy())
        self.principal = (tuple(centre.tolist()), tuple(map(tuple, axes.tolist())))

    def spec(self, level: int = 0) -> ImuSpec:
        steps, components = self.options.levels[level]
        if components == len(AXES):
            return ImuSpec(self.options.samples, steps)
        return ImuSpec(self.options.samples, steps, components, *self.fitted_axes())

    def fitted_axes(self) -> tuple[tuple[float, ...], tuple[tuple[float, ...], ...]]:
        """(centre, axes) from `fit`; a PCA level asked for before the dataset was built is an error."""
        if self.principal is None:
            raise ConfigError("imu: fewer than 6 components need the training traces' principal axes; build the dataset first (it fits them)")
        return self.principal

    def features(self, raw: torch.Tensor, spec: ImuSpec, augment_seed: int | None = None, memo: dict | None = None) -> torch.Tensor:
        if augment_seed is not None and self.options.gain:  # each axis's gain, a little off, as from device to device
            draw = torch.rand(raw.shape[0], len(AXES), 1, generator=torch.Generator().manual_seed(augment_seed))
            raw = raw * (1 + self.options.gain * (2 * draw - 1))
        pooled = raw if raw.shape[-1] == spec.length else F.adaptive_avg_pool1d(raw, spec.length)
        if spec.components < len(AXES):  # the signal's projection, in torch
            axes = torch.tensor(spec.axes[: spec.components], dtype=pooled.dtype)
            pooled = torch.einsum("kc,bct->bkt", axes, pooled - torch.tensor(spec.centre, dtype=pooled.dtype)[:, None])
        return pooled.unsqueeze(2)  # (B, k, 1, L)

    # The benchmark suite's robustness sweep: sensor noise on every axis.
    degradation = "added white noise, its standard deviation in g (accelerometer) and 100 deg/s (gyroscope)"
    degradation_column = "noise {level}"
    degradation_levels = (0.0, 0.1, 0.25, 0.5)

    def degraded(self, clean: torch.Tensor, extra: dict[str, torch.Tensor], level: float, seeds: list[int]) -> torch.Tensor:
        return clean if level == 0 else clean + level * seeded_noise(clean.shape[1:], seeds, offset=13)

    def check_reduction(self, spec: ImuSpec, reduced: ImuSpec) -> None:
        super().check_reduction(spec, reduced)
        if reduced.samples != spec.samples:
            raise ValueError("imu: the trace's samples are the sensor's, not a knob")


def register() -> None:
    """The entry point of group racmkd.training: the modality under its name."""
    MODALITIES.register(NAME)(ImuModality)
