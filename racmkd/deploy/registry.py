"""The model registry: versioned releases, content-addressed blobs, signed manifests.

    <root>/registry.sqlite        one row per release: name, version, kind, tier, modalities,
                                  metrics, device fit, parent version, sha256, manifest, signature
    <root>/blobs/<sha256>         the released bytes, written once, named by their hash
    <root>/deltas/<a>-<b>.delta   zstd patch-from deltas between two blobs, made on demand

A release is one ONNX model (`kind: onnx`, e.g. a tier's compressed artifact) or a whole edge
variant bank (`kind: bank`: bank.json and the ONNX files it names, packed as a deterministic tar). Its
manifest says what it is and what it hashes to, and is signed with the fleet's Ed25519 key;
devices verify the signature and the hash before loading anything (racmkd/deploy/device.py).
Blobs are checked against their names on every read, so a tampered blob is refused here too.
"""

from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import tarfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from racmkd.deploy.delta import DeltaError, apply_delta, delta_header, make_delta
from racmkd.utils import sha256
from racmkd.deploy.signing import sign
from racmkd.utils import atomic_write_bytes

MANIFEST_FORMAT = "racmkd-release/1"

RELEASES_TABLE = """
CREATE TABLE IF NOT EXISTS releases (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    kind TEXT NOT NULL,
    tier TEXT,
    modalities TEXT NOT NULL,
    metrics TEXT NOT NULL,
    device_fit TEXT NOT NULL,
    parent_version INTEGER,
    sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    signature TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (name, version)
);
"""
REMOVED_TABLE = """
CREATE TABLE IF NOT EXISTS removed (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    reason TEXT NOT NULL,
    removed REAL NOT NULL,
    PRIMARY KEY (name, version)
);
"""  # the versions `remove` took out, never given again
SCHEMA = RELEASES_TABLE + REMOVED_TABLE


class RegistryError(ValueError):
    """A release or blob is missing, damaged or inconsistent; the message names it."""


@dataclass(frozen=True)
class Release:
    """One released version of a model, as the registry stores it."""

    name: str
    version: int
    kind: str
    tier: str | None
    modalities: list[str]
    metrics: dict[str, Any]
    device_fit: dict[str, Any]
    parent_version: int | None
    sha256: str
    bytes: int
    manifest: dict[str, Any]
    signature: str
    created: float
    altered: tuple[str, ...] = ()  # the table's columns that disagree with the signed manifest (a tampered or damaged record)
    damaged: str | None = None  # why its record cannot be read (its manifest is not JSON, ...): listed, never planned or pushed

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "tier": self.tier,
            "modalities": self.modalities,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "parent_version": self.parent_version,
            "metrics": self.metrics,
        }


# The releases table's columns, in order: Release's fields without a default (those with one are
# judged on reading). A database whose table has other columns is not ours (see ModelRegistry._check_schema).
COLUMNS = tuple(f.name for f in fields(Release) if f.default is MISSING)


def artifact_kind(path: Path) -> str:
    """ "onnx" for a model file, "bank" for a variant bank folder."""
    path = Path(path)
    if path.is_file():
        return "onnx"
    if (path / "bank.json").is_file():
        return "bank"
    raise RegistryError(f"{path}: neither an ONNX file nor a variant bank folder (no bank.json). Build one with `racmkd edge build`.")


def bank_variant_files(path: Path) -> list[str]:
    """The ONNX files a variant bank's bank.json names: what a device needs of it (not the
    evaluation logits, nor an ONNX file left in the folder by hand, which every device would refuse
    as a variant it cannot load)."""
    bank_json = Path(path) / "bank.json"
    try:
        bank = json.loads(bank_json.read_text())
        names = sorted({v["path"] for v in bank["variants"]})
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RegistryError(f"{bank_json}: not a readable variant bank ({type(err).__name__}: {err}); build it again with `racmkd edge build`") from None
    if not names:  # (signed, it was refused only by each device's health check)
        raise RegistryError(f"{bank_json}: names no variants; build it again with `racmkd edge build`")
    outside = [n for n in names if not isinstance(n, str) or Path(n).name != n]
    if outside:
        raise RegistryError(f"{bank_json}: variants {outside} are not files of the bank's folder; build it again with `racmkd edge build`")
    return names


