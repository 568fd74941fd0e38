"""The orchestrator: which release each device should run, and getting it there.

`device_fit` profiles a release on every device profile (configs/devices/): an ONNX model through
`racmkd profile` (ROM, RAM from the graph's tensor lifetimes, estimated latency against the
device's latency target); a variant bank by its files (ROM), its sessions' measured resident
memory plus the runtime's overhead (RAM) and its cheapest configuration's estimated latency
against the target, on devices that run a full ONNX Runtime (not an MCU).
`plan` picks, for every device, the most accurate release that fits, with no human step, and says
why for every candidate; `push` sends the chosen release to a device's edge server, as a delta
against what it runs when that is smaller than the whole, and reports what the device answered.
`apply_fleet` does both for a fleet file (each device's profile and edge server), several devices
at a time, passing over the devices whose telemetry says they are offline and going on past those
that cannot be reached.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from racmkd.compress.artifacts import compress_again, read_compression_record
from racmkd.deploy.registry import ModelRegistry, RegistryError, Release
from racmkd.config import ConfigError, from_dict, read_yaml_mapping, shown_url, url_problem
from racmkd.resources.devices import DeviceProfile, load_device
from racmkd.utils import sha256


def device_fit(artifact: Path, kind: str, devices: list[DeviceProfile]) -> dict[str, dict[str, Any]]:
    """Per device profile: fits or not, why, and the figures behind it."""
    from racmkd.resources.profile import device_seconds, graph_cost, host_seconds, latency_model, profile_model

    out: dict[str, dict[str, Any]] = {}
    if kind == "onnx":
        model = latency_model(show_progress=False)
        for d in devices:
            p = profile_model(Path(artifact), d, model, measure_here=False)
            out[d.name] = {
                "fits": p["fits"],
                "reason": p["reason"],
                "rom_bytes": p["rom_bytes"],
                "ram_bytes": p["ram_bytes"],
                "estimated_latency_ms": p["estimated_latency_ms"],
            }
        return out
    bank = json.loads((Path(artifact) / "bank.json").read_text())
    rom = sum((Path(artifact) / v["path"]).stat().st_size for v in bank["variants"]) + (Path(artifact) / "bank.json").stat().st_size
    resident = sum(v["memory_bytes"] for v in bank["variants"])
    fastest = min(v["latency_ms"] for v in bank["variants"])
    # The cheapest configuration the runtime can fall to is one variant: its latency here (raw input
    # to logits, measured when the bank was built) scaled by eq. 7's device-to-host ratio for its
    # graph, plus the runtime's own cost per request scaled by clock.
    model = latency_model(show_progress=False)
    costs = [(v["latency_ms"], graph_cost(Path(artifact) / v["path"])) for v in bank["variants"]]
    host = [host_seconds(cost, model) for _, cost in costs]
    overhead_here = float(bank.get("request_overhead_ms", 0.0))
    for d in devices:
        ram = resident + d.runtime_overhead_bytes
        cheapest = min(ms * device_seconds(cost, d, model) / h for (ms, cost), h in zip(costs, host)) + overhead_here * model.host_clock_mhz / d.clock_mhz
        problems = []
        if d.kind == "mcu":
            problems.append("a variant bank needs ONNX Runtime and an operating system; an MCU runs one compiled model")
        if rom > d.rom_bytes:
            problems.append(f"its files need {rom:,} bytes of storage, the device has {d.rom_bytes:,}")
        if ram > d.ram_bytes:
            problems.append(f"its sessions need {ram:,} bytes of RAM, the device has {d.ram_bytes:,}")
        if d.latency_target_ms and cheapest > d.latency_target_ms:
            problems.append(f"even its cheapest configuration, estimated at {cheapest:.3f} ms there, exceeds the {d.latency_target_ms:g} ms target")
        within = f", cheapest configuration {cheapest:.3f} ms <= {d.latency_target_ms:g} ms" if d.latency_target_ms else ""
        out[d.name] = {
            "fits": not problems,
            "reason": "; ".join(problems) or f"ROM {rom:,} <= {d.rom_bytes:,}, RAM {ram:,} <= {d.ram_bytes:,}{within}",
            "rom_bytes": rom,
            "ram_bytes": ram,
            "estimated_latency_ms": cheapest,
            "fastest_variant_ms_here": fastest,
        }
    return out


@dataclass(frozen=True)
class Assignment:
    """The release a device should run, or why none can."""

    device: str
    release: Release | None
    reason: str
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "release": f"{self.release.name} v{self.release.version}" if self.release else None,
            "reason": self.reason,
            "candidates": self.candidates,
        }


def plan(registry: ModelRegistry, devices: list[DeviceProfile], public_key: Any | None = None) -> list[Assignment]:
    """For every device, the most accurate latest release that fits it, by the metrics and device
    fit of its signed manifest; a release whose registry record disagrees with its manifest, whose
    blob is missing or altered on disk, or, with `public_key`, whose signature does not verify (its
    record altered), is passed over, with the reason."""
    from racmkd.deploy.signing import SignatureError, verify

    everything = registry.releases()
    damaged = [r for r in everything if r.damaged]  # listed with their reasons, never chosen
    releases = registry.latest(everything)
    forged = {r.label: f"{r.damaged}: passed over (remove it with `racmkd registry remove {r.name} --version {r.version}`)" for r in damaged}
    for r in releases:
        if r.altered:
            forged[r.label] = f"its registry record disagrees with its signed manifest on {', '.join(r.altered)}: passed over"
            continue
        try:
            if public_key is not None:
                verify(r.manifest, r.signature, public_key)
        except SignatureError as err:
            forged[r.label] = f"its signature does not verify ({err}): passed over"
            continue
        problem = registry.blob_problem(r.sha256)  # (a push would fail on it, and the next best that fits never be tried)
        if problem:
            forged[r.label] = f"{problem}: passed over"
    releases += damaged
    assignments = []
    for d in devices:
        rows = []
        for r in releases:
            fit = r.device_fit.get(d.name)
            accuracy = r.metrics.get("accuracy")
            if r.label in forged:
                rows.append({"release": r.label, "fits": False, "accuracy": accuracy, "reason": forged[r.label]})
            elif fit is None:
                rows.append(
                    {
                        "release": r.label,
                        "fits": False,
                        "accuracy": accuracy,
                        "reason": "not profiled for this device (register it with --devices)",
                    }
                )
            else:
                rows.append({"release": r.label, "fits": fit["fits"], "accuracy": accuracy, "reason": fit["reason"]})
        fitting = [(r, row) for r, row in zip(releases, rows) if row["fits"] and row["accuracy"] is not None]
        if fitting:
            best, row = max(fitting, key=lambda pair: pair[1]["accuracy"])
            assignments.append(Assignment(d.name, best, f"{best.label}: the most accurate that fits ({row['accuracy']:.4f}; {row['reason']})", rows))
        else:
            why = "; ".join(f"{row['release']}: {row['reason']}" for row in rows) or "the registry holds no releases"
            assignments.append(Assignment(d.name, None, f"nothing fits: {why}", rows))
    return assignments


STATUS_TIMEOUT_S = 10.0  # a device's status (a small JSON) and its connection: a device that hangs costs this, not the upload's timeout


def push(
    registry: ModelRegistry, release: Release, url: str, token: str, timeout_s: float = 60.0, full: bool = False, tls: ssl.SSLContext | None = None
) -> dict[str, Any]:
    """Send a release to an edge server: a delta against its current release when it runs one of
    ours and the delta is smaller (unless `full`), else the whole. A refused delta (the device's
    copy of its current release damaged, or not the one its state names) is followed by the whole
    release. Returns what was sent and the device's answer. `timeout_s` bounds each phase of each
    call (a large release over a slow link needs more than the default); the connection and the
    device's status are given at most `STATUS_TIMEOUT_S`. `tls`: the TLS context to verify with,
    shared by a fleet's pushes (httpx made one per client: 52 ms a device, 0.2 s on a busy host)."""
    problem = url_problem(url)
    if problem:
        raise ValueError(f"{shown_url(url)} {problem}")
    if not 0 < timeout_s < float("inf"):
        raise ValueError(f"timeout {timeout_s!r}: a number of seconds > 0")
    headers = {"Authorization": f"Bearer {token}"}
    quick = min(timeout_s, STATUS_TIMEOUT_S)
    timeouts = httpx.Timeout(timeout_s, connect=quick)
    with httpx.Client(base_url=url.rstrip("/"), timeout=timeouts, headers=headers, verify=tls or True) as client:
        answer = client.get("/deployment", timeout=httpx.Timeout(quick))
        try:
            status = answer.json()
        except ValueError:
            status = None
        # (a fleet's other devices are still served: apply_fleet records a ValueError per device)
        if (
            answer.status_code != 200
            or not isinstance(status, dict)
            or "current" not in status  # (every racmkd edge says, None when it has installed nothing)
            or not isinstance(status.get("current") or {}, dict)
            or not isinstance(status.get("serving") or {}, dict)
        ):
            raise ValueError(
                f"{url}: /deployment answered {answer.status_code} {answer.text[:200]!r}, not a racmkd edge's status; is it a racmkd edge server, and is the token right?"
            )
        current = (status.get("current") or {}).get("sha256")
        serving = status.get("serving") or {"sha256": current}  # (an edge before 2026-12 does not say)
        full_bytes = registry.blob(release.sha256)
        notes = []
        installed = status.get("current") or {}
        # The same bytes published again as a newer version: sent (a delta of nothing), so that the
        # device records the version (told "up to date", it kept the old one, and its downgrade
        # protection the old number).
        renumbered = installed.get("name") == release.name and isinstance(installed.get("version"), int) and release.version > installed["version"]
        if current == release.sha256 and not renumbered:
            if serving.get("sha256") == current:
                return {"sent": "nothing", "reason": "the device already runs it", "bytes": 0}
            full = True  # installed but not serving (it did not load): a repair, whole
            notes.append(f"installed but not serving (the device serves {serving.get('label')}): sent whole again")
        elif current == release.sha256:
            notes.append(
                f"the bytes of the installed v{installed['version']}, published again as v{release.version}: sent so that the device records the version"
            )
        delta = None if full or current is None else _delta_or_none(registry, current, release.sha256)
        if delta is not None and len(delta) < len(full_bytes):
            reply = _post_release(client, release, delta, True)
            detail = str(_detail(reply)) if reply.status_code == 422 else ""
            # refused for the release itself (a replay, a signature): sending it whole changes nothing
            if not ("delta refused" in detail or "hash to" in detail):
                return {**_pushed("delta", delta, full_bytes, reply), **({"notes": notes} if notes else {})}
            notes.append(f"delta of {len(delta):,} bytes refused ({_detail(reply)}): sent whole")
        reply = _post_release(client, release, full_bytes, False)
    return {**_pushed("full", full_bytes, full_bytes, reply), **({"notes": notes} if notes else {})}


