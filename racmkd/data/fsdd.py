"""The Free Spoken Digit Dataset: 8 kHz mono 16-bit WAV files named {digit}_{speaker}_{index}.wav."""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.io import wavfile

from racmkd.data.paths import DataError, read_data_file
from racmkd.utils import progress

FSDD_SAMPLE_RATE = 8000
FSDD_COUNT = 3000
# sha256 over the sorted lines "<file name> <sha256 of the file>\n" of all 3,000 recordings of v1.0.10
# (fsdd_sha256.txt beside this file lists each recording's, to name one that differs).
FSDD_RECORDINGS_SHA256 = "dbd573d7cafe79c4b49f65718115e1304e24e067fa39eff18a660dc6cb9c360f"
NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
FIX = "Replace it with the official recording (`racmkd data --download` fetches and checks the dataset)."


@dataclass(frozen=True)
class Recording:
    """One spoken digit."""

    digit: int
    speaker: str
    index: int  # repetition number: 0-4 official test, 5-49 train
    samples: np.ndarray  # int16 mono at 8 kHz

    @property
    def name(self) -> str:
        """The file name, which identifies the recording across splits."""
        return f"{self.digit}_{self.speaker}_{self.index}.wav"


STREAMED_SIZES = (0, 0xFFFFFFFF)  # what a writer that cannot seek back leaves in a WAV's size fields


def sized_stream(data: bytes) -> bytes:
    """A WAV written as a stream (FFmpeg to a pipe, a recorder cut off) with its RIFF and data sizes
    set to what the file holds: the writer left 0xFFFFFFFF (or 0) there, and scipy refused the file as
    truncated. The data runs to the end of the file, in whole frames. Anything else is left as it is."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return data
    fixed, offset, frame = bytearray(data), 12, 1
    while offset + 8 <= len(data):
        chunk, size = data[offset : offset + 4], int.from_bytes(data[offset + 4 : offset + 8], "little")
        if chunk == b"fmt " and offset + 22 <= len(data):
            frame = max(1, int.from_bytes(data[offset + 20 : offset + 22], "little"))  # block align: bytes per frame
        if chunk == b"data":
            riff = int.from_bytes(data[4:8], "little")
            # (0xFFFFFFFF is no size; a data size of 0 only where the RIFF size is unknown or wrong too:
            # an empty data chunk before other chunks is empty, and the rest is not audio)
            if size != 0xFFFFFFFF and not (size == 0 and (riff in STREAMED_SIZES or riff != len(data) - 8)):
                return data
            held = (len(data) - offset - 8) // frame * frame
            fixed[offset + 4 : offset + 8] = held.to_bytes(4, "little")
            if riff in STREAMED_SIZES:
                fixed[4:8] = (offset + held).to_bytes(4, "little")  # (the RIFF size counts from byte 8)
            return bytes(fixed[: offset + 8 + held])
        offset += 8 + size + (size & 1)  # chunks are padded to an even size
    return data


def read_wav(data: bytes, path: Path, fix: str = "") -> tuple[int, np.ndarray]:
    """Sample rate and samples of a WAV file, as stored (any sample type; (n,) or (n, channels));
    a file that cannot be parsed, or holds no samples, is a DataError naming it (`fix` appended).
    A file written as a stream, its sizes unknown to its writer, is read to its end (`sized_stream`)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", wavfile.WavFileWarning)  # extra chunks (cue, bext, ...) are fine ...
            warnings.filterwarnings("error", message="Reached EOF prematurely", category=wavfile.WavFileWarning)  # ... a truncated file is not
            rate, samples = wavfile.read(io.BytesIO(sized_stream(data)))
    except Exception as err:  # noqa: BLE001 - scipy's parser meets a garbled header with whatever it hits (struct.error, ZeroDivisionError, UnboundLocalError, ...)
        raise DataError(f"{path}: not a readable WAV file ({type(err).__name__}: {err}). {fix}".rstrip()) from None
    if len(samples) == 0:
        raise DataError(f"{path}: no samples. {fix}".rstrip())
    return int(rate), samples