def pack(path: Path) -> tuple[bytes, str]:
    """The bytes to release for an artifact and its kind: an ONNX file as it is, a variant bank
    folder as a deterministic tar (sorted names, no times or owners), so equal content gives an
    equal hash and small changes give small deltas."""
    path = Path(path)
    if artifact_kind(path) == "onnx":
        return path.read_bytes(), "onnx"
    files = sorted([path / "bank.json", *(path / name for name in bank_variant_files(path))])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for f in files:
            info = tarfile.TarInfo(f.name)
            data = f.read_bytes()
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), "bank"


def unpack(data: bytes, kind: str, destination: Path) -> Path:
    """Write released bytes to `destination` (a file for onnx, a folder for a bank); returns the
    path to load. A bank archive holds what `pack` puts in it and nothing else: bank.json and ONNX
    files, plain and at the top of the folder, together no larger than the archive (it is not
    compressed). A member outside the folder, a link or device, a sparse file (10 KB that unpack
    to 2 GB) or a file of the device's store beside the bank (release.bin, whose hash the device
    checks) is refused, even when signed: a leaked key must not reach past the release's folder."""
    destination = Path(destination)
    if kind == "onnx":
        atomic_write_bytes(destination, data)
        return destination
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = tar.getmembers()
        for member in members:
            name = member.name
            if not member.isfile() or member.issparse() or Path(name).name != name or not (name == "bank.json" or name.endswith(".onnx")):
                raise RegistryError(f"bank archive member {name!r} is not a plain bank.json or .onnx file at the top of the bank")
        unpacked = sum(m.size for m in members)
        if unpacked > len(data):
            raise RegistryError(f"bank archive members hold {unpacked:,} bytes, more than the {len(data):,}-byte archive")
        for member in members:
            atomic_write_bytes(destination / member.name, tar.extractfile(member).read())  # type: ignore[union-attr]
    return destination


def artifact_facts(path: Path, kind: str) -> dict[str, Any]:
    """What a manifest says about the artifact's inputs: the ONNX contract, or the bank's variants."""
    from racmkd.compress.artifacts import read_contract

    path = Path(path)
    if kind == "onnx":
        contract = read_contract(path)
        return {"modalities": list(contract["inputs"]), "contract": contract}
    bank = json.loads((path / "bank.json").read_text())  # (readable: `pack` read it first)
    try:
        return {
            "modalities": bank["modalities"],
            "variants": [f"{v['tier']}/{v['modality']}" for v in bank["variants"]],
            "resident_bytes": sum(v["memory_bytes"] for v in bank["variants"]),
        }
    except (KeyError, TypeError) as err:
        raise RegistryError(f"{path / 'bank.json'}: not a whole variant bank ({type(err).__name__}: {err}); build it again with `racmkd edge build`") from None


def release_problems(manifest: Any) -> list[str]:
    """What is wrong with a stored manifest's fields: a device's checks (`manifest_problems`), and
    the device fit the plan reads (device name -> {fits: bool, reason: str})."""
    from racmkd.deploy.device import manifest_problems

    if not isinstance(manifest, dict):
        return ["its manifest is not a mapping"]
    problems = manifest_problems(manifest)
    fit = manifest.get("device_fit", {})
    if not isinstance(fit, dict) or not all(isinstance(f, dict) and isinstance(f.get("fits"), bool) and isinstance(f.get("reason"), str) for f in fit.values()):
        problems.append("device_fit must map each device to {fits: true or false, reason: text}")
    return problems


def unusable_database(database: Path, err: sqlite3.OperationalError) -> RegistryError:
    """An operational SQLite error (the folder's or the disk's, not the file's content) with the fix."""
    return RegistryError(
        f"{database}: {err}. SQLite writes registry.sqlite-wal and -shm beside it, even to read: make {database.parent} writable, and free space on its disk if it is full"
    )


