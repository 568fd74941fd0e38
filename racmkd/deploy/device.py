"""The device side of over-the-air updates: verify, patch, check, swap, and roll back.

    <root>/slots/<sha256>/            an installed release: model.onnx, or a variant bank's files
    <root>/slots/<sha256>/release.bin the released bytes themselves (the base the next delta patches)
    <root>/slots/<sha256>/release.json its signed manifest: {manifest, signature}
    <root>/slots/<sha256>/committed.json {"sequence": n}: the n-th commit (or rollback) made it current
    <root>/state.json                 {"current": {manifest, signature}, "previous": {...}, "newest": {...}}

An update arrives as a signed manifest and either the full bytes or a delta against what is
installed. It is refused unless the signature verifies with the fleet's public key, it is newer
than the installed version of the same release (no downgrades or replays), and the (patched)
bytes hash to the manifest's sha256. `stage` unpacks it beside the installed slots and checks it
(`health_check`: every ONNX graph loads in ONNX Runtime and answers finite logits); the server
then loads it for serving, and only then does `commit` make it current by rewriting state.json
atomically. Until that rename the previous release stays current; `rollback` makes the previous
one current again. A device is never left without a working model. A state.json that cannot be
read (damaged on disk) is rebuilt from the slots' signed manifests (`_rebuilt_state`), so that the
device keeps serving its release and refusing older ones. A store that cannot be written (a full
disk, a read-only folder) refuses the update with `StoreError`, naming the folder and the fix; the
half-written slot goes and the current release stays.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import tarfile
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from racmkd.deploy.delta import DeltaError, apply_delta
from racmkd.deploy.registry import MANIFEST_FORMAT, unpack
from racmkd.deploy.signing import SignatureError, verify
from racmkd.utils import atomic_write_bytes, atomic_write_json, building_folder, cached_json, fsync_folder, put_back_aside, remove_stale_work, sha256

log = logging.getLogger(__name__)
SIGNED = "release.json"  # in each slot: the signed manifest it was installed, or last made current, with
COMMITTED = "committed.json"  # in each slot made current: {"sequence": n}, the order a damaged state.json is rebuilt in
NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # (a user's quota full reads as a disk full)


def manifest_problems(manifest: dict[str, Any]) -> list[str]:
    """What is wrong with a release manifest's fields (empty when nothing is)."""
    problems = []
    if not isinstance(manifest.get("name"), str) or not manifest.get("name"):
        problems.append("name must be a non-empty string")
    for key in ("version", "bytes"):
        value = manifest.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.append(f"{key} must be a whole number >= 0, got {value!r}")
    digest = manifest.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        problems.append(f"sha256 must be 64 lowercase hex digits, got {digest!r}")
    if manifest.get("kind") not in ("onnx", "bank"):
        problems.append(f"kind must be 'onnx' or 'bank', got {manifest.get('kind')!r}")
    metrics = manifest.get("metrics", {})
    if not isinstance(metrics, dict):
        problems.append("metrics must be a mapping")
    elif "accuracy" in metrics and not (
        isinstance(metrics["accuracy"], (int, float)) and not isinstance(metrics["accuracy"], bool) and 0 <= metrics["accuracy"] <= 1
    ):
        problems.append(f"metrics.accuracy must be a number in [0, 1], got {metrics['accuracy']!r}")  # (offloading weighs it on every request)
    return problems


class UpdateRefused(ValueError):
    """An update failed verification (signature, hash, delta base); nothing was changed."""


class UpdateFailed(RuntimeError):
    """An update verified but its model did not pass the health check; the previous one stays."""


class StoreError(UpdateFailed):
    """The device's store could not be written (its disk full, its folder read-only): the update or
    rollback did not happen and the current release stays. Not the release's fault, so it is told
    apart from a failed health check (an edge answers 507 for a full disk) and says what to do."""

    def __init__(self, message: str, errno_: int | None) -> None:
        super().__init__(message)
        self.errno = errno_

    @property
    def no_space(self) -> bool:
        """The disk (or the user's quota) is full."""
        return self.errno in NO_SPACE


