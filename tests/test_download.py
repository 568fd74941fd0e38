"""The download code, against small files the test makes and serves through file:// URLs."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

from racmkd.data.download import download_fsdd, download_mnist
from racmkd.data.fsdd import load_fsdd, recordings_digest
from racmkd.data.paths import DataError


def make_mirror(folder: Path, files: dict[str, bytes]) -> str:
    folder.mkdir(parents=True)
    for name, content in files.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(content))
    return folder.as_uri() + "/"


def test_mnist_download_tries_mirrors_and_checks_sha256(tmp_path: Path) -> None:
    files = {
        "tiny-images-idx3-ubyte": bytes([0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, 3, 4]),
        "tiny-labels-idx1-ubyte": bytes([0, 0, 8, 1, 0, 0, 0, 1, 7]),
    }
    expected = {name: hashlib.sha256(content).hexdigest() for name, content in files.items()}
    good = make_mirror(tmp_path / "good", files)
    tampered = make_mirror(tmp_path / "tampered", {name: content + b"x" for name, content in files.items()})
    missing = (tmp_path / "empty").as_uri() + "/"
    saved = download_mnist(tmp_path / "root", mirrors=[missing, tampered, good], expected=expected)
    assert sorted(p.name for p in saved) == sorted(f"{n}.gz" for n in files)
    assert gzip.decompress((tmp_path / "root" / "mnist" / "tiny-labels-idx1-ubyte.gz").read_bytes()) == files["tiny-labels-idx1-ubyte"]


def test_mnist_download_replaces_a_damaged_file_past_a_damaged_mirror(tmp_path: Path) -> None:
    files = {"tiny-labels-idx1-ubyte": bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 1, 4] + [0] * 64)}
    expected = {name: hashlib.sha256(content).hexdigest() for name, content in files.items()}
    good = make_mirror(tmp_path / "good", files)
    damaged = tmp_path / "damaged"
    make_mirror(damaged, files)
    gz = damaged / "tiny-labels-idx1-ubyte.gz"
    flipped = bytearray(gz.read_bytes())
    flipped[12:20] = bytes(8)  # inside the deflate stream: zlib.error, not OSError
    gz.write_bytes(bytes(flipped))
    # The user's copy is damaged in the same way: the loader sent them to `racmkd data --download`.
    local = tmp_path / "root" / "mnist" / "tiny-labels-idx1-ubyte.gz"
    local.parent.mkdir(parents=True)
    local.write_bytes(bytes(flipped))
    download_mnist(tmp_path / "root", mirrors=[damaged.as_uri() + "/", good], expected=expected)
    assert gzip.decompress(local.read_bytes()) == files["tiny-labels-idx1-ubyte"]


def test_mnist_download_keeps_valid_plain_files_without_a_mirror(tmp_path: Path) -> None:
    """The loader reads plain IDX files as well as gzipped ones: valid ones are kept, offline too
    (they were fetched again, and offline the command failed)."""
    content = bytes([0, 0, 8, 1, 0, 0, 0, 1, 7])
    expected = {"tiny-labels-idx1-ubyte": hashlib.sha256(content).hexdigest()}
    plain = tmp_path / "root" / "mnist" / "tiny-labels-idx1-ubyte"
    plain.parent.mkdir(parents=True)
    plain.write_bytes(content)
    offline = (tmp_path / "nowhere").as_uri() + "/"
    assert download_mnist(tmp_path / "root", mirrors=[offline], expected=expected) == [plain]
    plain.write_bytes(content + b"x")  # damaged: fetched again, and offline that fails
    with pytest.raises(DataError, match="no mirror gave a valid copy"):
        download_mnist(tmp_path / "root", mirrors=[offline], expected=expected)


def test_mnist_download_keeps_nothing_when_no_mirror_is_valid(tmp_path: Path) -> None:
    tampered = make_mirror(tmp_path / "tampered", {"a-idx1-ubyte": b"wrong"})
    with pytest.raises(DataError, match="no mirror gave a valid copy"):
        download_mnist(tmp_path / "root", mirrors=[tampered], expected={"a-idx1-ubyte": "0" * 64})
    assert not (tmp_path / "root" / "mnist" / "a-idx1-ubyte.gz").exists()


def make_release(path: Path, recordings: dict[str, np.ndarray]) -> list[tuple[str, bytes]]:
    contents = []
    with tarfile.open(path, "w:gz") as archive:
        for name, samples in recordings.items():
            buffer = io.BytesIO()
            wavfile.write(buffer, 8000, samples)
            data = buffer.getvalue()
            contents.append((name, data))
            info = tarfile.TarInfo(f"free-spoken-digit-dataset-1.0.10/recordings/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        readme = tarfile.TarInfo("free-spoken-digit-dataset-1.0.10/README.md")
        readme.size = 2
        archive.addfile(readme, io.BytesIO(b"hi"))
    return contents


def test_fsdd_download_unpacks_checked_recordings(tmp_path: Path) -> None:
    archive = tmp_path / "release.tar.gz"
    contents = make_release(archive, {"1_bob_0.wav": np.arange(500, dtype=np.int16), "2_bob_9.wav": -np.arange(300, dtype=np.int16)})
    target = download_fsdd(tmp_path / "root", url=archive.as_uri(), expected_sha256=recordings_digest(contents))
    recordings = load_fsdd(target, expected_sha256=recordings_digest(contents))
    assert sorted(r.name for r in recordings) == ["1_bob_0.wav", "2_bob_9.wav"]
    assert not (tmp_path / "root" / "fsdd" / "README.md").exists()
    from racmkd.utils import UMASK

    assert target.stat().st_mode & 0o777 == 0o777 & ~UMASK  # as mkdir makes a folder, not mkdtemp's 0o700 (other users read a shared root)
    archive.unlink()  # recordings already in place and valid: nothing is fetched
    assert download_fsdd(tmp_path / "root", url=archive.as_uri(), expected_sha256=recordings_digest(contents)) == target
    (target / "notes.txt").write_text("mine")  # nor for a file of one's own beside them
    assert download_fsdd(tmp_path / "root", url=archive.as_uri(), expected_sha256=recordings_digest(contents)) == target
    (target / "1_bob_0.wav").write_bytes(b"damaged")  # one damaged: fetched again, the old folder swapped out whole
    make_release(archive, {"1_bob_0.wav": np.arange(500, dtype=np.int16), "2_bob_9.wav": -np.arange(300, dtype=np.int16)})
    download_fsdd(tmp_path / "root", url=archive.as_uri(), expected_sha256=recordings_digest(contents))
    assert len(load_fsdd(target, expected_sha256=recordings_digest(contents))) == 2
    assert [p.name for p in (tmp_path / "root" / "fsdd").iterdir()] == ["recordings"]  # no staging or old folder left


def test_fsdd_download_that_fails_while_writing_leaves_no_staging_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "release.tar.gz"
    contents = make_release(archive, {"1_bob_0.wav": np.arange(500, dtype=np.int16), "2_bob_9.wav": -np.arange(300, dtype=np.int16)})
    real_write = Path.write_bytes
    written = []

    def disk_full_at_the_second_file(path: Path, data: bytes) -> int:
        if written:
            raise OSError(28, "No space left on device")
        written.append(path)
        return real_write(path, data)

    monkeypatch.setattr(Path, "write_bytes", disk_full_at_the_second_file)
    with pytest.raises(OSError, match="No space left"):
        download_fsdd(tmp_path / "root", url=archive.as_uri(), expected_sha256=recordings_digest(contents))
    assert written and written[0].parent.name.startswith(".recordings.")  # it failed partway through the staging folder
    assert not (tmp_path / "root" / "fsdd").exists()  # which is gone, as the folder made for it, and no recordings were installed
    monkeypatch.undo()
    # Recordings already there are set aside before the new ones move in: when that move fails, they come back.
    installed = download_fsdd(tmp_path / "root", url=archive.as_uri(), expected_sha256=recordings_digest(contents))
    (installed / "1_bob_0.wav").write_bytes(b"damaged")  # (else nothing is fetched: they match)
    before = {p.name: p.read_bytes() for p in installed.iterdir()}
    real_replace = os.replace

    def staging_stuck(source: str | Path, target: str | Path) -> None:
        if Path(source).name.startswith(".recordings.") and Path(source).name.endswith(".partial"):
            raise OSError(5, "Input/output error")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", staging_stuck)
    with pytest.raises(OSError, match="Input/output"):
        download_fsdd(tmp_path / "root", url=archive.as_uri(), expected_sha256=recordings_digest(contents))
    assert {p.name: p.read_bytes() for p in installed.iterdir()} == before and [p.name for p in installed.parent.iterdir()] == ["recordings"]


def test_an_install_killed_outright_is_tidied_and_its_old_set_put_back_by_the_next(tmp_path: Path) -> None:
    """kill -9 while the files were written left a hidden copy of the set for ever (one more per
    killed FSDD download); between the two renames, the set was gone, its old copy hidden, and the
    next command fetched it again. The next install puts the old set back before fetching anything,
    and removes a dead installer's half-copy."""
    import subprocess
    import sys

    from racmkd import utils

    archive = tmp_path / "release.tar.gz"
    contents = make_release(archive, {"1_bob_0.wav": np.arange(500, dtype=np.int16)})
    installed = download_fsdd(tmp_path / "root", url=archive.as_uri(), expected_sha256=recordings_digest(contents))
    before = {p.name: p.read_bytes() for p in installed.iterdir()}
    ended = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True).stdout)
    half = installed.parent / f".recordings.{ended}-{utils._HOST}-abc123.partial"  # a killed install's half-copy
    half.mkdir()
    (half / "1_bob_0.wav").write_bytes(b"half")
    os.replace(installed, installed.parent / ".recordings.old")  # killed between the renames: the set aside
    again = download_fsdd(tmp_path / "root", url=(tmp_path / "absent.tar.gz").as_uri(), expected_sha256=recordings_digest(contents))  # nothing to fetch
    assert {p.name: p.read_bytes() for p in again.iterdir()} == before
    (again / "1_bob_0.wav").write_bytes(b"damaged")
    download_fsdd(tmp_path / "root", url=archive.as_uri(), expected_sha256=recordings_digest(contents))
    assert {p.name: p.read_bytes() for p in again.iterdir()} == before and [p.name for p in again.parent.iterdir()] == ["recordings"]


