"""Fetch the datasets from their official sources onto a user's machine, checked by sha256.

Nothing here runs unless asked (`racmkd data --download`): the pipeline never downloads behind
the user's back. Every file lands through a temporary name and a rename, after its check.
"""

from __future__ import annotations

import gzip
import http.client
import io
import tarfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from racmkd.data.fsdd import FSDD_RECORDINGS_SHA256, NAME, recordings_digest
from racmkd.data.mnist import MNIST_SHA256
from racmkd.data.pendigits import PENDIGITS_SHA256
from racmkd.data.paths import DataError
from racmkd.utils import atomic_write_bytes, building_folder, byte_progress, put_back_aside, sha256

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",  # the mirror torchvision uses
    "http://yann.lecun.com/exdb/mnist/",  # the official page (often rate-limited)
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
FSDD_ARCHIVE = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz"
# The UCI repository's raw (UNIPEN) pen digits, compressed by Unix compress (.Z); saved uncompressed under the names racmkd reads.
PENDIGITS_UCI = "https://archive.ics.uci.edu/ml/machine-learning-databases/pendigits/"
PENDIGITS_FILES = {"pendigits-train.unipen": "pendigits-orig.tra.Z", "pendigits-test.unipen": "pendigits-orig.tes.Z"}
LZW_MAGIC = b"\x1f\x9d"  # a .Z file's first bytes


def fetch(url: str, timeout: float = 60.0) -> bytes:
    """The bytes at `url` (http, https or file), with a progress bar; errors name the URL."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - URLs are ours or the user's
            total = int(response.headers.get("Content-Length") or 0) or None
            chunks = []
            with byte_progress(f"download {url.rsplit('/', 1)[-1]}", total) as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    chunks.append(chunk)
                    bar.update(len(chunk))
            data = b"".join(chunks)
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as err:  # HTTPException: a connection dropped mid-body (IncompleteRead)
        raise DataError(f"{url}: download failed ({type(err).__name__}: {err}). Check the network or fetch the file by hand.") from None
    if total is not None and len(data) != total:
        raise DataError(f"{url}: download truncated ({len(data)} of {total} bytes). Try again.")
    return data


def download_mnist(root: Path, mirrors: Sequence[str] = MNIST_MIRRORS, expected: dict[str, str] = MNIST_SHA256) -> list[Path]:
    """Fetch the four MNIST files into root/mnist/, trying each mirror in turn; each must match
    its sha256 (of the decompressed content) before it is kept. A valid file already there is kept,
    gzipped or plain (the loader reads both; a plain one beside a .gz is not what it reads)."""
    target = root / "mnist"
    saved = []
    for name, wanted in expected.items():
        path, plain = target / f"{name}.gz", target / name
        if _holds(path, wanted) or (not path.exists() and _holds(plain, wanted, gzipped=False)):
            saved.append(path if path.exists() else plain)
            continue
        errors = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + f"/{name}.gz"
            try:
                data = fetch(url)
                digest = sha256(_gunzip(data, url))  # (a Path of the URL read http:/host...)
            except DataError as err:
                errors.append(str(err))
                continue
            if digest != wanted:
                errors.append(f"{url}: sha256 {digest}, expected {wanted}")
                continue
            atomic_write_bytes(path, data)
            saved.append(path)
            break
        else:
            raise DataError(f"{path}: no mirror gave a valid copy:\n  " + "\n  ".join(errors))
    return saved


def download_pendigits(
    root: Path, base_url: str = PENDIGITS_UCI, files: dict[str, str] = PENDIGITS_FILES, expected: dict[str, str] = PENDIGITS_SHA256
) -> list[Path]:
    """Fetch the pen digits' two UNIPEN files into root/pendigits/, uncompressed, each kept once its
    content matches its sha256 (nothing is fetched for a file there that already does)."""
    target = root / "pendigits"
    saved = []
    for name, remote in files.items():
        path, url = target / name, base_url.rstrip("/") + "/" + remote
        if path.is_file() and sha256(path.read_bytes()) == expected[name]:
            saved.append(path)
            continue
        data = fetch(url)
        content = _uncompress_lzw(data, url) if data.startswith(LZW_MAGIC) else data
        digest = sha256(content)
        if digest != expected[name]:
            raise DataError(f"{url}: content sha256 {digest}, expected {expected[name]}; nothing was written. Try the download again.")
        atomic_write_bytes(path, content)
        saved.append(path)
    return saved


def _uncompress_lzw(data: bytes, source: str) -> bytes:
    """The content of a .Z file (Unix compress: LZW), which neither gzip nor zlib read in Python."""
    import unlzw3

    try:
        return unlzw3.unlzw(data)
    except (ValueError, IndexError, TypeError) as err:  # (what unlzw3 raises on a damaged stream)
        raise DataError(f"{source}: not a valid .Z (compress) file ({err})") from None


def _holds(path: Path, wanted: str, gzipped: bool = True) -> bool:
    """Whether `path` is a gzip file (or, not `gzipped`, a plain one) whose content hashes to
    `wanted`. A damaged one (the reason a loader sent the user here) is not an error: it is fetched
    again."""
    try:
        data = path.read_bytes()
        return sha256(_gunzip(data, path) if gzipped else data) == wanted
    except (OSError, DataError):
        return False


def download_fsdd(root: Path, url: str = FSDD_ARCHIVE, expected_sha256: str = FSDD_RECORDINGS_SHA256) -> Path:
    """Fetch the FSDD release archive and unpack its recordings into root/fsdd/recordings/ once
    the whole set matches `expected_sha256` (nothing is fetched when the recordings there already
    do). The folder is replaced whole: files of one's own kept in it go with it."""

    def recording(member: str) -> str | None:
        path = Path(member)
        return path.name if path.parent.name == "recordings" else None

    return install_from_archive(
        url, root / "fsdd" / "recordings", recording, expected_sha256, "recordings/*.wav files", lambda name: "/" not in name and bool(NAME.match(name))
    )