@dataclass(frozen=True)
class FleetDevice:
    """One device of a fleet file."""

    name: str = ""  # as it names itself in telemetry (its serve.device)
    profile: str = ""  # its device profile: a name in configs/devices/ or a YAML path
    url: str = ""  # its edge server

    def __post_init__(self) -> None:
        # (required fields left out were reported as "FleetDevice.__init__() missing 1 required positional argument")
        missing = [f for f in ("name", "profile", "url") if not getattr(self, f)]
        if missing:
            raise ConfigError(
                f"{', '.join(missing)} missing: each device needs name, profile and url (e.g. {{name: gate-1, profile: raspberry-pi-4, url: http://10.0.0.12:8003}})"
            )
        problem = url_problem(self.url)
        if problem:
            raise ConfigError(f"url {shown_url(self.url)!r} {problem}")


@dataclass(frozen=True)
class Fleet:
    """A fleet file (values-only YAML): `devices: [{name, profile, url}, ...]`."""

    devices: tuple[FleetDevice, ...] = ()

    def __post_init__(self) -> None:
        names = [d.name for d in self.devices]
        if len(set(names)) != len(names):
            raise ConfigError(f"devices: each device once; {sorted({n for n in names if names.count(n) > 1})} more than once")


def load_fleet(path: Path) -> tuple[Fleet, dict[str, DeviceProfile]]:
    """A fleet file and the device profiles it names (errors name the file and the key)."""
    fleet = from_dict(
        Fleet, read_yaml_mapping(path, "Write one: `devices: [{name: gate-1, profile: raspberry-pi-4, url: http://10.0.0.12:8003}]`."), source=str(path)
    )
    if not fleet.devices:
        raise ConfigError(f"{path}: no devices listed (`devices: [{{name, profile, url}}, ...]`)")
    profiles = {}
    for d in fleet.devices:
        try:
            profiles[d.profile] = profiles.get(d.profile) or load_device(d.profile)
        except ConfigError as err:
            raise ConfigError(f"{path}: device {d.name!r}: {err}") from None
    return fleet, profiles