def test_fsdd_download_refuses_a_mismatch_and_a_broken_archive(tmp_path: Path) -> None:
    archive = tmp_path / "release.tar.gz"
    make_release(archive, {"1_bob_0.wav": np.arange(500, dtype=np.int16)})
    with pytest.raises(DataError, match="nothing was written"):
        download_fsdd(tmp_path / "root", url=archive.as_uri(), expected_sha256="0" * 64)
    assert not (tmp_path / "root" / "fsdd" / "recordings").exists()
    (tmp_path / "broken.tar.gz").write_bytes(archive.read_bytes()[:100])
    with pytest.raises(DataError, match="not a readable tar archive"):
        download_fsdd(tmp_path / "root", url=(tmp_path / "broken.tar.gz").as_uri(), expected_sha256="0" * 64)
    with pytest.raises(DataError, match="download failed"):
        download_fsdd(tmp_path / "root", url=(tmp_path / "absent.tar.gz").as_uri())
    # Damaged deflate data inside a member (a bad mirror; the length is right): zlib.error, which
    # reached the user as a traceback.
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as archive:
        data = np.random.default_rng(0).bytes(200_000)  # (past what tarfile reads ahead to open it)
        info = tarfile.TarInfo("free-spoken-digit-dataset-1.0.10/recordings/1_bob_0.wav")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    gzipped = zlib.compressobj(wbits=31)  # (a gzip stream)
    damaged = gzipped.compress(plain.getvalue()[:100_000]) + gzipped.flush(zlib.Z_FULL_FLUSH) + b"\x07" + bytes(64)  # (block type 3: invalid)
    (tmp_path / "damaged.tar.gz").write_bytes(damaged)
    with pytest.raises(DataError, match="not a readable tar archive .*invalid block type"):
        download_fsdd(tmp_path / "root", url=(tmp_path / "damaged.tar.gz").as_uri(), expected_sha256="0" * 64)


def test_an_archive_member_that_would_land_outside_the_folder_is_refused(tmp_path: Path) -> None:
    from racmkd.data.download import install_from_archive

    (tmp_path / "a.txt").write_text("x")
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "a.txt", arcname="top/a.txt")
    for name in ("../escaped.txt", "/tmp/escaped.txt"):
        with pytest.raises(DataError, match="would land outside"):
            install_from_archive(archive.as_uri(), tmp_path / "root" / "set", lambda member, name=name: name, "0" * 64, "files", lambda n: True)
    assert not (tmp_path / "root" / "escaped.txt").exists() and not (tmp_path / "root" / "set").exists()