class ModelRegistry:
    """Releases in SQLite, bytes in content-addressed blobs."""

    def __init__(self, root: Path, create: bool = True) -> None:
        """Open the registry in `root`; `create=False` (reading commands) refuses a folder that
        holds none rather than making an empty one where a path was mistyped."""
        self.root = Path(root)
        database = self.root / "registry.sqlite"
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"{self.root}: a file, not a registry folder")
        if database.is_file():
            self._check_schema(database, create)  # (before anything is written to it: it may be another program's database)
        else:
            self._refuse_lost_records(database)  # (a registry.sqlite deleted beside its blobs: told, not started again at 1)
        if not create and not database.is_file():
            raise RegistryError(f"{self.root}: no registry here (no registry.sqlite). Check --root, or create one with `racmkd registry add`.")
        if not create:
            return
        try:
            (self.root / "blobs").mkdir(parents=True, exist_ok=True)
            (self.root / "deltas").mkdir(parents=True, exist_ok=True)
        except OSError as err:  # (a parent, blobs or deltas that is a file: "[Errno 17] File exists")
            raise RegistryError(f"{self.root}: cannot make the registry's folders ({err.strerror}: {err.filename}); check --root") from None
        try:
            with self._database() as db:
                db.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:  # (an operational one is the folder's or the disk's: told by `_database`)
            raise RegistryError(f"{database}: not a readable registry database ({err})") from None

    @staticmethod
    def _check_schema(database: Path, create: bool) -> None:
        """RegistryError unless `database` holds a releases table of ours (read-only: an SQLite
        file of another program was answered "not enough values to unpack", and got a releases
        table written into it). An empty database is taken when creating."""
        try:
            with closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)) as db:
                tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                columns = tuple(row[1] for row in db.execute("PRAGMA table_info(releases)"))
        except sqlite3.OperationalError as err:
            raise unusable_database(database, err) from None
        except sqlite3.DatabaseError as err:
            raise RegistryError(f"{database}: not a readable registry database ({err}); check --root") from None
        if not tables:
            ModelRegistry._refuse_lost_records(database)  # (reading commands too: "not a racmkd registry" said nothing of the lost records)
            if create:
                return
        if columns != COLUMNS:
            found = f"its releases table has columns {list(columns)}" if columns else f"it holds tables {tables or 'none'}, no releases table"
            raise RegistryError(f"{database}: not a racmkd registry ({found}); check --root, or move that file away")

    @staticmethod
    def _refuse_lost_records(database: Path) -> None:
        """RegistryError when `database` is missing or empty beside releases' blobs: its records
        were lost, and versions started again at 1 would be refused by every device as replays."""
        blobs = database.parent / "blobs"
        held = sum(1 for _ in blobs.iterdir()) if blobs.is_dir() else 0
        if held:
            state = "empty" if database.is_file() else "missing"
            raise RegistryError(
                f"{database}: {state}, but {blobs} holds {held} blob(s): the registry's records were lost. Versions would start again at 1, and devices refuse a version not newer than theirs as a replay. Restore registry.sqlite from a backup, or move the folder away to start a new registry"
            )

    def _connect(self) -> sqlite3.Connection:
        """A connection to the database, in WAL mode. The switch to WAL happens once (it persists in
        the file) and needs an exclusive lock that SQLite does not wait for, unlike the busy timeout
        every other statement waits: two first commands on a new registry at once failed at once
        with "database is locked" (6 in 40); the switch is retried for as long as the timeout."""
        db = sqlite3.connect(self.root / "registry.sqlite", timeout=30)
        if db.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            return db
        deadline = time.monotonic() + 30
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")  # (a file that cannot take WAL answers the mode it keeps, as before: no error)
                return db
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @contextmanager
    def _database(self, transaction: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection (in one transaction with `transaction`); SQLite's operational errors as a
        RegistryError naming the database and the likely fix: a read-only folder read as "not a
        readable registry database (unable to open database file)", a full disk as a bare "disk
        I/O error"."""
        try:
            with closing(self._connect()) as db:
                if transaction:
                    with db:
                        yield db
                else:
                    yield db
        except sqlite3.OperationalError as err:
            raise unusable_database(self.root / "registry.sqlite", err) from None

    # Blobs ------------------------------------------------------------------------------------------

    def put_blob(self, data: bytes) -> str:
        """Store bytes under their hash; a blob already there is kept only if it still hashes to its
        name, so adding the artifact again repairs one altered on disk (every version of it shares it)."""
        digest = sha256(data)
        path = self.root / "blobs" / digest
        if not (path.is_file() and sha256(path.read_bytes()) == digest):
            atomic_write_bytes(path, data)
        else:  # (its time refreshed: `prune` leaves a blob written in its last minutes to the release about to name it)
            try:
                os.utime(path)
            except FileNotFoundError:  # (pruned meanwhile)
                atomic_write_bytes(path, data)
        return digest

    def blob(self, digest: str) -> bytes:
        """A blob's bytes, checked against its name. The name is checked first: a digest a device
        reported (`deploy push` reads what it says it runs) made the path, and an absolute one was a
        file anywhere, read whole before its hash refused it."""
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise RegistryError(f"{digest!r} is not a sha256 digest (64 hex digits): no blob is named so")
        path = self.root / "blobs" / digest
        restore = "`racmkd registry add` the model again to restore it (its releases share the blob)"
        if not path.is_file():
            raise RegistryError(f"{path}: no such blob; {restore}")
        data = path.read_bytes()
        if sha256(data) != digest:
            raise RegistryError(f"{path}: the blob's content no longer hashes to its name: it was altered on disk; {restore}")
        return data

    def blob_problem(self, digest: str) -> str | None:
        """Why a release's blob cannot be sent (missing, altered, unreadable), or None when it is whole."""
        try:
            self.blob(digest)
        except RegistryError as err:
            return str(err)
        except OSError as err:  # (a disk error, a permission: that release passed over, not the command ended)
            return f"{self.root / 'blobs' / digest}: cannot be read ({err.strerror or err})"
        return None

    # Releases ---------------------------------------------------------------------------------------

    def register(
        self,
        artifact: Path,
        name: str,
        signing_key: Any,
        tier: str | None = None,
        metrics: dict[str, Any] | None = None,
        device_fit: dict[str, Any] | None = None,
    ) -> Release:
        """Add the next version of `name` from an artifact (ONNX file or bank folder), signed."""
        if not name or "/" in name or name.strip() != name:
            raise RegistryError(f"release name {name!r}: use a plain name such as 'edge-bank' or 'high'")
        data, kind = pack(artifact)
        facts = artifact_facts(artifact, kind)
        digest = self.put_blob(data)
        with self._database(transaction=True) as db:
            db.execute("BEGIN IMMEDIATE")  # two registrations of one name cannot take the same version
            records = db.execute("SELECT * FROM releases WHERE name = ?", (name,)).fetchall()
            gone = db.execute("SELECT MAX(version) FROM removed WHERE name = ?", (name,)).fetchone()[0]  # (a removed version is not taken again)
            # Above every version any record holds, signed or in its column (an altered column, even
            # one that is not a number, neither ends the registration nor lowers the next version).
            read = [(row[1], self._from_row(row)) for row in records]
            known = [v for column, r in read for v in (column, r.version) if isinstance(v, int) and not isinstance(v, bool)]
            version = max([0, *known, *([gone] if isinstance(gone, int) else [])]) + 1
            intact = [r for _, r in read if not r.damaged and not r.altered]
            parent = max(intact, key=lambda r: r.version) if intact else None
            row = (parent.version, parent.sha256) if parent else None
            manifest = {
                "format": MANIFEST_FORMAT,
                "name": name,
                "version": version,
                "kind": kind,
                "tier": tier,
                "sha256": digest,
                "bytes": len(data),
                "parent": {"version": row[0], "sha256": row[1]} if row else None,
                "metrics": metrics or {},
                "device_fit": device_fit or {},
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **facts,
            }
            signature = sign(manifest, signing_key)
            db.execute(
                "INSERT INTO releases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    version,
                    kind,
                    tier,
                    json.dumps(facts["modalities"]),
                    json.dumps(metrics or {}),
                    json.dumps(device_fit or {}),
                    row[0] if row else None,
                    digest,
                    len(data),
                    json.dumps(manifest),
                    signature,
                    time.time(),
                ),
            )
            # A prune sweeps blobs under this lock, and may have taken this one as no release's
            # between its writing and this row (a clock stepped forward past the grace): written
            # again, before the row that names it is committed.
            blob = self.root / "blobs" / digest
            if not blob.is_file():
                atomic_write_bytes(blob, data)
        return self.release(name, version)

    def _from_row(self, row: tuple[Any, ...]) -> Release:
        """A release as its signed manifest describes it: name, version, blob hash and the rest are
        the manifest's, not the table's (its columns are for queries, and are not signed). Columns
        that disagree with the manifest are listed in `altered`, and the orchestrator passes such a
        release over: a record whose version column was raised would otherwise pass for the latest."""
        name, version, kind, tier, modalities, _metrics, _fit, parent, digest, size, manifest, signature, created = row
        try:
            signed = json.loads(manifest)
            problems = release_problems(signed)
            if problems:  # (listing, planning and pushing read these fields: each crashed on one edited by hand)
                raise ValueError("; ".join(problems))
            columns = {
                "name": name,
                "version": version,
                "kind": kind,
                "tier": tier,
                "sha256": digest,
                "bytes": size,
                "modalities": json.loads(modalities),
                "parent_version": parent,
            }
            declared = {
                **{k: signed.get(k) for k in ("name", "version", "kind", "tier", "sha256", "bytes", "modalities")},
                "parent_version": (signed.get("parent") or {}).get("version"),
            }
            altered = tuple(k for k in columns if columns[k] != declared[k])
            return Release(
                declared["name"],
                declared["version"],
                declared["kind"],
                declared["tier"],
                declared["modalities"],
                signed.get("metrics") or {},
                signed.get("device_fit") or {},
                declared["parent_version"],
                declared["sha256"],
                declared["bytes"],
                signed,
                signature,
                created,
                altered,
            )
        except (ValueError, AttributeError, TypeError, RecursionError) as err:
            reason = f"its record is damaged ({type(err).__name__}: {err})"[:300]
            return Release(name, version, kind, tier, [], {}, {}, parent, digest, size, {}, signature, created, damaged=reason)

    def damage_advice(self, release: Release) -> str:
        """What to do about a damaged record (registering again would add a new version beside it)."""
        return (
            f"{self.root / 'registry.sqlite'}: {release.label}: {release.damaged}. Remove it with "
            f"`racmkd registry remove {release.name} --version {release.version} --root {self.root}`, then `racmkd registry add` the model again if it is needed"
        )

    def release(self, name: str, version: int | None = None) -> Release:
        """A release by name and signed version (default: the newest); a damaged or altered record
        is refused with what to do about it."""
        records = self.releases(name)
        if (
            version is None
        ):  # the newest by its signed version (a damaged record's column): refused below when it is not intact, not silently passed for an older one
            chosen = max(records, key=lambda r: r.version if isinstance(r.version, int) else -1, default=None)
        else:
            chosen = next((r for r in records if r.version == version), None)
        if chosen is None:
            known = ", ".join(r.label for r in self.releases()) or "none"
            raise RegistryError(f"no release {name}{f' v{version}' if version else ''} in {self.root}; releases: {known}")
        if chosen.damaged:
            raise RegistryError(self.damage_advice(chosen))
        if chosen.altered:
            raise RegistryError(
                f"{self.root / 'registry.sqlite'}: {chosen.label}: its record's {', '.join(chosen.altered)} disagree with its signed manifest (edited by hand?). "
                f"Remove it with `racmkd registry remove {chosen.name} --version {chosen.version} --root {self.root}`"
            )
        return chosen

    def releases(self, name: str | None = None) -> list[Release]:
        """Every record, a damaged one included (marked `damaged`, with the reason)."""
        with self._database() as db:
            rows = db.execute("SELECT * FROM releases" + (" WHERE name = ?" if name else "") + " ORDER BY name, version", (name,) if name else ()).fetchall()
        return [self._from_row(r) for r in rows]

    def latest(self, releases: list[Release] | None = None) -> list[Release]:
        """The newest version of every release name (of `releases`, read from the registry when not given)."""
        newest: dict[str, Release] = {}
        for r in self.releases() if releases is None else releases:  # (by the signed versions: a record's version column may have been altered)
            if r.damaged:  # (passed over: the orchestrator lists it with its reason)
                continue
            if r.name not in newest or (r.version or 0) > (newest[r.name].version or 0):
                newest[r.name] = r
        return list(newest.values())

    def remove(self, name: str, version: int) -> Release:
        """Delete one release's record (a damaged one, typically); its version is remembered, so
        that the next `register` of the name does not take it again (a device that installed it
        would refuse a different release under that version as a replay). Blobs stay."""
        with self._database(transaction=True) as db:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute("SELECT * FROM releases WHERE name = ?", (name,)).fetchall()
            # By the version listed (the signed one; a damaged record's column), then by the column:
            # a record whose version column was edited is named by the version `registry list` shows.
            row = next((r for r in rows if self._from_row(r).version == version), None) or next((r for r in rows if r[1] == version), None)
            if row is None:
                known = ", ".join(r.label for r in self.releases(name)) or "none"
                raise RegistryError(f"no release {name} v{version} in {self.root}; versions of {name}: {known}")
            release = self._from_row(row)
            db.execute(REMOVED_TABLE)  # (a registry opened for reading has not made it)
            db.execute("INSERT OR REPLACE INTO removed VALUES (?, ?, ?, ?)", (name, version, release.damaged or "removed intact", time.time()))
            db.execute("DELETE FROM releases WHERE name = ? AND version IS ?", (name, row[1]))
        return release

    def prune(self, keep: int, dry_run: bool = False, grace_s: float = 600.0) -> dict[str, Any]:
        """Remove every release but the newest `keep` intact versions of each name (as `remove`: the
        versions are never given again), then the blobs no release names and the deltas from or to
        a blob gone: each version held its whole blob and every delta made was kept, without end
        (40 versions of a 25 MB bank: 955 MB). A device still running a removed release gets its
        next one whole. A blob written in the last `grace_s` seconds stays (the release about to
        name it is being registered; should the clock step past it, the registration writes its blob
        again: the blobs are swept under the lock it names them under); damaged records stay for `remove` to name. `dry_run`: what
        would go, nothing removed."""
        if not (isinstance(keep, int) and keep >= 1):
            raise RegistryError(f"keep {keep!r}: the number of newest versions of each name to keep, at least 1")
        releases = self.releases()
        going: list[Release] = []
        for name in sorted({r.name for r in releases}):
            intact = sorted((r for r in releases if r.name == name and not r.damaged), key=lambda r: r.version, reverse=True)
            going += sorted(intact[keep:], key=lambda r: r.version)
        if not dry_run:
            for release in going:
                self.remove(release.name, release.version)
        with self._database(transaction=True) as db:
            if not dry_run:  # (a registration names its blob and checks it is there under this lock)
                db.execute("BEGIN IMMEDIATE")
            named = {r.sha256 for r in self.releases() if r not in going}  # (read under the lock: one registered meanwhile is named)
            old_enough = time.time() - grace_s
            blobs, kept, deltas, freed = [], set(named), [], 0
            for path in sorted((self.root / "blobs").glob("*")):
                info = path.stat()
                if re.fullmatch(r"[0-9a-f]{64}", path.name) and path.name not in named and info.st_mtime < old_enough:
                    blobs.append(path.name)
                    freed += info.st_size
                else:
                    kept.add(path.name)
            for path in sorted((self.root / "deltas").glob("*.delta")):
                base, _, target = path.stem.partition("-")
                if base not in kept or target not in kept:
                    deltas.append(path.name)
                    freed += path.stat().st_size
            if not dry_run:
                for name in blobs:
                    path = self.root / "blobs" / name
                    with suppress(FileNotFoundError):
                        if path.stat().st_mtime < old_enough:  # (looked at again: a register of the same bytes refreshes it)
                            path.unlink()
                for name in deltas:
                    (self.root / "deltas" / name).unlink(missing_ok=True)
        return {"removed": [r.label for r in going], "blobs": blobs, "deltas": deltas, "bytes": freed, "dry_run": dry_run}

    def set_device_fit(self, name: str, version: int, device_fit: dict[str, Any], signing_key: Any) -> Release:
        """Record where a release fits (the orchestrator's profiles) in its manifest, re-signed."""
        release = self.release(name, version)
        manifest = {**release.manifest, "device_fit": device_fit}
        with self._database(transaction=True) as db:
            db.execute(
                "UPDATE releases SET device_fit = ?, manifest = ?, signature = ? WHERE name = ? AND version = ?",
                (json.dumps(device_fit), json.dumps(manifest), sign(manifest, signing_key), name, version),
            )
        return self.release(name, version)

    # Deltas -----------------------------------------------------------------------------------------

    def delta(self, base_sha256: str, target_sha256: str) -> bytes:
        """The delta from one blob to another (made once, then kept)."""
        path = self.root / "deltas" / f"{base_sha256}-{target_sha256}.delta"
        base = self.blob(base_sha256)
        if path.is_file():
            cached = path.read_bytes()
            try:  # (apply_delta checks the result against the target hash in the delta's header)
                if delta_header(cached)["target_sha256"] == target_sha256:
                    apply_delta(base, cached)
                    return cached
            except DeltaError:  # damaged on disk: made again, not sent to devices to be refused forever
                pass
        data = make_delta(base, self.blob(target_sha256))
        atomic_write_bytes(path, data)
        return data
