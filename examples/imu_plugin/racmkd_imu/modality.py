"""The imu modality's training half (torch): where its items come from, how training batches are
augmented, and its features for a spec, the same as the signal's (racmkd_imu.signal)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from racmkd.config import DataConfig
from racmkd.data.modalities import SPLITS, Bank, Modality, seeded_noise
from racmkd.data.paths import DataError
from racmkd.registry import MODALITIES
from racmkd_imu.signal import AXES, NAME, SAMPLES, ImuOptions, ImuSpec


class ImuModality(Modality):
    """Traces stored as <data root>/imu/<split>/<digit>-<item>.npy, split by folder (as a sensor's
    dataset ships them; racmkd_imu.synthetic writes such a folder)."""

    name = NAME
    options_type = ImuOptions
    teacher_encoder = "cnn2d"  # a (3, 1, steps) input: the axes as channels, a 1-high image
    student_encoder = "dscnn2d"
    data_folders = (NAME,)
    reductions: ClassVar[dict[str, str]] = {"length": "time steps, by average pooling (64 -> 32 -> 16 -> 8)"}

    def load_banks(self, root: Path, cfg: DataConfig) -> dict[str, Bank]:
        banks = {}
        for split in SPLITS:
            files = sorted((root / NAME / split).glob("*.npy"))
            if not files:
                raise DataError(f"{root / NAME / split}: no traces (<digit>-<item>.npy); racmkd_imu.synthetic.write_traces writes a synthetic set")
            digits = [f.name.split("-")[0] for f in files]
            stray = [f.name for f, d in zip(files, digits) if d not in "0123456789" or len(d) != 1]
            if stray:
                raise DataError(f"{root / NAME / split}: {stray[:3]} are not named <digit>-<item>.npy; move them out of the folder")
            traces = [np.load(f, allow_pickle=False) for f in files]
            bad = [f.name for f, t in zip(files, traces) if t.shape != (AXES, SAMPLES)]
            if bad:
                raise DataError(f"{root / NAME / split}: {bad[:3]} are not {AXES} x {SAMPLES} traces; write the set again (racmkd_imu.synthetic)")
            data = torch.from_numpy(np.stack(traces).astype(np.float32))  # (R, 3, 64)
            banks[split] = Bank(data, torch.tensor([int(d) for d in digits]), [f.name for f in files])
        return banks

    @property
    def n_levels(self) -> int:
        return len(self.options.levels)

    def spec(self, level: int = 0) -> ImuSpec:
        return ImuSpec(SAMPLES, self.options.levels[level])

    def features(self, raw: torch.Tensor, spec: ImuSpec, augment_seed: int | None = None, memo: dict | None = None) -> torch.Tensor:
        if augment_seed is not None:  # a sensor's gain varies a little from device to device
            raw = raw * (1 + 0.1 * (2 * torch.rand(raw.shape[0], 1, 1, generator=torch.Generator().manual_seed(augment_seed)) - 1))
        pooled = raw if raw.shape[-1] == spec.length else F.adaptive_avg_pool1d(raw, spec.length)
        return pooled.unsqueeze(2)  # (B, 3, 1, L)

    # The benchmark suite's robustness sweep: sensor noise on every axis.
    degradation = "added white noise, its standard deviation in the trace's units"
    degradation_column = "noise {level}"
    degradation_levels = (0.0, 0.25, 0.5, 1.0)

    def degraded(self, clean: torch.Tensor, extra: dict[str, torch.Tensor], level: float, seeds: list[int]) -> torch.Tensor:
        return clean if level == 0 else clean + level * seeded_noise(clean.shape[1:], seeds, offset=13)

    def check_reduction(self, spec: ImuSpec, reduced: ImuSpec) -> None:
        super().check_reduction(spec, reduced)
        if reduced.samples != spec.samples:
            raise ValueError("imu: the trace's samples are the sensor's, not a knob")


def register() -> None:
    """The entry point of group racmkd.training: the modality under its name."""
    MODALITIES.register(NAME)(ImuModality)