def parse_wav(data: bytes, path: Path) -> tuple[int, np.ndarray]:
    """Sample rate and int16 samples of a dataset recording (mono 16-bit PCM, as FSDD's are); errors
    name the file and the problem."""
    rate, samples = read_wav(data, path, FIX)
    if samples.ndim != 1:
        raise DataError(f"{path}: {samples.shape[1]} channels, expected mono. {FIX}")
    if samples.dtype != np.int16:
        raise DataError(f"{path}: {samples.dtype} samples, expected 16-bit PCM. {FIX}")
    return rate, samples


def recordings_digest(named_files: list[tuple[str, bytes]]) -> str:
    """The dataset-level sha256 that FSDD_RECORDINGS_SHA256 is, for any list of (name, content)."""
    lines = "".join(f"{name} {hashlib.sha256(data).hexdigest()}\n" for name, data in sorted(named_files))
    return hashlib.sha256(lines.encode()).hexdigest()


def load_fsdd(directory: Path, expected_sha256: str | None = FSDD_RECORDINGS_SHA256) -> list[Recording]:
    """All recordings in `directory` (the dataset's recordings/ folder), checked file by file and,
    when `expected_sha256` is given, as a whole against the official release."""
    if not directory.is_dir():
        raise DataError(f"{directory}: folder not found. Set RACMKD_DATA to the folder holding fsdd/recordings, or run `racmkd data --download`.")
    files = sorted(directory.glob("*.wav"))
    if not files:
        raise DataError(f"{directory}: no .wav recordings. Run `racmkd data --download`.")
    recordings, contents = [], []
    for path in progress(files, desc="FSDD recordings"):
        match = NAME.match(path.name)
        if not match:
            raise DataError(f"{path}: name does not follow {{digit}}_{{speaker}}_{{index}}.wav. Remove or rename the file.")
        data = read_data_file(path, FIX)  # (a folder, or a link to nothing, under a recording's name)
        rate, samples = parse_wav(data, path)
        if rate != FSDD_SAMPLE_RATE:
            raise DataError(f"{path}: sample rate {rate} Hz, the dataset is {FSDD_SAMPLE_RATE} Hz. {FIX}")
        contents.append((path.name, data))
        recordings.append(Recording(int(match[1]), match[2], int(match[3]), samples))
    if expected_sha256 is not None:
        digest = recordings_digest(contents)
        if digest != expected_sha256:
            raise DataError(
                f"{directory}: the {len(files)} recordings (official release: {FSDD_COUNT}) do not match FSDD v1.0.10 "
                f"(digest {digest}, expected {expected_sha256}){_names_astray(contents)}. Re-download with `racmkd data --download`."
            )
    return recordings


def release_manifest() -> dict[str, str]:
    """Each official recording's name -> the first 16 hex digits of its sha256 (fsdd_sha256.txt)."""
    lines = (Path(__file__).parent / "fsdd_sha256.txt").read_text().splitlines()
    return dict(line.split() for line in lines if line and not line.startswith("#"))


def _names_astray(named_files: list[tuple[str, bytes]]) -> str:
    """For the checksum's error: the official recordings missing, the files that are not official,
    and the official ones whose content differs from the release's (by the per-file manifest)."""
    manifest = release_manifest()
    names = {name for name, _ in named_files}
    missing, extra = sorted(manifest.keys() - names), sorted(names - manifest.keys())
    changed = sorted(name for name, data in named_files if name in manifest and hashlib.sha256(data).hexdigest()[:16] != manifest[name])

    def listed(files: list[str]) -> str:
        return ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")

    parts = [
        f"{what} {listed(files)}"
        for what, files in (("missing", missing), ("not in the release:", extra), ("content differs from the release:", changed))
        if files
    ]
    return "; " + "; ".join(parts) if parts else ""
