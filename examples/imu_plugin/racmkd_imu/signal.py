"""The imu modality's deployment half, numpy only: its options (data.options.imu), the spec a model
reads, and the Signal that checks one raw trace and turns it into features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from racmkd.config import ConfigError
from racmkd.data.signals import Signal, pooling_matrix
from racmkd.registry import MODALITY_OPTIONS, SIGNALS

NAME = "imu"
AXES, SAMPLES = 3, 64  # one trace: 3 axes x 64 samples


@dataclass(frozen=True)
class ImuOptions:
    """data.options.imu: the time steps the models read per level (average pooling of the trace)."""

    levels: tuple[int, ...] = (64, 32, 16, 8)

    def __post_init__(self) -> None:
        if not self.levels or not all(1 <= n <= SAMPLES for n in self.levels):
            raise ConfigError(f"levels {list(self.levels)}: at least one, each 1-{SAMPLES} time steps")


@dataclass(frozen=True)
class ImuSpec:
    """What an imu model expects: the trace's `samples`, average-pooled to `length` steps (the
    input-side compression knob, as resolution is the image's and mel bands the audio's)."""

    samples: int = SAMPLES
    length: int = SAMPLES

    def __post_init__(self) -> None:
        if not (isinstance(self.samples, int) and isinstance(self.length, int) and 1 <= self.length <= self.samples):
            raise ConfigError(f"need whole numbers 1 <= length <= samples, got length {self.length!r}, samples {self.samples!r}")


class ImuSignal(Signal):
    """3-axis traces: checked, average-pooled in time; the axes are the feature's channels."""

    name = NAME
    spec_type = ImuSpec
    layout = "(batch, axes, 1, steps) float32"

    def to_raw(self, value: Any, spec: ImuSpec, sample_rate: int | None = None) -> np.ndarray:
        array = np.asarray(value)
        if array.shape != (AXES, spec.samples) or array.dtype.kind not in "iuf":
            raise ValueError(f"imu: expected {AXES} axes x {spec.samples} samples of numbers, got shape {array.shape}, dtype {array.dtype}")
        raw = array.astype(np.float32)
        if not np.isfinite(raw).all():
            raise ValueError("imu: the trace holds NaN or infinite samples")
        return raw[None]

    def blank(self, spec: ImuSpec) -> np.ndarray:
        return np.zeros((1, AXES, spec.samples), dtype=np.float32)

    def features(self, raw: np.ndarray, spec: ImuSpec) -> np.ndarray:
        pooled = raw if raw.shape[-1] == spec.length else raw @ pooling_matrix(raw.shape[-1], spec.length)  # (B, 3, T) @ (T, L)
        return pooled[:, :, None].astype(np.float32, copy=False)  # (B, 3, 1, L)

    def feature_shape(self, spec: ImuSpec) -> tuple[int, ...]:
        return (AXES, 1, spec.length)

    def steps(self, spec: ImuSpec) -> list[str]:
        steps = [f"{AXES} axes x {spec.samples} samples, float"]
        if spec.length != spec.samples:
            steps.append(f"average pooling in time to {spec.length} steps")
        return steps


def register() -> None:
    """The entry point of group racmkd.signals: the signal and its options under the modality's name."""
    SIGNALS.register(NAME)(ImuSignal)
    MODALITY_OPTIONS.register(NAME)(ImuOptions)
