"""Device-side faults of over-the-air updates: a device store that cannot be written (a full disk,
a read-only folder) refuses the update clearly and keeps serving; a damaged state.json is rebuilt in
the order releases were committed, not by version; keygen writes both keys or neither; a fog's
damaged report.json costs the accuracies it holds, not the server.

Faults are made by monkeypatching the calls that write (tests may run as root, where a read-only
folder still takes writes)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import onnx
import pytest
from fastapi.testclient import TestClient

from racmkd.config import load_config
from racmkd.deploy.device import COMMITTED, SIGNED, DeviceStore, StoreError, UpdateFailed, UpdateRefused
from racmkd.deploy.registry import MANIFEST_FORMAT, ModelRegistry
from racmkd.deploy.server import EdgeService, ModelService, create_app, report_accuracies
from racmkd.deploy.signing import SignatureError, generate_keypair, load_private_key, load_public_key, sign
from racmkd.utils import UMASK, sha256

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys"))


def signed(keys: tuple[Path, Path], name: str, version: int) -> tuple[dict, str, bytes]:
    """A signed single-model release whose bytes say which it is (the store's tests check no model)."""
    payload = f"{name} v{version}".encode()
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "version": version,
        "kind": "onnx",
        "sha256": sha256(payload),
        "bytes": len(payload),
        "metrics": {},
    }
    return manifest, sign(manifest, load_private_key(keys[0])), payload


def plain_store(root: Path, keys: tuple[Path, Path]) -> DeviceStore:
    return DeviceStore(root, load_public_key(keys[1]), health_check=lambda path, kind: None)


def failing_writes(monkeypatch: pytest.MonkeyPatch, under: Path, code: int, names: tuple[str, ...] = ("",)) -> None:
    """Every file written under `under` whose name starts with one of `names` fails with `code`, as
    on a full disk (ENOSPC) or a read-only folder (EROFS): Path.write_bytes (what every atomic write
    and the key files go through) and tempfile.mkdtemp (a work folder)."""
    write_bytes, mkdtemp = Path.write_bytes, tempfile.mkdtemp
    under = Path(under).resolve()

    def hit(path: Path) -> bool:
        path = Path(path).resolve()
        return under in path.parents and path.name.startswith(names)

    def refused_write(self: Path, data: bytes) -> int:
        if hit(self):
            raise OSError(code, os.strerror(code))
        return write_bytes(self, data)

    def refused_folder(suffix: str | None = None, prefix: str | None = None, dir: str | Path | None = None) -> str:  # noqa: A002 - tempfile's name
        if dir is not None and hit(Path(dir) / (prefix or "")):
            raise OSError(code, os.strerror(code), str(dir))
        return mkdtemp(suffix, prefix, dir)

    monkeypatch.setattr(Path, "write_bytes", refused_write)
    monkeypatch.setattr(tempfile, "mkdtemp", refused_folder)


def slots(root: Path) -> list[str]:
    """Everything in the store's slots folder (slots and work folders alike)."""
    return sorted(p.name for p in (root / "slots").iterdir())


# A. A store that cannot be written ---------------------------------------------------------------