def store_fix(err: OSError, folder: Path, then: str = "send the release again") -> str:
    """What to do about an OSError writing the store in `folder`, and `then`."""
    if err.errno in NO_SPACE:
        return f"free space on the disk holding {folder} (or set serve.store_dir to a folder on a larger one), then {then}"
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"make {folder} writable by the server's user (or set serve.store_dir to a writable folder), then {then}"
    return f"check the disk holding {folder}, then {then}"


def model_path(folder: Path, kind: str) -> Path:
    """What to load from a release's folder: the ONNX file, or the bank folder itself."""
    return folder / "model.onnx" if kind == "onnx" else folder


@dataclass(frozen=True)
class Installed:
    """A release on the device."""

    manifest: dict[str, Any]
    signature: str
    slot: Path

    @property
    def model_path(self) -> Path:
        return model_path(self.slot, self.manifest["kind"])

    @property
    def label(self) -> str:
        return f"{self.manifest['name']} v{self.manifest['version']} ({self.manifest['sha256'][:12]})"


def default_health_check(path: Path, kind: str) -> None:
    """Every ONNX graph of the release loads and answers finite logits on zero inputs."""
    from racmkd.compress.artifacts import session, zero_feed

    files = [path] if kind == "onnx" else sorted(Path(path).glob("*.onnx"))
    if not files:
        raise UpdateFailed(f"{path}: the release holds no ONNX model")
    if kind == "bank":
        json.loads((Path(path) / "bank.json").read_text())
    for f in files:
        sess = session(f)
        out = sess.run(None, zero_feed(sess))[0]
        if not np.isfinite(out).all():
            raise UpdateFailed(f"{f.name}: the model answers non-finite logits")


def _slot_problem(slot: Path, manifest: dict[str, Any]) -> str | None:
    """What is wrong with an installed slot's files, or None: release.bin must hash to the signed
    sha256, and what was unpacked from it must still be its content, byte for byte."""
    try:
        data = (slot / "release.bin").read_bytes()
    except OSError as err:
        return f"release.bin unreadable ({err})"
    if sha256(data) != manifest["sha256"]:
        return f"release.bin hashes to {sha256(data)[:12]}, not the signed {manifest['sha256'][:12]}: changed on the device"
    try:
        if manifest["kind"] == "onnx":
            expected = {"model.onnx": data}
        else:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
                expected = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
        changed = sorted(name for name, content in expected.items() if not (slot / name).is_file() or (slot / name).read_bytes() != content)
    except (OSError, tarfile.TarError) as err:
        return f"its files cannot be compared with release.bin ({err})"
    return f"{', '.join(changed)} changed on the device since it was installed" if changed else None


def _recorded_order(slot: Path) -> int | None:
    """The sequence number of the commit (or rollback) that last made a slot current, from its
    committed.json; None for a slot never made current, or made current before slots kept one."""
    try:
        sequence = json.loads((slot / COMMITTED).read_text()).get("sequence")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return sequence if isinstance(sequence, int) and not isinstance(sequence, bool) and sequence > 0 else None


def _commit_order(slot: Path) -> tuple[int, float]:
    """How recently a slot was made current, for rebuilding state.json: by its commit record. A
    slot without one (installed before slots kept it, or staged and never committed) comes after
    every recorded one, and such slots by when their manifest was written (close to when they were
    installed), not by version: versions of different release names say nothing of which came last."""
    sequence = _recorded_order(slot)
    if sequence is not None:
        return (sequence, 0.0)
    try:
        return (0, (slot / SIGNED).stat().st_mtime)
    except OSError:
        return (0, 0.0)


