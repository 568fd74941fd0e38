"""Cloud-fog-edge deployment on loopback: signing, deltas, the registry, the device store, the tier
servers (real uvicorn and a real Mosquitto broker), offloading and telemetry."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from fastapi import HTTPException, Request
from fastapi.testclient import TestClient
from onnx import numpy_helper

from racmkd.config import ConfigError, ServeConfig, load_config
from racmkd.deploy.loopback import ServerProcess, free_port, wait_http
from racmkd.deploy.delta import DeltaError, apply_delta, make_delta
from racmkd.utils import UMASK, sha256
from racmkd.deploy.device import DeviceStore, StoreError, UpdateFailed, UpdateRefused
from racmkd.deploy.orchestrator import device_fit, plan, push
from racmkd.deploy.registry import ModelRegistry, RegistryError, pack
from racmkd.deploy.server import EdgeService, ModelService, create_app, parse_request, read_npy
from racmkd.deploy.signing import SignatureError, generate_keypair, load_private_key, load_public_key, sign, verify
from racmkd.deploy.telemetry import FleetWatcher
from racmkd.resources.devices import device_names, load_device

TOKEN = "test-token"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys"))


def fine_tuned_head(bank: Path, out: Path) -> tuple[Path, int]:
    """A copy of the bank as a fine-tune of the classifier heads would leave it: the last layer of
    every variant changed, everything else as it was. Also the bytes of weights changed."""
    shutil.copytree(bank, out)
    changed = 0
    for f in sorted(out.glob("*.onnx")):
        model = onnx.load(f)
        last = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul", "Conv")][-1]
        init = next(i for i in model.graph.initializer if i.name == last.input[1])
        weights = numpy_helper.to_array(init) * 1.01
        init.CopyFrom(numpy_helper.from_array(weights, init.name))
        changed += weights.nbytes
        onnx.save(model, f)
    return out, changed


# Signing, deltas, registry ------------------------------------------------------------------------------


def test_signatures_refuse_any_change(keys: tuple[Path, Path]) -> None:
    private, public = load_private_key(keys[0]), load_public_key(keys[1])
    manifest = {"name": "edge", "version": 3, "sha256": "ab" * 32, "metrics": {"accuracy": 0.97}}
    signature = sign(manifest, private)
    verify(dict(reversed(list(manifest.items()))), signature, public)  # key order does not matter
    for changed in ({**manifest, "version": 4}, {**manifest, "sha256": "cd" * 32}, {**manifest, "metrics": {"accuracy": 0.99}}):
        with pytest.raises(SignatureError, match="bad signature"):
            verify(changed, signature, public)
    with pytest.raises(SignatureError):
        verify(manifest, "00" * 64, public)
    nested: list = []
    for _ in range(5000):  # deeper than json can write out: refused, not a RecursionError (a 500 at /deploy)
        nested = [nested]
    with pytest.raises(SignatureError, match="bad signature"):
        verify({**manifest, "notes": nested}, signature, public)
    with pytest.raises(SignatureError, match="refusing to overwrite"):
        generate_keypair(keys[0].parent)
    assert oct(keys[0].stat().st_mode & 0o777) == "0o600"
    assert oct(keys[1].stat().st_mode & 0o777) == oct(0o666 & ~UMASK)  # the public key readable as any file (a container's user)


def test_deltas_are_small_exact_and_checked(bank_dir: Path, tmp_path: Path) -> None:
    base, _ = pack(bank_dir)
    fine_tuned, changed = fine_tuned_head(bank_dir, tmp_path / "v2")
    target, _ = pack(fine_tuned)
    delta = make_delta(base, target)
    assert apply_delta(base, delta) == target
    assert len(delta) < 1.2 * changed + 2048 and len(delta) < 0.25 * len(target)  # only the heads changed: about their bytes
    with pytest.raises(DeltaError, match="applies to"):
        apply_delta(target, delta)  # the wrong base
    corrupted = bytearray(delta)
    corrupted[-20] ^= 0xFF
    with pytest.raises(DeltaError):
        apply_delta(base, bytes(corrupted))
    for garbage in (b"garbage", b"[" * 100_000 + b"\n"):  # (the second nested past json's depth)
        with pytest.raises(DeltaError, match="not a racmkd-delta"):
            apply_delta(base, garbage)


def test_a_blob_pruned_while_its_release_registers_is_written_again(
    bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prune between a registration's blob and its row took the blob as no release's once the
    clock had stepped forward past the grace: the release was registered with no bytes to ship."""
    registry, key = ModelRegistry(tmp_path / "registry"), load_private_key(keys[0])
    write_blob = registry.put_blob

    def prune_meanwhile(data: bytes) -> str:
        digest = write_blob(data)
        assert registry.prune(keep=1, grace_s=-60)["blobs"] == [digest]  # (the clock a minute past the grace)
        return digest

    monkeypatch.setattr(registry, "put_blob", prune_meanwhile)
    release = registry.register(bank_dir, "edge", key)
    assert registry.blob(release.sha256) == pack(bank_dir)[0]