def test_a_disk_filling_while_staging_is_a_store_error_not_a_failed_health_check(keys: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    store = plain_store(tmp_path / "device", keys)
    v1, v2 = signed(keys, "edge", 1), signed(keys, "edge", 2)
    store.install(*v1)
    before = slots(tmp_path / "device")
    failing_writes(monkeypatch, tmp_path / "device", errno.ENOSPC, ("model.onnx", ".model.onnx"))  # release.bin and release.json go in; the model does not
    with pytest.raises(StoreError) as caught:
        store.install(*v2)
    message = str(caught.value)
    assert caught.value.no_space and "health check" not in message
    assert str(tmp_path / "device") in message and "free space" in message and "edge v1" in message and "stays current" in message
    assert slots(tmp_path / "device") == before  # the work folder went with it
    assert store.current().manifest["version"] == 1
    monkeypatch.undo()  # space freed: the same release goes in
    assert store.install(*v2).manifest["version"] == 2


def test_a_read_only_store_names_its_folder_and_the_fix(keys: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    store = plain_store(tmp_path / "device", keys)
    store.install(*signed(keys, "edge", 1))
    failing_writes(monkeypatch, tmp_path / "device", errno.EROFS)
    with pytest.raises(StoreError) as caught:  # mkdtemp of the work folder refused
        store.install(*signed(keys, "edge", 2))
    assert not caught.value.no_space and "make" in str(caught.value) and "writable" in str(caught.value) and str(tmp_path / "device") in str(caught.value)
    assert isinstance(caught.value, UpdateFailed)  # (callers that know only UpdateFailed still keep the current release)
    assert store.current().manifest["version"] == 1 and slots(tmp_path / "device") == [store.current().slot.name]


def test_a_disk_full_at_commit_changes_nothing_and_leaves_no_slot(keys: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    root = tmp_path / "device"
    store = plain_store(root, keys)
    store.install(*signed(keys, "edge", 1))
    state, record = (root / "state.json").read_bytes(), (store.current().slot / COMMITTED).read_bytes()
    failing_writes(monkeypatch, root, errno.ENOSPC, (".state.json",))  # the slot and its record are written; state.json is not
    with pytest.raises(StoreError, match="could not be made current") as caught:
        store.install(*signed(keys, "edge", 2))
    assert caught.value.no_space
    assert (root / "state.json").read_bytes() == state and slots(root) == [store.current().slot.name]  # the staged slot discarded
    assert (store.current().slot / COMMITTED).read_bytes() == record
    # A rollback that cannot be written changes nothing either; the roll forward is put back as it was.
    monkeypatch.undo()
    store.install(*signed(keys, "edge", 2))
    failing_writes(monkeypatch, root, errno.ENOSPC, (".state.json",))
    previous_record = (store.previous().slot / COMMITTED).read_bytes()
    with pytest.raises(StoreError, match="rollback to edge v1"):
        store.rollback()
    assert store.current().manifest["version"] == 2 and (store.previous().slot / COMMITTED).read_bytes() == previous_record
    # The same bytes released again as v3 share v2's slot, whose manifest the commit writes: a disk
    # full for state.json puts the slot's record back, and its manifest, its time too (the order of
    # slots without a record); one for the manifest itself, the record.
    monkeypatch.undo()
    manifest, _, payload = signed(keys, "edge", 2)
    manifest = {**manifest, "version": 3}
    slot = store.current().slot
    os.utime(slot / SIGNED, ns=(10**18, 10**18))  # (a time no write now would give it)
    record, signed_before = (slot / COMMITTED).read_bytes(), (slot / SIGNED).read_bytes()
    for refused in (".state.json", f".{SIGNED}"):
        failing_writes(monkeypatch, root, errno.ENOSPC, (refused,))
        with pytest.raises(StoreError, match=r"edge v3 \(\w+\) could not be made current"):
            store.install(manifest, sign(manifest, load_private_key(keys[0])), payload)
        assert (slot / COMMITTED).read_bytes() == record and (slot / SIGNED).read_bytes() == signed_before, refused
        assert (slot / SIGNED).stat().st_mtime_ns == 10**18, refused
        monkeypatch.undo()
    assert store.current().manifest["version"] == 2
    assert store.install(manifest, sign(manifest, load_private_key(keys[0])), payload).manifest["version"] == 3
    assert json.loads((slot / SIGNED).read_text())["manifest"]["version"] == 3


@pytest.fixture
def edge(tiny_run: Path, bank_dir: Path, keys: tuple[Path, Path], tmp_path: Path):  # noqa: ANN201 - (service, client, registry, v1, v2)
    """An edge server over tmp_path/device serving edge v1 (the run's bank), with v2 (the bank with
    another doc string: other bytes, the same model) registered and not sent."""
    registry, key = ModelRegistry(tmp_path / "registry"), load_private_key(keys[0])
    other = tmp_path / "v2"
    shutil.copytree(bank_dir, other)
    first = sorted(other.glob("*.onnx"))[0]
    model = onnx.load(first)
    model.doc_string = "v2"
    onnx.save(model, first)
    v1, v2 = registry.register(bank_dir, "edge", key), registry.register(other, "edge", key)
    cfg = load_config(tiny_run / "config.yaml", [f"serve.public_key={keys[1]}", f"serve.store_dir={tmp_path / 'device'}"])
    service = EdgeService(cfg, tiny_run, cfg.serve)
    app = create_app(service, cfg.serve, token=TOKEN)
    client = TestClient(app)
    try:
        assert post(client, registry, v1).status_code == 200 and "edge v1" in service.engine.label
        yield service, client, registry, v1, v2, app
    finally:
        service.close()


def post(client: TestClient, registry: ModelRegistry, release) -> object:  # noqa: ANN001
    return client.post(
        "/deploy",
        data={"manifest": json.dumps(release.manifest), "signature": release.signature, "delta": "false"},
        files={"payload": ("release.bin", registry.blob(release.sha256), "application/octet-stream")},
        headers=AUTH,
    )


@pytest.mark.parametrize(
    ("code", "names", "status", "fix"),
    [
        (errno.ENOSPC, ("",), 507, "free space"),  # the disk fills while staging
        (errno.ENOSPC, (".state.json", ".committed.json"), 507, "free space"),  # ... at commit: after the model loaded
        (errno.EROFS, ("",), 500, "writable"),  # the store's folder read-only
    ],
    ids=["full-staging", "full-commit", "read-only"],
)
def test_an_edge_whose_store_cannot_be_written_answers_why_and_keeps_serving(
    edge,  # noqa: ANN001
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    names: tuple[str, ...],
    status: int,
    fix: str,
) -> None:
    """It answered 500 "internal error (OSError)", or blamed the release's health check, and a slot
    staged before a failed commit stayed in slots/."""
    service, client, registry, v1, v2, _ = edge
    root = tmp_path / "device"
    before = slots(root)
    failing_writes(monkeypatch, root, code, names)
    answer = post(client, registry, v2)
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert str(root) in detail and fix in detail and "health check" not in detail and "edge v1" in detail
    assert "edge v1" in service.engine.label and service.engine.sha256 == v1.sha256
    assert client.get("/deployment", headers=AUTH).json()["current"]["version"] == 1
    assert slots(root) == before
    monkeypatch.undo()  # fixed on the device: the same push goes through
    assert post(client, registry, v2).status_code == 200 and service.engine.sha256 == v2.sha256


def test_an_edge_whose_disk_is_full_refuses_a_rollback_and_keeps_serving(edge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    service, client, registry, v1, v2, _ = edge
    assert post(client, registry, v2).status_code == 200
    failing_writes(monkeypatch, tmp_path / "device", errno.ENOSPC)
    answer = client.post("/rollback", headers=AUTH)
    assert answer.status_code == 507 and "free space" in answer.json()["detail"] and str(tmp_path / "device") in answer.json()["detail"]
    assert service.engine.sha256 == v2.sha256 and client.get("/deployment", headers=AUTH).json()["current"]["version"] == 2


def test_deploy_push_prints_the_store_error(edge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """What the device answers reaches the operator: `racmkd deploy push` prints it and exits 1."""
    import httpx
    from typer.testing import CliRunner

    from racmkd.cli import app as cli

    service, client, registry, v1, v2, app = edge
    monkeypatch.setattr(httpx, "Client", lambda base_url, timeout, headers, **_: TestClient(app, base_url=base_url, headers=headers))
    monkeypatch.setenv("RACMKD_TOKEN", TOKEN)
    failing_writes(monkeypatch, tmp_path / "device", errno.ENOSPC)
    result = CliRunner().invoke(cli, ["deploy", "push", "edge", "--url", "http://127.0.0.1:8003", "--root", str(tmp_path / "registry"), "--full"])
    assert result.exit_code == 1, result.output
    printed = json.loads(result.stdout)
    assert printed["status_code"] == 507 and str(tmp_path / "device") in printed["answer"]["detail"] and "free space" in printed["answer"]["detail"]


# B. A damaged state.json rebuilt in commit order ---------------------------------------------------


def test_a_rebuilt_state_keeps_the_release_committed_last_across_names(keys: tuple[Path, Path], tmp_path: Path) -> None:
    """critical v1, critical v2, then edge v1: edge v1 is current. Sorted by version, the rebuild
    served critical v2 instead."""
    root = tmp_path / "device"
    store = plain_store(root, keys)
    for name, version in (("critical", 1), ("critical", 2), ("edge", 1)):
        store.install(*signed(keys, name, version))
    (root / "state.json").write_text("{trunc")
    assert store.current().label.startswith("edge v1") and store.previous().label.startswith("critical v2")
    assert json.loads((root / "state.json").read_text())["newest"] == {"critical": 2, "edge": 1}
    # A rollback is a commit too: rebuilt after it, the release rolled back to stays current.
    assert store.rollback().label.startswith("critical v2")
    (root / "state.json").write_text("[]")
    assert store.current().label.startswith("critical v2") and store.previous().label.startswith("edge v1")
    # Commits go on numbering after a rebuild.
    assert store.install(*signed(keys, "edge", 2)).label.startswith("edge v2")
    (root / "state.json").write_text("{")
    assert store.current().label.startswith("edge v2") and store.previous().label.startswith("critical v2")
    (root / "state.json").write_bytes(b'{"current": \xff\xfe')  # not even UTF-8: damage too (it escaped as a UnicodeDecodeError)
    assert store.current().label.startswith("edge v2")


def test_slots_from_before_commit_records_are_rebuilt_by_when_they_were_installed(keys: tuple[Path, Path], tmp_path: Path) -> None:
    """The documented fallback: a slot without a record comes after every recorded one, and such
    slots by their manifest's time, not by version."""
    root = tmp_path / "device"
    store = plain_store(root, keys)
    store.install(*signed(keys, "critical", 2))
    store.install(*signed(keys, "edge", 1))
    for i, installed in enumerate((store.previous(), store.current())):  # as a store before this change left them
        (installed.slot / COMMITTED).unlink()
        os.utime(installed.slot / "release.json", (1_000_000 + i, 1_000_000 + i))
    (root / "state.json").write_text("{")
    assert store.current().label.startswith("edge v1") and store.previous().label.startswith("critical v2")
    # One recorded slot (committed after the change) comes before both.
    store.install(*signed(keys, "other", 1))
    (root / "state.json").write_text("{")
    assert store.current().label.startswith("other v1") and store.previous().label.startswith("edge v1")


def test_a_rebuild_that_cannot_be_written_still_serves_what_it_found(keys: tuple[Path, Path], tmp_path: Path, monkeypatch, caplog) -> None:  # noqa: ANN001
    root = tmp_path / "device"
    store = plain_store(root, keys)
    store.install(*signed(keys, "edge", 1))
    (root / "state.json").write_text("{")
    failing_writes(monkeypatch, root, errno.ENOSPC)
    with caplog.at_level("ERROR", logger="racmkd.deploy.device"):
        assert store.current().label.startswith("edge v1")
    assert "the rebuilt state could not be written" in caplog.text and "free space" in caplog.text


def test_a_state_json_that_fails_to_read_is_a_store_error_not_rebuilt(keys: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """An OSError reading state.json (a disk error, no file handles left) says nothing of its bytes:
    rebuilt from the slots, a good state.json was overwritten and forgot edge v5, whose slot had
    been pruned, and edge v1 was then taken as new (a downgrade)."""
    root = tmp_path / "device"
    store = DeviceStore(root, load_public_key(keys[1]), health_check=lambda path, kind: None, keep=2)
    for name, version in (("edge", 5), ("critical", 1), ("critical", 2)):
        store.install(*signed(keys, name, version))
    state = (root / "state.json").read_bytes()
    assert json.loads(state)["newest"] == {"edge": 5, "critical": 2} and len(slots(root)) == 2  # edge v5's slot pruned
    read_bytes = Path.read_bytes

    def failing_read(self: Path) -> bytes:
        if self.name == "state.json":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", failing_read)
    for call in (store.current, store.status, store.rollback, lambda: store.install(*signed(keys, "edge", 1))):
        with pytest.raises(StoreError, match="state.json could not be read") as caught:
            call()
        assert str(root) in str(caught.value) and "check the disk" in str(caught.value)
    monkeypatch.undo()
    assert (root / "state.json").read_bytes() == state and not (root / "state.json.damaged").exists()
    assert len(slots(root)) == 2  # the staged edge v1 kept while the state could not be read, not committed
    assert store.current().label.startswith("critical v2")
    with pytest.raises(UpdateRefused, match="not newer than v5"):
        store.install(*signed(keys, "edge", 1))


# C. keygen: both keys or neither -----------------------------------------------------------------


@pytest.mark.parametrize("fault", ["write", "rename"])
def test_keygen_on_a_full_disk_leaves_no_half_pair_and_can_be_run_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    folder = tmp_path / "keys"
    folder.mkdir()
    if fault == "write":  # the public key's bytes do not fit
        failing_writes(monkeypatch, folder, errno.ENOSPC, (".racmkd.pub.",))
    else:  # the second key's move into place fails after the first went through
        link = os.link

        def second_fails(src: str | Path, dst: str | Path) -> None:
            if Path(dst).name == "racmkd.pub":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            link(src, dst)

        monkeypatch.setattr(os, "link", second_fails)
    with pytest.raises(OSError) as caught:
        generate_keypair(folder)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(folder) and "run `racmkd registry keygen` again" in str(caught.value)
    assert list(folder.iterdir()) == []  # neither key, no temporary file
    monkeypatch.undo()
    private, public = generate_keypair(folder)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and stat.S_IMODE(public.stat().st_mode) == 0o666 & ~UMASK
    assert sorted(p.name for p in folder.iterdir()) == ["racmkd.key", "racmkd.pub"]
    load_private_key(private), load_public_key(public)


def test_keygen_never_replaces_a_key_another_keygen_wrote_meanwhile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two keygens in one folder: both passed the "exists" check, and the later renames replaced the
    earlier's keys one by one, which could leave one's private key beside the other's public one.
    A key that appears after the check is kept, and this keygen leaves nothing."""
    from racmkd.deploy import signing

    folder = tmp_path / "keys"
    folder.mkdir()
    write_pair = signing._write_pair

    def other_keygen_first(where: Path, files: dict) -> None:
        (where / "racmkd.pub").write_bytes(b"the other keygen's public key")
        write_pair(where, files)

    monkeypatch.setattr(signing, "_write_pair", other_keygen_first)
    with pytest.raises(SignatureError, match=r"racmkd\.pub appeared while the keys were written"):
        generate_keypair(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["racmkd.pub"] and (folder / "racmkd.pub").read_bytes() == b"the other keygen's public key"
    # Without hard links (FAT), a rename after a last look.
    (folder / "racmkd.pub").unlink()
    monkeypatch.setattr(signing, "_write_pair", write_pair)
    monkeypatch.setattr(os, "link", lambda src, dst: (_ for _ in ()).throw(OSError(errno.EPERM, "no hard links")))
    private, public = generate_keypair(folder)
    load_private_key(private), load_public_key(public)
    assert sorted(p.name for p in folder.iterdir()) == ["racmkd.key", "racmkd.pub"]


def test_keygen_command_reports_the_folder_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from racmkd.cli import app as cli

    failing_writes(monkeypatch, tmp_path / "keys", errno.ENOSPC, (".racmkd.pub.",))
    result = CliRunner().invoke(cli, ["registry", "keygen", "--out", str(tmp_path / "keys")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "cannot write the key pair there" in result.output and str(tmp_path / "keys") in result.output
    assert list((tmp_path / "keys").iterdir()) == []


# D. A fog's report.json --------------------------------------------------------------------------


def write_report(run: Path, text: str) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "report.json").write_text(text)
    return run


@pytest.mark.parametrize(
    ("text", "expected", "said"),
    [
        ('{"models": {"high": {"accuracy": 0.98', {"high": None, "medium": None}, "not readable JSON"),
        ('{"models": {"high": 0.98, "medium": {"accuracy": 0.91}}}', {"high": None, "medium": 0.91}, "models.high is 0.98"),
        ('{"models": {"high": {"accuracy": "high"}, "medium": {"accuracy": 0.91}}}', {"high": None, "medium": 0.91}, "models.high is"),
        ('{"models": {"high": {"accuracy": true}}}', {"high": None, "medium": None}, "models.high is"),
        ('{"models": [1, 2]}', {"high": None, "medium": None}, "no `models` mapping"),
        ('{"models": {"high": {"accuracy": 0.98}, "medium": {"accuracy": 1}}}', {"high": 0.98, "medium": 1.0}, None),
    ],
    ids=["truncated", "row-a-number", "accuracy-a-string", "accuracy-a-bool", "models-a-list", "whole"],
)
def test_a_fogs_report_is_read_checked_and_named_when_damaged(tmp_path: Path, caplog, text: str, expected: dict, said: str | None) -> None:  # noqa: ANN001
    run = write_report(tmp_path / "run", text)
    with caplog.at_level("WARNING", logger="racmkd.deploy.server"):
        assert report_accuracies(run, ["high", "medium"]) == expected
    if said is None:
        assert caplog.text == ""
    else:
        assert said in caplog.text and str(run / "report.json") in caplog.text


def test_a_fog_with_a_truncated_report_serves_with_its_accuracy_unknown(tiny_run: Path, tiny_dataset, tmp_path: Path, caplog) -> None:  # noqa: ANN001
    """It stopped with "error: Unterminated string ..." naming no file."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("*.png", "experiments", "device", "edge", "compressed"))
    whole = (run / "report.json").read_text()
    (run / "report.json").write_text(whole[: len(whole) // 2])
    with caplog.at_level("WARNING", logger="racmkd.deploy.server"):
        service = ModelService("fog", run, ["high"])
    assert service.describe()["accuracy"] is None and str(run / "report.json") in caplog.text
    import torch

    raw = tiny_dataset.raw_batch("test", torch.tensor([0]))
    request = {m: raw[m][0].numpy().tolist() for m in service.modalities()}
    reply = TestClient(create_app(service, load_config(run / "config.yaml").serve, token=None)).post("/predict", json=request)
    assert reply.status_code == 200 and len(reply.json()["probabilities"]) == 10, reply.text  # it serves


def test_a_missing_state_is_rebuilt_from_committed_slots_and_keeps_downgrades_out(keys: tuple[Path, Path], tmp_path: Path) -> None:
    """A damaged state.json was rebuilt, a missing one read as "nothing installed": the run's bank
    served and an older signed release was taken as new."""
    root = tmp_path / "device"
    store = plain_store(root, keys)
    assert store.current() is None and not (root / "state.json").exists()  # (a new store: nothing to rebuild)
    for version in (1, 2):
        store.install(*signed(keys, "edge", version))
    (root / "state.json").unlink()
    assert store.current().label.startswith("edge v2") and store.previous().label.startswith("edge v1")
    with pytest.raises(UpdateRefused, match="not newer than v2"):
        store.install(*signed(keys, "edge", 1))


def test_a_repair_that_fails_its_health_check_keeps_the_slot_it_would_replace(keys: tuple[Path, Path], tmp_path: Path) -> None:
    """The current release sent again while its health check fails (memory short for a moment):
    its slot was deleted before the new copy was checked, and with that copy refused, the device
    was left without its current release's files."""
    flaky = [False]

    def health(path: Path, kind: str) -> None:
        if flaky[0]:
            raise MemoryError("failed to allocate (transient)")

    root = tmp_path / "device"
    store = DeviceStore(root, load_public_key(keys[1]), health_check=health)
    current = signed(keys, "edge", 1)
    store.install(*current)
    flaky[0] = True
    with pytest.raises(UpdateFailed, match="failed its health check"):
        store.stage(*current)
    flaky[0] = False
    installed = store.current()
    assert installed.label.startswith("edge v1") and store.check(installed) is None  # the slot as it was
    assert not [p for p in (root / "slots").iterdir() if p.name.startswith(".")]  # no work folder left


def test_a_slot_set_aside_by_a_repair_cut_short_is_put_back_when_the_store_opens(keys: tuple[Path, Path], tmp_path: Path) -> None:
    """A kill between a repair's two renames left the slot at slots/.<sha>.old and none at its
    name: the current release's files, put back only by the next build of that slot."""
    root = tmp_path / "device"
    store = plain_store(root, keys)
    store.install(*signed(keys, "edge", 1))
    slot = store.current().slot
    aside = slot.parent / f".{slot.name}.old"
    slot.rename(aside)  # killed after the first rename
    del store
    reopened = plain_store(root, keys)
    assert slot.is_dir() and not aside.exists() and reopened.check(reopened.current()) is None
    # Killed after the second: the repaired copy is in place, the one set aside goes.
    aside.mkdir()
    del reopened
    plain_store(root, keys)
    assert slot.is_dir() and not aside.exists()
