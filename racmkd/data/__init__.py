"""Data: sources (mnist.py, fsdd.py, pendigits.py, download.py), modalities (modalities.py, registering
image, audio and pen for training; signals.py, their torch-free deployment side), and the paired dataset with its
splits and cache (dataset.py).

Nothing here is imported eagerly: an edge device reads racmkd.data.signals alone, without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from racmkd.data.paths import DataError, data_root

__all__ = ["DataError", "PairedDataset", "build_dataset", "data_root"]


def __getattr__(name: str) -> Any:
    """`racmkd.data.PairedDataset` and `build_dataset`, imported on first use."""
    if name in ("PairedDataset", "build_dataset"):
        return getattr(importlib.import_module("racmkd.data.dataset"), name)
    raise AttributeError(f"module 'racmkd.data' has no attribute {name!r}")