def test_a_registry_is_pruned_to_its_newest_versions_and_the_bytes_they_need(bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    """Every version held its whole blob and every delta made stayed, without end (40 versions of a
    25 MB bank: 955 MB), and nothing removed them. `registry prune --keep N` does; a blob still
    being registered (written in the last minutes) stays, and a dry run removes nothing."""
    import os

    from typer.testing import CliRunner

    from racmkd.cli import app

    registry, key = ModelRegistry(tmp_path / "registry"), load_private_key(keys[0])
    v1 = registry.register(bank_dir, "edge", key)
    v2 = registry.register(fine_tuned_head(bank_dir, tmp_path / "v2")[0], "edge", key)
    v3 = registry.register(fine_tuned_head(fine_tuned_head(bank_dir, tmp_path / "v3a")[0], tmp_path / "v3")[0], "edge", key)
    other = registry.register(bank_dir, "spare", key)  # (v1's bytes under another name: the blob stays, named)
    registry.delta(v1.sha256, v3.sha256), registry.delta(v2.sha256, v3.sha256)
    blobs = tmp_path / "registry" / "blobs"
    stray = blobs / ("0" * 64)  # a blob no release names yet: being registered
    stray.write_bytes(b"new")
    for path in blobs.iterdir():
        if path != stray:
            os.utime(path, (1.0, 1.0))  # (written long ago)
    dry = CliRunner().invoke(app, ["registry", "prune", "--keep", "1", "--root", str(tmp_path / "registry"), "--dry-run"])
    assert dry.exit_code == 0 and "would remove 2 release(s): edge v1, edge v2; 1 blob(s) and 1 delta(s)" in dry.output, dry.output
    assert len(registry.releases()) == 4 and len(list(blobs.iterdir())) == 4
    pruned = registry.prune(keep=1)
    assert pruned["removed"] == ["edge v1", "edge v2"] and pruned["blobs"] == [v2.sha256] and pruned["deltas"] == [f"{v2.sha256}-{v3.sha256}.delta"]
    assert [r.label for r in registry.releases()] == ["edge v3", "spare v1"] and sorted(p.name for p in blobs.iterdir()) == sorted(
        [v1.sha256, v3.sha256, stray.name]
    )
    assert [p.name for p in (tmp_path / "registry" / "deltas").glob("*.delta")] == [
        f"{v1.sha256}-{v3.sha256}.delta"
    ]  # (its base is spare v1's bytes: still of use)
    assert registry.blob(other.sha256) and registry.blob(v3.sha256)
    assert registry.register(bank_dir, "edge", key).version == 4  # (a removed version is never given again)
    with pytest.raises(RegistryError, match="keep 0"):
        registry.prune(keep=0)


def test_registry_versions_signs_and_refuses_tampered_blobs(bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    key = load_private_key(keys[0])
    v1 = registry.register(bank_dir, "edge", key, metrics={"accuracy": 0.9})
    v2 = registry.register(fine_tuned_head(bank_dir, tmp_path / "v2")[0], "edge", key, metrics={"accuracy": 0.91})
    assert (v1.version, v2.version, v2.parent_version) == (1, 2, 1) and v2.manifest["parent"]["sha256"] == v1.sha256
    assert v1.kind == "bank" and set(v1.modalities) <= {"image", "audio"} and v1.manifest["variants"]
    verify(v2.manifest, v2.signature, load_public_key(keys[1]))
    assert registry.release("edge").version == 2 and [r.version for r in registry.releases("edge")] == [1, 2]
    assert sha256(registry.blob(v1.sha256)) == v1.sha256
    blob = tmp_path / "registry" / "blobs" / v1.sha256
    blob.write_bytes(blob.read_bytes()[:-1] + b"X")
    with pytest.raises(RegistryError, match="altered on disk"):
        registry.blob(v1.sha256)
    with pytest.raises(RegistryError, match="no release nope"):
        registry.release("nope")
    blob.write_bytes(pack(bank_dir)[0])
    # A digest a device reports names a blob only as 64 hex digits: an absolute path was read whole, from anywhere.
    for reported in (str(tmp_path / "registry" / "registry.sqlite"), "../blobs/x", v1.sha256.upper(), None):
        with pytest.raises(RegistryError, match="is not a sha256 digest"):
            registry.blob(reported)
    # A cached delta damaged on disk is made again, not sent to be refused by every device.
    cached = tmp_path / "registry" / "deltas" / f"{v1.sha256}-{v2.sha256}.delta"
    good = registry.delta(v1.sha256, v2.sha256)
    cached.write_bytes(good[:-20] + bytes(20))
    assert registry.delta(v1.sha256, v2.sha256) == good and cached.read_bytes() == good


def test_a_damaged_registry_record_is_listed_passed_over_and_removable(bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    """One record whose manifest is not JSON made `registry list`, `deploy plan` and `deploy apply`
    fail for every release, and its advice ("register it again") added a v2 beside it. It is now
    listed as damaged, passed over with the reason, and `registry remove` takes it out for good."""
    from typer.testing import CliRunner

    from racmkd.cli import app

    root, key = tmp_path / "registry", load_private_key(keys[0])
    registry = ModelRegistry(root)
    registry.register(bank_dir, "critical", key, metrics={"accuracy": 0.9}, device_fit={"pi": {"fits": True, "reason": "fits"}})
    registry.register(bank_dir, "edge", key, metrics={"accuracy": 0.8}, device_fit={"pi": {"fits": True, "reason": "fits"}})
    with sqlite3.connect(root / "registry.sqlite") as db:
        db.execute("UPDATE releases SET manifest = '{broken' WHERE name = 'critical'")
    listed = CliRunner().invoke(app, ["registry", "list", "--root", str(root)])
    assert listed.exit_code == 0 and any(line.startswith("critical") and "v1   DAMAGED" in line for line in listed.output.splitlines())
    assert "registry remove critical --version 1" in listed.output
    assert "edge" in listed.output
    assert [r.label for r in registry.latest()] == ["edge v1"]
    pi = dataclasses.replace(load_device("raspberry-pi-4"), name="pi")
    [assignment] = plan(registry, [pi], load_public_key(keys[1]))
    assert assignment.release.label == "edge v1" and any(c["release"] == "critical v1" and "damaged" in c["reason"] for c in assignment.candidates)
    with pytest.raises(RegistryError, match="registry remove critical --version 1"):
        registry.release("critical")
    removed = CliRunner().invoke(app, ["registry", "remove", "critical", "--version", "1", "--root", str(root)])
    assert removed.exit_code == 0 and "removed critical v1" in removed.output
    assert registry.register(bank_dir, "critical", key).version == 2  # v1 is never given again: a device may have installed it
    assert "DAMAGED" not in CliRunner().invoke(app, ["registry", "list", "--root", str(root)]).output


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        ("""json_set(manifest, '$.metrics', json('[1]'))""", "metrics must be a mapping"),
        ("""json_set(manifest, '$.metrics.accuracy', '0.99')""", "metrics.accuracy must be a number in"),
        ("""json_set(manifest, '$.sha256', 5)""", "sha256 must be 64 lowercase hex digits"),
        ("""json_set(manifest, '$.bytes', 'x')""", "bytes must be a whole number"),
        ("""json_set(manifest, '$.device_fit.pi', json('{"fits": true}'))""", "device_fit must map each device"),
    ],
)
def test_a_record_whose_manifest_fields_were_edited_is_listed_as_damaged_not_a_traceback(
    bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path, edit: str, reason: str
) -> None:
    """`registry list` and `deploy plan` read these fields unchecked: an AttributeError or TypeError
    traceback, or `error: 'reason'`, for the whole registry."""
    from typer.testing import CliRunner

    from racmkd.cli import app

    root, key = tmp_path / "registry", load_private_key(keys[0])
    registry = ModelRegistry(root)
    registry.register(bank_dir, "critical", key, metrics={"accuracy": 0.9}, device_fit={"pi": {"fits": True, "reason": "fits"}})
    registry.register(bank_dir, "edge", key, metrics={"accuracy": 0.8}, device_fit={"pi": {"fits": True, "reason": "fits"}})
    with sqlite3.connect(root / "registry.sqlite") as db:
        db.execute(f"UPDATE releases SET manifest = {edit} WHERE name = 'critical'")
    listed = CliRunner().invoke(app, ["registry", "list", "--root", str(root)])
    assert listed.exit_code == 0 and "critical         v1   DAMAGED" in listed.output and reason in listed.output, listed.output
    pi = dataclasses.replace(load_device("raspberry-pi-4"), name="pi")
    for key_given in (None, load_public_key(keys[1])):
        [assignment] = plan(registry, [pi], key_given)
        assert assignment.release.label == "edge v1"


def test_versions_are_read_from_the_signed_manifests_and_lost_records_are_not_started_again(bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    """A version column edited by hand (7, or 'x') picked "the latest" for `deploy push NAME` (or
    crashed `registry add` with a TypeError); a registry.sqlite deleted beside its blobs started the
    versions again at 1, which every device refuses as a replay."""
    from typer.testing import CliRunner

    from racmkd.cli import app

    root, key = tmp_path / "registry", load_private_key(keys[0])
    registry = ModelRegistry(root)
    registry.register(bank_dir, "critical", key)
    registry.register(fine_tuned_head(bank_dir, tmp_path / "v2")[0], "critical", key)
    with sqlite3.connect(root / "registry.sqlite") as db:
        db.execute("UPDATE releases SET version = 7 WHERE name = 'critical' AND version = 1")
    assert registry.release("critical").version == 2  # not the record whose column says 7
    listed = CliRunner().invoke(app, ["registry", "list", "--root", str(root)]).output
    assert "critical         v1   ALTERED: its record's version disagree" in listed and "registry remove critical --version 1" in listed
    with pytest.raises(RegistryError, match=r"critical v1: its record's version disagree with its signed manifest"):
        registry.release("critical", 1)
    assert registry.register(bank_dir, "critical", key).version == 8  # above every version a record holds, column or signed
    with sqlite3.connect(root / "registry.sqlite") as db:
        db.execute("UPDATE releases SET version = 'x' WHERE name = 'critical' AND version = 8")
    assert registry.register(bank_dir, "critical", key).version == 9
    assert registry.remove("critical", 1).version == 1  # named by the version listed, whatever its column says
    assert [r.version for r in registry.releases("critical")] == [2, 9, 8]
    assert registry.release("critical").version == 9
    with sqlite3.connect(root / "registry.sqlite") as db:
        db.execute("UPDATE releases SET bytes = 1 WHERE name = 'critical' AND version = 9")
    with pytest.raises(RegistryError, match=r"critical v9: its record's bytes disagree"):  # the newest refused, not an older one sent in its place
        registry.release("critical")
    for name in ("registry.sqlite", "registry.sqlite-wal", "registry.sqlite-shm"):
        (root / name).unlink(missing_ok=True)
    with pytest.raises(RegistryError, match=r"registry\.sqlite: missing, but .*blobs holds \d+ blob\(s\): the registry's records were lost"):
        ModelRegistry(root)
    with pytest.raises(RegistryError, match="the registry's records were lost"):
        ModelRegistry(root, create=False)
    assert not (root / "registry.sqlite").exists()


def test_deploy_apply_refuses_a_fleet_name_no_topic_can_hold_before_connecting(tmp_path: Path) -> None:
    """`--fleet-name '#'` ended in paho's traceback, then a false "broker did not answer" note;
    `a/b` matched no device, silently."""
    from typer.testing import CliRunner

    from racmkd.cli import app

    for name in ("#", "a/b", "+"):
        out = CliRunner().invoke(
            app,
            ["deploy", "apply", "--fleet", str(tmp_path / "fleet.yaml"), "--root", str(tmp_path), "--mqtt-host", "127.0.0.1", "--fleet-name", name],
            env={"RACMKD_TOKEN": "secret"},
        )
        assert out.exit_code == 2 and "--fleet-name: " in out.output and "cannot be part of an MQTT topic" in out.output, out.output
    out = CliRunner().invoke(
        app, ["deploy", "apply", "--fleet", str(tmp_path / "fleet.yaml"), "--mqtt-host", "[::1", "--root", str(tmp_path)], env={"RACMKD_TOKEN": "secret"}
    )
    assert out.exit_code == 2 and "--mqtt-host: " in out.output and "an IPv6 address in brackets" in out.output, out.output
    out = CliRunner().invoke(  # a port without a broker was passed over in silence
        app, ["deploy", "apply", "--fleet", str(tmp_path / "fleet.yaml"), "--mqtt-port", "1884", "--root", str(tmp_path)], env={"RACMKD_TOKEN": "secret"}
    )
    assert out.exit_code == 2 and "--mqtt-port: the broker's port, with --mqtt-host" in out.output, out.output
    # Two ports (the address's won silently); one port written twice is fine (the fleet file is missing: said next).
    argv = ["deploy", "apply", "--fleet", str(tmp_path / "fleet.yaml"), "--root", str(tmp_path), "--mqtt-host", "127.0.0.1:1884", "--mqtt-port"]
    out = CliRunner().invoke(app, [*argv, "1885"], env={"RACMKD_TOKEN": "secret"})
    assert out.exit_code == 2 and "--mqtt-host / --mqtt-port: two ports, 1884 in --mqtt-host and 1885 in --mqtt-port: give one" in out.output, out.output
    out = CliRunner().invoke(app, [*argv, "1884"], env={"RACMKD_TOKEN": "secret"})
    assert "two ports" not in out.output and "fleet.yaml" in out.output, out.output


def test_a_registry_sqlite_cannot_open_or_write_is_told_with_the_folder_and_the_fix(
    bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only registry folder read as "not a readable registry database (unable to open
    database file); check --root" (the file was fine: WAL mode writes -shm even to read), a full
    disk during `registry add` as a bare "disk I/O error". (Made by patching: CI runs as root.)"""
    root, key = tmp_path / "registry", load_private_key(keys[0])
    registry = ModelRegistry(root)
    registry.register(bank_dir, "critical", key)
    real = sqlite3.connect

    def refusing(*args: object, **kwargs: object) -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(sqlite3, "connect", refusing)
    for call in (lambda: ModelRegistry(root, create=False), registry.releases):
        with pytest.raises(RegistryError, match=r"registry\.sqlite: unable to open database file\. .* make .*registry writable"):
            call()

    class FullDisk:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def execute(self, sql: str, *args: object) -> object:
            if sql.startswith("INSERT"):
                raise sqlite3.OperationalError("disk I/O error")
            return self.db.execute(sql, *args)

        def __getattr__(self, name: str) -> object:
            return getattr(self.db, name)

        def __enter__(self) -> FullDisk:
            self.db.__enter__()
            return self

        def __exit__(self, *exc: object) -> object:
            return self.db.__exit__(*exc)

    monkeypatch.setattr(sqlite3, "connect", lambda *args, **kwargs: FullDisk(real(*args, **kwargs)))
    with pytest.raises(RegistryError, match=r"registry\.sqlite: disk I/O error\. .*free space on its disk"):
        registry.register(bank_dir, "edge", key)
    monkeypatch.setattr(sqlite3, "connect", real)
    assert [r.label for r in registry.releases()] == ["critical v1"]


def test_a_bank_release_holds_the_files_its_bank_json_names_only(bank_dir: Path, tmp_path: Path) -> None:
    """An ONNX file left in the bank's folder by hand was signed into the release, and every device
    refused it (a variant it cannot load)."""
    import tarfile

    folder = tmp_path / "bank"
    shutil.copytree(bank_dir, folder)
    (folder / "old-backup.onnx").write_bytes(b"x")
    data, kind = pack(folder)
    names = sorted(tarfile.open(fileobj=io.BytesIO(data)).getnames())
    variants = sorted(v["path"] for v in json.loads((folder / "bank.json").read_text())["variants"])
    assert kind == "bank" and names == sorted(["bank.json", *variants]) and data == pack(bank_dir)[0]
    (folder / "bank.json").write_text("{}")
    with pytest.raises(RegistryError, match=r"bank\.json: not a readable variant bank .*racmkd edge build"):
        pack(folder)
    (folder / "bank.json").write_text(json.dumps({"variants": []}))  # (signed, only each device's health check refused it)
    with pytest.raises(RegistryError, match=r"bank\.json: names no variants; .*racmkd edge build"):
        pack(folder)


def test_a_device_store_removes_what_a_server_killed_while_staging_left(bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    """A server SIGKILLed while it staged an update left slots/.<sha>.partial, a release's bytes,
    forever (nothing ever removed it). A store that opens with the store's lock removes every work
    folder there (another container's, an old version's); one that finds the lock held by another
    store removes only those of this host's ended processes."""
    from racmkd import utils

    from test_utils import ended_pid

    slots = tmp_path / "device" / "slots"
    slots.mkdir(parents=True)
    dead = slots / f".{'a' * 64}.{ended_pid()}-{utils._HOST}-abc123.partial"
    live = slots / f".{'b' * 64}.{os.getpid()}-{utils._HOST}-def456.partial"
    elsewhere = slots / f".{'c' * 64}.{ended_pid()}-00000000-ghi789.partial"  # a container since restarted
    old = slots / f".{'d' * 64}.partial"  # an earlier version's
    for folder in (dead, live, elsewhere, old):
        folder.mkdir()
        (folder / "release.bin").write_bytes(b"half a release")
    store = DeviceStore(tmp_path / "device", load_public_key(keys[1]))
    assert sorted(p.name for p in slots.iterdir()) == []
    for folder in (dead, live, elsewhere):
        folder.mkdir()
    second = DeviceStore(tmp_path / "device", load_public_key(keys[1]))  # the lock is held: this host's ended ones only
    assert second._owner is None and sorted(p.name for p in slots.iterdir()) == sorted([live.name, elsewhere.name])
    # ...and it takes no update: two servers on one store each pruned the slot the other had just made current.
    with pytest.raises(StoreError, match="in use by another process"):
        second.install({}, "", b"")
    with pytest.raises(StoreError, match="in use by another process"):
        second.rollback()
    second.close()
    for folder in (live, elsewhere):
        folder.rmdir()
    release = ModelRegistry(tmp_path / "registry").register(bank_dir, "edge", load_private_key(keys[0]))
    store.install(release.manifest, release.signature, ModelRegistry(tmp_path / "registry").blob(release.sha256))
    assert sorted(p.name for p in slots.iterdir()) == [release.sha256]
    store.close()  # closed (an edge server shutting down), the lock goes: the next store owns it and cleans up
    (slots / old.name).mkdir()
    assert DeviceStore(tmp_path / "device", load_public_key(keys[1]))._owner is not None and sorted(p.name for p in slots.iterdir()) == [release.sha256]


def test_a_release_whose_blob_was_altered_is_marked_passed_over_and_repaired_by_adding_it_again(
    bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """`deploy plan` chose a release whose blob was altered on disk (the push then failed, and the
    next best that fits was never tried), `registry list` showed it as whole, and adding the model
    again kept the altered blob (a blob already there was never rewritten)."""
    from typer.testing import CliRunner

    from racmkd.cli import app

    root, key = tmp_path / "registry", load_private_key(keys[0])
    registry = ModelRegistry(root)
    fits = {"pi": {"fits": True, "reason": "fits"}}
    registry.register(bank_dir, "edge", key, metrics={"accuracy": 0.8}, device_fit=fits)
    better = fine_tuned_head(bank_dir, tmp_path / "v2")[0]
    high = registry.register(better, "high", key, metrics={"accuracy": 0.9}, device_fit=fits)
    blob = root / "blobs" / high.sha256
    blob.write_bytes(blob.read_bytes()[:-1] + b"X")
    pi = dataclasses.replace(load_device("raspberry-pi-4"), name="pi")
    [assignment] = plan(registry, [pi], load_public_key(keys[1]))
    assert assignment.release.label == "edge v1" and any(c["release"] == "high v1" and "altered on disk" in c["reason"] for c in assignment.candidates)
    listed = CliRunner().invoke(app, ["registry", "list", "--root", str(root)]).output
    assert any(line.startswith("high") and "BLOB DAMAGED" in line and "registry add" in line for line in listed.splitlines())
    assert not any(line.startswith("edge") and "DAMAGED" in line for line in listed.splitlines())
    assert registry.register(better, "high", key, metrics={"accuracy": 0.9}, device_fit=fits).version == 2
    assert sha256(registry.blob(high.sha256)) == high.sha256  # v1 shares the repaired blob
    [assignment] = plan(registry, [pi], load_public_key(keys[1]))
    assert assignment.release.label == "high v2"


def test_a_database_that_is_not_a_registry_is_refused_and_left_unwritten(tmp_path: Path) -> None:
    """Another program's SQLite file at --root: "not enough values to unpack", after a releases
    table had been written into it."""
    from typer.testing import CliRunner

    from racmkd.cli import app

    (tmp_path / "foreign").mkdir()
    database = tmp_path / "foreign" / "registry.sqlite"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE users (id INTEGER, name TEXT)")
    before = database.read_bytes()
    for command in (["registry", "list"], ["deploy", "plan", "--json"]):
        out = CliRunner().invoke(app, [*command, "--root", str(tmp_path / "foreign")])
        assert out.exit_code == 2 and "not a racmkd registry" in out.output and "users" in out.output, out.output
    with pytest.raises(RegistryError, match="not a racmkd registry"):
        ModelRegistry(tmp_path / "foreign")  # nor when adding to it
    assert database.read_bytes() == before and sorted(p.name for p in (tmp_path / "foreign").iterdir()) == ["registry.sqlite"]
    # A registry's database truncated to nothing beside its blobs: taken as a new registry, its versions started again at 1.
    (tmp_path / "lost" / "blobs").mkdir(parents=True)
    (tmp_path / "lost" / "blobs" / ("0" * 64)).write_bytes(b"a release")
    (tmp_path / "lost" / "registry.sqlite").write_bytes(b"")
    with pytest.raises(RegistryError, match=r"empty, but .*blobs holds 1 blob\(s\): the registry's records were lost"):
        ModelRegistry(tmp_path / "lost")
    assert (tmp_path / "lost" / "registry.sqlite").read_bytes() == b""


def test_registry_add_refuses_a_damaged_bank_and_a_missing_run_in_one_line(
    tiny_run: Path, bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A truncated variant file crashed `racmkd registry add edge` with onnx's DecodeError (profiling
    the devices), and with --no-devices was signed and registered; a mistyped --run was told to
    build a bank. Now each is one line naming the file and the fix, and nothing is registered."""
    from racmkd.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    shutil.copytree(bank_dir, run / "edge")
    victim = run / "edge" / json.loads((run / "edge" / "bank.json").read_text())["variants"][0]["path"]
    whole = victim.read_bytes()
    victim.write_bytes(whole[: len(whole) // 2])

    def add(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["racmkd", "registry", "add", "edge", "--key", str(keys[0]), "--root", str(tmp_path / "registry"), *args])
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        return code, capsys.readouterr().err

    for devices in ("--devices", "--no-devices"):
        code, err = add("--run", str(run), devices)
        assert code == 2 and str(victim) in err and f"racmkd edge build --run {run}" in err and "Traceback" not in err, err
        assert "will be skipped" not in err  # (the runtime's warning: not what happens here)
    code, err = add("--run", str(tmp_path / "no-such-run"))
    assert code == 2 and "not a run directory" in err and "edge build" not in err, err
    assert not (tmp_path / "registry").exists()
    victim.write_bytes(whole)
    code, err = add("--run", str(run), "--no-devices")
    assert code == 0 and ModelRegistry(tmp_path / "registry", create=False).release("edge").version == 1, err


def test_registry_add_of_a_tier_signs_only_what_its_report_measured(tiny_run: Path, bank_dir: Path, tmp_path: Path) -> None:
    """`registry add <tier>` read report.json blindly: a list crashed it with a TypeError, a tier
    the report lacks was signed with no metrics, and a report left from before the tier was
    compressed again (compress replaces the folder, then measures) signed the new file with the
    old file's figures. A missing or damaged artifact was told to `racmkd export` or build a bank,
    and an unknown tier to compress itself. Each is now one error naming the file and the fix."""
    from racmkd.compress.artifacts import ExportError
    from racmkd.deploy.orchestrator import artifact_from_run
    from racmkd.runs import RunError

    run = tmp_path / "run"
    (run / "compressed" / "critical").mkdir(parents=True)
    (run / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    artifact = run / "compressed" / "critical" / "int8-weights.onnx"
    shutil.copyfile(bank_dir / json.loads((bank_dir / "bank.json").read_text())["variants"][0]["path"], artifact)  # any racmkd model file
    (artifact.parent / "compression.json").write_text(json.dumps({"artifact": artifact.name, "format": "onnx-int8-weights"}))
    row = {"accuracy": 0.9, "artifact": "compressed/critical/int8-weights.onnx", "bytes_deployable": artifact.stat().st_size, "format": "onnx-int8-weights"}
    row["artifact_sha256"] = sha256(artifact.read_bytes())
    report = run / "report.json"
    evaluate = f"racmkd evaluate --run {run}"
    with pytest.raises(RunError, match=rf"report\.json: no such file; measure the run with `{evaluate}`"):
        artifact_from_run(run, "critical")
    for text, problem in (("[]", "not a racmkd report"), ('{"models": {', "not readable JSON"), ('{"models": {}}', "no measurements of critical_compressed")):
        report.write_text(text)
        with pytest.raises((RunError, RegistryError), match=rf"report\.json: {problem}.*{evaluate}"):
            artifact_from_run(run, "critical")
    report.write_text(json.dumps({"models": {"critical_compressed": {**row, "artifact_sha256": "0" * 64}}}))  # another file of the same size
    with pytest.raises(
        RegistryError, match=r"measured compressed/critical/int8-weights\.onnx \(sha256 000000000000\), not the tier's artifact .*racmkd evaluate"
    ):
        artifact_from_run(run, "critical")
    old = {k: v for k, v in row.items() if k != "artifact_sha256"}  # a report from before rows carried the hash: path and size
    report.write_text(json.dumps({"models": {"critical_compressed": {**old, "bytes_deployable": 10}}}))
    with pytest.raises(
        RegistryError, match=rf"measured compressed/critical/int8-weights\.onnx \(10 B\), not the tier's artifact .* \({artifact.stat().st_size} B\)"
    ):
        artifact_from_run(run, "critical")
    report.write_text(json.dumps({"models": {"critical_compressed": old}}))
    assert artifact_from_run(run, "critical")[0] == artifact
    report.write_text(json.dumps({"models": {"critical_compressed": row}}))
    assert artifact_from_run(run, "critical") == (artifact, "critical", {k: row[k] for k in ("accuracy", "bytes_deployable", "format")})
    with pytest.raises(RegistryError, match=r"'huge': no tier of the run .* \(its tiers: high, medium, low, critical\)"):
        artifact_from_run(run, "huge")
    whole = artifact.read_bytes()
    artifact.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ExportError, match=rf"int8-weights\.onnx: not an ONNX model, or a truncated one .*racmkd compress --run {run} --tier critical"):
        artifact_from_run(run, "critical")
    artifact.unlink()
    with pytest.raises(ExportError, match=rf"int8-weights\.onnx: no such file; compress the tier again with `racmkd compress --run {run} --tier critical`"):
        artifact_from_run(run, "critical")


def test_device_store_verifies_patches_checks_and_rolls_back(bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    registry, key = ModelRegistry(tmp_path / "registry"), load_private_key(keys[0])
    v1 = registry.register(bank_dir, "edge", key)
    v2 = registry.register(fine_tuned_head(bank_dir, tmp_path / "v2")[0], "edge", key)
    store = DeviceStore(tmp_path / "device", load_public_key(keys[1]))
    with pytest.raises(UpdateRefused, match="needs an installed release"):
        store.install(v1.manifest, v1.signature, registry.delta(v1.sha256, v2.sha256), delta=True)
    store.install(v1.manifest, v1.signature, registry.blob(v1.sha256))
    assert store.current().manifest["version"] == 1 and (store.current().model_path / "bank.json").is_file()
    # Refused: a bad signature, a tampered payload, a corrupted delta. Each leaves v1 current.
    with pytest.raises(UpdateRefused, match="bad signature"):
        store.install({**v2.manifest, "version": 99}, v2.signature, registry.blob(v2.sha256))
    blob = bytearray(registry.blob(v2.sha256))
    blob[600] ^= 0x01  # one bit, inside the first file
    with pytest.raises(UpdateRefused, match="tampered"):
        store.install(v2.manifest, v2.signature, bytes(blob))
    delta = registry.delta(v1.sha256, v2.sha256)
    with pytest.raises(UpdateRefused, match="delta refused"):
        store.install(v2.manifest, v2.signature, delta[:-10] + b"0123456789", delta=True)
    assert store.current().manifest["version"] == 1
    store.install(v2.manifest, v2.signature, delta, delta=True)
    assert store.current().manifest["version"] == 2 and store.previous().manifest["version"] == 1
    with pytest.raises(UpdateRefused, match="not newer"):  # a validly signed old version: a downgrade or a replay
        store.install(v1.manifest, v1.signature, registry.blob(v1.sha256))
    not_a_share = {**v2.manifest, "metrics": {"accuracy": "high"}}  # signed, but offloading would weigh a string on every request
    with pytest.raises(UpdateRefused, match="metrics.accuracy"):
        store.install(not_a_share, sign(not_a_share, key), registry.blob(v2.sha256))
    with pytest.raises(UpdateRefused, match="takes releases named"):
        DeviceStore(tmp_path / "other", load_public_key(keys[1]), accept=("critical",)).install(v1.manifest, v1.signature, registry.blob(v1.sha256))
    # A release that verifies but does not answer finite logits never becomes current.
    broken = tmp_path / "broken"
    shutil.copytree(bank_dir, broken)
    victim = sorted(broken.glob("*.onnx"))[0]
    model = onnx.load(victim)
    init = model.graph.initializer[0]
    init.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(init), np.nan), init.name))
    onnx.save(model, victim)
    v3 = registry.register(broken, "edge", key)
    with pytest.raises(UpdateFailed, match="failed its health check"):
        store.install(v3.manifest, v3.signature, registry.blob(v3.sha256))
    assert store.current().manifest["version"] == 2
    assert not list((tmp_path / "device" / "slots").glob(".*"))  # the failed stage's work folder went with it
    # A state file's entries damaged by hand: nothing installed, rather than a crash at startup.
    state = (tmp_path / "device" / "state.json").read_text()
    (tmp_path / "device" / "state.json").write_text(json.dumps({"current": {"manifest": {}}, "previous": 5}))
    assert store.current() is None and store.previous() is None
    # One entry damaged: updates and rollbacks go on past it (they crashed on it, a 500 for every
    # later /deploy and /rollback: the device could not be repaired over the air).
    shutil.copytree(tmp_path / "device", tmp_path / "damaged")
    (tmp_path / "damaged" / "state.json").write_text(json.dumps({**json.loads(state), "current": {"manifest": "garbage"}}))
    damaged = DeviceStore(tmp_path / "damaged", load_public_key(keys[1]))
    spare = registry.register(bank_dir, "spare", key)
    assert damaged.current() is None and damaged.install(spare.manifest, spare.signature, registry.blob(spare.sha256)).manifest["name"] == "spare"
    assert damaged.previous().manifest["version"] == 1  # the entry that was whole, not the damaged one
    (tmp_path / "damaged" / "state.json").write_text(json.dumps({**json.loads(state), "current": {"manifest": "garbage"}}))
    assert damaged.rollback().manifest["version"] == 1 and damaged.previous() is None
    (tmp_path / "device" / "state.json").write_text(state)
    assert store.rollback().manifest["version"] == 1 and store.current().manifest["version"] == 1
    assert store.previous().manifest["version"] == 2  # the release rolled back from: a second rollback goes forward to it (docs/deployment.md)
    # What was installed once stays refused whatever is current: v1, current, sent again is a repair
    # (nothing else changes); v2, which the rollback replaced, may come again (a roll forward); an old
    # version cannot come back by way of another release name either.
    assert store.install(v1.manifest, v1.signature, registry.blob(v1.sha256)).manifest["version"] == 1 and store.previous().manifest["version"] == 2
    assert store.install(v2.manifest, v2.signature, registry.blob(v2.sha256)).manifest["version"] == 2
    with pytest.raises(UpdateRefused, match="not newer than v2"):  # v1 again, no longer current: a replay
        store.install(v1.manifest, v1.signature, registry.blob(v1.sha256))
    other = registry.register(bank_dir, "critical", key)
    assert store.install(other.manifest, other.signature, registry.blob(other.sha256)).manifest["name"] == "critical"
    for replayed in (v1, v2):  # v2 too: an update replaced it, not a rollback
        with pytest.raises(UpdateRefused, match="not newer than v2"):
            store.install(replayed.manifest, replayed.signature, registry.blob(replayed.sha256))
    assert json.loads((tmp_path / "device" / "state.json").read_text())["newest"] == {"edge": 2, "critical": 1}


def _v1_then_v2_installed(bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path):  # noqa: ANN202
    """A registry with the bank as edge v1 and a fine-tuned head as v2, both installed on a device
    store in tmp_path/device (v2 current, v1 previous)."""
    registry, key = ModelRegistry(tmp_path / "registry"), load_private_key(keys[0])
    store = DeviceStore(tmp_path / "device", load_public_key(keys[1]))
    v1 = registry.register(bank_dir, "edge", key)
    v2 = registry.register(fine_tuned_head(bank_dir, tmp_path / "v2")[0], "edge", key)
    store.install(v1.manifest, v1.signature, registry.blob(v1.sha256))
    store.install(v2.manifest, v2.signature, registry.blob(v2.sha256))
    return registry, store, v1, v2


@pytest.mark.parametrize("damage", ["truncated", "not an object"])
def test_a_damaged_device_state_is_rebuilt_from_the_signed_slots(
    damage: str, bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A state.json that cannot be read was taken as empty: the device lost its release (the run's
    bank served) and its downgrade protection (an older signed release was installed). It is rebuilt
    from the slots' signed manifests, said in the log, and written back whole."""
    registry, store, v1, v2 = _v1_then_v2_installed(bank_dir, keys, tmp_path)
    path = tmp_path / "device" / "state.json"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2] if damage == "truncated" else b"[]")
    with caplog.at_level("ERROR", logger="racmkd.deploy.device"):
        assert store.current().manifest["version"] == 2 and store.previous().manifest["version"] == 1
    assert "rebuilt from the 2 intact signed release(s)" in caplog.text and "edge v2" in caplog.text
    assert json.loads(path.read_text())["newest"] == {"edge": 2} and (tmp_path / "device" / "state.json.damaged").is_file()
    with pytest.raises(UpdateRefused, match="not newer than v2"):
        store.install(v1.manifest, v1.signature, registry.blob(v1.sha256))
    # A slot whose files changed is not taken as the current release.
    (store.current().slot / "bank.json").write_text("{}")
    path.write_bytes(b"{")
    assert store.current().manifest["version"] == 1 and store.previous() is None


def test_a_release_sent_again_as_a_new_version_is_rebuilt_as_that_version(bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    """The same bytes released again as v3 share v1's slot, which kept v1's manifest: a rebuilt
    state named v1 current and v2 the newest, and took v1 sent again for a repair of the current release."""
    registry, store, v1, _ = _v1_then_v2_installed(bank_dir, keys, tmp_path)
    v3 = registry.register(bank_dir, "edge", load_private_key(keys[0]))
    assert v3.sha256 == v1.sha256 and store.install(v3.manifest, v3.signature, registry.blob(v3.sha256)).manifest["version"] == 3
    (tmp_path / "device" / "state.json").write_bytes(b"{")
    assert store.current().manifest["version"] == 3 and store.newest() == {"edge": 3}
    with pytest.raises(UpdateRefused, match="edge v1 is not newer than v3"):
        store.install(v1.manifest, v1.signature, registry.blob(v1.sha256))


def test_an_edge_whose_release_no_longer_loads_serves_the_previous_one_and_says_so(
    tiny_run: Path, bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    registry, store, v1, v2 = _v1_then_v2_installed(bank_dir, keys, tmp_path)
    store.close()  # (the servers' stores own the folder in turn; this one keeps reading)
    (store.current().model_path / "bank.json").write_text("damaged")  # e.g. a bad sector, after the health check
    cfg = load_config(tiny_run / "config.yaml", [f"serve.public_key={keys[1]}", f"serve.store_dir={tmp_path / 'device'}"])
    service = EdgeService(cfg, tiny_run, cfg.serve)
    try:
        assert "edge v1" in service.engine.label
        # The state says what serves, so that the next update replaces the broken release, not v1.
        assert store.current().manifest["version"] == 1 and store.previous().manifest["version"] == 2
    finally:
        service.close()
    assert not service._thread.is_alive()  # (its background work ended before what it uses was closed)
    # v2 sent again (the rollback replaced it) is unpacked afresh, not served from its damaged slot.
    assert store.install(v2.manifest, v2.signature, registry.blob(v2.sha256)).manifest["version"] == 2
    assert json.loads((store.current().model_path / "bank.json").read_text())["format"]
    # Neither release loads: the run's bank serves, /deployment says so, and the current release sent again repairs it.
    for installed in (store.current(), store.previous()):
        (installed.model_path / "bank.json").write_text("damaged")
    service = EdgeService(cfg, tiny_run, cfg.serve)
    try:
        edge = TestClient(create_app(service, cfg.serve, token=TOKEN))
        status = edge.get("/deployment", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert status["current"]["version"] == 2 and status["serving"] == {"label": f"{tiny_run.name}/edge", "sha256": None}
        assert "edge v2" in service.deploy(v2.manifest, v2.signature, registry.blob(v2.sha256), False)["installed"] and service.engine.sha256 == v2.sha256
        # An upload to /deploy cut off mid-body: FastAPI answers the ClientDisconnect it meets
        # reading the form with a 400, which was sent and counted under no outcome: now client_gone.
        import asyncio

        upload = b'--xyz\r\nContent-Disposition: form-data; name="payload"; filename="b"\r\n\r\n' + b"x" * 500
        incoming, sent = [{"type": "http.request", "body": upload, "more_body": True}], []

        async def receive() -> dict:
            return incoming.pop(0) if incoming else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        headers = [(b"content-type", b"multipart/form-data; boundary=xyz"), (b"content-length", b"100000"), (b"authorization", f"Bearer {TOKEN}".encode())]
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http", "path": "/deploy"}
        asyncio.run(
            edge.app({**scope, "raw_path": b"/deploy", "root_path": "", "query_string": b"", "headers": headers, "client": ("127.0.0.1", 5000)}, receive, send)
        )
        assert sent == [] and 'outcome="client_gone"' in edge.get("/metrics").text
    finally:
        service.close()


def test_an_edge_started_without_its_public_key_says_its_installed_releases_are_not_served(
    tiny_run: Path, bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """It served the run's bank, /deployment answering `current: null`, and logged nothing."""
    _v1_then_v2_installed(bank_dir, keys, tmp_path)
    cfg = load_config(tiny_run / "config.yaml", [f"serve.store_dir={tmp_path / 'device'}"])
    with caplog.at_level("WARNING", logger="racmkd.deploy.server"):
        service = EdgeService(cfg, tiny_run, cfg.serve)
    try:
        assert service.store is None and "holds installed releases, but no public key is configured" in caplog.text
    finally:
        service.close()


def test_an_installed_release_changed_on_the_device_is_not_served(tiny_run: Path, bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    """A slot whose files were swapped for others that still load (one variant's model copied over
    another's), or whose release.bin changed, is refused at start-up: the previous release serves,
    and the changed release sent again is unpacked afresh."""
    from racmkd.deploy.device import UpdateRefused

    registry, store, v1, v2 = _v1_then_v2_installed(bank_dir, keys, tmp_path)
    store.check(store.current())  # as installed: passes
    slot = store.current().slot
    models = sorted(slot.glob("*.onnx"))
    models[0].write_bytes(models[-1].read_bytes())  # loads and answers: only the bytes tell
    with pytest.raises(UpdateRefused, match=f"{models[0].name} changed on the device"):
        store.check(store.current())
    cfg = load_config(tiny_run / "config.yaml", [f"serve.public_key={keys[1]}", f"serve.store_dir={tmp_path / 'device'}"])
    store.close()  # (the server's store owns the folder, and so may roll back; this one keeps reading)
    service = EdgeService(cfg, tiny_run, cfg.serve)
    try:
        assert "edge v1" in service.engine.label and store.current().manifest["version"] == 1
    finally:
        service.close()
    assert store.install(v2.manifest, v2.signature, registry.blob(v2.sha256)).manifest["version"] == 2  # a repair: unpacked afresh
    store.check(store.current())
    (store.current().slot / "release.bin").write_bytes(b"changed")
    with pytest.raises(UpdateRefused, match="release.bin hashes to"):
        store.check(store.current())


def test_a_fleet_is_planned_and_pushed_with_no_human_step(bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`racmkd deploy apply`: every device gets the release its profile fits, pushed to its server;
    one its telemetry calls offline is passed over, one nothing fits is told why, one that cannot
    be reached is reported while the others are still served (and the command exits 1)."""
    from typer.testing import CliRunner

    from racmkd.cli import app
    from racmkd.deploy import orchestrator

    devices = [load_device(d) for d in device_names()]
    registry, key = ModelRegistry(tmp_path / "registry"), load_private_key(keys[0])
    release = registry.register(bank_dir, "edge", key, metrics={"accuracy": 0.9}, device_fit=device_fit(bank_dir, "bank", devices))
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "devices:\n"
        "  - {name: gate-1, profile: raspberry-pi-4, url: http://gate-1.test}\n"
        f"  - {{name: gate-2, profile: raspberry-pi-4, url: '{closed}'}}\n"
        f"  - {{name: sleeper, profile: jetson-nano, url: '{closed}'}}\n"
        "  - {name: sensor, profile: cortex-m7, url: http://sensor.test}\n"
        "  - {name: gate-3, profile: raspberry-pi-4, url: http://gate-3.test}\n"
    )
    real_push, pushed = orchestrator.push, []

    def push(registry_, release_, url, token, timeout_s=60.0, full=False, tls=None):  # noqa: ANN001, ANN202 - a device that accepts, or the real attempt
        if url == "http://gate-1.test":
            pushed.append((release_.name, release_.version, url, token, timeout_s))
            return {"sent": "full", "bytes": 1, "full_bytes": 1, "status_code": 200, "answer": {"installed": "edge v1"}}
        if url == "http://gate-3.test":  # a gateway before the device refuses it with JSON that is no object (an AttributeError stopped the run)
            return {"sent": "full", "bytes": 1, "full_bytes": 1, "status_code": 413, "answer": ["Payload Too Large"]}
        return real_push(registry_, release_, url, token, timeout_s, full=full, tls=tls)

    monkeypatch.setattr(orchestrator, "push", push)
    fleet_config, profiles = orchestrator.load_fleet(fleet)
    results = {
        r["device"]: r
        for r in orchestrator.apply_fleet(
            registry, fleet_config, profiles, TOKEN, load_public_key(keys[1]), online=lambda name: False if name == "sleeper" else None, timeout_s=7.5
        )
    }
    assert pushed == [("edge", release.version, "http://gate-1.test", TOKEN, 7.5)] and results["gate-1"]["action"] == "pushed"
    assert results["gate-2"]["action"] == "failed" and closed in results["gate-2"]["reason"]
    assert results["sleeper"]["action"] == "skipped" and "offline" in results["sleeper"]["reason"]
    assert results["sensor"]["action"] == "skipped" and "nothing fits" in results["sensor"]["reason"]
    assert results["gate-3"]["action"] == "refused" and "Payload Too Large" in results["gate-3"]["reason"]
    monkeypatch.setenv("RACMKD_TOKEN", TOKEN)
    out = CliRunner().invoke(app, ["deploy", "apply", "--fleet", str(fleet), "--root", str(tmp_path / "registry"), "--public-key", str(keys[1]), "--json"])
    assert out.exit_code == 1 and {r["device"]: r["action"] for r in json.loads(out.stdout)} == {
        "gate-1": "pushed",
        "gate-2": "failed",
        "sleeper": "failed",
        "sensor": "skipped",
        "gate-3": "refused",
    }
    fleet.write_text("devices:\n  - {name: a, profile: raspberry-pi-4, url: http://a}\n  - {name: a, profile: cortex-m7, url: http://b}\n")
    bad = CliRunner().invoke(app, ["deploy", "apply", "--fleet", str(fleet), "--root", str(tmp_path / "registry")])
    assert bad.exit_code != 0 and "more than once" in bad.output and str(fleet) in bad.output
    for device, expected in (
        ("{name: a, profile: raspberry-pi-4}", "url missing"),
        ("{name: a, profile: raspberry-pi-4, url: 'http://a:99999'}", "invalid port"),
    ):
        fleet.write_text(f"devices:\n  - {device}\n")
        bad = CliRunner().invoke(app, ["deploy", "apply", "--fleet", str(fleet), "--root", str(tmp_path / "registry")])
        assert bad.exit_code == 2 and expected in bad.output and str(fleet) in bad.output and "positional" not in bad.output, bad.output
    bad = CliRunner().invoke(app, ["deploy", "push", "edge", "--url", "http://127.0.0.1:99999", "--root", str(tmp_path / "registry"), "--timeout", "5"])
    assert bad.exit_code == 2 and "invalid port '99999'" in bad.output
    assert "8003" in CliRunner().invoke(app, ["deploy", "push", "--help"]).output  # the edge's port in the README, not the fog's


def test_a_fleet_is_served_several_devices_at_a_time_each_release_read_once(
    bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One device after another, 1,000 devices took 136 s, each hung one a minute, nothing was said
    before the end, and every device read and hashed the release again. Now `concurrency` at a time,
    each outcome told as it comes, the results in the fleet's order, the release's bytes read once."""
    import threading

    from racmkd.deploy import orchestrator

    devices = [load_device(d) for d in device_names()]
    registry, key = ModelRegistry(tmp_path / "registry"), load_private_key(keys[0])
    registry.register(bank_dir, "edge", key, metrics={"accuracy": 0.9}, device_fit=device_fit(bank_dir, "bank", devices))
    names = [f"gate-{i}" for i in range(12)]
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("devices:\n" + "".join(f"  - {{name: {n}, profile: raspberry-pi-4, url: http://{n}.test}}\n" for n in names))
    busy, most, lock, reads, contexts = [0], [0], threading.Lock(), [], set()
    real_blob = ModelRegistry.blob
    monkeypatch.setattr(ModelRegistry, "blob", lambda self, digest: reads.append(digest) or real_blob(self, digest))

    def push(registry_, release_, url, token, timeout_s=60.0, full=False, tls=None):  # noqa: ANN001, ANN202 - a device that takes a while to install
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        contexts.add(id(tls))
        registry_.blob(release_.sha256)  # (what push reads)
        time.sleep(0.3)
        with lock:
            busy[0] -= 1
        if url == "http://gate-5.test":
            raise httpx.ConnectError("connection refused")
        return {"sent": "full", "bytes": 1, "full_bytes": 1, "status_code": 200, "answer": {"installed": "edge v1"}}

    monkeypatch.setattr(orchestrator, "push", push)
    fleet_config, profiles = orchestrator.load_fleet(fleet)
    told: list[str] = []
    results = orchestrator.apply_fleet(registry, fleet_config, profiles, TOKEN, concurrency=4, on_result=lambda r: told.append(r["device"]))
    assert [r["device"] for r in results] == names and sorted(told) == sorted(names)  # each told once; listed in the fleet's order
    assert [r["action"] for r in results] == ["pushed"] * 5 + ["failed"] + ["pushed"] * 6
    assert 1 < most[0] <= 4 and len(contexts) == 1  # several at a time, never more than asked; one TLS context for all
    assert len(reads) - reads.count(reads[0]) == 0 and reads.count(reads[0]) <= 2  # read once for the fleet (plus the plan's check)
    with pytest.raises(ValueError, match="concurrency 0"):
        orchestrator.apply_fleet(registry, fleet_config, profiles, TOKEN, concurrency=0)
    assert orchestrator.apply_fleet(registry, orchestrator.Fleet(()), {}, TOKEN) == []  # (a pool of no worker raised)


def test_a_forged_offline_status_does_not_keep_a_device_from_its_update(
    bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone on a broker without authentication could publish a retained {"online": false} for a
    device, and `deploy apply` passed it over for as long as that stood. Telemetry's "offline" is
    checked against the device's /health: one that answers is served."""
    import http.server
    import threading

    from racmkd.deploy import orchestrator

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - (http.server's name)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        registry, key = ModelRegistry(tmp_path / "registry"), load_private_key(keys[0])
        registry.register(bank_dir, "edge", key, metrics={"accuracy": 0.9}, device_fit=device_fit(bank_dir, "bank", [load_device("raspberry-pi-4")]))
        fleet = tmp_path / "fleet.yaml"
        awake, asleep = f"http://127.0.0.1:{server.server_address[1]}", f"http://127.0.0.1:{free_port()}"
        fleet.write_text(
            f"devices:\n  - {{name: awake, profile: raspberry-pi-4, url: '{awake}'}}\n  - {{name: asleep, profile: raspberry-pi-4, url: '{asleep}'}}\n"
        )
        pushed = []
        monkeypatch.setattr(orchestrator, "push", lambda *args, **kwargs: pushed.append(args[2]) or {"sent": "full", "status_code": 200, "answer": {}})
        fleet_config, profiles = orchestrator.load_fleet(fleet)
        results = {r["device"]: r for r in orchestrator.apply_fleet(registry, fleet_config, profiles, TOKEN, online=lambda name: False)}
    finally:
        server.shutdown()
    assert pushed == [awake] and results["awake"]["action"] == "pushed", results
    assert results["asleep"]["action"] == "skipped" and "does not answer" in results["asleep"]["reason"]


def test_a_server_told_to_stop_cuts_a_stalled_request_soon(tiny_run: Path) -> None:
    """uvicorn waited for every open request once told to stop: a client stalled mid-body held the
    server (a stalled /deploy upload for ever) until a container runtime's SIGKILL. Open requests
    are cut after serve.shutdown_timeout_s."""
    port = free_port()
    command = [sys.executable, "-m", "racmkd.cli", "serve", "--role", "fog", "--run", str(tiny_run), "--port", str(port)]
    command += ["--set", "serve.shutdown_timeout_s=1", "--set", "serve.body_timeout_s=600"]
    server = subprocess.Popen(command, env={**os.environ, "RACMKD_PROGRESS": "0"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        with socket.create_connection(("127.0.0.1", port)) as stalled:
            stalled.sendall(b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"image": [')
            time.sleep(0.5)  # (the request is open in the server)
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)  # (it waited out the body's 600 s)
    finally:
        if server.poll() is None:
            server.kill()
        server.communicate(timeout=30)
    with pytest.raises(ConfigError, match="shutdown_timeout_s must be finite and > 0"):
        ServeConfig(shutdown_timeout_s=0)


def test_urls_with_credentials_are_refused_without_showing_them(tmp_path: Path) -> None:
    """An upstream URL's user:password was sent by httpx, and shown to anyone on /models (never
    token-protected) and in the breaker's log; tokens come from environment variables instead."""
    from typer.testing import CliRunner

    from racmkd.cli import app
    from racmkd.config import shown_url

    with pytest.raises(ConfigError, match="holds a user name or password") as refused:
        ServeConfig(upstreams=("http://fog:Pa55w0rd@127.0.0.1:8002",))
    assert "Pa55w0rd" not in str(refused.value) and "fog:***@127.0.0.1:8002" in str(refused.value)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("devices:\n  - {name: a, profile: raspberry-pi-4, url: 'http://admin:Pa55w0rd@a:8003'}\n")
    bad = CliRunner().invoke(app, ["deploy", "apply", "--fleet", str(fleet), "--root", str(tmp_path / "registry")], env={"RACMKD_TOKEN": "t"})
    assert bad.exit_code == 2 and "holds a user name or password" in bad.output and "Pa55w0rd" not in bad.output, bad.output
    assert shown_url("http://fog.local:8001/x") == "http://fog.local:8001/x" and shown_url("https://u@h") == "https://u@h"
    with pytest.raises(ConfigError) as refused:  # a URL that does not parse: masked all the same
        ServeConfig(upstreams=("http://admin:S3cret@[fog.local:8001",))
    assert "S3cret" not in str(refused.value)


def test_a_device_that_does_not_answer_as_an_edge_is_a_clear_error(bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    """A fleet URL whose /deployment answers JSON that is not an edge's status (a list, null, an
    empty object): a ValueError naming the URL, which apply_fleet reports for that device while
    serving the others (it was an AttributeError that ended `deploy apply` for the whole fleet).
    One that takes the status but answers the push with bytes labelled JSON: a ValueError naming
    the URL (it was a codec's error naming neither)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotAnEdge(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(self.server.answer)  # type: ignore[attr-defined]

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"\x00l\xff garbage")

        def log_message(self, *args: object) -> None:
            pass

    registry = ModelRegistry(tmp_path / "registry")
    release = registry.register(bank_dir, "edge", load_private_key(keys[0]))
    with ThreadingHTTPServer(("127.0.0.1", 0), NotAnEdge) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        for answer in (b"[]", b"null", b"{}", b'{"current": "v1"}'):
            server.answer = answer  # type: ignore[attr-defined]
            with pytest.raises(ValueError, match="not a racmkd edge's status"):
                push(registry, release, url, TOKEN)
        server.answer = b'{"current": null}'  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match=f"{url}/deploy: answered 200 .* not JSON: not a racmkd edge server's answer"):
            push(registry, release, url, TOKEN)
        server.shutdown()


def test_an_upstream_is_given_the_time_it_may_take() -> None:
    from racmkd.deploy.offload import LinkEstimate, Upstream, choose_route

    fog = Upstream("fog", "http://127.0.0.1:9", accuracy=0.99, compute_ms=1.5, link=LinkEstimate(rtt_ms=1.0))  # expected 2.5 ms
    # The local answer in time: the fog may take what the target leaves after it (a failed offload is
    # then still answered in time), 2 ms of 3 when local takes 1: not enough; 2.6 ms when local takes 0.4.
    assert choose_route(0.95, 1.0, 3.0, [fog], 100).target == "local"
    in_time = choose_route(0.95, 0.4, 3.0, [fog], 100)
    assert in_time.target == "fog" and in_time.budget_ms == pytest.approx(2.6)
    # The local answer late: the fog gets the whole target (it had 1 ms before, and timed out).
    late = choose_route(0.95, 8.0, 3.0, [fog], 100)
    assert late.target == "fog" and late.budget_ms == pytest.approx(3.0)
    assert choose_route(0.95, 8.0, 2.0, [fog], 100).target == "local"  # nobody in time: answered here


def test_a_link_that_slows_down_is_soon_expected_slow_whatever_one_quick_call_said() -> None:
    """Averaged as bytes per ms, the fast calls ruled, and one call quicker than the round trip
    (its transfer floored at 0.01 ms) made the link look instant: 31 calls at 350 ms before one was
    expected at 300 (20 ms calls before). And once quick calls were passed over instead, one slow
    call's estimate stood against every quick call after it (93 ms expected, 200 calls later 96)."""
    from racmkd.deploy.offload import LinkEstimate

    link = LinkEstimate()
    link.observe(2.0, 0.0, 0)  # a probe: the round trip
    for _ in range(5):
        link.observe(20.0, 1.0, 40_000)
    assert link.expected_ms(40_000, 1.0) == pytest.approx(20.0, rel=0.01)
    link.observe(1.0, 1.0, 40_000)  # quicker than the round trip: a transfer of no time, averaged per byte
    assert link.expected_ms(40_000, 1.0) == pytest.approx(2.0 + 0.7 * 17.0 + 1.0, rel=0.01)
    calls = 0
    while link.expected_ms(40_000, 1.0) < 300.0:
        link.observe(350.0, 1.0, 40_000)
        calls += 1
    assert calls <= 8
    # Only forwarded requests measure the transfer, and none go while it looks slow: a probe
    # forgets one no call has measured for a while (the link was never used again once it recovered).
    link.forget_stale_transfer(30.0, now=link.transfer_seen + 10.0)
    assert link.expected_ms(40_000, 1.0) > 300.0
    link.forget_stale_transfer(30.0, now=link.transfer_seen + 31.0)
    assert link.expected_ms(40_000, 1.0) == pytest.approx(2.0 + 1.0, rel=0.01)  # the round trip and the compute: worth a try
    link.observe(100.0, 1.0, 178_000)  # one slow call ...
    for _ in range(12):
        link.observe(2.0, 1.0, 178_000)  # ... and quick ones after it (no longer than the round trip)
    assert link.expected_ms(178_000, 1.0) < 5.0


def test_an_upstream_slow_in_every_phase_is_given_up_on_at_the_deadline() -> None:
    """httpx's timeouts bound each phase of a call, not the whole: an upstream that sends its
    headers late, then its body late, each within the timeout, kept a request past its deadline."""
    import socket
    import threading

    from racmkd.deploy.offload import Upstream, UpstreamError

    listener = socket.create_server(("127.0.0.1", 0))
    body = b'{"label": 1, "probabilities": [0.1, 0.9], "compute_ms": 1.0}'

    def slow_upstream() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            time.sleep(0.45)  # each phase within the 0.5 s the call may take ...
            connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body))
            time.sleep(0.45)  # ... the whole not
            connection.sendall(body)

    threading.Thread(target=slow_upstream, daemon=True).start()
    fog = Upstream("fog", f"http://127.0.0.1:{listener.getsockname()[1]}", timeout_s=1.0, retries=0)
    started = time.monotonic()
    with pytest.raises(UpstreamError, match="deadline"):
        fog.predict(b"{}", "application/json", started + 0.5)
    assert time.monotonic() - started < 0.8  # given up at 0.5 s; the whole reply took 0.9
    assert fog.breaker.failures == 1
    listener.close()


def test_an_upstream_that_trickles_its_reply_is_given_up_on_within_its_timeout() -> None:
    """A byte every 0.2 s is within httpx's read timeout each time: a probe (on the thread that also
    sends telemetry) or a forwarded call kept reading a 100 kB reply for hours. Trickled headers
    held the call itself (a worker) for as long as they came, httpx bounding each read: the
    probing thread waits no longer than the timeout, and the call's connection is closed
    DROP_AFTER_S after it."""
    import socket
    import threading

    from racmkd.deploy.offload import DROP_AFTER_S, Upstream

    body_first = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n"
    for head, drip in ((body_first, b" "), (b"HTTP/1.1 200 OK\r\n", b"x")):  # the body trickled, then the headers
        listener, stop, dropped = socket.create_server(("127.0.0.1", 0)), threading.Event(), threading.Event()

        def trickling_upstream(
            listener: socket.socket = listener, stop: threading.Event = stop, dropped: threading.Event = dropped, head: bytes = head, drip: bytes = drip
        ) -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(head)
                try:
                    while not stop.wait(0.2):
                        connection.sendall(drip)
                except OSError:  # the edge closed the connection
                    dropped.set()

        threading.Thread(target=trickling_upstream, daemon=True).start()
        fog = Upstream("fog", f"http://127.0.0.1:{listener.getsockname()[1]}", timeout_s=0.5, retries=0)
        started = time.monotonic()
        assert fog.probe() is False  # given up on, counted
        assert time.monotonic() - started < 2.0 and fog.breaker.failures == 1, head
        assert dropped.wait(0.5 + DROP_AFTER_S + 2.0), head  # the call ended: its worker free again, not for as long as the upstream trickles
        stop.set()
        listener.close()


def test_a_call_that_took_the_client_as_it_was_closed_fails_as_an_upstream_error() -> None:
    """`_drop_connections` closes an upstream's client under a late call; a call on another thread
    that had just taken it got httpx's RuntimeError, which neither a prediction's retries nor the
    probe caught (the probing thread's round ended there)."""
    from concurrent.futures import Future

    from racmkd.deploy.offload import Upstream, UpstreamError, _Watched

    fog = Upstream("fog", "http://127.0.0.1:9", timeout_s=0.5, retries=0)
    taken = fog.client()
    fog._drop_connections(Future(), _Watched(0.0, taken))  # a call still running past its time: its client's connections closed
    fresh = fog.client()
    assert taken.is_closed and fresh is not taken and not fresh.is_closed  # later calls open new ones
    fog._drop_connections(Future(), _Watched(0.0, taken))  # another late call on the old client: the new one is left alone
    assert fog.client() is fresh and not fresh.is_closed
    fog.client = lambda: taken  # type: ignore[method-assign]  # (the call that took it just before)
    with pytest.raises(UpstreamError, match="its connections were closed meanwhile"):
        fog._call("GET", "/health", 0.5)
    assert fog.probe() is False and fog.breaker.failures == 1  # counted, not raised


def test_a_healthy_probe_does_not_wipe_out_failed_predictions() -> None:
    """A /health that answers reset the breaker's count of failed calls: with a probe every 5 s
    and fewer than three failed /predict calls between probes, the breaker of an upstream whose
    every prediction failed never opened. A probe closes an open breaker that probes alone opened;
    one that failed predictions opened it leaves half-open, for the next prediction to try (a quick
    /health closed the breaker of an upstream whose /predict was too slow, and three more requests
    each waited out their budget); a closed one keeps count."""
    from racmkd.deploy.offload import CircuitBreaker

    breaker = CircuitBreaker(failures_to_open=3, reset_after_s=5.0)
    for _ in range(2):
        breaker.failure(now=0.0)
        assert breaker.success(probe=True) is False and breaker.failures >= 1  # the health check passes in between
    breaker.failure(now=0.0)
    assert breaker.state == "open"
    assert breaker.allow(now=6.0) and breaker.state == "half-open"
    assert breaker.success(probe=True) is False and breaker.state == "half-open"  # /health answers: the next prediction is the trial
    assert breaker.success() is True and (breaker.state, breaker.failures) == ("closed", 0)  # it answered: back
    probed = CircuitBreaker(failures_to_open=3, reset_after_s=5.0)
    for _ in range(3):
        probed.failure(now=0.0, probe=True)
    assert probed.state == "open" and probed.allow(now=6.0)
    assert probed.success(probe=True) is True and probed.state == "closed"  # opened by probes alone: a healthy probe closes it
    breaker.failure(now=7.0)
    assert breaker.success() is False and breaker.failures == 0  # a prediction that succeeds resets the count
    # A probe's own failures are taken back by a healthy probe: failed health checks days apart never add up to an outage.
    for day in range(5):
        breaker.failure(now=10.0 + day, probe=True)
        assert breaker.success(probe=True) is False and breaker.state == "closed"
    breaker.failure(now=20.0)  # a failed prediction stays counted beside a probe's, which goes
    breaker.failure(now=20.0, probe=True)
    breaker.success(probe=True)
    assert breaker.failures == 1


GOOD_ANSWER = b'{"label": 1, "probabilities": [0.1, 0.9], "served_by": "fog", "model": "high", "compute_ms": 0.5}'


def test_an_upstream_label_that_is_not_its_most_probable_class_is_malformed() -> None:
    """An answer of label 3 with class 0 at p = 0.9 was relayed as it came."""
    from racmkd.deploy.offload import check_answer

    check_answer(json.loads(GOOD_ANSWER), 2)
    with pytest.raises(ValueError, match="label 0 is not the most probable class"):
        check_answer({**json.loads(GOOD_ANSWER), "label": 0}, 2)
    check_answer({**json.loads(GOOD_ANSWER), "label": 0, "probabilities": [0.5, 0.5]}, 2)  # a tie: either is the argmax


def test_a_malformed_upstream_answer_counts_as_a_failure() -> None:
    """An answer whose compute time is not a time (a string, NaN, JSON nested past the parser's
    depth) is a failed call, not a crash of the request, and NaN never enters the link estimate
    (NaN is over no budget: that upstream would get every request)."""
    from racmkd.deploy.offload import LinkEstimate, Upstream, UpstreamError

    wrong_notes = GOOD_ANSWER.replace(b"}", b', "variants": "abc"}')  # refused only when the edge built its reply: counted as a success
    huge = b"huge"  # 64 KiB chunks without end: read whole, a 200 MB reply took the edge's memory up by 700 MB
    handed: list[int] = []

    def chunks() -> Iterator[bytes]:
        for _ in range(1000):
            handed.append(1)
            yield b" " * 65536

    def reply(request: httpx.Request, body: bytes) -> httpx.Response:
        return httpx.Response(200, content=chunks() if body is huge else body, headers={"content-type": "application/json"})

    for body in (b'{"label": 1, "compute_ms": "abc"}', b'{"label": 1, "compute_ms": NaN}', b"[" * 100000, wrong_notes, huge, GOOD_ANSWER):
        fog = Upstream("fog", "http://fog", retries=0, link=LinkEstimate(rtt_ms=1.0))
        fog._client = httpx.Client(base_url=fog.url, transport=httpx.MockTransport(lambda request, body=body: reply(request, body)))
        if body == GOOD_ANSWER:
            assert fog.predict(b"{}", "application/json", time.monotonic() + 1)["label"] == 1 and np.isfinite(fog.link.rtt_ms)
            continue
        with pytest.raises(UpstreamError, match="no usable answer") as refused:
            fog.predict(b"{}", "application/json", time.monotonic() + 1)
        assert fog.breaker.failures == 1 and fog.link.rtt_ms == 1.0
        assert body is not huge or ("a reply of more than 1,048,576 bytes" in str(refused.value) and len(handed) <= 17)  # read no further than 1 MiB
        assert body is not wrong_notes or "variants abc is not a list of strings" in str(refused.value)


def test_an_unreachable_upstream_is_said_once_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    """The log said nothing of an upstream that could not be reached (its breaker opened, and every
    answer after the first came back local with no word why); now one line when it opens, one when
    it answers again, however many calls fail between."""
    import logging

    from racmkd.deploy.offload import CircuitBreaker, Upstream, UpstreamError

    up = {"ok": False}

    def fog_transport(request: httpx.Request) -> httpx.Response:
        if not up["ok"]:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, content=GOOD_ANSWER, headers={"content-type": "application/json"})

    fog = Upstream("fog", "http://fog", retries=0, breaker=CircuitBreaker(failures_to_open=2, reset_after_s=0.0))
    fog._client = httpx.Client(base_url=fog.url, transport=httpx.MockTransport(fog_transport))
    with caplog.at_level(logging.WARNING, logger="racmkd.deploy.offload"):
        for _ in range(6):
            with pytest.raises(UpstreamError, match="ConnectError: connection refused"):
                fog.predict(b"{}", "application/json", time.monotonic() + 1)
        up["ok"] = True
        assert fog.predict(b"{}", "application/json", time.monotonic() + 1)["label"] == 1
        fog.predict(b"{}", "application/json", time.monotonic() + 1)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and "circuit open after 2 failure(s), last ConnectError" in said[0] and "answers again" in said[1], said


@contextlib.contextmanager
def edge_beside_a_fake_fog(tiny_run: Path, tiny_dataset, fog_answers, *overrides: str) -> Iterator[tuple[EdgeService, TestClient, Any, list]]:  # noqa: ANN001
    """An edge service of the tiny run whose one upstream (http://fog, more accurate, near, no
    retries) is answered by `fog_answers` (an httpx handler); with its test client, the upstream,
    and one test image as a JSON request sends it."""
    import torch

    from racmkd.deploy.offload import LinkEstimate

    cfg = load_config(tiny_run / "config.yaml", ["serve.upstreams=[http://fog]", "serve.upstream_retries=0", "serve.offload_margin=-1.0", *overrides])
    service = EdgeService(cfg, tiny_run, cfg.serve)
    try:
        fog = service.upstreams[0]
        fog._client = httpx.Client(base_url=fog.url, transport=httpx.MockTransport(fog_answers))
        fog.accuracy, fog.link = 0.999, LinkEstimate(rtt_ms=0.1)
        yield (
            service,
            TestClient(create_app(service, cfg.serve, token=None)),
            fog,
            tiny_dataset.raw_batch("test", torch.tensor([0]))["image"][0].numpy().tolist(),
        )
    finally:
        service.close()


def test_a_malformed_upstream_prediction_is_answered_locally_and_says_why(tiny_run: Path, tiny_dataset, bank_dir: Path) -> None:  # noqa: ANN001
    """An upstream answering a label outside the classes, or no probability per class, is a failed
    offload: the edge answers itself and names the reason in `fallbacks` (it relayed it as a
    success, `offloaded: true`)."""
    replies = iter(
        [
            {"label": 99, "probabilities": [], "served_by": "fog", "model": "high", "compute_ms": 1},
            {"label": 99, "probabilities": [0.1] * 10, "served_by": "fog", "model": "high", "compute_ms": 1},
            {"label": 1, "probabilities": [0.5, 0.5], "served_by": "fog", "model": "high", "compute_ms": 1},
            {"label": 1, "probabilities": [float("nan")] * 10, "served_by": "fog", "model": "high", "compute_ms": 1},
        ]
    )

    def fake_fog(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200, json={"accuracy": 0.999, "compute_ms_p50": 0.1})
        return httpx.Response(200, content=json.dumps(next(replies)).encode(), headers={"content-type": "application/json"})

    with edge_beside_a_fake_fog(tiny_run, tiny_dataset, fake_fog, "serve.breaker_failures=100") as (service, client, fog, image):
        cfg = service.cfg
        request = {"image": image, "latency_target_ms": 10000.0}
        for reason in ("probabilities", "label 99", "2 probabilities for 10 classes", "not a distribution"):
            reply = client.post("/predict", json=request)
            assert reply.status_code == 200, reply.text
            answer = reply.json()
            assert answer["offloaded"] is False and answer["served_by"].startswith("edge:") and len(answer["probabilities"]) == 10
            assert any("offload failed" in f and reason in f for f in answer["fallbacks"]), answer["fallbacks"]
            assert answer["offload_failed"] is True and answer["latency_ms"] >= answer["compute_ms"] > 0  # (it read as a local answer)
        metrics = client.get("/metrics").text
        assert 'racmkd_requests_total{outcome="ok",role="edge",route="offload_failed"} 4.0' in metrics
        assert 'racmkd_requests_late_total{role="edge"}' not in metrics  # none past the 10 s target
        # An upstream whose breaker is open is passed over, and the answer says so (it said nothing),
        # answered on the event loop (answer_now) or on a worker thread (answer).
        fog.breaker.state, fog.breaker.opened_at = "open", time.monotonic()
        body = json.dumps(request).encode()
        for answer in (
            client.post("/predict", json=request).json(),
            service.answer(parse_request(body, "application/json", cfg.serve, service.modalities()), body, "application/json").model_dump(),
        ):
            assert answer["offloaded"] is False and any(f"offload not tried: {fog.name}'s circuit is open" in f for f in answer["fallbacks"]), answer


def test_a_forwarded_request_carries_its_deadline_and_is_not_forwarded_again(tiny_run: Path, tiny_dataset, bank_dir: Path) -> None:  # noqa: ANN001
    """Nothing marked a forwarded request: two edges listing each other bounced one request 23
    times, each hop with the client's whole target again; a fog computed requests the edge had
    given up on (29% of its answers under load); and the budget counted from when the edge's
    worker took the request, not from its arrival (every failed offload over a 150 ms target)."""
    from racmkd.deploy.offload import FORWARDED_HEADER

    sent: list[httpx.Request] = []

    def fake_fog(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"label": 0, "probabilities": [0.91] + [0.01] * 9, "served_by": "fog", "model": "high", "compute_ms": 0.5})

    with edge_beside_a_fake_fog(tiny_run, tiny_dataset, fake_fog) as (service, client, _, image):
        cfg = service.cfg
        request = {"image": image, "latency_target_ms": 400.0}
        assert client.post("/predict", json=request).json()["offloaded"] is True
        assert len(sent) == 1 and 0 < float(sent[0].headers[FORWARDED_HEADER]) <= 400.0  # what is left of the target goes along
        again = client.post("/predict", json=request, headers={FORWARDED_HEADER: "300"}).json()
        assert again["offloaded"] is False and len(sent) == 1  # forwarded to this edge: answered here, not forwarded on
        assert again["offload_failed"] is False and client.post("/predict", json={**request, "latency_target_ms": 1e-3}).json()["latency_ms"] > 1e-3
        assert 'racmkd_requests_late_total{role="edge"} 1.0' in client.get("/metrics").text  # answered past its target, counted
        # The target counts from the request's arrival: one that spent it before a worker took it is not forwarded.
        body = json.dumps(request).encode()
        late = parse_request(body, "application/json", cfg.serve, service.modalities()).received(time.monotonic() - 1.0, None)
        answer = service.answer(late, body, "application/json")
        assert answer.offloaded is False and len(sent) == 1  # routed with what is left of its target: nothing
    fog_app = TestClient(create_app(ModelService("fog", tiny_run, ["high"]), ServeConfig(), token=None))
    assert fog_app.post("/predict", json=request, headers={FORWARDED_HEADER: "5000"}).status_code == 200
    given_up = fog_app.post("/predict", json=request, headers={FORWARDED_HEADER: "0"})
    assert given_up.status_code == 503 and "given up" in given_up.json()["detail"]
    assert 'racmkd_requests_total{outcome="given_up",role="fog",route="-"} 1.0' in fog_app.get("/metrics").text  # not the fog's own error


def test_a_fog_gives_up_what_it_cannot_answer_before_its_forwarder_does_and_computes_one_at_a_time(
    tiny_run: Path, tiny_dataset, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    """A fog checked a forwarded request's deadline only as it started, from its own arrival: under
    load it computed answers its edge had given up on (44 of 945 calls; 19 of 62 begun in time and
    finished late), and every answer was computed at once on up to 40 worker threads (those took
    ~60 ms against 5). Now it gives a forwarded request up when its answer is expected past the
    deadline, waits for its turn only that long, and counts an answer past it as late."""
    import torch

    from racmkd.deploy.offload import FORWARDED_HEADER, GIVEN_UP_HEADER

    service = ModelService("fog", tiny_run, ["high"], workers=1)
    assert service.workers == 1 and ModelService("fog", tiny_run, ["high"]).workers >= 1  # (0: one per core)
    with pytest.raises(ConfigError, match="compute_workers must be >= 0"):
        ServeConfig(compute_workers=-1)
    app = TestClient(create_app(service, ServeConfig(), token=None))
    request = {"image": tiny_dataset.raw_batch("test", torch.tensor([0]))["image"][0].numpy().tolist()}
    service.model_ms["high"].extend([50.0] * 3)  # its answers take 50 ms
    refused = app.post("/predict", json=request, headers={FORWARDED_HEADER: "20"})
    assert refused.status_code == 503 and "given up" in refused.json()["detail"] and refused.headers[GIVEN_UP_HEADER] == "1"
    assert app.post("/predict", json=request, headers={FORWARDED_HEADER: "5000"}).status_code == 200
    assert app.post("/predict", json=request).status_code == 200  # a client's own: no deadline here

    # Its one worker taken: a forwarded request waits only while its answer could still come in time,
    # a client's own request waits its turn.
    service.model_ms["high"].clear()
    service.model_ms["high"].extend([30.0] * 3)
    service._computing.acquire()
    try:
        started = time.perf_counter()
        waited = app.post("/predict", json=request, headers={FORWARDED_HEADER: "200"})
        waited_s = time.perf_counter() - started
        assert waited.status_code == 503 and waited.headers[GIVEN_UP_HEADER] == "1"
        assert 0.15 <= waited_s < 2.0, waited_s  # ~170 ms: the 200 left less the 30 its answer takes
        own: list[int] = []
        thread = threading.Thread(target=lambda: own.append(app.post("/predict", json=request).status_code))
        thread.start()
        thread.join(0.3)
        assert thread.is_alive() and not own  # waiting for the worker
    finally:
        service._computing.release()
    thread.join(10)
    assert own == [200]

    # Judged by the model asked for: a slow one's times do not give the others' requests up.
    both = ModelService("fog", tiny_run, ["high", "medium"], workers=1)
    both.model_ms["medium"].extend([40.0] * 5)
    assert TestClient(create_app(both, ServeConfig(), token=None)).post("/predict", json=request, headers={FORWARDED_HEADER: "25"}).status_code == 200
    # A deadline past any wait the platform takes (a client's target of 1e13 ms) waits for the worker (it raised OverflowError).
    service._computing.acquire()
    far: list[int] = []
    thread = threading.Thread(target=lambda: far.append(app.post("/predict", json=request, headers={FORWARDED_HEADER: "1e13"}).status_code))
    thread.start()
    time.sleep(0.3)
    service._computing.release()
    thread.join(10)
    assert far == [200]

    # An answer that came after the forwarder's deadline all the same is counted late.
    service.model_ms["high"].clear()
    predictor = service.predictors["high"]
    predict = predictor.predict
    monkeypatch.setattr(predictor, "predict", lambda **kw: (time.sleep(0.08), predict(**kw))[1])
    assert app.post("/predict", json=request, headers={FORWARDED_HEADER: "20"}).status_code == 200
    metrics = app.get("/metrics").text
    assert 'racmkd_requests_late_total{role="fog"} 1.0' in metrics and 'racmkd_requests_total{outcome="given_up",role="fog",route="-"} 2.0' in metrics


def test_the_edge_sends_its_deadline_less_the_link_transit_and_does_not_retry_a_request_given_up(tiny_run: Path, tiny_dataset, bank_dir: Path) -> None:  # noqa: ANN001
    """The deadline an edge forwarded was what was left of its budget: the fog counted it from its
    own arrival, and its answer had to come back too (43 of 62 answers a loaded fog computed for
    requests its edge had given up on were done within that time). And a fog's 'given up' was
    retried like any 503."""
    from racmkd.deploy.offload import FORWARDED_HEADER, GIVEN_UP_HEADER, LinkEstimate

    sent: list[httpx.Request] = []
    give_up = [False]
    held: list[Any] = [5.0]

    def fake_fog(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200, json={"accuracy": 0.999, "compute_ms_p50": 1.0})
        sent.append(request)
        if give_up[0]:
            return httpx.Response(503, json={"detail": "not computed, given up"}, headers={GIVEN_UP_HEADER: "1"})
        time.sleep(0.03)  # 30 ms on the way, of which the fog held it 5
        answer = {"label": 0, "probabilities": [0.91] + [0.01] * 9, "served_by": "fog", "model": "high", "compute_ms": 1.0, "latency_ms": held[0]}
        return httpx.Response(200, content=json.dumps(answer).encode(), headers={"content-type": "application/json"})

    with edge_beside_a_fake_fog(tiny_run, tiny_dataset, fake_fog, "serve.upstream_retries=2") as (service, client, fog, image):
        request = {"image": image, "latency_target_ms": 400.0}
        assert client.post("/predict", json=request).json()["offloaded"] is True
        transit = fog.link.transit_ms
        assert 25.0 <= transit <= 200.0, transit  # the call's time less the 5 ms the fog held it
        assert client.post("/predict", json=request).json()["offloaded"] is True
        assert float(sent[1].headers[FORWARDED_HEADER]) <= 400.0 - transit  # what is left, less the way there and back
        # A held time that is no time in the call informs nothing, and the answer stands (it failed the call).
        for bad in (-1.0, float("nan"), "abc", 1e308):
            held[0] = bad
            before = fog.link.transit_ms
            assert client.post("/predict", json=request).json()["offloaded"] is True and fog.link.transit_ms == before, bad
        # A probe measures the transit too: an estimate above every budget (a deadline of 0 sent, each
        # request given up, none measuring it again) comes down.
        fog.link.transit_ms = 10_000.0
        assert fog.probe() and fog.link.transit_ms < 7_100.0
        give_up[0] = True
        answer = client.post("/predict", json=request).json()
        assert answer["offload_failed"] is True and len(sent) == 7  # tried once, not again
        assert any("gave the request up" in f for f in answer["fallbacks"]), answer["fallbacks"]
    # Per size: large calls' transit does not come off a small request's deadline (one figure for
    # every size sent a 3 kB request with 50 ms left a deadline of 0 after 178 kB ones).
    link = LinkEstimate()
    link.observe_transit(5.0, 0.0, 100)
    for _ in range(10):
        link.observe_transit(65.0, 0.0, 178_000)
    assert link.transit_for(3_000) < 7.0 and link.transit_for(178_000) > 50.0  # (5 ms, and 3,000 bytes at the large calls' rate)
    link.forget_stale_transfer(30.0)  # probes send no bytes: the per-byte part goes stale with the transfer's
    assert link.transit_ms_per_byte is None and link.transit_for(178_000) == pytest.approx(5.0)


def test_a_failing_upstream_costs_no_pause_after_its_last_try_and_one_that_cannot_answer_in_its_timeout_is_not_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backoff slept after the last try too (41 ms a failed request with one retry, 81 with
    two); and an upstream expected at 700 ms, its calls cut at 500, was still chosen for a 2 s
    target, and every request waited 0.8 s to be answered locally."""
    from racmkd.deploy.offload import LinkEstimate, Upstream, UpstreamError, choose_route

    from racmkd.deploy import offload

    pauses: list[float] = []
    monkeypatch.setattr(offload.time, "sleep", pauses.append)
    failing = Upstream("fog", "http://fog", retries=2, backoff_s=0.3)
    failing._client = httpx.Client(base_url=failing.url, transport=httpx.MockTransport(lambda request: httpx.Response(500)))
    with pytest.raises(UpstreamError, match="HTTP 500"):
        failing.predict(b"{}", "application/json", time.monotonic() + 5.0)
    assert pauses == [pytest.approx(0.3), pytest.approx(0.6)]  # between the three tries, none after the last
    pauses.clear()
    opening = Upstream("fog", "http://fog", retries=2, backoff_s=0.3, breaker=offload.CircuitBreaker(failures_to_open=1))
    opening._client = failing._client
    with pytest.raises(UpstreamError):
        opening.predict(b"{}", "application/json", time.monotonic() + 5.0)
    assert pauses == []  # its first failure opened the breaker: nothing to wait for
    slow = Upstream("fog", "http://fog", timeout_s=0.5, accuracy=0.999, compute_ms=700.0, link=LinkEstimate(rtt_ms=1.0))
    assert choose_route(0.9, 10.0, 2000.0, [slow], 100).target == "local"
    slow.timeout_s = 1.0
    assert choose_route(0.9, 10.0, 2000.0, [slow], 100).target == "fog"


def test_a_fleet_watcher_passes_over_messages_that_are_not_ours() -> None:
    from types import SimpleNamespace

    watcher = FleetWatcher("127.0.0.1", free_port(), "f")  # no broker: the messages are handed in
    try:
        for topic, payload in (
            ("racmkd/f/d/status", b"null"),
            ("racmkd/f/d/status", b"[1]"),
            ("racmkd/f/d/stats", b"\xff"),
            ("racmkd/f/d", b"{}"),
            ("racmkd/f/d/status", b"[" * 100000),
        ):
            watcher._on_message(watcher.client, None, SimpleNamespace(topic=topic, payload=payload))
        watcher._on_message(watcher.client, None, SimpleNamespace(topic="racmkd/f/d/status", payload=b'{"online": true}'))
        assert watcher.online("d") is True and watcher.messages == 1
        for payload in (b"{}", b'{"online": "false"}', b'{"device": "d"}'):  # no true or false: unknown (tried), not offline (passed over)
            watcher._on_message(watcher.client, None, SimpleNamespace(topic="racmkd/f/d/status", payload=payload))
            assert watcher.online("d") is None, payload
    finally:
        watcher.close()


def test_deploy_apply_hears_the_statuses_alone() -> None:
    """Subscribed to every kind, a watcher of 2,000 devices fell behind their telemetry (6k messages
    a second), and `deploy apply` read statuses late; the watcher it makes asks for statuses alone."""
    from types import SimpleNamespace

    from racmkd.deploy.telemetry import watch_fleet

    for watcher, topics in (
        (FleetWatcher("127.0.0.1", free_port(), "f"), ["racmkd/f/+/+"]),
        (watch_fleet("127.0.0.1", free_port(), "f", [], wait_s=0), ["racmkd/f/+/status"]),
    ):
        try:
            asked: list[object] = []
            watcher._on_connect(SimpleNamespace(subscribe=asked.append), None, {}, SimpleNamespace(is_failure=False))
            assert asked == [[(topic, 1) for topic in topics]] and watcher.connected.is_set()
        finally:
            watcher.close()


def test_the_online_status_refused_at_reconnection_is_sent_before_anything_else() -> None:
    """Reconnected with paho's queue still full of unacknowledged messages, the "online" status was
    refused and never sent again: the retained last will kept a live device "offline", and `deploy
    apply` passed it over. It is owed until paho takes it, ahead of the buffered messages."""
    from types import SimpleNamespace

    import paho.mqtt.client as mqtt

    from racmkd.deploy.telemetry import TelemetryPublisher

    publisher = TelemetryPublisher("127.0.0.1", free_port(), "f", "d", buffer_size=4)  # no broker: paho is replaced below
    try:
        publisher.client.loop_stop()
        sent: list[str] = []
        full = [True]

        def publish(topic: str, body: object, qos: int = 0, retain: bool = False) -> object:
            if full[0]:
                return SimpleNamespace(rc=mqtt.MQTT_ERR_QUEUE_SIZE)
            sent.append(topic)
            return SimpleNamespace(rc=mqtt.MQTT_ERR_SUCCESS)

        publisher.client.publish = publish  # type: ignore[method-assign]
        publisher._on_connect(publisher.client, None, None, SimpleNamespace(is_failure=False))
        publisher.publish("stats", {"n": 1})
        assert sent == [] and publisher._status_due and publisher.stats()["buffered"] == 1
        full[0] = False
        publisher._on_publish(publisher.client, None, 1)  # an acknowledgement frees room
        assert sent == ["racmkd/f/d/status", "racmkd/f/d/stats"] and not publisher._status_due
    finally:
        publisher.connected.clear()
        publisher.close(offline=False)


def test_first_commands_on_a_new_registry_at_once_wait_for_each_other(tmp_path: Path) -> None:
    """The switch to WAL needs an exclusive lock that SQLite, to avoid a deadlock, does not wait for:
    first commands on a new registry at once failed at once with "database is locked" (blamed on
    the folder's permissions or disk; 7 rounds in 60 here, 6 in 40 with two processes). The switch
    is retried for as long as the busy timeout."""
    import threading

    failures = []
    for round_ in range(60):
        root = tmp_path / str(round_)
        root.mkdir()
        started = threading.Barrier(3)

        def first_command(root: Path = root, started: threading.Barrier = started) -> None:
            registry = ModelRegistry.__new__(ModelRegistry)  # (its connection alone)
            registry.root = root
            started.wait()
            try:
                with registry._database(transaction=True) as db:
                    db.execute("CREATE TABLE IF NOT EXISTS t (x)")
            except RegistryError as err:
                failures.append(str(err))

        threads = [threading.Thread(target=first_command) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []


def test_no_online_status_follows_the_offline_one_of_a_clean_shutdown() -> None:
    """close() published "offline" while the "online" status a connection owed was still due: paho's
    thread then sent it (5 in 120 clean shutdowns against a real broker), and as the disconnect was
    clean no last will followed: the stopped device stayed online at the broker."""
    from types import SimpleNamespace

    import paho.mqtt.client as mqtt

    from racmkd.deploy.telemetry import TelemetryPublisher

    publisher = TelemetryPublisher("127.0.0.1", free_port(), "f", "d")  # no broker: paho is replaced below
    publisher.client.loop_stop()
    sent: list[bytes] = []

    def publish(topic: str, body: object, qos: int = 0, retain: bool = False) -> object:
        sent.append(body if isinstance(body, bytes) else str(body).encode())
        return SimpleNamespace(rc=mqtt.MQTT_ERR_SUCCESS, wait_for_publish=lambda timeout: True)

    publisher.client.publish = publish  # type: ignore[method-assign]
    publisher.connected.set()
    publisher._status_due = True  # what a connection owes until paho takes it
    publisher.client.disconnect = lambda: None  # type: ignore[method-assign]
    publisher.close()
    publisher._flush(blocking=False)  # paho's thread, after the close (its _on_publish)
    publisher._on_connect(publisher.client, None, None, SimpleNamespace(is_failure=False))  # or a reconnection meanwhile
    assert [json.loads(b)["online"] for b in sent] == [False], sent


def test_a_broker_address_is_parsed_or_refused_at_startup_and_a_lost_broker_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """`--mqtt` was cut at its last colon: "[::1]:18884" kept its brackets and never connected,
    ":1883" became a host, "::1" port 1, port 99999 was taken; and nothing said the broker was
    never reached."""
    from typer.testing import CliRunner

    from racmkd.cli import app
    from racmkd.deploy.telemetry import TelemetryPublisher, broker_address

    assert broker_address("[::1]:18884") == ("::1", 18884) and broker_address("::1") == ("::1", 1883) and broker_address("[::1]") == ("::1", 1883)
    assert broker_address("broker.local") == ("broker.local", 1883) and broker_address("127.0.0.1:1884") == ("127.0.0.1", 1884)
    # A default port where the address writes none (`deploy apply` passes 0 to tell whether it wrote one).
    assert broker_address("broker.local", default_port=8883) == ("broker.local", 8883) and broker_address("h:1883", default_port=8883) == ("h", 1883)
    assert broker_address("::1", default_port=8883) == ("::1", 8883) and broker_address("[::1]:1883", default_port=8883) == ("::1", 1883)
    for text, expected in (
        (":1883", "no host"),
        ("127.0.0.1:99999", "invalid port"),
        ("host:0", "invalid port"),
        ("[::1", "in brackets"),
        ("h:x", "invalid port"),
        ("mqtt://127.0.0.1:1883", "a URL"),  # (its colons made it a "bare IPv6 address", accepted, never connected)
        ("a b", "no host name"),
        ("host/x", "no host name"),
        ("1:2:zz", "no IPv6 address"),
    ):
        with pytest.raises(ValueError, match=expected):
            broker_address(text)
    out = CliRunner().invoke(app, ["serve", "--role", "edge", "--run", "no-such-run", "--mqtt", "127.0.0.1:99999"])
    assert out.exit_code == 2 and "--mqtt" in out.output and "invalid port" in out.output
    with caplog.at_level("ERROR", logger="racmkd.deploy.telemetry"):
        publisher = TelemetryPublisher("127.0.0.1", free_port(), "f", "d")  # nothing listens there
        try:
            deadline = time.monotonic() + 10
            while "cannot connect" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            publisher.close()
    assert "MQTT broker at 127.0.0.1:" in caplog.text and "cannot connect" in caplog.text


def test_a_fleet_watcher_without_a_broker_says_it_is_not_connected() -> None:
    """deploy apply read every status as unknown and said nothing (and paho printed "Client is not
    connected" on closing): the command now notes that no device is skipped as offline."""
    from racmkd.deploy.telemetry import FleetWatcher

    watcher = FleetWatcher("127.0.0.1", free_port(), "fleet")  # nothing listens there
    try:
        assert not watcher.wait_for(lambda w: w.connected.is_set(), timeout_s=0.5) and watcher.online("any") is None
    finally:
        watcher.close()


def ca_and_server_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A CA (ca.pem) and a certificate it signed for 127.0.0.1 (server.pem, server.key)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject: str, key, issuer: str, signer, ca: bool):  # noqa: ANN001, ANN202
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            import ipaddress

            builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(certificate("racmkd test CA", ca_key, "racmkd test CA", ca_key, True).public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(certificate("127.0.0.1", server_key, "racmkd test CA", ca_key, False).public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


def start_configured_broker(folder: Path, lines: list[str], port: int) -> subprocess.Popen:
    """Mosquitto with the configuration `lines` (as root it keeps root: it reads the password file
    only once it has dropped to its own user, which cannot read pytest's folders)."""
    conf = folder / "mosquitto.conf"
    conf.write_text("\n".join([*lines, "user root"]) + "\n")
    return start_broker(port, ["-c", str(conf)])


def shipped_broker_settings(text: str, passwd: Path, port: int) -> list[str]:
    """A shipped mosquitto.conf's lines with its listener and password file moved here."""
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("listener "):
            line = f"listener {port} 127.0.0.1"
        elif line.startswith("password_file "):
            line = f"password_file {passwd}"
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def test_the_broker_login_comes_from_the_environment_and_is_checked_before_a_server_starts(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from racmkd.deploy.telemetry import BrokerLogin

    ca, _, _ = ca_and_server_certificate(tmp_path)
    assert BrokerLogin.from_environment({}) == BrokerLogin()
    login = BrokerLogin.from_environment({"RACMKD_MQTT_USERNAME": "edge", "RACMKD_MQTT_PASSWORD": "pw\n", "RACMKD_MQTT_CA_FILE": str(ca)})
    assert login == BrokerLogin("edge", "pw", str(ca))  # (a secret made from a file written with echo ends in a newline)
    assert BrokerLogin.from_environment({"RACMKD_MQTT_CA_FILE": "system"}).ca_file == "system"
    from racmkd.deploy import telemetry

    told: list[object] = []
    client = SimpleNamespace(tls_set=lambda ca_certs: told.append(ca_certs))
    with pytest.MonkeyPatch.context() as store:
        store.setattr(telemetry.ssl, "get_default_verify_paths", lambda: SimpleNamespace(cafile=None, capath="/etc/ssl/certs"))
        BrokerLogin(ca_file="system").apply(client)
        store.setattr(
            telemetry.ssl, "get_default_verify_paths", lambda: SimpleNamespace(cafile=None, capath=None)
        )  # python.org's macOS builds before "Install Certificates": no CA at all
        BrokerLogin(ca_file="system").apply(client)
    import certifi

    assert told == [None, certifi.where()]  # the system's store where it is there, else certifi's
    with pytest.MonkeyPatch.context() as env:  # a watcher made directly logs in as the publisher does (it was anonymous)
        env.setenv("RACMKD_MQTT_USERNAME", "edge")
        env.setenv("RACMKD_MQTT_PASSWORD", "pw")
        watcher = FleetWatcher("127.0.0.1", free_port(), "f")
        try:
            assert watcher.login == BrokerLogin("edge", "pw")
        finally:
            watcher.close()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    for environ, expected in (
        ({"RACMKD_MQTT_PASSWORD": "pw"}, r"RACMKD_MQTT_USERNAME is not"),
        ({"RACMKD_MQTT_USERNAME": "a\x00b"}, "control character"),
        ({"RACMKD_MQTT_CA_FILE": str(tmp_path / "missing.pem")}, "missing.pem: no such file"),
        ({"RACMKD_MQTT_CA_FILE": str(garbage)}, "garbage.pem: not a PEM file"),
    ):
        with pytest.raises(ValueError, match=expected):
            BrokerLogin.from_environment(environ)
    # An edge server refuses it at startup, before loading a model or starting a thread.
    settings = ServeConfig(mqtt_host="127.0.0.1", mqtt_port=free_port())
    threads = threading.active_count()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RACMKD_MQTT_PASSWORD", "pw")
        env.delenv("RACMKD_MQTT_USERNAME", raising=False)
        with pytest.raises(ValueError, match="RACMKD_MQTT_USERNAME"):
            EdgeService(load_config(None), tmp_path / "no-run", settings)
    assert threading.active_count() == threads


def test_telemetry_logs_in_to_a_broker_that_takes_no_anonymous_client_and_over_tls(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The shipped brokers (compose and Kubernetes) took anonymous clients: anyone could publish a
    device's "offline" and keep it from every update. They take a login now, which the edge and
    `deploy apply` send from the environment, with TLS where RACMKD_MQTT_CA_FILE names a CA."""
    import yaml

    from racmkd.deploy.telemetry import BrokerLogin, TelemetryPublisher, watch_fleet

    passwd = tmp_path / "passwd"
    subprocess.run([shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-c", "-b", str(passwd), "edge", "s3cret"], check=True)
    ca, certificate, key = ca_and_server_certificate(tmp_path)
    (tmp_path / "other").mkdir()
    other_ca = ca_and_server_certificate(tmp_path / "other")[0]  # a CA that did not sign the broker's certificate
    deploy = Path(__file__).resolve().parents[1] / "deploy"
    k8s_conf = next(d for d in yaml.safe_load_all((deploy / "k8s" / "config.yaml").read_text()) if d)["data"]["mosquitto.conf"]
    for shipped in ((deploy / "mosquitto" / "mosquitto.conf").read_text(), k8s_conf):
        port, tls_port = free_port(), free_port()
        lines = shipped_broker_settings(shipped, passwd, port)
        assert "allow_anonymous false" in lines
        broker = start_configured_broker(
            tmp_path, [*lines, f"listener {tls_port} 127.0.0.1", f"cafile {ca}", f"certfile {certificate}", f"keyfile {key}"], port
        )
        watchers = []
        try:
            right, wrong = BrokerLogin("edge", "s3cret"), BrokerLogin("edge", "guess")
            with caplog.at_level("ERROR", logger="racmkd.deploy.telemetry"):
                anonymous = TelemetryPublisher("127.0.0.1", port, "f", "anonymous", login=BrokerLogin())
                watchers += [watch_fleet("127.0.0.1", port, "f", ["d"], wait_s=5, login=login) for login in (BrokerLogin(), wrong)]
                deadline = time.monotonic() + 10
                while "anonymous clients needs $RACMKD_MQTT_USERNAME" not in caplog.text and time.monotonic() < deadline:
                    time.sleep(0.05)
                anonymous.close()
            assert "refused the connection" in caplog.text and "anonymous clients needs $RACMKD_MQTT_USERNAME" in caplog.text
            assert [w.connected.is_set() for w in watchers] == [False, False]
            assert "anonymous clients" in watchers[0].refused and "for user 'edge'; check $RACMKD_MQTT_USERNAME" in watchers[1].refused
            for login, listener in ((right, port), (BrokerLogin("edge", "s3cret", str(ca)), tls_port)):
                publisher = TelemetryPublisher("127.0.0.1", listener, "f", "d", login=login)
                try:
                    watcher = watch_fleet("127.0.0.1", listener, "f", ["d"], wait_s=10, login=login)
                    watchers.append(watcher)
                    assert watcher.connected.is_set() and watcher.wait_for(lambda w: w.online("d") is True, timeout_s=10), (login, watcher.devices)
                finally:
                    publisher.close()
            caplog.clear()
            with caplog.at_level("ERROR", logger="racmkd.deploy.telemetry"):
                untrusting = TelemetryPublisher("127.0.0.1", tls_port, "f", "d2", login=BrokerLogin("edge", "s3cret", str(other_ca)))
                try:
                    assert not untrusting.connected.wait(2)
                finally:
                    untrusting.close()
            assert "RACMKD_MQTT_CA_FILE does not verify" in caplog.text
        finally:
            for watcher in watchers:
                watcher.close()
            broker.kill()
            broker.wait()


def test_json_audio_of_whole_numbers_is_int16_pcm() -> None:
    """JSON numbers come as floats: int16 PCM written out as numbers was read as float samples, so
    a recording 90 dB below full scale (a range of a few units) was answered as live over JSON and
    refused as silent in an .npz of int16. Fractions in [-1, 1] stay as they came."""
    import json as json_

    from racmkd.config import ServeConfig
    from racmkd.data.signals import SIGNALS, AudioSpec
    from racmkd.deploy.server import parse_request

    audio = SIGNALS.create("audio")
    faint = np.random.default_rng(1).integers(-3, 4, 8000).astype(np.int16)
    for body, kind in ((json_.dumps({"audio": faint.tolist()}).encode(), "application/json"), (npz(audio=faint), "application/x-npz")):
        sent = parse_request(body, kind, ServeConfig(), ["audio"]).raws()["audio"]
        assert sent.dtype == np.int16 and audio.input_quality(audio.to_raw(sent, AudioSpec())) == 0.0, kind  # dead either way (the runtime: 422)
    loud = (np.sin(np.arange(8000) / 4) * 5000).astype(np.int16)
    as_json = parse_request(json_.dumps({"audio": loud.tolist()}).encode(), "application/json", ServeConfig(), ["audio"]).raws()["audio"]
    assert as_json.dtype == np.int16 and np.array_equal(as_json, loud)
    fractions = parse_request(json_.dumps({"audio": (loud / 32768).tolist()}).encode(), "application/json", ServeConfig(), ["audio"]).raws()["audio"]
    assert fractions.dtype == np.float32 and np.allclose(fractions, loud / 32768)
    typed = parse_request(npz(audio=faint.astype(np.float32)), "application/x-npz", ServeConfig(), ["audio"]).raws()["audio"]
    assert typed.dtype == np.float32  # an .npz's array keeps the type it was sent with: float samples of whole numbers are floats


def test_audio_without_a_sample_rate_is_at_the_rate_the_served_models_hear() -> None:
    """A request's default was 8000 Hz whatever the run: a 16-kHz run's audio was resampled as if
    it were 8 kHz. It is the run's rate now (data.options.audio.sample_rate); a given rate stands."""
    import json as json_

    from racmkd.config import RunConfig, ServeConfig
    from racmkd.deploy.server import parse_request, run_audio_rate

    wave = [0.1, -0.2] * 4000
    body = json_.dumps({"audio": wave}).encode()
    assert parse_request(body, "application/json", ServeConfig(), ["audio"], audio_rate=16000).sample_rate == 16000
    given = json_.dumps({"audio": wave, "sample_rate": 8000}).encode()
    assert parse_request(given, "application/json", ServeConfig(), ["audio"], audio_rate=16000).sample_rate == 8000
    assert run_audio_rate(RunConfig()) == 8000


def test_a_request_is_checked_against_the_served_models_specs(tiny_run: Path) -> None:
    """A run's pen traces of 64 samples were refused (422: "a trace (3, 32)"): requests were checked
    against the signal's default spec, not the served models'. A modality none of them reads is
    not checked against any spec (its shape is the sender's), only for finite numbers, and ignored."""
    import json as json_

    from racmkd.config import ServeConfig
    from racmkd.data.signals import PenSpec, pen_trace

    trace = pen_trace(np.array([[0, 0, 0], [3, 4, 0], [6, 0, 1], [9, 4, 1]]), 64)
    body = json_.dumps({"pen": trace.tolist()}).encode()
    with pytest.raises(HTTPException, match=r"a trace \(3, 32\)"):
        parse_request(body, "application/json", ServeConfig(), ["pen"])
    inputs = parse_request(body, "application/json", ServeConfig(), ["pen"], raw_specs={"pen": PenSpec(samples=64, length=8)})
    assert inputs.arrays["pen"].shape == (3, 64)
    with_pen = json_.dumps({"pen": trace.tolist(), "audio": [0.0, 0.5, -0.5] * 100}).encode()  # a trimodal device, a server without the pen
    assert set(parse_request(with_pen, "application/json", ServeConfig(), ["image", "audio"]).arrays) == {"image", "audio"}
    with pytest.raises(HTTPException, match="pen: holds NaN"):
        parse_request(json_.dumps({"pen": [[1e39, 0.0]], "audio": [0.0, 0.5] * 100}).encode(), "application/json", ServeConfig(), ["image", "audio"])
    service = ModelService("fog", tiny_run, ["high", "medium"])
    assert service.raw_specs() == {m: service.predictors["high"].specs[m] for m in ("image", "audio")}


def test_protected_inference_without_a_token_is_refused_at_startup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """serve.protect_inference with $RACMKD_TOKEN unset started, then answered every /predict 403."""
    from racmkd.config import RunConfig
    from racmkd.deploy.server import serve

    monkeypatch.delenv("RACMKD_TOKEN", raising=False)
    settings = ServeConfig(protect_inference=True)
    with pytest.raises(ValueError, match=r"protect_inference is on but \$RACMKD_TOKEN is not set"):
        serve("edge", RunConfig(), tmp_path / "no-run", settings)  # before any model is loaded
    with pytest.raises(ValueError, match="protect_inference"):
        create_app(ModelService.__new__(ModelService), settings, token=None)


def test_a_management_token_read_with_its_newline_opens_and_one_no_header_can_carry_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A token file written with `echo` ends in a newline: the edge compared it whole and refused
    every client for good (401), and `deploy push` failed on "Illegal header value", printing the
    token. The token is read stripped; one with a control or non-ASCII character inside is refused
    at start, naming the variable and not the token."""
    from typer.testing import CliRunner

    from racmkd.cli import app
    from racmkd.config import RunConfig, read_token
    from racmkd.deploy.server import serve

    monkeypatch.setenv("RACMKD_TOKEN", "s3cret\n")
    assert read_token("RACMKD_TOKEN") == "s3cret"
    for value in (" ", ""):
        monkeypatch.setenv("RACMKD_TOKEN", value)
        assert read_token("RACMKD_TOKEN") is None
    monkeypatch.setenv("RACMKD_TOKEN", "s3c ret\tx")
    assert read_token("RACMKD_TOKEN") == "s3c ret\tx"  # a space or tab inside is carried as it is (such tokens worked)
    for value, kind in (("s3cr\u00e9t", "a non-ASCII character"), ("s3\x01cret", "a control character")):
        monkeypatch.setenv("RACMKD_TOKEN", value)
        with pytest.raises(ValueError, match=kind) as refused:
            serve("edge", RunConfig(), tmp_path / "no-run", ServeConfig())  # before any model is loaded
        assert "$RACMKD_TOKEN" in str(refused.value) and "s3c" not in str(refused.value)
        pushed = CliRunner().invoke(app, ["deploy", "push", "edge", "--url", "http://127.0.0.1:9", "--root", str(tmp_path / "none")])
        assert pushed.exit_code == 2 and kind in pushed.output and "s3c" not in pushed.output, pushed.output


def test_port_0_serves_and_announces_a_free_port() -> None:
    from racmkd.deploy.server import check_listen_address

    port = check_listen_address("127.0.0.1", 0)
    assert 0 < port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free: the address announced is one uvicorn can take


def test_a_bank_archive_cannot_write_outside_its_folder(tmp_path: Path) -> None:
    import tarfile

    from racmkd.deploy.registry import unpack

    def archive(*members: tuple[str, bytes, bytes]) -> bytes:  # (name, type, content)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, kind, content in members:
                info = tarfile.TarInfo(name)
                info.type, info.size = kind, len(content)
                if kind == tarfile.SYMTYPE:
                    info.linkname, info.size = "/etc/passwd", 0
                tar.addfile(info, io.BytesIO(content))
        return buffer.getvalue()

    # Signed or not: a leaked key must not reach past the release's folder, nor overwrite the store's
    # own files beside the bank (a member named release.bin replaced the bytes the device checks).
    for name, kind in (
        ("../escaped.txt", tarfile.REGTYPE),
        ("release.bin", tarfile.REGTYPE),
        ("sub/high.onnx", tarfile.REGTYPE),
        ("link.onnx", tarfile.SYMTYPE),
    ):
        with pytest.raises(RegistryError, match="is not a plain bank.json or .onnx file at the top of the bank"):
            unpack(archive(("bank.json", tarfile.REGTYPE, b"{}"), (name, kind, b"bad")), "bank", tmp_path / "slot")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "slot" / "release.bin").exists()
    assert sorted(
        p.name for p in unpack(archive(("bank.json", tarfile.REGTYPE, b"{}"), ("a.onnx", tarfile.REGTYPE, b"x")), "bank", tmp_path / "ok").iterdir()
    ) == [
        "a.onnx",
        "bank.json",
    ]


def test_a_bank_naming_variant_files_outside_its_folder_is_refused(bank_dir: Path, tmp_path: Path) -> None:
    """Installed over the air, such a bank loaded its variants from elsewhere, out of the reach of
    the store's checks of the release's files."""
    from racmkd.runtime.bank import BankError, load_bank

    shutil.copytree(bank_dir, tmp_path / "bank")
    data = json.loads((tmp_path / "bank" / "bank.json").read_text())
    data["variants"][0]["path"] = str((bank_dir / data["variants"][0]["path"]).resolve())  # the same file, by its absolute path
    (tmp_path / "bank" / "bank.json").write_text(json.dumps(data))
    with pytest.raises(BankError, match="is not a file of the bank's folder"):
        load_bank(tmp_path / "bank")


def test_every_device_profile_gets_a_model_or_a_reason(bank_dir: Path, keys: tuple[Path, Path], tiny_run: Path, tiny_dataset, tmp_path: Path) -> None:  # noqa: ANN001
    from racmkd.pipeline import export_model

    devices = [load_device(d) for d in device_names()]
    registry, key = ModelRegistry(tmp_path / "registry"), load_private_key(keys[0])
    exported = export_model(load_config(tiny_run / "config.yaml"), tiny_dataset, tiny_run, "critical", tmp_path / "onnx", int8=False, int8_weights=True)
    onnx_path = Path(exported["fp32"]["path"])
    assert exported["source_sha256"] == sha256((tiny_run / "checkpoints" / "critical.pt").read_bytes())  # what the files are made from
    weights_only = exported["int8-weights"]  # written beside it, checked on the whole test split
    assert weights_only["parity_vs_fp32"]["argmax_agreement"] >= 0.9 and weights_only["bytes"] < exported["fp32"]["bytes"]
    q = weights_only["parity_vs_fp32"]
    assert exported["fp32"]["meets_bound"] and weights_only["meets_bound"] == (
        q["argmax_agreement"] >= 0.99 and q["reference_accuracy"] - q["accuracy"] <= 0.01
    )
    again = export_model(load_config(tiny_run / "config.yaml"), tiny_dataset, tiny_run, "critical", tmp_path / "onnx", int8=False, int8_weights=False)
    # the earlier export's variant is not left beside the new record
    assert "int8-weights" not in again and not Path(weights_only["path"]).exists() and onnx_path.is_file()
    registry.register(onnx_path, "critical", key, tier="critical", metrics={"accuracy": 0.8}, device_fit=device_fit(onnx_path, "onnx", devices))
    registry.register(bank_dir, "edge", key, metrics={"accuracy": 0.9}, device_fit=device_fit(bank_dir, "bank", devices))
    assignments = {a.device: a for a in plan(registry, devices)}
    assert set(assignments) == set(device_names())
    assert assignments["cortex-m7"].release is not None and assignments["cortex-m7"].release.name == "critical"  # the bank needs an OS
    assert "ONNX Runtime" in next(c["reason"] for c in assignments["cortex-m7"].candidates if c["release"].startswith("edge"))
    # A bank's latency is judged too: its cheapest configuration against the device's target.
    pi = (Path(__file__).parents[1] / "configs" / "devices" / "raspberry-pi-4.yaml").read_text()
    (tmp_path / "hurried-pi.yaml").write_text(
        pi.replace("latency_target_ms: 5.0", "latency_target_ms: 0.001").replace("name: raspberry-pi-4", "name: hurried-pi")
    )
    fits = device_fit(bank_dir, "bank", [load_device("raspberry-pi-4"), load_device(tmp_path / "hurried-pi.yaml")])
    assert (
        fits["raspberry-pi-4"]["fits"]
        and 0 < fits["raspberry-pi-4"]["estimated_latency_ms"] <= 5.0
        and "cheapest configuration" in fits["raspberry-pi-4"]["reason"]
    )
    assert not fits["hurried-pi"]["fits"] and "exceeds the 0.001 ms target" in fits["hurried-pi"]["reason"]
    assert assignments["raspberry-pi-4"].release.name == "edge"  # fits, and more accurate
    assert all(len(a.candidates) == 2 and all(c["reason"] for c in a.candidates) for a in assignments.values())  # every candidate says why
    # The plan goes by the signed manifests: the table's unsigned copies, or a re-written manifest, change nothing.
    with sqlite3.connect(tmp_path / "registry" / "registry.sqlite") as db:
        db.execute("UPDATE releases SET metrics = ? WHERE name = 'critical'", (json.dumps({"accuracy": 1.0}),))
        manifest = json.loads(db.execute("SELECT manifest FROM releases WHERE name = 'critical'").fetchone()[0])
        db.execute("UPDATE releases SET manifest = ? WHERE name = 'critical'", (json.dumps({**manifest, "metrics": {"accuracy": 1.0}}),))
    altered = {a.device: a for a in plan(registry, devices, load_public_key(keys[1]))}
    assert altered["raspberry-pi-4"].release.name == "edge" and altered["cortex-m7"].release is None
    assert "signature does not verify" in altered["cortex-m7"].reason
    # A record whose version column was raised does not pass for a newer release: the manifest's version stands, and the plan passes it over.
    with sqlite3.connect(tmp_path / "registry" / "registry.sqlite") as db:
        db.execute("UPDATE releases SET version = 9 WHERE name = 'edge'")
    assert [(r.name, r.version, r.altered) for r in registry.latest() if r.name == "edge"] == [("edge", 1, ("version",))]
    raised = {a.device: a for a in plan(registry, devices, load_public_key(keys[1]))}
    assert raised["raspberry-pi-4"].release is None and "disagrees with its signed manifest on version" in raised["raspberry-pi-4"].reason
    with pytest.raises(RegistryError, match="no registry here"):
        ModelRegistry(tmp_path / "mistyped", create=False)
    assert not (tmp_path / "mistyped").exists()
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "registry.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(RegistryError, match="not a readable registry database"):
        ModelRegistry(tmp_path / "garbage")


# Servers --------------------------------------------------------------------------------------------------


def test_a_server_process_that_dies_at_start_says_why_and_keeps_its_log(tmp_path: Path) -> None:
    failing = ServerProcess([sys.executable, "-c", "import sys; print('listening on nothing'); sys.exit('port 80: permission denied')"], "doomed server")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="doomed server exited with status 1") as caught:
        wait_http(f"http://127.0.0.1:{free_port()}/health", 60, process=failing)
    assert time.monotonic() - started < 30  # at once, not after the timeout
    assert "listening on nothing" in str(caught.value) and "port 80: permission denied" in str(caught.value)  # stdout and stderr both
    failing.stop(error=caught.value)
    assert failing.log.exists() and str(failing.log) in caught.value.__notes__[0]  # kept for the reader, and named
    failing.log.unlink()
    # A server that never answers: the timeout names the URL and what the server said; a clean stop ends it and removes its log.
    silent = ServerProcess([sys.executable, "-c", "import time; print('starting', flush=True); time.sleep(600)"], "silent server")
    deadline = time.monotonic() + 30
    while "starting" not in silent.tail() and time.monotonic() < deadline:  # (the interpreter's start, slow on a loaded machine)
        time.sleep(0.05)
    with pytest.raises(TimeoutError, match=r"did not answer within 1 s; its output ends:\nstarting"):
        wait_http(f"http://127.0.0.1:{free_port()}/health", 1, process=silent)
    silent.stop(timeout_s=5)
    assert silent.returncode is not None and not silent.log.exists()


def test_a_server_stops_when_the_process_that_started_it_is_killed(tiny_run: Path) -> None:
    """A benchmark or test run killed outright (SIGKILL, a CI time limit) runs no cleanup: its
    servers went on holding their ports and a core, their parent gone."""
    port = free_port()
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from racmkd.deploy.loopback import ServerProcess, wait_http\n"
            f"server = ServerProcess([sys.executable, '-m', 'racmkd.cli', 'serve', '--role', 'fog', '--run', {str(tiny_run)!r}, '--port', '{port}'], 'fog server')\n"
            f"wait_http('http://127.0.0.1:{port}/health', process=server)\n"
            "print(server.pid, server.log, flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pid, log = starter.stdout.readline().split()
    finally:
        starter.kill()
        starter.wait()
    try:
        deadline = time.monotonic() + 30
        while _running(int(pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(int(pid)), "the server outlived the process that started it"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        if _running(int(pid)):
            os.kill(int(pid), signal.SIGKILL)
        Path(log).unlink(missing_ok=True)


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (an exited one nobody has reaped yet, a zombie, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_connection_whose_headers_do_not_come_is_closed_and_bad_requests_are_logged_once() -> None:
    """uvicorn bounds neither: a connection that sent nothing, or half its headers, stayed open for
    good (1,100 took an edge under a 1024-file limit off the network), and every malformed request
    wrote a line to the log."""
    import uvicorn
    from fastapi import FastAPI

    from racmkd.deploy.server import OncePerMinute, server_config

    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        return {"bytes": len(await request.body())}

    port = free_port()
    server = uvicorn.Server(server_config(app, ServeConfig(header_timeout_s=1.0), port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)

        def closed_within(sock: socket.socket, seconds: float) -> bool:
            sock.settimeout(seconds)
            try:
                return sock.recv(1024) == b""
            except TimeoutError:
                return False

        silent, partial = socket.create_connection(("127.0.0.1", port)), socket.create_connection(("127.0.0.1", port))
        partial.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\n")
        assert closed_within(silent, 10) and closed_within(partial, 10)
        # A request whose headers came is the body's to time (serve.body_timeout_s): a slow body is answered.
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
        time.sleep(2.0)
        slow.sendall(b"cd")
        slow.settimeout(10)
        answer = b""
        while b'{"bytes":4}' not in answer and (part := slow.recv(4096)):
            answer += part
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"bytes":4}')
        slow.close()
        logged: list[str] = []
        collect = logging.Handler()
        collect.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
        logging.getLogger("uvicorn.error").addHandler(collect)  # (uvicorn's loggers do not reach the root's)
        for once in logging.getLogger(
            "uvicorn.error"
        ).filters:  # (the process's filter, fresh: a bad request another test sent in the last minute held this one back)
            if isinstance(once, OncePerMinute):
                once.next_at, once.held = 0.0, 0
        try:
            for _ in range(5):
                with socket.create_connection(("127.0.0.1", port)) as bad:
                    bad.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
                    bad.settimeout(10)
                    assert b"400" in bad.recv(4096)
        finally:
            logging.getLogger("uvicorn.error").removeHandler(collect)
        assert [m for m in logged if "Invalid HTTP request" in m] == ["Invalid HTTP request received."]
    finally:
        server.should_exit = True
        thread.join(10)


class ThreadServer:
    """A uvicorn server on a loopback port, in a thread of this process."""

    def __init__(self, app, port: int) -> None:  # noqa: ANN001
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{port}"
        wait_http(self.url + "/health", 60)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def start_broker(port: int, arguments: list[str] | None = None) -> subprocess.Popen:
    """Mosquitto listening on `port` (given `arguments`, such as a configuration file, they must say so)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.fail("the MQTT tests need Mosquitto (apt-get install mosquitto; `make test` installs it as root)")
    proc = subprocess.Popen([binary, *(arguments or ["-p", str(port)])], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:  # (it could not listen: said at once, with its reason, not after 10 s; nor another listener taken for it)
            raise RuntimeError(f"mosquitto exited with {proc.returncode}: {proc.stderr.read().decode(errors='replace')[-500:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError("mosquitto did not start")


@pytest.fixture(scope="module")
def fog_app(tiny_run: Path) -> TestClient:
    service = ModelService("fog", tiny_run, ["high", "medium"])
    return TestClient(create_app(service, ServeConfig(max_body_bytes=200_000), token=None))


def test_uptime_is_not_moved_by_the_wall_clock(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/health's uptime_s on the wall clock read -3600 after the clock stepped back an hour, and 56
    years after a board without a real-time clock synced by NTP."""
    service = ModelService("fog", tiny_run, ["critical"])
    client = TestClient(create_app(service, ServeConfig(), token=None))
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3600)
    uptime = client.get("/health").json()["uptime_s"]
    assert 0 <= uptime < 600
    service.close()


def npz(**arrays: object) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def compressed_npz(**arrays: object) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def flipped(data: bytes) -> bytes:
    """`data` with its middle byte changed (in an archive's array: a zip's CRC no longer matches)."""
    return data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1 :]


def raw_zip(members: dict[str, bytes]) -> bytes:
    """A zip whose members are not .npy files (np.load hands them back as bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_the_servers_npy_reader_reads_what_np_load_reads_and_refuses_the_rest(version: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    arrays = [
        rng.integers(0, 255, (28, 28)).astype(np.uint8),
        np.asfortranarray(rng.random((5, 7))),
        rng.random(10).astype(">f4"),
        np.zeros(0, np.float32),
        np.array(16000),
    ]
    for array in arrays:
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, array, version=version)
        ours, numpys = read_npy(buffer.getvalue()), np.load(io.BytesIO(buffer.getvalue()))
        assert (
            ours.dtype == numpys.dtype and ours.shape == numpys.shape and np.array_equal(ours, numpys) and ours.flags.f_contiguous == numpys.flags.f_contiguous
        )
        if array.size:  # a truncated file
            with pytest.raises(ValueError, match="smaller"):
                read_npy(buffer.getvalue()[:-1])
    pickled = io.BytesIO()
    np.lib.format.write_array(pickled, np.array([{"a": 1}], dtype=object), version=version, allow_pickle=True)
    with pytest.raises(ValueError, match="Python objects"):
        read_npy(pickled.getvalue())
    with pytest.raises(ValueError, match="magic"):
        read_npy(b"PK\x03\x04 not an npy file")


def test_an_npz_member_is_inflated_no_further_than_its_listed_size() -> None:
    """zipfile inflated a member whole before cutting it to the size its sender listed: a 1.7-KB
    bzip2 body took an edge server to 4.4 GB, a 3.9-MB deflate one 2 GB further (no token needed).
    Deflate is inflated to the listed size and no further; bzip2 and LZMA are refused."""
    from fastapi import HTTPException

    from racmkd.config import ServeConfig
    from racmkd.deploy.server import read_npz

    image = np.zeros((28, 28), np.uint8)
    arrays, _ = read_npz(compressed_npz(image=image), ServeConfig())  # np.savez_compressed's archives still read
    assert np.array_equal(arrays["image"], image)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo("image.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w") as member:
            member.write(npz_header_for((28, 28)) + bytes(64 * 2**20))  # 64 MB of zeros: 64 KB deflated
        info.file_size = 912  # what the directory lists: a 28x28 array's .npy
    with pytest.raises(HTTPException, match="inflates past the 912 bytes"):
        read_npz(buffer.getvalue(), ServeConfig())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_BZIP2) as archive:
        archive.writestr("image.npy", npz(image=image))
    with pytest.raises(HTTPException, match="compression type 12"):
        read_npz(buffer.getvalue(), ServeConfig())


def npz_header_for(shape: tuple[int, ...]) -> bytes:
    """The .npy header of a uint8 array of `shape`."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def test_an_internal_error_gets_a_500_and_the_server_goes_on(tiny_run: Path, tiny_dataset) -> None:  # noqa: ANN001
    """An unhandled error is answered here, not re-raised to uvicorn (which would drop the
    keep-alive connection and the requests queued on it); its details stay in the server's log."""
    import torch

    service = ModelService("fog", tiny_run, ["high"])
    client = TestClient(create_app(service, ServeConfig(), token=None))  # raises what escapes the app
    raw = tiny_dataset.raw_batch("test", torch.tensor([0]))
    request = {"image": raw["image"][0].numpy().tolist()}
    working = service.answer

    def broken(*args: object) -> None:
        raise RuntimeError("secret detail")

    service.answer = broken  # type: ignore[method-assign]
    failed = client.post("/predict", json=request)
    assert failed.status_code == 500 and "RuntimeError" in failed.text and "secret" not in failed.text
    service.answer = working  # type: ignore[method-assign]
    assert client.post("/predict", json=request).status_code == 200
    assert 'racmkd_requests_total{outcome="error",role="fog",route="-"} 1.0' in client.get("/metrics").text


def test_an_upload_that_stops_coming_is_answered_408() -> None:
    """A /deploy upload that stalled mid-body held its connection and a worker for ever (and kept a
    server told to stop from stopping); one that pauses longer than serve.body_timeout_s gets 408."""
    import asyncio

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from racmkd.deploy.server import GuardManagement

    async def deploy(request) -> JSONResponse:  # noqa: ANN001 - (a form read as the edge's /deploy reads it)
        return JSONResponse({"fields": len(await request.form())})

    inner = Starlette(routes=[Route("/deploy", deploy, methods=["POST"])])
    guarded = GuardManagement(inner, frozenset({"/deploy"}), refuse=lambda header: None, max_bytes=10**6, idle_timeout_s=0.2)
    body = b"--b\r\nContent-Disposition: form-data; name=manifest\r\n\r\n{}\r\n--b--\r\n"
    headers = [(b"content-type", b"multipart/form-data; boundary=b"), (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http", "path": "/deploy"}
    scope.update(raw_path=b"/deploy", root_path="", query_string=b"", headers=headers, client=("127.0.0.1", 5000), server=("127.0.0.1", 8003))

    def answer(chunks: list[dict]) -> int:
        async def receive() -> dict:
            if chunks:
                return chunks.pop(0)
            await asyncio.sleep(3600)  # the client sends nothing more
            return {"type": "http.disconnect"}

        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        asyncio.run(asyncio.wait_for(guarded(scope, receive, send), 30))
        return next(m["status"] for m in sent if m["type"] == "http.response.start")

    assert answer([{"type": "http.request", "body": body[:20], "more_body": True}]) == 408
    assert answer([{"type": "http.request", "body": body[:20], "more_body": True}, {"type": "http.request", "body": body[20:], "more_body": False}]) == 200


def test_a_client_gone_mid_body_is_no_server_error(tiny_run: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A client that closes its connection before the whole body came was counted as a server
    error, with a traceback in the log: any client could fill both. Now it is counted apart."""
    import asyncio

    app = create_app(ModelService("fog", tiny_run, ["high"]), ServeConfig(), token=None)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8001),
    }
    incoming = [{"type": "http.request", "body": b'{"image": ', "more_body": True}]

    async def receive() -> dict:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        pass

    asyncio.run(app(scope, receive, send))
    metrics = TestClient(app).get("/metrics").text
    assert 'outcome="client_gone"' in metrics and 'outcome="error"' not in metrics, metrics
    assert not any("unhandled error" in r.getMessage() for r in caplog.records)
    # Gone mid-upload elsewhere (a release to /deploy: FastAPI reads the form before the route runs).
    from starlette.requests import ClientDisconnect

    from racmkd.deploy.server import AnswerInternalErrors

    seen: list[str] = []

    async def reads_a_form(scope: dict, receive: object, send: object) -> None:
        raise ClientDisconnect()

    guarded = AnswerInternalErrors(reads_a_form, on_error=lambda path, err: seen.append("error"), on_gone=lambda path: seen.append(f"gone {path}"))
    asyncio.run(guarded({**scope, "path": "/deploy"}, receive, send))
    assert seen == ["gone /deploy"]
    # A body that never ends held its connection for ever: refused after serve.body_timeout_s.
    app = create_app(ModelService("fog", tiny_run, ["high"]), ServeConfig(body_timeout_s=0.2), token=None)
    incoming, sent = [{"type": "http.request", "body": b'{"image": ', "more_body": True}], []

    async def never_more() -> dict:
        if incoming:
            return incoming.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def noted(message: dict) -> None:
        sent.append(message)

    started = time.monotonic()
    asyncio.run(app(scope, never_more, noted))
    assert time.monotonic() - started < 5 and sent[0]["status"] == 408 and b"serve.body_timeout_s" in sent[1]["body"]


def test_an_edge_whose_every_variant_fails_answers_503_not_a_client_error(tiny_run: Path, tiny_dataset, bank_dir: Path) -> None:  # noqa: ANN001
    """Every variant failing is the device's fault: 503 with the failures named, counted as an
    error in /metrics (not as a bad request), and with no variant in force racmkd_variant names
    none (it named the release as if it served)."""
    import torch

    cfg = load_config(tiny_run / "config.yaml")
    service = EdgeService(cfg, tiny_run, cfg.serve)
    try:
        runtime = service.engine.runtime

        class Broken:
            def run(self, *args: object, **kwargs: object) -> None:
                raise RuntimeError("simulated accelerator fault")

        for variant in runtime.table.variants:
            runtime._session(variant)
            runtime._sessions[variant.id] = Broken()
        client = TestClient(create_app(service, cfg.serve, token=None))
        raw = tiny_dataset.raw_batch("test", torch.tensor([0]))
        reply = client.post("/predict", json={"image": raw["image"][0].numpy().tolist(), "audio": raw["audio"][0].numpy().tolist()})
        assert reply.status_code == 503 and "no variant can answer this request" in reply.json()["detail"]
        metrics = client.get("/metrics").text
        assert 'outcome="error"' in metrics and 'outcome="bad_request"' not in metrics
        assert service.describe()["runtime"]["unavailable"] and "racmkd_variant{" not in metrics, metrics
    finally:
        service.close()


def test_an_edge_counts_the_bad_inputs_it_passed_over_in_its_metrics(tiny_run: Path, tiny_dataset, bank_dir: Path) -> None:  # noqa: ANN001
    """A faulty sensor on one device of a fleet: its answers say an input was passed over, and
    /metrics counts them by modality (nothing else did)."""
    import torch

    cfg = load_config(tiny_run / "config.yaml")
    service = EdgeService(cfg, tiny_run, cfg.serve)
    try:
        raw = tiny_dataset.raw_batch("test", torch.tensor([0]))
        overexposed = np.full((28, 28), 230, dtype=np.uint8)
        overexposed[10:18, 10:18] = 255
        for _ in range(3):  # (as the runtime sees them: a sensor read on the device, past the server's checks)
            answer = service.engine.runtime.predict(image=overexposed, audio=raw["audio"][0].numpy())
            assert any(f.startswith("image input passed over") for f in answer.fallbacks)
        metrics = TestClient(create_app(service, cfg.serve, token=None)).get("/metrics").text
        assert 'racmkd_inputs_passed_over{modality="image"} 3.0' in metrics, metrics
    finally:
        service.close()


def test_a_busy_fog_says_so_at_once_instead_of_answering_too_late(tiny_run: Path, tiny_dataset) -> None:  # noqa: ANN001
    """Requests queued for worker threads without a bound: a fog under 200 edges that give up after
    250 ms answered none in time. Past serve.max_waiting it answers 503 at once (an edge then
    answers itself), and those it took are answered."""
    import asyncio
    import threading

    import torch

    service = ModelService("fog", tiny_run, ["high"])
    release, answer = threading.Event(), service.answer
    service.answer = lambda *args: release.wait(30) and answer(*args)
    app = create_app(service, ServeConfig(max_waiting=2), token=None)
    raw = tiny_dataset.raw_batch("test", torch.tensor([0]))
    body = {"image": raw["image"][0].numpy().tolist(), "audio": raw["audio"][0].numpy().tolist()}

    async def five_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fog") as client:
            calls = [asyncio.create_task(client.post("/predict", json=body)) for _ in range(5)]
            for _ in range(600):  # (until the three past the limit are answered, 30 s at most)
                if sum(c.done() for c in calls) == 3:
                    break
                await asyncio.sleep(0.05)
            release.set()
            return [*await asyncio.gather(*calls), await client.get("/metrics")]

    *replies, metrics = asyncio.run(five_at_once())
    assert sorted(r.status_code for r in replies) == [200, 200, 503, 503, 503]
    assert 'outcome="busy",role="fog",route="-"} 3.0' in metrics.text  # (turned away, not the device's failure: that is "error")
    busy = next(r for r in replies if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "serve.max_waiting" in busy.json()["detail"]
    with pytest.raises(ConfigError, match="max_waiting 0"):
        ServeConfig(max_waiting=0)


def test_bad_requests_get_4xx_and_good_ones_an_answer(fog_app: TestClient, tiny_dataset) -> None:  # noqa: ANN001
    import torch

    raw = tiny_dataset.raw_batch("test", torch.tensor([0]))
    image, audio = raw["image"][0].numpy(), raw["audio"][0].numpy()
    ok = fog_app.post("/predict", json={"image": image.tolist(), "audio": audio.tolist()})
    assert ok.status_code == 200 and ok.json()["served_by"] == "fog" and len(ok.json()["probabilities"]) == 10
    binary = fog_app.post("/predict", content=npz(image=image, audio=audio, sample_rate=np.array(8000)), headers={"Content-Type": "application/x-npz"})
    assert binary.status_code == 200 and binary.json()["label"] == ok.json()["label"]
    assert fog_app.post("/predict?x=1", json={"image": image.tolist(), "audio": audio.tolist(), "model": "medium"}).json()["model"] == "medium"
    cases = [
        (dict(content=b"{not json", headers={"Content-Type": "application/json"}), 422, "invalid JSON"),
        (dict(json={"image": [[0.0] * 5] * 5}), 422, "28x28"),
        (dict(json={"image": [[-1.0, 255.0] + [0.0] * 26] * 28}), 422, "[0, 1]"),  # not a 0-255 image: a negative pixel must not wrap to 255
        (dict(json={}), 422, "no input"),
        (dict(json={"audio": audio.tolist(), "model": "teacher"}), 422, "not served here"),
        (dict(json={"audio": [1e9] * 10, "sample_rate": -4}), 422, "sample_rate"),
        (dict(content=b"\x00" * 300_000, headers={"Content-Type": "application/json"}), 413, "exceeds the limit"),
        (dict(content=b"abc", headers={"Content-Type": "text/plain"}), 415, "unsupported Content-Type"),
        (dict(content=b"PK garbage", headers={"Content-Type": "application/x-npz"}), 422, "npz"),
        (dict(content=npz(audio=np.array([np.nan] * 100)), headers={"Content-Type": "application/x-npz"}), 422, "NaN"),
        (dict(content=npz(lidar=np.zeros(3)), headers={"Content-Type": "application/x-npz"}), 422, "unknown inputs"),
        (dict(json={"image": [[0.0] * 28] * 27 + [[0.0] * 3]}), 422, "rectangular"),
        (dict(content=npz(audio=audio, sample_rate=np.array([8000, 16000])), headers={"Content-Type": "application/x-npz"}), 422, "single value"),
        (dict(json={"audio": audio.tolist(), "lidar": [1.0]}), 422, "lidar"),
        (dict(json={"audio": ["0.5"] * 100}), 422, "valid number"),  # numbers, not strings that look like them
        # The archive's settings go through the JSON request's checks; float64 is checked as float32.
        (dict(content=npz(audio=audio, sample_rate=np.array(np.inf)), headers={"Content-Type": "application/x-npz"}), 422, "sample_rate"),
        (dict(content=npz(audio=audio, sample_rate=np.array(True)), headers={"Content-Type": "application/x-npz"}), 422, "sample_rate"),
        (dict(content=npz(audio=audio, latency_target_ms=np.array(-5.0)), headers={"Content-Type": "application/x-npz"}), 422, "latency_target_ms"),
        (dict(content=npz(audio=np.full(8000, 1e300)), headers={"Content-Type": "application/x-npz"}), 422, "float32"),
        (dict(content=raw_zip({"image": b"\0" * 784}), headers={"Content-Type": "application/x-npz"}), 422, "not .npy arrays"),
        (dict(content=flipped(npz(audio=audio)), headers={"Content-Type": "application/x-npz"}), 422, "CRC"),
        (dict(content=flipped(compressed_npz(audio=audio)), headers={"Content-Type": "application/x-npz"}), 422, "npz"),
        # Checked before anything is decompressed: unknown names, and the total size of the rest.
        (
            dict(content=compressed_npz(**{f"x{i}": np.zeros(10, np.uint8) for i in range(50)}), headers={"Content-Type": "application/x-npz"}),
            422,
            "unknown inputs",
        ),
        (
            dict(
                content=compressed_npz(image=np.zeros(8_000_000, np.uint8), audio=np.zeros(8_000_000, np.uint8)), headers={"Content-Type": "application/x-npz"}
            ),
            413,
            "once decompressed",
        ),
    ]
    for kwargs, status, message in cases:
        reply = fog_app.post("/predict", **kwargs)
        assert reply.status_code == status and message in reply.text, (kwargs.keys(), reply.status_code, reply.text)
    assert fog_app.get("/health").json()["status"] == "ok"  # still serving after all that
    metrics = fog_app.get("/metrics").text
    assert (
        f'racmkd_requests_total{{outcome="bad_request",role="fog",route="-"}} {len(cases)}.0' in metrics and "racmkd_request_latency_seconds_bucket" in metrics
    )
    assert "racmkd_cpu_percent" not in metrics  # the fog has no resource monitor: no made-up zeros
    spec = fog_app.get("/openapi.json").json()
    assert set(spec["paths"]["/predict"]["post"]["requestBody"]["content"]) == {"application/json", "application/x-npz"}
    assert fog_app.post("/deploy").status_code in (404, 405)  # the fog takes no OTA updates


def test_edge_end_to_end_with_fog_broker_registry_and_failures(tiny_run: Path, tiny_dataset, bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: ANN001
    import torch

    broker_port, fog_port, edge_port = free_port(), free_port(), free_port()
    broker = start_broker(broker_port)
    watcher = FleetWatcher("127.0.0.1", broker_port, "test")
    fog = ServerProcess([sys.executable, "-m", "racmkd.cli", "serve", "--role", "fog", "--run", str(tiny_run), "--port", str(fog_port)], "fog server")
    edge_server = None
    try:
        wait_http(f"http://127.0.0.1:{fog_port}/health", process=fog)
        cfg = load_config(
            tiny_run / "config.yaml",
            [
                f"serve.upstreams=[http://127.0.0.1:{fog_port}]",
                "serve.offload_margin=-1.0",
                "serve.probe_interval_s=0.2",
                "serve.breaker_reset_s=60",
                "serve.mqtt_host=127.0.0.1",
                f"serve.mqtt_port={broker_port}",
                "serve.fleet=test",
                "serve.device=edge-a",
                "serve.telemetry_interval_s=0.2",
                f"serve.public_key={keys[1]}",
                f"serve.store_dir={tmp_path / 'device'}",
                "runtime.latency_target_ms=2000",
            ],
        )
        service = EdgeService(cfg, tiny_run, cfg.serve)
        edge_server = ThreadServer(create_app(service, cfg.serve, token=TOKEN), edge_port)
        edge = httpx.Client(base_url=edge_server.url, timeout=30)

        # Register -> sign -> deploy to the edge (full, then a delta) -> predict.
        registry, key = ModelRegistry(tmp_path / "registry"), load_private_key(keys[0])
        v1 = registry.register(bank_dir, "edge", key, metrics={"accuracy": 0.9})
        assert edge.post("/deploy", data={"manifest": json.dumps(v1.manifest), "signature": v1.signature}, files={"payload": ("b", b"x")}).status_code == 401
        missing = edge.post("/deploy", data={"manifest": json.dumps(v1.manifest)}, files={"payload": ("b", b"x")}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert missing.status_code == 422 and missing.json()["detail"] == "invalid request: signature: Field required"  # one line, as /predict's
        first = push(registry, v1, edge_server.url, TOKEN)
        assert first["sent"] == "full" and first["status_code"] == 200, first
        fine_tuned, changed = fine_tuned_head(bank_dir, tmp_path / "v2")
        v2 = registry.register(fine_tuned, "edge", key, metrics={"accuracy": 0.91})
        second = push(registry, v2, edge_server.url, TOKEN)
        assert second["sent"] == "delta" and second["status_code"] == 200 and second["bytes"] < min(1.2 * changed + 2048, 0.25 * second["full_bytes"]), second
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert edge.get("/deployment", headers=auth).json()["current"]["version"] == 2 and "edge v2" in edge.get("/health").json()["model"]
        assert edge.get("/deployment").status_code == 401 and TestClient(create_app(service, cfg.serve, token=None)).get("/deployment").status_code == 403
        # Roll back to v1 and forward to v2 again; a release that verifies but cannot be served changes nothing.
        assert edge.post("/rollback", headers=auth).json()["current"].startswith("edge v1") and "edge v1" in edge.get("/health").json()["model"]
        assert push(registry, v2, edge_server.url, TOKEN)["status_code"] == 200
        unservable = tmp_path / "unservable"
        shutil.copytree(bank_dir, unservable)
        (unservable / "bank.json").write_text(json.dumps({**json.loads((unservable / "bank.json").read_text()), "format": "something-else"}))
        unservable_release = registry.register(unservable, "edge", key)
        refused = push(registry, unservable_release, edge_server.url, TOKEN)
        assert refused["status_code"] == 409 and "could not be served" in refused["answer"]["detail"]
        assert edge.get("/deployment", headers=auth).json()["current"]["version"] == 2 and "edge v2" in edge.get("/health").json()["model"]
        # A tampered blob, a bad signature and a replay of v1 are refused; v2 stays.
        newer = registry.register(fine_tuned_head(bank_dir, tmp_path / "newer")[0], "edge", key, metrics={"accuracy": 0.91})
        tampered = edge.post(
            "/deploy",
            headers={"Authorization": f"Bearer {TOKEN}"},
            data={"manifest": json.dumps(newer.manifest), "signature": newer.signature},
            files={"payload": ("b", registry.blob(newer.sha256)[:-1] + b"!")},
        )
        forged = edge.post(
            "/deploy",
            headers={"Authorization": f"Bearer {TOKEN}"},
            data={"manifest": json.dumps({**newer.manifest, "version": 7}), "signature": newer.signature},
            files={"payload": ("b", registry.blob(newer.sha256))},
        )
        replayed = edge.post(
            "/deploy",
            headers={"Authorization": f"Bearer {TOKEN}"},
            data={"manifest": json.dumps(v1.manifest), "signature": v1.signature},
            files={"payload": ("b", registry.blob(v1.sha256))},
        )
        assert tampered.status_code == 422 and "tampered" in tampered.text and forged.status_code == 422 and "bad signature" in forged.text
        assert replayed.status_code == 422 and "not newer" in replayed.text
        pushed_again = push(registry, v1, edge_server.url, TOKEN)  # refused for what it is, not for its delta: not sent whole again
        assert pushed_again["status_code"] == 422 and pushed_again["sent"] == "delta" and "notes" not in pushed_again, pushed_again
        malformed = {k: v for k, v in newer.manifest.items() if k != "sha256"}  # signed, but not a release
        refused_manifest = edge.post(
            "/deploy",
            headers=auth,
            data={"manifest": json.dumps(malformed), "signature": sign(malformed, key)},
            files={"payload": ("b", registry.blob(newer.sha256))},
        )
        assert refused_manifest.status_code == 422 and "malformed manifest" in refused_manifest.text and "sha256" in refused_manifest.text
        nested = edge.post("/deploy", headers=auth, data={"manifest": "[" * 100000, "signature": newer.signature}, files={"payload": ("b", b"x")})
        assert nested.status_code == 422 and "not JSON" in nested.text
        surrogate = {**newer.manifest, "name": "\ud800"}  # (a lone surrogate in the refusal's text failed its JSON encoding: a 500)
        unsigned = edge.post("/deploy", headers=auth, data={"manifest": json.dumps(surrogate), "signature": newer.signature}, files={"payload": ("b", b"x")})
        assert 400 <= unsigned.status_code < 500 and "bad signature" in unsigned.text, unsigned.text
        capped = TestClient(create_app(service, dataclasses.replace(cfg.serve, max_update_bytes=1000), token=TOKEN))
        upload = {"data": {"manifest": json.dumps(newer.manifest), "signature": newer.signature}, "files": {"payload": ("b", b"x" * 5000)}}
        assert capped.post("/deploy", **upload).status_code == 401  # the token first, before the body is read
        assert capped.post("/deploy", headers=auth, **upload).status_code == 413
        assert edge.get("/deployment", headers=auth).json()["current"]["version"] == 2
        # The device's copy of its current release damaged: the delta against it is refused, and the whole release follows.
        (tmp_path / "device" / "slots" / v2.sha256 / "release.bin").write_bytes(b"damaged")
        republished = registry.register(bank_dir, "edge", key, metrics={"accuracy": 0.9})  # v1's bytes as a new version: a delta from v2 exists
        healed = push(registry, republished, edge_server.url, TOKEN)
        assert healed["sent"] == "full" and healed["status_code"] == 200 and "delta" in healed["notes"][0] and "refused" in healed["notes"][0], healed
        assert edge.get("/deployment", headers=auth).json()["current"]["version"] == republished.version
        # The installed bytes published again as a newer version: sent (a delta of nothing), so that the
        # device records the version (it was told "up to date" and kept the old number).
        renumbered = registry.register(bank_dir, "edge", key, metrics={"accuracy": 0.9})
        sent = push(registry, renumbered, edge_server.url, TOKEN)
        assert sent["sent"] == "delta" and sent["status_code"] == 200 and "records the version" in sent["notes"][0], sent
        assert edge.get("/deployment", headers=auth).json()["current"]["version"] == renumbered.version
        assert push(registry, renumbered, edge_server.url, TOKEN)["sent"] == "nothing"

        # Offloading to the fog, then the fog killed mid-stream: every request still answered.
        deadline = time.monotonic() + 20
        while service.upstreams[0].accuracy is None and time.monotonic() < deadline:
            time.sleep(0.1)
        raw = tiny_dataset.raw_batch("test", torch.arange(30))
        answers = []
        for i in range(30):
            if i == 12:
                fog.process.send_signal(signal.SIGKILL)
                fog.process.wait(10)
            reply = edge.post("/predict", json={"image": raw["image"][i].numpy().tolist(), "audio": raw["audio"][i].numpy().tolist()})
            assert reply.status_code == 200, reply.text
            answers.append(reply.json())
        assert all(a["offloaded"] and a["served_by"].endswith("fog") for a in answers[:12])
        assert not any(a["offloaded"] for a in answers[12:])
        assert any("offload failed" in f for a in answers[12:] for f in a["fallbacks"])
        labels = tiny_dataset.splits["test"].labels[:30].numpy()
        assert np.mean([a["label"] == y for a, y in zip(answers, labels)]) > 0.6

        # Telemetry: the watcher hears the edge; with the broker down the edge buffers, and resends after.
        assert watcher.wait_for(lambda w: w.online("edge-a") and w.devices["edge-a"]["counts"].get("stats", 0) > 0, 15)
        broker.kill()
        broker.wait(10)
        assert edge.post("/predict", json={"audio": raw["audio"][0].numpy().tolist()}).status_code == 200  # the edge goes on
        assert watcher.wait_for(lambda w: service.telemetry.stats()["buffered"] > 3, 15)
        before = watcher.devices["edge-a"]["counts"]["stats"]
        broker = start_broker(broker_port)
        assert watcher.wait_for(lambda w: service.telemetry.stats()["buffered"] == 0 and w.devices["edge-a"]["counts"]["stats"] > before + 3, 30)
        assert "racmkd_upstream_open" in edge.get("/metrics").text
        # A device that dies is announced by its last will.
        doomed = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"import time; from racmkd.deploy.telemetry import TelemetryPublisher as T; T('127.0.0.1', {broker_port}, 'test', 'doomed', keepalive_s=1); time.sleep(60)",
            ]
        )
        assert watcher.wait_for(lambda w: w.online("doomed") is True, 30)
        doomed.kill()
        assert watcher.wait_for(lambda w: w.online("doomed") is False, 20)
    except BaseException as err:
        fog.stop(error=err)  # (its log kept, and named in the failure)
        raise
    finally:
        if edge_server is not None:
            edge_server.stop()
        fog.stop()
        watcher.close()
        broker.kill()


# The edge without the training stack ---------------------------------------------------------------------

# Run a command with the `train` extra's packages made unimportable, as on an edge image (racmkd's core only).
WITHOUT_TRAINING_STACK = """
import importlib.abc, sys
class NoTrainingStack(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "sklearn", "matplotlib", "onnxscript", "torch_pruning", "ot"}:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed on an edge device)", name=name)
sys.meta_path.insert(0, NoTrainingStack())
from racmkd.cli import main
main()
"""


def without_training_stack(*args: str) -> subprocess.CompletedProcess:
    """`racmkd ARGS` with the training stack unimportable, to its end."""
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TRAINING_STACK, *args], capture_output=True, text=True, timeout=300, env={**os.environ, "RACMKD_PROGRESS": "0"}
    )


def test_the_edge_serves_without_the_training_stack(tiny_run: Path, tiny_dataset, bank_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    import tomllib

    import torch

    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    core = {Requirement(d).name.lower() for d in project["dependencies"]}
    training = {Requirement(d).name.lower() for d in project["optional-dependencies"]["train"]}
    assert {"torch", "scikit-learn", "matplotlib", "onnxscript", "torch-pruning"} <= training and not core & training  # (any specifier: ~=, <, [extra])
    port = free_port()
    command = [sys.executable, "-c", WITHOUT_TRAINING_STACK, "serve", "--role", "edge", "--run", str(tiny_run), "--port", str(port)]
    edge = subprocess.Popen(command, env={**os.environ, "RACMKD_PROGRESS": "0"}, stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        rows = torch.arange(20)
        raw = tiny_dataset.raw_batch("test", rows)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for i in range(len(rows)):
                image = np.round(raw["image"][i].numpy() * 255).astype(np.uint8)
                reply = client.post("/predict", content=npz(image=image, audio=raw["audio"][i].numpy()), headers={"Content-Type": "application/x-npz"})
                assert reply.status_code == 200, reply.text
                assert reply.json()["variants"] and abs(sum(reply.json()["probabilities"]) - 1) < 1e-4
            assert client.post("/predict", json={"audio": raw["audio"][0].numpy().tolist(), "sample_rate": 16000}).status_code == 200  # resampled
            assert client.post("/predict", json={"image": [[0.0] * 5] * 5}).status_code == 422
            metrics = client.get("/metrics").text
            assert "racmkd_cpu_percent" in metrics  # the monitor reads the machine without torch
            assert "racmkd_telemetry_buffered" not in metrics  # no --mqtt: no backlog to report, not a made-up 0.0
    finally:
        edge.send_signal(signal.SIGINT)
        _, errors = edge.communicate(timeout=30)
    assert "not installed on an edge device" not in errors, errors  # nothing tried the training stack, not even in the background


def test_profile_and_deploy_errors_need_no_training_stack(bank_dir: Path, tmp_path: Path) -> None:
    """`racmkd profile` and any error of the registry and deploy commands imported the exporter
    (torch) on an edge install: a ModuleNotFoundError's traceback instead of the profile or the
    one-line error."""
    variant = next(bank_dir.glob("*.onnx"))
    edge = without_training_stack
    profiled = edge("profile", str(variant), "--device", "cortex-m7", "--no-measure", "--json", "--out", str(tmp_path / "p.json"))
    assert profiled.returncode == 0 and json.loads(profiled.stdout)["device"] == "cortex-m7", profiled.stderr
    for args in (
        ("registry", "list", "--root", str(tmp_path / "none")),
        ("deploy", "push", "edge", "--url", "http://127.0.0.1:1", "--root", str(tmp_path / "none")),
    ):
        failed = edge(*args)
        assert failed.returncode == 2 and "Traceback" not in failed.stderr and "training install" not in failed.stderr, failed.stderr


def test_commands_that_train_say_which_install_they_need(tiny_run: Path) -> None:
    """On an edge install, a command that needs PyTorch (or another of the `train` extra's
    packages) ended in a ModuleNotFoundError's traceback; it names the install to add instead, and
    which commands this install runs. The list of the extra's modules follows pyproject.toml."""
    import importlib.metadata
    import tomllib

    from packaging.requirements import Requirement

    from racmkd.cli import TRAINING_MODULES

    extra = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]
    modules: dict[str, set[str]] = {}
    for module, distributions in importlib.metadata.packages_distributions().items():
        for distribution in distributions:
            modules.setdefault(Requirement(distribution).name.lower().replace("_", "-"), set()).add(module)
    onnx_needs = {Requirement(r).name.lower().replace("_", "-") for r in importlib.metadata.requires("onnx") or []}
    for requirement in (Requirement(r) for r in extra):
        name = requirement.name.lower().replace("_", "-")
        if name in onnx_needs:  # (ml_dtypes: every install has it)
            assert not modules[name] & TRAINING_MODULES
        else:
            assert modules[name] & TRAINING_MODULES, f"{name}: none of its modules {sorted(modules[name])} in racmkd.cli.TRAINING_MODULES"
    assert TRAINING_MODULES <= set().union(*(modules[Requirement(r).name.lower().replace("_", "-")] for r in extra))
    for args, named in (
        (("simulate", "--run", str(tiny_run), "--requests", "5"), "racmkd simulate"),
        (("edge", "run", "--run", str(tiny_run), "--seconds", "1"), "racmkd edge run"),
        (("compress", "--run", str(tiny_run)), "racmkd compress"),
        (("serve", "--role", "fog", "--run", str(tiny_run)), "racmkd serve --role fog"),
    ):
        failed = without_training_stack(*args)
        assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr
        assert f"{named} needs the training install" in failed.stderr and "pip install 'racmkd[train]'" in failed.stderr, failed.stderr
        assert "serve --role edge" in failed.stderr  # what this install does run


def test_kubernetes_manifests_and_compose_file_are_valid() -> None:
    import kubernetes_validate
    import yaml

    root = Path(__file__).resolve().parents[1] / "deploy"
    documents = [d for f in sorted((root / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    kinds = {d["kind"] for d in documents}
    assert {"Deployment", "DaemonSet", "Service", "ConfigMap"} <= kinds
    for d in documents:
        kubernetes_validate.validate(d, "1.30", strict=True)
    roles = {d["metadata"]["labels"].get("app.kubernetes.io/component") for d in documents if d["kind"] in ("Deployment", "DaemonSet")}
    assert roles == {"cloud", "fog", "edge", "broker"}
    edge = next(d for d in documents if d["kind"] == "DaemonSet")
    assert edge["spec"]["template"]["spec"]["nodeSelector"] == {"racmkd.io/tier": "edge"}
    assert {"PersistentVolumeClaim"} <= kinds and next(d for d in documents if d["kind"] == "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadOnlyMany"]
    init = edge["spec"]["template"]["spec"]["initContainers"][0]
    assert "chown" in " ".join(init["command"]) and init["volumeMounts"][0]["mountPath"] == "/var/lib/racmkd"  # the store is writable by the image's user
    compose = yaml.safe_load((root / "compose.yaml").read_text())
    assert {"cloud", "fog", "edge", "mqtt"} <= set(compose["services"])
    for name, service in compose["services"].items():  # what Compose itself refuses: an unknown service to wait for, an undeclared volume, ports not a list
        assert set(service.get("depends_on", [])) <= set(compose["services"]), name
        assert isinstance(service.get("ports", []), list) and isinstance(service.get("volumes", []), list), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith((".", "/")) or source in (compose.get("volumes") or {}), f"{name}: volume {source} is not declared"
    dockerfile = (root / "docker" / "Dockerfile").read_text()
    stages = {line.split(" AS ")[1].strip() for line in dockerfile.splitlines() if line.startswith("FROM ") and " AS " in line}
    assert {"build", "cloud", "fog", "edge"} <= stages
    for role in ("cloud", "fog", "edge"):
        assert compose["services"][role]["build"]["target"] == role
        stage = dockerfile.split(f" AS {role}\n")[1].split("\nFROM ")[0]
        assert f'"--role", "{role}"' in stage and "USER racmkd" in stage  # each role starts its own server, not as root
    assert "FROM base AS edge" in dockerfile and "[train]" not in dockerfile.split(" AS edge\n")[1]  # the edge image: racmkd's core, no PyTorch
    edge_wheels = dockerfile.split(" AS edge\n")[1].split("from=")[1].split(",")[0]  # nor builds one: its wheels' stage holds none
    assert "torch" not in dockerfile.split(f" AS {edge_wheels}\n")[1].split("\nFROM ")[0]


def test_a_flood_of_one_log_message_is_logged_once_a_minute_with_a_count() -> None:
    """asyncio logs a traceback for every connection it cannot accept once the process is out of
    file descriptors (158 MB in 35 s under a flood); the server's settings hold it to one a minute."""
    import asyncio

    from fastapi import FastAPI

    from racmkd.deploy.server import OncePerMinute, server_config

    server_config(FastAPI(), ServeConfig(), free_port())  # (the filters come with the server's settings)
    (once,) = [f for f in logging.getLogger("asyncio").filters if isinstance(f, OncePerMinute)]
    once.next_at, once.held = 0.0, 0
    logged: list[str] = []
    collect = logging.Handler()
    collect.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("asyncio").addHandler(collect)
    loop = asyncio.new_event_loop()
    try:
        for i in range(100):
            loop.call_exception_handler({"message": "socket.accept() out of system resource", "exception": OSError(24, "Too many open files"), "socket": i})
        loop.call_exception_handler({"message": "another problem"})
    finally:
        loop.close()
        logging.getLogger("asyncio").removeHandler(collect)
    assert len(logged) == 2 and logged[0].startswith("socket.accept() out of system resource") and logged[1] == "another problem" and once.held == 99
    once.next_at = 0.0  # a minute later: the next one says how many were held back
    later = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "socket.accept() out of system resource", (), None)
    assert once.filter(later) and later.getMessage().startswith("(99 more like it in the last 60 s, not logged)")


def test_a_server_raises_its_open_file_limit_to_the_hard_one() -> None:
    """At a service manager's soft limit of 1024, a few hundred clients took an edge off the network."""
    script = (
        "import resource\n"
        "from racmkd.deploy.server import raise_open_file_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "raise_open_file_limit()\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    soft, hard = map(int, done.stdout.split())
    assert soft == (65536 if hard < 0 else min(hard, 65536)) > 256, done.stderr  # (hard < 0: unlimited)


def test_the_servers_and_the_runtime_import_where_there_is_no_fork_nor_resource_module() -> None:
    """Windows has neither os.register_at_fork nor the `resource` module: importing the runtime
    raised AttributeError and every `racmkd serve` role died after loading its models."""
    script = (
        "import os, sys\n"
        "del os.register_at_fork, os.fork\n"
        "import racmkd.runtime.edge\n"
        "from racmkd.deploy.server import raise_open_file_limit\n"
        "sys.modules['resource'] = None  # (psutil imports it on Linux: blocked after)\n"
        "raise_open_file_limit()\n"
        "print('imported')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "imported", done.stderr


def test_serve_raises_the_open_file_limit_before_it_listens(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from racmkd.deploy import server

    calls: list[str] = []
    monkeypatch.setattr(server, "raise_open_file_limit", lambda: calls.append("raised"))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *args, **kwargs: calls.append("served"))
    server.serve("fog", load_config(tiny_run / "config.yaml"), tiny_run, ServeConfig(port=free_port()), announce=lambda address: None)
    assert calls == ["raised", "served"]

    def stdout_on_a_full_disk(address: str) -> None:  # (`racmkd serve >> /var/log/racmkd.log`: it exited at startup)
        raise OSError(28, "No space left on device")

    server.serve("fog", load_config(tiny_run / "config.yaml"), tiny_run, ServeConfig(port=free_port()), announce=stdout_on_a_full_disk)
    assert calls == ["raised", "served"] * 2