def apply_fleet(
    registry: ModelRegistry,
    fleet: Fleet,
    profiles: dict[str, DeviceProfile],
    token: str,
    public_key: Any | None = None,
    online: Callable[[str], bool | None] | None = None,
    full: bool = False,
    timeout_s: float = 60.0,
    concurrency: int = 8,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Plan every device's release by its profile and push it, with no human step: per device what
    was done and why, in the fleet file's order. Passed over: a device nothing fits, or one whose
    telemetry says it is offline (`online(name)` False: its last will; None, unknown, is tried) and
    whose /health does not answer within a few seconds either: anyone on a broker without
    authentication could publish a device's status, and a forged "offline" kept it from every
    update. A device that cannot be reached or refuses is reported, and the others are still served.
    `concurrency` devices are served at a time, and `on_result` hears each device's outcome as it
    comes (in the calling thread): one after another, 1,000 devices that answered
    at once took 136 s, each device that hung a minute, and nothing was told before the end. Each
    release's bytes and each delta are read or made once for the whole fleet."""
    if not (isinstance(concurrency, int) and concurrency >= 1):
        raise ValueError(f"concurrency {concurrency!r}: a whole number of devices >= 1")
    assignments = {a.device: a for a in plan(registry, list({p.name: p for p in profiles.values()}.values()), public_key)}
    if not fleet.devices:
        return []
    shared, tls = _ReadOnce(registry), httpx.create_ssl_context()

    def serve(device: FleetDevice) -> dict[str, Any]:
        assignment = assignments[profiles[device.profile].name]
        entry: dict[str, Any] = {"device": device.name, "profile": profiles[device.profile].name, "url": device.url, "release": assignment.as_dict()["release"]}
        if assignment.release is None:
            return {**entry, "action": "skipped", "reason": assignment.reason}
        if online is not None and online(device.name) is False and not _answers(device.url, tls=tls):
            return {
                **entry,
                "action": "skipped",
                "reason": "offline: its telemetry's last will says so and its /health does not answer; run `racmkd deploy apply` again once it is back",
            }
        try:
            outcome = push(shared, assignment.release, device.url, token, timeout_s=timeout_s, full=full, tls=tls)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as err:
            return {**entry, "action": "failed", "reason": f"{device.url}: {type(err).__name__}: {err}"}
        refused = outcome.get("status_code", 200) >= 400
        action = "refused" if refused else "up to date" if outcome["sent"] == "nothing" else "pushed"
        answer = outcome.get("answer")  # (JSON of any shape: a gateway before the device answered a list, and the run stopped)
        detail = answer.get("detail", "") if isinstance(answer, dict) else answer
        return {**entry, "action": action, "reason": str(detail) if refused else assignment.reason, **outcome}

    results: list[dict[str, Any]] = [{} for _ in fleet.devices]
    pool = ThreadPoolExecutor(max_workers=min(concurrency, len(fleet.devices)), thread_name_prefix="racmkd-deploy")
    try:
        pending = {pool.submit(serve, device): i for i, device in enumerate(fleet.devices)}
        for done in as_completed(pending):
            results[pending[done]] = done.result()
            if on_result is not None:
                on_result(results[pending[done]])
    finally:  # (Ctrl-C: the devices not begun are not begun; those under way finish, each within its timeout)
        pool.shutdown(wait=True, cancel_futures=True)
    return results


class _ReadOnce:
    """A registry's blobs and deltas as `push` reads them, read (or made) once for a whole fleet:
    every device read and hashed its release again, and its delta's base, and applied the delta to
    check it (225 ms a device for a 25 MB bank)."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry, self._lock, self._locks, self._held = registry, threading.Lock(), {}, {}

    def _once(self, key: tuple[str, ...], make: Callable[[], bytes]) -> bytes:
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # (one maker per key: a delta is made once, not by every device at the same moment; other keys go on)
            if key not in self._held:
                self._held[key] = make()  # (a failure is not kept: the next device tries again)
            return self._held[key]

    def blob(self, digest: str) -> bytes:
        return self._once(("blob", digest), lambda: self.registry.blob(digest))

    def delta(self, base_sha256: str, target_sha256: str) -> bytes:
        return self._once(("delta", base_sha256, target_sha256), lambda: self.registry.delta(base_sha256, target_sha256))


def _answers(url: str, timeout_s: float = 3.0, tls: ssl.SSLContext | None = None) -> bool:
    """Whether a device's /health answers at all (any status): telemetry's "offline" is checked
    against it, not taken on trust."""
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=timeout_s, verify=tls or True)
    except (httpx.HTTPError, httpx.InvalidURL, ValueError):
        return False
    return True


def _delta_or_none(registry: ModelRegistry, base: str, target: str) -> bytes | None:
    try:
        return registry.delta(base, target)
    except Exception:  # noqa: BLE001 - the device runs something this registry does not hold: send it whole
        return None


def _post_release(client: httpx.Client, release: Release, payload: bytes, delta: bool) -> httpx.Response:
    return client.post(
        "/deploy",
        data={"manifest": json.dumps(release.manifest), "signature": release.signature, "delta": str(delta).lower()},
        files={"payload": ("release.bin", payload, "application/octet-stream")},
    )


def _detail(reply: httpx.Response) -> Any:
    try:
        return reply.json().get("detail")
    except (ValueError, AttributeError):
        return reply.text[:200]


def _pushed(sent: str, payload: bytes, full_bytes: bytes, reply: httpx.Response) -> dict[str, Any]:
    """What was sent and the device's answer; ValueError when the answer is JSON in name only (a
    server that is not a racmkd edge: it was reported as a codec's error naming neither)."""
    answer: Any = {"detail": reply.text[:2000]}
    if reply.headers.get("content-type", "").startswith("application/json"):
        try:
            answer = reply.json()
        except ValueError:
            raise ValueError(
                f"{reply.request.url}: answered {reply.status_code} with {reply.content[:200]!r}, which is not JSON: not a racmkd edge server's answer"
            ) from None
    return {"sent": sent, "bytes": len(payload), "full_bytes": len(full_bytes), "status_code": reply.status_code, "answer": answer}


def artifact_from_run(run_dir: Path, model: str) -> tuple[Path, str | None, dict[str, Any]]:
    """What to release from a run, with its tier and test metrics: `edge` is the variant bank
    (metrics of its best configuration), a tier name its compressed artifact (its report row).
    A bank is read as the runtime reads it, every variant file included, before anything is signed:
    a damaged file (a truncated .onnx) was signed and registered, or crashed the device profiling."""
    from racmkd.compress.artifacts import read_contract
    from racmkd.runs import open_run, read_report
    from racmkd.runtime.bank import BankError, load_bank

    run_dir = Path(run_dir)
    _, cfg = open_run(run_dir)  # a run, first: "no variant bank in this run" was wrong advice for a mistyped --run
    if model == "edge":
        bank_json = run_dir / "edge" / "bank.json"
        if not bank_json.is_file():
            raise FileNotFoundError(f"{bank_json}: no variant bank in this run. Build it with `racmkd edge build --run {run_dir}`.")
        try:
            loaded = load_bank(run_dir / "edge", warn=False)
        except BankError as err:
            raise RegistryError(f"{err} Nothing was registered.") from None
        if loaded.damaged:
            files = "; ".join(loaded.damaged[v.id] for v in loaded.table.variants if v.id in loaded.damaged)  # (each names its file)
            raise RegistryError(
                f"{run_dir / 'edge'}: {len(loaded.damaged)} variant file(s) damaged, nothing was signed or registered ({files}). Rebuild the bank with `racmkd edge build --run {run_dir}`, then add it again."
            )
        bank = loaded.data
        best_key, best = max(bank["accuracy"]["test"].items(), key=lambda kv: kv[1])
        return run_dir / "edge", None, {"accuracy": best, "best_configuration": best_key, "split": "test"}
    tiers = [t.name for t in cfg.students.tiers]
    if model not in tiers:
        raise RegistryError(f"{model!r}: no tier of the run {run_dir} (its tiers: {', '.join(tiers)}); name a tier, or `edge` for the variant bank")
    manifest = run_dir / "compressed" / model / "compression.json"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{manifest}: no compressed {model!r} in this run. Run `racmkd compress --run {run_dir} --tier {model}`, or name `edge` for the variant bank."
        )
    artifact = manifest.parent / read_compression_record(manifest.parent)["artifact"]
    read_contract(artifact, compress_again(manifest.parent))  # missing or damaged: refused before anything is signed or a registry made
    report_path = run_dir / "report.json"
    row = read_report(run_dir)["models"].get(f"{model}_compressed")
    measure_again = f"measure the run again with `racmkd evaluate --run {run_dir}`"
    if not isinstance(row, dict):
        raise RegistryError(f"{report_path}: no measurements of {model}_compressed; {measure_again}")
    # The report must describe this file: compress replaces the tier's folder, then measures it; stopped
    # in between, the report still held the earlier file's figures, and they were signed with the new file.
    # By its hash (a tier compressed again with the same recipe is likely the same size); a report
    # written before rows carried the hash, by its path and size.
    by_hash = "artifact_sha256" in row

    def described(path: Any, identity: Any) -> str:
        return f"{path} (sha256 {str(identity)[:12]})" if by_hash else f"{path} ({identity} B)"

    measured = (row.get("artifact"), row["artifact_sha256"] if by_hash else row.get("bytes_deployable"))
    actual = (str(artifact.relative_to(run_dir)), sha256(artifact.read_bytes()) if by_hash else artifact.stat().st_size)
    if measured != actual:
        raise RegistryError(
            f"{report_path}: its {model}_compressed row measured {described(*measured)}, not the tier's artifact {described(*actual)}: compressed again since?; {measure_again}"
        )
    metrics = {k: row[k] for k in ("accuracy", "f1_macro", "auc_roc", "latency_ms_p50", "bytes_deployable", "format") if k in row}
    return artifact, model, metrics
