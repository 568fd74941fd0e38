"""A synthetic imu dataset keyed by digit, to try the modality on AV-MNIST's labels: each digit has
its own mean posture (a point on a ring, up for 5-9) and rhythm (1-3 cycles), blurred by per-item
and per-sample noise, so a trace tells its digit often but not always. Not a real sensor's data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from racmkd_imu.signal import AXES, NAME, SAMPLES

ITEMS = {"train": 60, "val": 20, "test": 20}  # traces per digit and split


def trace(digit: int, rng: np.random.Generator) -> np.ndarray:
    """One (3, 64) float32 trace of a digit."""
    angle = 2 * math.pi * digit / 10
    posture = np.array([math.cos(angle), math.sin(angle), 1.0 if digit >= 5 else -1.0]) + 0.3 * rng.standard_normal(AXES)
    t = np.arange(SAMPLES)
    rhythm = 0.5 * np.sin(2 * math.pi * (1 + digit % 3) * t / SAMPLES + rng.uniform(0, 2 * math.pi, (AXES, 1)))
    return (posture[:, None] + rhythm + 0.3 * rng.standard_normal((AXES, SAMPLES))).astype(np.float32)


def write_traces(root: str | Path, items: dict[str, int] = ITEMS, seed: int = 0) -> Path:
    """`items[split]` traces per digit and split under <root>/imu/<split>/<digit>-<item>.npy (items
    are numbered across splits, so an id is one trace); returns <root>/imu. An existing set is kept:
    remove the folder to write another."""
    target = Path(root) / NAME
    if target.exists():
        raise FileExistsError(f"{target} exists: its traces are kept; remove the folder to write a new synthetic set")
    rng, item = np.random.default_rng(seed), 0
    for split, per_digit in items.items():
        folder = target / split
        folder.mkdir(parents=True)
        for digit in range(10):
            for _ in range(per_digit):
                np.save(folder / f"{digit}-{item:05d}.npy", trace(digit, rng))
                item += 1
    return target
