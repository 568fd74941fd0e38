"""Delta updates: ship only what changed between two versions of a model.

A delta is the new version compressed with zstd using the old version as a raw-content dictionary
(what `zstd --patch-from` does): whatever the two share, tensors a fine-tune left alone, costs a
few bytes of back-references, so a fine-tune of the classifier head ships roughly the head. The
delta names the sha256 of the base it applies to and of the result it must produce; applying it
checks both, so a corrupted or misapplied delta is refused instead of installed.

    header (one JSON line): {"format": "racmkd-delta/1", "base_sha256", "target_sha256", "window_log"}
    body: zstd frame
"""

from __future__ import annotations

import json
import math

import zstandard as zstd

from racmkd.utils import sha256

FORMAT = "racmkd-delta/1"


class DeltaError(ValueError):
    """A delta is malformed, meant for another base, or does not produce the promised bytes."""


def _window_log(base: bytes, target: bytes) -> int:
    return max(10, min(31, math.ceil(math.log2(len(base) + len(target) + 1))))


def make_delta(base: bytes, target: bytes, level: int = 19) -> bytes:
    """The delta that turns `base` into `target`."""
    window = _window_log(base, target)
    params = zstd.ZstdCompressionParameters.from_level(level, window_log=window, enable_ldm=True)
    body = zstd.ZstdCompressor(dict_data=zstd.ZstdCompressionDict(base, dict_type=zstd.DICT_TYPE_RAWCONTENT), compression_params=params).compress(target)
    header = json.dumps({"format": FORMAT, "base_sha256": sha256(base), "target_sha256": sha256(target), "window_log": window}).encode()
    return header + b"\n" + body


def delta_header(delta: bytes) -> dict[str, object]:
    """The delta's header (which base, which result), checked field by field."""
    line, sep, _ = delta.partition(b"\n")
    try:
        header = json.loads(line)
    except (ValueError, RecursionError):  # (nested too deep to read: not ours either)
        header = None
    if not sep or not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DeltaError(f"not a {FORMAT} delta")
    for key in ("base_sha256", "target_sha256"):
        if not isinstance(header.get(key), str) or len(header[key]) != 64:
            raise DeltaError(f"delta header: {key} is not a sha256")
    if not isinstance(header.get("window_log"), int) or not 10 <= header["window_log"] <= 31:
        raise DeltaError("delta header: window_log must be an integer in [10, 31]")
    return header


def apply_delta(base: bytes, delta: bytes, max_bytes: int | None = None) -> bytes:
    """`target` from `base` and the delta; raises DeltaError when the base is not the one the delta
    was made from, the result would exceed `max_bytes` (the size the signed manifest promises), or
    it does not hash to the promised sha256."""
    header = delta_header(delta)
    if sha256(base) != header["base_sha256"]:
        raise DeltaError(f"this delta applies to {str(header['base_sha256'])[:12]}, not to the installed {sha256(base)[:12]}")
    body = delta.partition(b"\n")[2]
    try:
        size = zstd.frame_content_size(body)
        if max_bytes is not None and (size < 0 or size > max_bytes):
            raise DeltaError(f"the delta would produce {size} bytes, not the {max_bytes} promised")
        target = zstd.ZstdDecompressor(
            dict_data=zstd.ZstdCompressionDict(base, dict_type=zstd.DICT_TYPE_RAWCONTENT), max_window_size=2 ** int(header["window_log"])
        ).decompress(body)
    except zstd.ZstdError as err:
        raise DeltaError(f"corrupted delta ({err})") from None
    if sha256(target) != header["target_sha256"]:
        raise DeltaError(f"the patched model hashes to {sha256(target)[:12]}, not the promised {str(header['target_sha256'])[:12]}: corrupted delta")
    return target
