"""MNIST in its IDX format: strict parsing with checks of magic numbers, sizes and sha256."""

from __future__ import annotations

import gzip
import hashlib
import math
import zlib
from pathlib import Path

import numpy as np

from racmkd.data.paths import DataError, read_data_file

# sha256 of the decompressed official files (the gzip wrappers differ between mirrors).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MNIST_SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000), "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000)}
IDX_UBYTE = 0x08
FIX = "Replace it with the official file (`racmkd data --download` fetches and checks it)."


def read_idx_bytes(path: Path) -> bytes:
    """The decompressed content of an IDX file (`.gz` or plain)."""
    raw = read_data_file(path, FIX)
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: not a valid gzip file ({err}); it is corrupt or truncated. {FIX}") from None


def parse_idx(data: bytes, path: Path, expected_sha256: str | None = None) -> np.ndarray:
    """Parse unsigned-byte IDX content: magic 0x0000 08 <ndim>, big-endian dims, then the raw values.
    The layout is checked before the checksum, so that a damaged file is told by what is wrong with
    it (truncated, not IDX) rather than by a digest mismatch alone."""
    if len(data) < 4:
        raise DataError(f"{path}: {len(data)} bytes, too short for an IDX header. {FIX}")
    if data[0] != 0 or data[1] != 0 or data[2] != IDX_UBYTE or not 1 <= data[3] <= 4:
        magic = int.from_bytes(data[:4], "big")
        raise DataError(f"{path}: magic number {magic} is not an unsigned-byte IDX magic (2049 labels, 2051 images). {FIX}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: header truncated ({len(data)} of {header} bytes). {FIX}")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(dims)  # Python ints: np.prod wraps at 2**63 on a damaged header's huge dims
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(f"{path}: {state}: header announces dims {dims} = {expected} bytes, file has {len(data)}. {FIX}")
    if expected_sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected_sha256:
            raise DataError(
                f"{path}: sha256 of the decompressed content is {digest}, expected {expected_sha256} (its layout is sound: the values differ). {FIX}"
            )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def find_idx(directory: Path, name: str) -> Path:
    """`name.gz` or plain `name` in `directory`."""
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.exists():
            return candidate
    raise DataError(f"{directory / name}[.gz]: file not found. Set RACMKD_DATA to the folder holding mnist/ and fsdd/, or run `racmkd data --download`.")


def load_mnist(directory: Path, split: str, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 of the official 'train' or 'test' split."""
    image_name, label_name, count = MNIST_SPLITS[split]
    image_path, label_path = find_idx(directory, image_name), find_idx(directory, label_name)
    images = parse_idx(read_idx_bytes(image_path), image_path, MNIST_SHA256[image_name] if verify else None)
    labels = parse_idx(read_idx_bytes(label_path), label_path, MNIST_SHA256[label_name] if verify else None)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{image_path}: expected images of 28x28 (magic 2051), found dims {list(images.shape)}. {FIX}")
    if labels.ndim != 1:
        raise DataError(f"{label_path}: expected a label file (magic 2049), found dims {list(labels.shape)}. {FIX}")
    if len(images) != len(labels):
        raise DataError(f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels. {FIX}")
    if verify and len(images) != count:
        raise DataError(f"{image_path}: {len(images)} images, the official {split} split has {count}. {FIX}")
    if labels.max(initial=0) > 9:
        raise DataError(f"{label_path}: label {int(labels.max())} outside 0-9. {FIX}")
    return images, labels
