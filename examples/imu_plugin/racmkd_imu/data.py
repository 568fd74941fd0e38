"""The imu modality's dataset: a pen with an IMU writing digits (metanav/Handwriting_Recognition_IMU,
Apache-2.0), one writer, 1,031 recordings, 100-107 per digit. Each recording is a CSV file of 1-46
readings, no header: accelerometer x, y, z (mg), gyroscope x, y, z (deg/s); its name says which
digit, `readings_{n}_digit_{d}.csv`, n numbering the recordings (a digit's are consecutive). The
repository keeps 286 of them in a subfolder, `below_800/`; both folders are one set.

Torch-free: the parser and the download are what a user's machine needs before any training."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from racmkd.data.download import install_from_archive
from racmkd.data.fsdd import recordings_digest
from racmkd.data.paths import DataError

FOLDER = "imu_pen_digits"  # under the data root
FILE = re.compile(r"readings_(\d+)_digit_(\d)\.csv")
# recordings_digest (racmkd.data.fsdd) of the 1,031 files, named by their path under FOLDER.
IMU_PEN_DIGITS_SHA256 = "bfe350c315b289d6959159cb516685efdd04a1b8d34594fd5f2457540461d841"
COUNT = 1031
# The repository at the commit the files were read from; its data/ folder becomes FOLDER.
ARCHIVE = "https://github.com/metanav/Handwriting_Recognition_IMU/archive/270d8af6e3b90861b84408eadf64a58ea337f849.tar.gz"


def split_of(number: int) -> str:
    """Where a recording goes. One writer wrote them all, so no split is writer-independent; every
    fifth recording is a test item and one in ten a validation item, spread over each digit's run
    of consecutive recordings (a session's drift lands in every split)."""
    return "test" if number % 5 == 0 else "val" if number % 10 == 3 else "train"


def read_recording(path: Path) -> np.ndarray:
    """(n, 6) float64 readings of one file; a DataError names the file and line of a bad one."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read it ({err}); fetch the set again (racmkd_imu.data.download)") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = [float(v) for v in line.split(",")]
        except ValueError:
            row = []
        if len(row) != 6 or not np.isfinite(row).all():
            raise DataError(f"{path}:{number}: expected 6 numbers (accelerometer x, y, z, gyroscope x, y, z), got {line[:80]!r}")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no readings; fetch the set again (racmkd_imu.data.download)")
    return np.array(rows)


def hidden(parts: tuple[str, ...] | list[str]) -> bool:
    """Whether a path (its parts under FOLDER) is a hidden file or lies in a hidden folder (as
    macOS's ._readings_1_digit_0.csv): never one of the set, as the dataset cache's key skips them."""
    return any(part.startswith(".") for part in parts)


def counts(name: str) -> bool:
    """Whether a file (its path under FOLDER) is one of the set: a recording's name, not hidden."""
    parts = name.split("/")
    return FILE.fullmatch(parts[-1]) is not None and not hidden(parts)


def load_recordings(folder: Path, expected_sha256: str | None = None) -> list[tuple[int, int, np.ndarray]]:
    """(number, digit, readings) of every recording under `folder` (at any depth; hidden files
    and folders left out, as the dataset cache's key leaves them), by number; with
    `expected_sha256`, the files checked as a whole against it (`recordings_digest`), as FSDD's
    and the pen digits' are when they load: a recording cut short, edited or missing would
    otherwise train as if the set were whole (the download checks them, a later change would not)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found. Set RACMKD_DATA to the folder holding {FOLDER}/, or fetch it: python -m racmkd_imu.data <data root>")
    found: dict[int, tuple[int, Path]] = {}
    for path in sorted(folder.rglob("*.csv")):
        if hidden(path.relative_to(folder).parts):
            continue
        match = FILE.fullmatch(path.name)
        if match is None:
            raise DataError(f"{path}: not named readings_<n>_digit_<d>.csv; move it out of {folder}")
        number, digit = int(match[1]), int(match[2])
        if number in found:
            raise DataError(f"{path}: recording {number} is also {found[number][1]}; keep one of them")
        found[number] = (digit, path)
    if not found:
        raise DataError(f"{folder}: no recordings (readings_<n>_digit_<d>.csv). Fetch them: python -m racmkd_imu.data <data root>")
    recordings = [(number, digit, read_recording(path)) for number, (digit, path) in sorted(found.items())]
    if expected_sha256 is not None:
        digest = recordings_digest([(path.relative_to(folder).as_posix(), path.read_bytes()) for _, path in found.values()])
        if digest != expected_sha256:
            raise DataError(
                f"{folder}: the {len(found)} recordings (the set: {COUNT}) do not match the set's files (digest {digest}, expected"
                f" {expected_sha256}): fetch it again (python -m racmkd_imu.data <data root>)"
            )
    return recordings


def download(root: str | Path, url: str = ARCHIVE, expected_sha256: str = IMU_PEN_DIGITS_SHA256) -> Path:
    """Fetch the repository's archive and install its data/ folder as <root>/imu_pen_digits, once
    the files match `expected_sha256` (nothing is fetched when they already do)."""

    def recording(member: str) -> str | None:  # <repository>-<commit>/data/[below_800/]readings_<n>_digit_<d>.csv
        parts = Path(member).parts
        return Path(*parts[2:]).as_posix() if len(parts) > 2 and parts[1] == "data" else None

    return install_from_archive(url, Path(root) / FOLDER, recording, expected_sha256, "data/readings_<n>_digit_<d>.csv files", counts)


if __name__ == "__main__":  # python -m racmkd_imu.data [DATA ROOT]: fetch the set into the data root
    import sys

    from racmkd.data.paths import data_root

    print(download(sys.argv[1] if len(sys.argv) > 1 else data_root()))
