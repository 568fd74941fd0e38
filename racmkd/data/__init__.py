"""Data: sources (mnist.py, fsdd.py, download.py), modalities (modalities.py, registering image and
audio), and the paired dataset with its splits and cache (dataset.py)."""

from racmkd.data import modalities as modalities  # registers the image and audio modalities
from racmkd.data.dataset import PairedDataset, build_dataset
from racmkd.data.paths import DataError, data_root

__all__ = ["DataError", "PairedDataset", "build_dataset", "data_root", "modalities"]
