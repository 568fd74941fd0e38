"""MNIST IDX and FSDD WAV parsing: valid files load, damaged ones fail with the file and the fault named."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

from racmkd.data.fsdd import load_fsdd, parse_wav, recordings_digest, release_manifest
from racmkd.data.mnist import find_idx, load_mnist, parse_idx, read_idx_bytes
from racmkd.data.paths import DataError, data_root


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def wav_bytes(samples: np.ndarray, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    wavfile.write(buffer, rate, samples)
    return buffer.getvalue()


def test_idx_round_trip_plain_and_gzip(tmp_path: Path, shared_root: Path) -> None:
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    data = idx_bytes(images)
    (tmp_path / "x-idx3-ubyte").write_bytes(data)
    (tmp_path / "y-idx3-ubyte.gz").write_bytes(gzip.compress(data))
    for path in (tmp_path / "x-idx3-ubyte", tmp_path / "y-idx3-ubyte.gz"):
        parsed = parse_idx(read_idx_bytes(path), path, hashlib.sha256(data).hexdigest())
        assert parsed.shape == (2, 28, 28) and np.array_equal(parsed, images)
    real = read_idx_bytes(shared_root / "mnist" / "t10k-images-idx3-ubyte.gz")[:16]
    assert data[:4] == real[:4] and data[8:16] == real[8:16]  # the files made here are laid out as the real ones (magic, rows, columns)
    assert parse_idx(idx_bytes(np.array([3, 1, 4])), Path("l")).tolist() == [3, 1, 4]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\x00\x0d\x03" + b"\x00" * 12, "magic number"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "header truncated"),
        (bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x01" * 7, r"truncated: header announces dims \[10\]"),
        (bytes([0, 0, 8, 1]) + struct.pack(">I", 2) + b"\x01" * 5, "longer than its header says"),
        (b"\x00", "too short"),
    ],
)
def test_idx_faults_are_named(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(content)
    for checksum in (None, "0" * 64):  # with a checksum expected too (as every real load does), the fault is still named
        with pytest.raises(DataError, match=message) as err:
            parse_idx(read_idx_bytes(path), path, checksum)
        assert str(path) in str(err.value)


def test_gzip_corruption_checksum_and_missing_file(tmp_path: Path) -> None:
    good = idx_bytes(np.zeros((1, 28, 28)))
    broken = tmp_path / "broken-idx3-ubyte.gz"
    broken.write_bytes(gzip.compress(good)[:-9])
    with pytest.raises(DataError, match="not a valid gzip file"):
        read_idx_bytes(broken)
    with pytest.raises(DataError, match="sha256 of the decompressed content"):
        parse_idx(good, Path("f"), "0" * 64)
    with pytest.raises(DataError, match="file not found"):
        find_idx(tmp_path, "train-images-idx3-ubyte")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").mkdir()  # a folder under a data file's name
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: unreadable .*racmkd data --download"):
        read_idx_bytes(tmp_path / "t10k-labels-idx1-ubyte.gz")


def test_real_mnist_loads_with_checksums(shared_root: Path) -> None:
    images, labels = load_mnist(shared_root / "mnist", "test")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert images.dtype == np.uint8 and set(np.unique(labels)) == set(range(10))


def test_wav_parsing_and_faults(tmp_path: Path) -> None:
    samples = (np.sin(np.arange(800) / 5) * 1000).astype(np.int16)
    rate, parsed = parse_wav(wav_bytes(samples), Path("ok.wav"))
    assert rate == 8000 and np.array_equal(parsed, samples)
    with pytest.raises(DataError, match=r"bad\.wav: not a readable WAV"):
        parse_wav(b"RIFF\x00\x00junk", Path("bad.wav"))
    with pytest.raises(DataError, match="2 channels, expected mono"):
        parse_wav(wav_bytes(np.zeros((100, 2), dtype=np.int16)), Path("stereo.wav"))
    with pytest.raises(DataError, match="expected 16-bit PCM"):
        parse_wav(wav_bytes(np.zeros(100, dtype=np.float32)), Path("float.wav"))
    with pytest.raises(DataError, match="short.wav: not a readable WAV file .*EOF"):  # a header promising more than came
        parse_wav(wav_bytes(samples)[:100], Path("short.wav"))
    for cut in (16, 30, 40):  # the file ends inside its header: scipy raises struct.error and kin
        with pytest.raises(DataError, match="cut.wav: not a readable WAV file"):
            parse_wav(wav_bytes(samples)[:cut], Path("cut.wav"))
    for start, width in ((22, 2), (36, 2)):  # channels 0 (scipy divides by it); the data chunk's tag gone (scipy's UnboundLocalError)
        garbled = bytearray(wav_bytes(samples))
        garbled[start : start + width] = bytes(width)
        with pytest.raises(DataError, match="garbled.wav: not a readable WAV file"):
            parse_wav(bytes(garbled), Path("garbled.wav"))
    riff = wav_bytes(samples)  # an extra chunk, as editors and recorders write them, is fine
    with_cue = riff[:12] + b"cue " + (4).to_bytes(4, "little") + (0).to_bytes(4, "little") + riff[12:]
    with_cue = with_cue[:4] + (len(with_cue) - 8).to_bytes(4, "little") + with_cue[8:]
    assert np.array_equal(parse_wav(with_cue, Path("cue.wav"))[1], samples)
    # Written as a stream (FFmpeg to a pipe): the RIFF and data sizes unknown to the writer, 0xFFFFFFFF or
    # 0; it was refused as truncated. Read to the file's end, in whole frames (a stray byte left over).
    data_at = riff.index(b"data")
    for unknown in (0xFFFFFFFF, 0):
        streamed = bytearray(with_cue + b"\x01")
        streamed[4:8] = unknown.to_bytes(4, "little")
        at = data_at + len(with_cue) - len(riff)
        streamed[at + 4 : at + 8] = unknown.to_bytes(4, "little")
        assert np.array_equal(parse_wav(bytes(streamed), Path("streamed.wav"))[1], samples), unknown
    # An empty data chunk in a file whose RIFF size is right is empty, not a stream: what follows it is no audio.
    empty = riff[:data_at] + b"data" + bytes(4) + b"LIST" + (16).to_bytes(4, "little") + bytes(16)
    empty = empty[:4] + (len(empty) - 8).to_bytes(4, "little") + empty[8:]
    with pytest.raises(DataError, match="no samples"):
        parse_wav(empty, Path("empty.wav"))


def test_fsdd_folder_checks(tmp_path: Path) -> None:
    folder = tmp_path / "recordings"
    folder.mkdir()
    (folder / "3_alice_7.wav").write_bytes(wav_bytes(np.ones(400, dtype=np.int16)))
    recs = load_fsdd(folder, expected_sha256=None)
    assert [(r.digit, r.speaker, r.index, len(r.samples)) for r in recs] == [(3, "alice", 7, 400)]
    digest = recordings_digest([("3_alice_7.wav", (folder / "3_alice_7.wav").read_bytes())])
    assert load_fsdd(folder, expected_sha256=digest)[0].name == "3_alice_7.wav"
    with pytest.raises(DataError, match=r"do not match FSDD.*missing 0_george_0\.wav, .* and 2995 more; not in the release: 3_alice_7\.wav"):
        load_fsdd(folder)
    (folder / "3_alice_8.wav").write_bytes(wav_bytes(np.ones(400, dtype=np.int16), rate=16000))
    with pytest.raises(DataError, match=r"3_alice_8\.wav: sample rate 16000 Hz"):
        load_fsdd(folder, expected_sha256=None)
    (folder / "3_alice_8.wav").unlink()
    (folder / "3_alice_9.wav").symlink_to(tmp_path / "gone.wav")  # a link to nothing
    with pytest.raises(DataError, match=r"3_alice_9\.wav: unreadable .*racmkd data --download"):
        load_fsdd(folder, expected_sha256=None)
    (folder / "3_alice_9.wav").unlink()
    (folder / "notes.wav").write_bytes(b"")
    with pytest.raises(DataError, match=r"notes\.wav: name does not follow"):
        load_fsdd(folder, expected_sha256=None)
    with pytest.raises(DataError, match="folder not found"):
        load_fsdd(tmp_path / "nowhere")


def test_real_fsdd_matches_the_release(shared_root: Path, tmp_path: Path) -> None:
    recs = load_fsdd(shared_root / "fsdd" / "recordings")  # the release's digest holds ...
    assert len(recs) == 3000
    # ... and so does each file's line
    assert release_manifest() == {r.name: hashlib.sha256((shared_root / "fsdd" / "recordings" / r.name).read_bytes()).hexdigest()[:16] for r in recs}
    # One recording missing, one changed in place (still a valid recording): each named.
    copy = tmp_path / "recordings"
    copy.mkdir()
    for rec in recs:
        (copy / rec.name).write_bytes((shared_root / "fsdd" / "recordings" / rec.name).read_bytes())
    (copy / "7_theo_12.wav").unlink()
    with pytest.raises(DataError, match=r"missing 7_theo_12\.wav\. Re-download"):
        load_fsdd(copy)
    changed = next(r for r in recs if r.name == "2_lucas_30.wav")
    (copy / changed.name).write_bytes(wav_bytes(np.clip(changed.samples.astype(np.int32) + 1, -32768, 32767).astype(np.int16)))
    with pytest.raises(DataError, match=r"missing 7_theo_12\.wav; content differs from the release: 2_lucas_30\.wav\. Re-download"):
        load_fsdd(copy)
    assert len({r.speaker for r in recs}) == 6 and {r.index for r in recs} == set(range(50))


def test_data_root_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import racmkd.data.paths as paths

    assert data_root(str(tmp_path)) == tmp_path
    monkeypatch.setenv("RACMKD_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("RACMKD_DATA")
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "elsewhere" / "checkout")
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    assert data_root() == Path("data")  # nothing beside: ./data
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert data_root().resolve() == (tmp_path / "shared" / "data").resolve()