def install_from_archive(url: str, target: Path, pick: Callable[[str], str | None], expected_sha256: str, what: str, counts: Callable[[str], bool]) -> Path:
    """Fetch the tar archive at `url` and install, as the folder `target`, the set's files: those
    `pick` places (a member's path in the archive -> its path under `target`, or None to leave it
    out) and `counts` (by path under `target`) takes for the set's, once together they match
    `expected_sha256` (`recordings_digest` of (path under target, content));
    nothing is fetched when the files in `target` that `counts` already match
    (a note of one's own kept beside them is not a reason to fetch the set again). The old folder is set
    aside, not deleted, until the new one is in place, through `building_folder`: an install killed
    outright leaves no hidden copy that stays (the next install removes it), and one killed between
    the two renames has its old folder put back by the next call, before anything is fetched.
    Datasets of many small files (FSDD's recordings, a sensor's readings) come this way."""
    put_back_aside(target, target.parent / f".{target.name}.old")
    if _folder_matches(target, expected_sha256, counts):
        return target
    data = fetch(url)
    files: list[tuple[str, bytes]] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            for member in archive:
                name = pick(member.name) if member.isfile() else None
                if name is None or not counts(name):
                    continue
                if Path(name).is_absolute() or ".." in Path(name).parts:
                    raise DataError(f"{url}: member {member.name!r} would land outside {target}; nothing was written.")
                handle = archive.extractfile(member)
                if handle is not None:
                    files.append((name, handle.read()))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:  # (zlib.error: a member's deflate data damaged)
        raise DataError(f"{url}: not a readable tar archive ({err}). Try the download again.") from None
    if not files:
        raise DataError(f"{url}: the archive holds no {what}")
    digest = recordings_digest(files)
    if digest != expected_sha256:
        raise DataError(f"{url}: the {len(files)} files have digest {digest}, expected {expected_sha256}; nothing was written.")
    with building_folder(target) as staging:  # (a disk that fills up partway, or Ctrl-C: no half-copy, the old set as it was)
        for name, content in files:
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(content)
    return target


def _folder_matches(folder: Path, expected_sha256: str, counts: Callable[[str], bool]) -> bool:
    """Whether the files in `folder` that `counts` (by path under it, at any depth) have the digest `expected_sha256`."""
    if not folder.is_dir():
        return False
    try:
        paths = [(p.relative_to(folder).as_posix(), p) for p in folder.rglob("*") if p.is_file()]
        files = [(name, p.read_bytes()) for name, p in paths if counts(name)]
    except OSError:
        return False
    return bool(files) and recordings_digest(files) == expected_sha256


def _gunzip(data: bytes, source: str | Path) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{source}: not a valid gzip file ({err})") from None
