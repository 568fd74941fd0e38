"""The imu modality's deployment half, numpy only: its options (data.options.imu), the spec a model
reads, and the Signal that checks one raw recording and turns it into features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from racmkd.config import ConfigError
from racmkd.data.signals import Signal, pooling_matrix, project_channels
from racmkd.registry import MODALITY_OPTIONS, SIGNALS

NAME = "imu"
# One reading of the pen's IMU (an ICM-20948): accelerometer x, y, z in mg, gyroscope x, y, z in deg/s.
AXES = ("accel x", "accel y", "accel z", "gyro x", "gyro y", "gyro z")
# Each axis divided by its unit: g for the accelerometer (its range is +-2 g), 100 deg/s for the
# gyroscope (the recordings stay within +-215 deg/s), so that every axis spans a few units.
UNITS = np.array([1000.0, 1000.0, 1000.0, 100.0, 100.0, 100.0])
# The ICM-20948's widest full-scale ranges (+-16 g, +-2000 deg/s) in those units: a trace (6, samples)
# past them is no trace but readings in mg and deg/s (at rest gravity alone puts 1,000 mg on an axis).
TRACE_LIMITS = np.array([16.0, 16.0, 16.0, 20.0, 20.0, 20.0])
SAMPLES = 32  # time steps a recording (1-46 readings) is resampled to


@dataclass(frozen=True)
class ImuOptions:
    """data.options.imu: the trace's time steps, and what the models read per level: (steps,
    components), the trace average-pooled to `steps` and, with fewer than 6 components, projected
    onto that many principal axes of the training traces (PCA)."""

    samples: int = SAMPLES
    levels: tuple[tuple[int, int], ...] = ((32, 6), (16, 6), (8, 6), (4, 6))
    gain: float = 0.1  # training augmentation: each axis scaled by 1 +- gain (a sensor's gain varies from device to device)

    def __post_init__(self) -> None:
        if self.samples < 8:
            raise ConfigError(f"samples {self.samples}: at least 8 time steps")
        if not self.levels or not all(1 <= n <= self.samples and 1 <= k <= len(AXES) for n, k in self.levels):
            raise ConfigError(
                f"levels {[list(level) for level in self.levels]}: at least one (steps, components), steps 1-{self.samples} (samples), components 1-{len(AXES)}"
            )
        if not 0 <= self.gain < 1:
            raise ConfigError(f"gain {self.gain}: in [0, 1)")


@dataclass(frozen=True)
class ImuSpec:
    """What an imu model expects: the recording resampled to `samples` time steps, average-pooled
    to `length` steps, and with `components` below 6 projected onto the first principal axes of the
    training traces (`centre` and `axes`, fitted by the modality, carried here so that a deployed
    model needs nothing else). `length` and `components` are the input-side compression knobs, as
    resolution is the image's and mel bands the audio's."""

    samples: int = SAMPLES
    length: int = SAMPLES
    components: int = len(AXES)
    centre: tuple[float, ...] = ()
    axes: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self) -> None:
        whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.samples, self.length, self.components))
        if not (whole and self.samples >= 8 and 1 <= self.length <= self.samples and 1 <= self.components <= len(AXES)):
            raise ConfigError(
                f"need whole numbers samples >= 8, 1 <= length <= samples and components 1-6, got samples {self.samples!r}, length {self.length!r}, components {self.components!r}"
            )
        fitted = len(self.centre) == len(AXES) and len(self.axes) == len(AXES) and all(len(row) == len(AXES) for row in self.axes)
        if not np.isfinite(np.asarray(self.centre, dtype=np.float64)).all() or not all(
            np.isfinite(np.asarray(row, dtype=np.float64)).all() for row in self.axes
        ):
            raise ConfigError("centre and axes must be finite numbers (a contract edited by hand?)")
        if (self.centre or self.axes or self.components < len(AXES)) and not fitted:
            raise ConfigError(
                f"components {self.components}: PCA needs the training traces' centre (6 numbers) and principal axes (6 x 6), got {len(self.centre)} and {len(self.axes)}; the modality fits them when the dataset is built"
            )


def imu_trace(readings: np.ndarray, samples: int) -> np.ndarray:
    """(6, samples) float32 from a recording's readings (n, 6) in the sensor's units: each axis in
    UNITS, resampled linearly in time to `samples` steps, so that a digit written fast or slowly
    fills the same trace (one reading: a constant trace)."""
    scaled = readings.astype(np.float64) / UNITS
    if len(scaled) == 1:
        return np.repeat(scaled.T, samples, axis=1).astype(np.float32)
    at, known = np.linspace(0.0, 1.0, samples), np.linspace(0.0, 1.0, len(scaled))
    return np.stack([np.interp(at, known, axis) for axis in scaled.T]).astype(np.float32)


class ImuSignal(Signal):
    """6-axis recordings (accelerometer and gyroscope): checked, resampled, average-pooled in time;
    the axes are the feature's channels."""

    name = NAME
    spec_type = ImuSpec
    raw_fields = ("samples",)  # what to_raw reads of the spec: a bank's imu variants must agree on it
    layout = "(batch, channels: 6 axes or k principal components, 1, steps) float32"

    def to_raw(self, value: Any, spec: ImuSpec, sample_rate: int | None = None) -> np.ndarray:
        """A recording as the sensor gives it, readings (n, 6) in mg and deg/s, resampled here; or
        one already resampled, (6, samples) as `imu_trace` returns it (a dataset's items, which the
        runtime's replays and checks feed). The two are told apart by shape, so a trace must be in
        the trace's units (within TRACE_LIMITS): readings stacked the other way round, (6, n), are
        refused for every n, also the one that matches the trace's shape, where they skipped the
        unit scaling and reached the model a thousand times too large."""
        try:
            array = np.asarray(value)
        except ValueError as err:  # (ragged rows)
            raise ValueError(f"imu: expected readings (n, 6), one row per reading ({err})") from None
        axes = len(AXES)
        if array.dtype.kind not in "iuf" or array.ndim != 2 or not array.size or not (array.shape[1] == axes or array.shape == (axes, spec.samples)):
            raise ValueError(
                f"imu: expected readings (n, 6) of accelerometer x, y, z (mg) and gyroscope x, y, z (deg/s), or a trace (6, {spec.samples}), got shape {array.shape}, dtype {array.dtype}"
            )
        with np.errstate(over="ignore", invalid="ignore"):  # (a value past float32's range is refused below)
            raw = (
                array.astype(np.float32) if array.shape == (axes, spec.samples) else imu_trace(array, spec.samples)
            )  # (samples >= 8: never readings of 6 axes)
        if not np.isfinite(raw).all():  # (checked after the cast: 1e300 is finite in float64, not in float32)
            raise ValueError("imu: the recording holds NaN or infinite readings, or readings past float32's range")
        if array.shape == (axes, spec.samples) and (np.abs(raw) > TRACE_LIMITS[:, None]).any():
            raise ValueError(
                f"imu: a (6, {spec.samples}) array is read as a trace resampled by imu_trace (g and 100 deg/s), and this is past the"
                f" sensor's range in those units (+-16 g, +-2000 deg/s): readings in mg and deg/s go one row each, (n, 6): transpose it"
            )
        return raw[None]

    def input_quality(self, raw: np.ndarray) -> float:
        """0 for a sensor that reads the same on every axis all along (stuck or asleep: at rest an IMU
        still reads gravity, so the values are not zeros), else 1: each axis judged by its own range.
        A recording of one reading is such a trace too: no motion to read a digit from (3 of the
        dataset's 1,031 recordings, all training items, are one reading long). The threshold is
        `Signal.dead_range`, here in g and 100 deg/s."""
        spans = raw.max(axis=-1) - raw.min(axis=-1)
        return 0.0 if float(spans.max()) < self.dead_range else 1.0

    def blank(self, spec: ImuSpec) -> np.ndarray:
        return np.zeros((1, len(AXES), spec.samples), dtype=np.float32)

    def features(self, raw: np.ndarray, spec: ImuSpec) -> np.ndarray:
        pooled = raw if raw.shape[-1] == spec.length else raw @ pooling_matrix(raw.shape[-1], spec.length)  # (B, 6, T) @ (T, L)
        if spec.components < len(AXES):
            pooled = project_channels(pooled, spec.centre, spec.axes[: spec.components])  # (B, k, L)
        return pooled[:, :, None].astype(np.float32, copy=False)  # (B, k, 1, L)

    def feature_shape(self, spec: ImuSpec) -> tuple[int, ...]:
        return (spec.components, 1, spec.length)

    def steps(self, spec: ImuSpec) -> list[str]:
        steps = [
            "readings (n, 6): accelerometer x, y, z in mg, gyroscope x, y, z in deg/s (a trace (6, samples) already resampled skips the next step)",
            f"accelerometer / 1000 (g), gyroscope / 100; linear interpolation in time to {spec.samples} steps",
        ]
        if spec.length != spec.samples:
            steps.append(f"average pooling in time to {spec.length} steps")
        if spec.components < len(AXES):
            steps.append(f"per step: minus spec.centre, projected onto the first {spec.components} rows of spec.axes (principal axes of the training traces)")
        return steps


def register() -> None:
    """The entry point of group racmkd.signals: the signal and its options under the modality's name."""
    SIGNALS.register(NAME)(ImuSignal)
    MODALITY_OPTIONS.register(NAME)(ImuOptions)
