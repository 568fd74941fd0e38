"""Pen-Based Recognition of Handwritten Digits (Alimoglu & Alpaydin, UCI), the raw trajectories in
UNIPEN text format: the pen modality's dataset.

A file is a list of digits, each a `.SEGMENT DIGIT <n> ? "<digit>"` line, a `.COMMENT <digit>
<writer> <item>` line, then one `.PEN_DOWN` ... `.PEN_UP` block per stroke of integer `x y` tablet
coordinates (0-500, sampled every 100 ms). The official split is by writer: 30 writers' 7,494 digits
to train on, 14 others' 3,498 to test on (both numbered from 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from racmkd.data.paths import DataError, read_data_file
from racmkd.utils import sha256

# sha256 of the uncompressed files (the UCI repository serves them compressed, as pendigits-orig.tra.Z
# and pendigits-orig.tes.Z: see racmkd.data.download.download_pendigits).
PENDIGITS_SHA256 = {
    "pendigits-train.unipen": "a66225d68d7d68591e62944df1ad33b3f5aa608e2df2505844b41f5568a80da4",
    "pendigits-test.unipen": "ddb1c19e277a56c7ffe682cc024d6ab73696f9adcc1643ef9ed5aa753007e081",
}
FILES = {"train": "pendigits-train.unipen", "test": "pendigits-test.unipen"}
FIX = "Replace it with the official file (`racmkd data --download` fetches and checks the dataset)."


@dataclass(frozen=True)
class PenDigit:
    """One written digit: its strokes as the tablet sampled them."""

    digit: int
    writer: int  # numbered within its file: writer 3 of the test file is not writer 3 of the training file
    item: int  # the digit's place in its file (0-based), which identifies it
    points: np.ndarray  # (n, 3) int32: x, y and the stroke each point belongs to (0, 1, ...)


def parse_unipen(text: str, path: Path) -> list[PenDigit]:
    """The digits of one UNIPEN file; anything it cannot read is a DataError naming the file and line."""
    digits: list[PenDigit] = []
    header: tuple[int, int] | None = None  # (digit, item) of the segment being read
    writer, points, stroke, inside = -1, [], -1, False

    def close(line_no: int) -> None:
        if header is None:
            return
        if inside:
            raise DataError(f"{path}:{line_no}: a stroke of digit #{header[1]} has no .PEN_UP. {FIX}")
        if not points or writer < 0:
            raise DataError(f"{path}:{line_no}: digit #{header[1]} has {'no points' if not points else 'no .COMMENT naming its writer'}. {FIX}")
        digits.append(PenDigit(header[0], writer, header[1], np.array(points, dtype=np.int32)))

    for line_no, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words:
            continue
        keyword = words[0]
        try:
            if keyword == ".SEGMENT":
                close(line_no)
                label = words[-1].strip('"')
                if len(words) < 5 or words[1] != "DIGIT" or label not in "0123456789" or len(label) != 1:
                    raise ValueError('expected .SEGMENT DIGIT <n> ? "<digit>"')
                header, writer, points, stroke, inside = (int(label), len(digits)), -1, [], -1, False  # (words[2] numbers its strokes: "6-7")
            elif keyword == ".COMMENT" and header is not None:
                writer = int(words[2])  # .COMMENT <digit> <writer> <item of the writer>
            elif keyword == ".PEN_DOWN":
                if header is None or inside:
                    raise ValueError(".PEN_DOWN outside a digit, or before the last stroke's .PEN_UP")
                stroke, inside = stroke + 1, True
            elif keyword == ".PEN_UP":
                if not inside:
                    raise ValueError(".PEN_UP without a .PEN_DOWN")
                inside = False
            elif keyword.startswith("."):
                continue  # .INCLUDE, .LEXICON, .HIERARCHY, .DT: nothing the trajectories need
            elif inside:
                if len(words) != 2:
                    raise ValueError("a point is two numbers, x y")
                x, y = int(words[0]), int(words[1])
                if not (abs(x) < 2**31 and abs(y) < 2**31):
                    raise ValueError("a coordinate beyond 32-bit integers")
                points.append((x, y, stroke))
            else:
                raise ValueError("coordinates outside a .PEN_DOWN block")
        except (ValueError, IndexError) as err:
            raise DataError(f"{path}:{line_no}: {line.strip()[:60]!r}: not UNIPEN as the pen digits are written ({err}). {FIX}") from None
    close(line_no + 1 if text else 1)
    return digits


def load_pendigits(folder: Path, split: str, verify: bool = True) -> list[PenDigit]:
    """The digits of the official `split` ('train' or 'test'), read from folder/<its file>; with
    `verify`, only from the official file: a copy cut short at a digit's end, or with a label edited,
    parses as well as the whole one (and would be cached as the dataset)."""
    path = folder / FILES[split]
    if not path.is_file():
        raise DataError(f"{path}: missing. Set RACMKD_DATA to the folder holding pendigits/, or run `racmkd data --download`.")
    data = read_data_file(path, FIX)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file (sha256 {sha256(data)}, expected {PENDIGITS_SHA256[path.name]}). {FIX}") from None
    digits = parse_unipen(text, path)
    if not digits:
        raise DataError(f"{path}: holds no digits. {FIX}")
    if verify and sha256(data) != PENDIGITS_SHA256[path.name]:
        raise DataError(
            f"{path}: sha256 {sha256(data)}, expected {PENDIGITS_SHA256[path.name]}: it parses ({len(digits)} digits), but it is not the official file (cut short, or edited). {FIX}"
        )
    return digits