def same_release(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two manifests of one release: the same name, version and bytes."""
    return all(a.get(k) == b.get(k) for k in ("name", "version", "sha256"))


class DeviceStore:
    """The releases installed on one device and which is current."""

    def __init__(
        self, root: Path, public_key: Any, health_check: Callable[[Path, str], None] = default_health_check, keep: int = 2, accept: tuple[str, ...] = ()
    ) -> None:
        self.root, self.public_key, self.health_check, self.keep, self.accept = Path(root), public_key, health_check, keep, tuple(accept)
        try:
            (self.root / "slots").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(err.errno, f"cannot hold the device's releases there ({err.strerror}); set serve.store_dir to a folder", str(self.root)) from None
        # The store's lock, held open for the store's life; held by another process instead, this
        # store reads, never writes (`_check_writable`).
        self._owner, self.held_elsewhere = self._own_store()
        self._lock = threading.Lock()
        self._rebuilding = threading.Lock()

    def close(self) -> None:
        """Let go of the store's lock (another store on the folder may then own it)."""
        if self._owner is not None:
            self._owner.close()
            self._owner = None

    def _own_store(self) -> tuple[Any | None, bool]:
        """An exclusive lock on the store (None where it cannot be had), and whether another process
        holds it. A server killed while it staged an update left that release's files in a work
        folder: up to a release's bytes each time, on a device with little storage. Holding the lock, every work folder in
        slots/ is such an orphan, whichever container or boot made it (a restarted container has
        another pid namespace, a device after a power cut another boot: their folders never
        matched this process's host), and goes; without it, those of this host's ended processes."""
        try:
            import fcntl

            handle = open(self.root / ".lock", "a+")  # noqa: SIM115 - held open for the store's life
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # another store is open on this folder
                handle.close()
                remove_stale_work(self.root / "slots")
                return None, True
        except (ImportError, OSError):  # (no flock here, or no lock file can be made)
            remove_stale_work(self.root / "slots")
            return None, False
        for entry in (self.root / "slots").glob(".*.partial"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
        # A slot set aside by a repair cut short between its two renames (`building_folder`): put
        # back where the repaired copy never came in, else removed.
        for entry in (self.root / "slots").glob(".*.old"):
            if entry.is_dir() and not entry.is_symlink():
                put_back_aside(entry.parent / entry.name[1 : -len(".old")], entry)
        return handle, False

    # State ------------------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        text = self._state_bytes()
        if text is None:
            # Missing (deleted, or a kill between a first commit's record and its state.json) while
            # a slot holds a commit record: rebuilt like a damaged one. Read as empty, the device
            # served the run's bank and took an older signed release as new.
            slots = self.root / "slots"
            committed = slots.is_dir() and any(_recorded_order(p) is not None for p in slots.iterdir() if p.is_dir() and not p.name.startswith("."))
            return self._rebuilt_state("missing, while the slots hold committed releases") if committed else {}
        try:
            state = json.loads(text)
        except (ValueError, RecursionError) as err:  # atomic writes never leave one half-written: a disk fault, or a hand
            return self._rebuilt_state(f"not readable JSON ({type(err).__name__}: {err})")
        return state if isinstance(state, dict) else self._rebuilt_state(f"not a JSON object ({type(state).__name__})")

    def _state_bytes(self) -> bytes | None:
        """state.json's bytes (decoded by json.loads: bytes not UTF-8 are damage, rebuilt), None when
        it is missing (or not a file). An OSError is no damage in the file (a disk error, no file handles left, a
        permission changed): a rebuild would overwrite a good state.json and forget versions whose
        slots were pruned (an older signed release of one of them then let in): StoreError, nothing
        changes."""
        try:
            return (self.root / "state.json").read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None
        except OSError as err:
            raise self._store_error(err, "state.json could not be read from", "nothing changed") from None

    def _rebuilt_state(self, problem: str) -> dict[str, Any]:
        """A state.json that cannot be read, rebuilt from the slots whose signed manifest verifies
        and whose files are intact: the one committed last current, the one before it previous
        (`_commit_order`), the highest version of each name as the newest installed. Read as empty,
        it cost the device its release (the run's bank served) and its downgrade protection (an old
        signed release was taken). The damaged file is kept beside it (state.json.damaged); the
        rebuilt one is written atomically, or, on a disk that takes no writes, only logged (it is
        rebuilt again at the next read)."""
        path = self.root / "state.json"
        with self._rebuilding:
            try:  # (another thread may have rebuilt it meanwhile)
                state = json.loads(self._state_bytes() or b"")
                if isinstance(state, dict):
                    return state
            except (ValueError, RecursionError):
                pass
            found = []
            for slot in sorted(p for p in (self.root / "slots").iterdir() if p.is_dir() and not p.name.startswith(".")):
                try:
                    signed = json.loads((slot / SIGNED).read_text())
                    installed = self._installed(signed)  # (its slot named by the manifest's sha256)
                    if installed is None or installed.slot != slot:
                        continue
                    self.check(installed)
                except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError, UpdateRefused):
                    continue
                found.append(installed)
            found.sort(key=lambda i: _commit_order(i.slot), reverse=True)
            entries = [{"manifest": i.manifest, "signature": i.signature} for i in found[:2]]
            newest: dict[str, int] = {}
            for i in found:
                newest[i.manifest["name"]] = max(newest.get(i.manifest["name"], i.manifest["version"]), i.manifest["version"])
            state = {"current": entries[0] if entries else None, "previous": entries[1] if len(entries) > 1 else None, "newest": newest}
            try:
                atomic_write_bytes(path.with_name("state.json.damaged"), path.read_bytes())
                kept = " (the damaged file is kept as state.json.damaged)"
            except OSError:  # (a missing state.json: nothing to keep)
                kept = ""
            try:
                atomic_write_json(path, state)
            except OSError as err:
                log.error(
                    "%s: the rebuilt state could not be written (%s); %s",
                    path,
                    err.strerror,
                    store_fix(err, self.root, "restart the server"),
                )
            log.error(
                "%s: %s; rebuilt from the %d intact signed release(s) in %s: current %s, previous %s, newest versions %s%s",
                path,
                problem,
                len(found),
                self.root / "slots",
                found[0].label if found else "none (the run's bank serves)",
                found[1].label if len(found) > 1 else "none",
                newest or "unknown: releases installed before are no longer known here",
                kept,
            )
            return state

    def _installed(self, entry: Any) -> Installed | None:
        """An entry of state.json as a release; None for none, or for an entry damaged by hand (the
        device then serves the previous release, or its run's bank)."""
        try:
            return Installed(entry["manifest"], entry["signature"], self.root / "slots" / entry["manifest"]["sha256"]) if entry else None
        except (KeyError, TypeError):
            return None

    def _entry(self, state: dict[str, Any], key: str) -> dict[str, Any] | None:
        """state.json's `current` or `previous` entry as it is written, or None for none or for one
        damaged by hand (as `_installed` reads it: updates and rollbacks go on past it)."""
        entry = state.get(key)
        return entry if self._installed(entry) is not None else None

    def current(self) -> Installed | None:
        return self._installed(self._state().get("current"))

    def previous(self) -> Installed | None:
        return self._installed(self._state().get("previous"))

    def newest(self, state: dict[str, Any] | None = None) -> dict[str, int]:
        """The highest version of each release name ever committed here. Comparing with the current
        release alone would let an old signed release back in by way of another name (`edge v1`
        after `critical v1` replaced `edge v5`)."""
        state = self._state() if state is None else state
        newest: dict[str, int] = {}
        recorded = state.get("newest")
        if isinstance(recorded, dict):
            newest.update({n: v for n, v in recorded.items() if isinstance(n, str) and isinstance(v, int)})
        for entry in (state.get("current"), state.get("previous")):  # a state written before "newest" was kept
            installed = self._installed(entry)
            if installed is not None:
                name, version = installed.manifest.get("name"), installed.manifest.get("version")
                if isinstance(name, str) and isinstance(version, int):
                    newest[name] = max(newest.get(name, version), version)
        return newest

    # Updates ----------------------------------------------------------------------------------------

    def verify(self, manifest: dict[str, Any], signature: str) -> None:
        """The signature, then the fields this device acts on: a signed manifest can still be
        malformed (a registry bug, another tool's release) and must be refused, not crash the update."""
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise UpdateRefused(f"not a {MANIFEST_FORMAT} manifest")
        try:
            verify(manifest, signature, self.public_key)
        except SignatureError as err:
            raise UpdateRefused(str(err)) from None
        problems = manifest_problems(manifest)
        if problems:
            raise UpdateRefused(f"malformed manifest: {'; '.join(problems)}")

    def _check_writable(self) -> None:
        """Refuse to change a store whose lock another process holds: two edge servers on one
        store_dir each installed, committed and pruned by their own state.json, and one deleted the
        slot the other had just made current (state.json then named a release no longer on disk)."""
        if self.held_elsewhere:
            raise StoreError(
                f"{self.root}: the store is in use by another process (an edge server on the same serve.store_dir); it takes no update or rollback from this one. Stop the other, or give each server its own serve.store_dir",
                None,
            )

    def stage(self, manifest: dict[str, Any], signature: str, payload: bytes, delta: bool = False) -> Installed:
        """Verify, patch (a delta applies to the current release), unpack into a slot and
        health-check it; nothing becomes current yet (`commit` does that). Refused: a bad signature,
        a version of a release no newer than one installed here before (a downgrade or a replay:
        use `rollback`; the release a rollback replaced may come again), a release name this device
        does not take, bytes that do not hash to the signed sha256. The current release sent again
        is a repair: its slot is unpacked afresh if it no longer passes the health check."""
        self._check_writable()
        self.verify(manifest, signature)
        if self.accept and manifest.get("name") not in self.accept:
            raise UpdateRefused(f"this device takes releases named {', '.join(self.accept)}, not {manifest.get('name')!r}")
        state = self._state()
        current, replaced = self._installed(state.get("current")), self._installed(state.get("previous"))
        newest = self.newest(state).get(manifest["name"])
        # The release a rollback replaced (now the previous one) may come again, a roll forward, and
        # only that one: a release that an update to another name replaced is as old as any other.
        forward_again = (
            state.get("rolled_back_from") == manifest["sha256"]
            and replaced is not None
            and (replaced.manifest.get("name"), replaced.manifest.get("version")) == (manifest["name"], manifest["version"])
        )
        # The current release itself, sent again, repairs a slot damaged since it was installed (no
        # downgrade: the same signed bytes).
        repair = current is not None and same_release(current.manifest, manifest)
        if newest is not None and manifest["version"] <= newest and not (forward_again or repair):
            raise UpdateRefused(
                f"{manifest['name']} v{manifest['version']} is not newer than v{newest}, installed here before: downgrades and replays are refused (roll back instead, or publish it as a new version)"
            )
        if delta:
            if current is None:
                raise UpdateRefused("a delta needs an installed release to patch; send the full model")
            try:
                data = apply_delta((current.slot / "release.bin").read_bytes(), payload, max_bytes=int(manifest["bytes"]))
            except (DeltaError, OSError, KeyError, ValueError) as err:
                raise UpdateRefused(f"delta refused: {err}") from None
        else:
            data = payload
        if sha256(data) != manifest["sha256"]:
            raise UpdateRefused(f"the model's bytes hash to {sha256(data)[:12]}, not the signed {manifest['sha256'][:12]}: tampered or damaged in transit")
        slot = self.root / "slots" / manifest["sha256"]
        stays = f"{current.label if current else 'nothing'} stays current"
        try:
            self._write_slot(slot, manifest, signature, data, stays)
        except OSError as err:  # (a failed health check is an UpdateFailed, raised as it is)
            raise self._store_error(err, f"{manifest['name']} v{manifest['version']} could not be written to", stays) from None
        return Installed(manifest, signature, slot)

    def _write_slot(self, slot: Path, manifest: dict[str, Any], signature: str, data: bytes, stays: str) -> None:
        """Unpack and health-check a release into its slot, unless it is there intact already. An
        OSError is the store's (a full disk, a read-only folder), raised for `stage` to tell apart
        from a release that does not pass the health check: it was reported as one, and the fix is
        on the device, not in the release. Whatever fails, the work folder goes, and a slot there
        before stays as it was: a damaged one is replaced only by a copy that passed (removed first,
        a failed re-unpack took the only copy of the current or previous release with it)."""
        order = None
        present = (slot / "release.bin").is_file()
        repair = present and (_slot_problem(slot, manifest) or not self._healthy(slot, manifest["kind"]))
        if repair:
            order = _recorded_order(slot)  # (a damaged current or previous release keeps its place)
        if not present or repair:
            with building_folder(slot) as partial:  # (swapped in whole if this passes; removed if it fails, a killed server's at the next start)
                try:
                    atomic_write_bytes(partial / "release.bin", data)  # on disk before state.json names it: later deltas patch it
                    atomic_write_json(partial / SIGNED, {"manifest": manifest, "signature": signature})  # what a damaged state.json is rebuilt from
                    if order is not None:
                        atomic_write_json(partial / COMMITTED, {"sequence": order})
                    unpack(data, manifest["kind"], model_path(partial, manifest["kind"]))
                except OSError:
                    raise
                except Exception as err:  # noqa: BLE001 - signed bytes that do not unpack (a bank archive's bad member)
                    raise UpdateFailed(f"{manifest['name']} v{manifest['version']} could not be unpacked ({type(err).__name__}: {err}); {stays}") from None
                try:
                    self.health_check(model_path(partial, manifest["kind"]), manifest["kind"])
                except Exception as err:  # noqa: BLE001 - whatever went wrong, the current release stays
                    raise UpdateFailed(f"{manifest['name']} v{manifest['version']} failed its health check ({type(err).__name__}: {err}); {stays}") from None
            fsync_folder(slot.parent)  # the swap too, before a commit can name the slot
        elif not (slot / SIGNED).is_file():  # a slot installed before slots kept their manifest
            atomic_write_json(slot / SIGNED, {"manifest": manifest, "signature": signature})

    def _store_error(self, err: OSError, what: str, stays: str) -> StoreError:
        """An OSError writing the store as the error a client is shown: the folder, the cause, the fix."""
        return StoreError(f"{what} the device's store {self.root} ({err.strerror or err}): {store_fix(err, self.root)}; {stays}", err.errno)

    def check(self, installed: Installed) -> None:
        """Before an installed release is loaded (at start-up, say): its manifest's signature, its
        slot's release.bin against the signed sha256, and the unpacked files against release.bin.
        Files changed on the device since they were installed are refused like a tampered update
        (UpdateRefused); the server then falls back to the previous release."""
        self.verify(installed.manifest, installed.signature)
        problem = _slot_problem(installed.slot, installed.manifest)
        if problem:
            raise UpdateRefused(f"{installed.label}: {problem}")

    def _healthy(self, slot: Path, kind: str) -> bool:
        """Whether an installed slot still passes the health check."""
        try:
            self.health_check(model_path(slot, kind), kind)
        except Exception:  # noqa: BLE001 - any failure means unpack it again
            return False
        return True

    def commit(self, staged: Installed) -> Installed:
        """Make a staged release current (one atomic rename of state.json); the one it replaces
        becomes the previous release. StoreError when the store takes no writes: nothing changed,
        and the caller discards the staged slot."""
        self._check_writable()
        with self._lock:
            state = self._state()
            current = self._entry(state, "current")
            replaced = current if current and current["manifest"]["sha256"] != staged.manifest["sha256"] else self._entry(state, "previous")
            newest = self.newest(state)
            name, version = staged.manifest["name"], int(staged.manifest["version"])
            newest[name] = max(newest.get(name, version), version)
            # the current release again: what a rollback replaced may still come forward
            repaired = current is not None and same_release(current["manifest"], staged.manifest)
            kept = {"rolled_back_from": state["rolled_back_from"]} if repaired and state.get("rolled_back_from") else {}
            stays = f"{self._installed(current).label if current else 'nothing'} stays current"  # type: ignore[union-attr]
            committed = {"current": {"manifest": staged.manifest, "signature": staged.signature}, "previous": replaced, "newest": newest, **kept}
            self._make_current(staged.slot, committed, f"{staged.label} could not be made current in", stays)
            self._prune(committed)  # (the state as written: a read failing now must not undo a commit made)
        return self._installed(committed["current"])  # type: ignore[return-value]

    def _make_current(self, slot: Path, state: dict[str, Any], what: str, stays: str) -> None:
        """Write the slot's commit record, the next in order (`_commit_order`), and the signed
        manifest it is made current with, then state.json: a damaged state.json is rebuilt in this
        order, not by version (across release names a version says nothing of which came last:
        critical v2 was taken for newer than edge v1 installed after it), and names the version
        made current (the same bytes released again as a new version share the slot, which kept
        the first manifest: a rebuilt state named the old version, and took it for the newest).
        Written before state.json, so that a committed release always has its record; if
        a write fails, the slot's files written are put back as they were, their times too (the
        order of slots without a commit record is their manifest's time; a process killed between
        the two leaves a record for a release never made current: read only if state.json is damaged
        later, when that release, verified and intact, is served). StoreError on an
        OSError: nothing changed."""
        sequence = 1 + max((_recorded_order(p) or 0 for p in (self.root / "slots").iterdir() if p.is_dir() and not p.name.startswith(".")), default=0)
        wanted = {slot / COMMITTED: {"sequence": sequence}, slot / SIGNED: state["current"]}
        written: list[tuple[Path, bytes | None, int]] = []  # each file written: its bytes before (None: there was none) and its time
        try:
            try:
                if slot.is_dir():  # (a slot removed by hand is not made again for its record)
                    for path, content in wanted.items():
                        if cached_json(path) == content:
                            continue  # (the manifest it was installed with: left as it is, its time too)
                        before = path.read_bytes() if path.is_file() else None
                        written.append((path, before, path.stat().st_mtime_ns if before is not None else 0))
                        atomic_write_json(path, content)
                atomic_write_json(self.root / "state.json", state)
            except BaseException:
                for path, before, mtime in reversed(written):
                    with suppress(OSError):  # (each on its own: one that cannot be put back leaves the others to be)
                        if before is None:
                            path.unlink(missing_ok=True)
                        else:
                            atomic_write_bytes(path, before)
                            os.utime(path, ns=(mtime, mtime))
                raise
        except OSError as err:
            raise self._store_error(err, what, stays) from None

    def discard(self, staged: Installed) -> None:
        """Remove a staged slot that will not be committed (unless a committed state names it, or
        the state cannot be read to tell: then it stays, pruned with the older slots later)."""
        try:
            state = self._state()
        except StoreError as err:
            log.error("%s: its staged slot %s is kept", err, staged.slot)
            return
        if staged.manifest["sha256"] not in {e["manifest"]["sha256"] for e in (self._entry(state, "current"), self._entry(state, "previous")) if e}:
            shutil.rmtree(staged.slot, ignore_errors=True)

    def install(self, manifest: dict[str, Any], signature: str, payload: bytes, delta: bool = False) -> Installed:
        """`stage` then `commit`: for a device that needs no more checks than the health check. A
        commit that fails discards the staged slot (it would hold a release's bytes for nothing)."""
        staged = self.stage(manifest, signature, payload, delta)
        try:
            return self.commit(staged)
        except BaseException:
            self.discard(staged)
            raise

    def rollback(self) -> Installed:
        """Make the previous release current again."""
        self._check_writable()
        with self._lock:
            state = self._state()
            previous = self._entry(state, "previous")
            if not previous:
                raise UpdateFailed("no previous release to roll back to")
            replaced = self._entry(state, "current")
            back = self._installed(previous)
            assert back is not None  # (an entry `_entry` returned reads as a release)
            self._make_current(
                back.slot,
                {
                    "current": previous,
                    "previous": replaced,
                    "newest": self.newest(state),
                    "rolled_back_from": replaced["manifest"]["sha256"] if replaced else None,
                },
                f"the rollback to {back.label} could not be written to",
                f"{self._installed(replaced).label if replaced else 'nothing'} stays current",  # type: ignore[union-attr]
            )
        return back

    def _prune(self, state: dict[str, Any]) -> None:
        """Keep the current and previous slots of `state` (and up to `keep` in all); drop older ones."""
        wanted = {e["manifest"]["sha256"] for e in (self._entry(state, "current"), self._entry(state, "previous")) if e}
        slots = sorted((p for p in (self.root / "slots").iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.stat().st_mtime, reverse=True)
        kept = 0
        for slot in slots:
            if slot.name in wanted or kept < self.keep - len(wanted):
                kept += slot.name not in wanted
                continue
            shutil.rmtree(slot, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        state = self._state()
        current, previous = self._installed(state.get("current")), self._installed(state.get("previous"))
        return {"current": current.manifest if current else None, "previous": previous.manifest if previous else None}
