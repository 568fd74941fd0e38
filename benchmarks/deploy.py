"""Benchmark of the deployment issue's targets: delta sizes, serving overhead, device fit, offloading
with the fog killed mid-run, and each role under concurrent load, all on loopback.

    python benchmarks/deploy.py                 # on runs/latest (needs its variant bank: racmkd edge build)
    python benchmarks/deploy.py --run runs/NAME
    python benchmarks/deploy.py --quick         # on runs/quick/latest (another benchmark's --quick run): fewer requests and steps, minutes, figures rough

- Delta updates: every tier's student (the compressed one where the run has it) fine-tuned on
  labels, once with only the classifier head trainable and once with every weight trainable (as
  a re-distillation changes every weight), the variant bank rebuilt from the fine-tuned students;
  the zstd patch-from delta between the packed banks against the full new bank.
- Serving overhead on the edge role, same sample, same variants, the run's runtime.threads: bare ONNX Runtime
  (preprocessing + the variants' sessions + their logits combined: the same answer, checked) vs the
  runtime (`EdgeRuntime.predict`), in this process; and over HTTP (POST of an .npz over loopback,
  measured at the client), the edge server vs a bare server (benchmarks/bare_edge.py: what a
  hand-written FastAPI app does with the same variants). The target is the served figure: what the
  runtime and the serving layer add to a request's latency.
- Device fit: the bank and every tier's compressed artifact registered (signed, profiled on every
  device in configs/devices/), then `deploy plan`.
- Offloading: an edge that forwards to a fog server (offload margin -1: the fog first), the fog
  killed with SIGKILL halfway through a stream of requests; lost requests and latency after. The
  fog advertises its models' accuracy from the run's report.json: a run without one (make bench's)
  is measured first (`racmkd evaluate`), or the edge would never forward.
- Load: each role's server in its own process, 8 concurrent clients for a bounded count and time.
- Soak: the edge server under 2 clients for `--soak-minutes` (10), its resident memory every 5 s;
  judged over the second half, as the runtime benchmark's soak.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import threading
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from racmkd.config import load_config  # noqa: E402
from racmkd.deploy.loopback import ServerProcess, free_port, wait_http  # noqa: E402
from racmkd.deploy.delta import make_delta  # noqa: E402
from racmkd.deploy.orchestrator import artifact_from_run, device_fit, plan  # noqa: E402
from racmkd.deploy.registry import ModelRegistry, artifact_kind, pack  # noqa: E402
from racmkd.deploy.server import EdgeService, create_app  # noqa: E402
from racmkd.deploy.signing import generate_keypair, load_private_key  # noqa: E402
from racmkd.utils import percentile  # noqa: E402
from racmkd.utils import save_figure  # noqa: E402
from racmkd.data.paths import git_commit  # noqa: E402
from racmkd.eval.report import evaluate_run  # noqa: E402
from racmkd.measure.timing import machine  # noqa: E402
from racmkd.models.checkpoint import load_model, save_model  # noqa: E402
from racmkd.models.inference import BatchFeatures  # noqa: E402
from racmkd.pipeline import open_run, prepare_data  # noqa: E402
from racmkd.runs import RunError  # noqa: E402
from racmkd.resources.devices import device_names, load_device  # noqa: E402
from racmkd.runtime.edge import EdgeRuntime  # noqa: E402
from racmkd.runtime.variants import build_bank, load_bank  # noqa: E402
from racmkd.utils import progress, torch_threads  # noqa: E402
from bare_edge import BarePath  # noqa: E402
from results_io import ResidentSampler, at_least, check_out, refuse_with_quick, reports_errors, soak_memory_text, soak_target, targets_table, write_results  # noqa: E402

DELTA_TARGET = 0.05
OVERHEAD_TARGET = 0.05
FIT_TARGET = "every device profile gets a fitting model, or a clear reason"


# Deltas ----------------------------------------------------------------------------------------------------


def fine_tuned_run(run_dir: Path, out: Path, dataset: Any, head_only: bool, steps: int, seed: int = 0) -> Path:
    """A copy of the run's tier students fine-tuned on labels (head only, or every weight)."""
    cfg = load_config(run_dir / "config.yaml")
    out.mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", out / "config.yaml")
    for tier in [t.name for t in cfg.students.tiers]:
        (out / "checkpoints").mkdir(exist_ok=True)
        shutil.copy(run_dir / "checkpoints" / f"{tier}.pt", out / "checkpoints" / f"{tier}.pt")
        compressed = run_dir / "compressed" / tier
        source = out / "checkpoints" / f"{tier}.pt"
        if (compressed / "compression.json").is_file():
            (out / "compressed" / tier).mkdir(parents=True)
            for name in ("model.pt", "compression.json"):
                shutil.copy(compressed / name, out / "compressed" / tier / name)
            source = out / "compressed" / tier / "model.pt"
        model, specs, _, meta = load_model(source)
        trainable = list(model.classifier.parameters()) if head_only else list(model.parameters())
        for p in model.parameters():
            p.requires_grad_(any(p is q for q in trainable))
        optimiser = torch.optim.Adam(trainable, lr=1e-3)
        generator = torch.Generator().manual_seed(seed)
        model.train()
        if head_only:
            model.eval()  # BatchNorm statistics stay as they were: only the head moves
        with torch_threads(cfg.threads):
            for step, rows in zip(range(steps), dataset.batches("train", 128, generator=generator)):
                features = BatchFeatures(dataset.modalities, dataset.raw_batch("train", rows, generator)).get(specs)
                loss = torch.nn.functional.cross_entropy(model(features), dataset.splits["train"].labels[rows])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        save_model(source, model.eval(), specs, meta)
    build_bank(cfg, dataset, out, val_samples=1000, test_samples=2000, latency_iters=30)
    return out / "edge"


def delta_sizes(run_dir: Path, dataset: Any, steps: int) -> dict[str, Any]:
    """Deltas from the run's bank, rebuilt here by the same code and settings as the fine-tuned
    banks (the run's own bank may come from an older export: its differences are not the update's)."""
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        base, _ = pack(fine_tuned_run(run_dir, Path(tmp) / "base", dataset, head_only=True, steps=0))
        for name, head_only in (("head_only", True), ("all_weights", False)):
            bank = fine_tuned_run(run_dir, Path(tmp) / name, dataset, head_only, steps)
            target, _ = pack(bank)
            delta = make_delta(base, target)
            rows[name] = {
                "full_bytes": len(target),
                "delta_bytes": len(delta),
                "ratio": len(delta) / len(target),
                "test_accuracy_best": max(json.loads((bank / "bank.json").read_text())["accuracy"]["test"].values()),
            }
    return rows


# Serving overhead -----------------------------------------------------------------------------------------


def handler_seconds(client: httpx.Client) -> tuple[float, float]:
    """(sum, count) of the edge's own request-latency histogram: time inside its /predict handler."""
    text = client.get("/metrics").text
    values = {
        line.split("{")[0].split(" ")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("racmkd_request_latency_seconds_") and 'role="edge"' in line and "_bucket" not in line
    }
    return values.get("racmkd_request_latency_seconds_sum", 0.0), values.get("racmkd_request_latency_seconds_count", 0.0)


ROUNDS = 6  # of the serving-overhead paths, in turn


def rounds(values: list[float], count: int) -> list[list[float]]:
    """A path's timings split back into the rounds they were taken in."""
    size = len(values) // count
    return [values[i * size : (i + 1) * size] for i in range(count)]


def serving_overhead(run_dir: Path, dataset: Any, iters: int) -> dict[str, Any]:
    """Bare ONNX Runtime vs the runtime (in this process) vs the edge server (its own process, as
    deployed; HTTP over loopback), same sample, the run's runtime.threads (the bare server's too), every path in turn over six rounds.
    The server's figure is split into its handler (its own latency histogram) and the rest
    (HTTP on both sides and the client)."""
    cfg = load_config(run_dir / "config.yaml", ["runtime.latency_target_ms=1000", "serve.upstreams=[]"])
    bank = load_bank(run_dir / "edge")
    runtime = EdgeRuntime(bank, cfg.runtime)
    raw = dataset.raw_batch("test", torch.tensor([0]))
    inputs = {m: raw[m][0].numpy() for m in bank.table.modalities}
    variants = [v for v in runtime.current.config if v is not None]
    # (the runtime's sessions: the same engine timed)
    bare_path = BarePath(bank, [v.id for v in variants], sessions={v.id: runtime._session(v) for v in variants})

    def bare() -> tuple[int, np.ndarray]:
        return bare_path(inputs)

    label, probabilities = bare()
    answer = runtime.infer(inputs)
    if answer.label != label or not np.allclose(answer.probabilities, probabilities, atol=1e-5):
        raise RuntimeError(f"the bare path answers {label}, the runtime {answer.label} with {answer.variants}: they must compute the same thing to be compared")

    port, bare_port = free_port(), free_port()
    server_argv = [
        sys.executable,
        "-m",
        "racmkd.cli",
        "serve",
        "--role",
        "edge",
        "--run",
        str(run_dir),
        "--port",
        str(port),
        "--set",
        "runtime.latency_target_ms=1000",
    ]
    bare_argv = [
        sys.executable,
        str(Path(__file__).with_name("bare_edge.py")),
        "--bank",
        str(run_dir / "edge"),
        "--variants",
        ",".join(v.id for v in variants),
        "--threads",
        str(cfg.runtime.threads),
        "--port",
        str(bare_port),
    ]
    with ServerProcess(server_argv, "edge server") as server, ServerProcess(bare_argv, "bare server") as bare_server:
        wait_http(f"http://127.0.0.1:{port}/health", process=server)
        wait_http(f"http://127.0.0.1:{bare_port}/health", process=bare_server)
        buffer = io.BytesIO()
        np.savez(buffer, **inputs)
        body = buffer.getvalue()
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}")
        bare_client = httpx.Client(base_url=f"http://127.0.0.1:{bare_port}")
        compute: list[float] = []

        def post(to: httpx.Client) -> dict[str, Any]:
            reply = to.post("/predict", content=body, headers={"Content-Type": "application/x-npz"})
            reply.raise_for_status()
            return reply.json()  # type: ignore[no-any-return]

        def served() -> None:
            compute.append(post(client)["compute_ms"])

        def bare_served() -> dict[str, Any]:
            return post(bare_client)

        ours, theirs = post(client), bare_served()
        if (
            ours["variants"] != [v.id for v in variants]
            or theirs["label"] != label
            or not np.allclose(ours["probabilities"], theirs["probabilities"], atol=1e-5)
        ):
            raise RuntimeError(
                f"the edge server answered with {ours['variants']} ({ours['label']}), the bare server {theirs['label']} with {[v.id for v in variants]}: they must compute the same thing to be compared"
            )
        times: dict[str, list[float]] = {"bare": [], "runtime": [], "bare_server": [], "server": [], "round_trip": []}
        calls = {
            "bare": bare,
            "runtime": lambda: runtime.predict(**inputs),
            "bare_server": bare_served,
            "server": served,
            "round_trip": lambda: client.get("/openapi.json"),
        }
        with torch_threads(1):
            for _ in range(50):
                for fn in calls.values():
                    fn()
            compute.clear()
            handler_before = handler_seconds(client)
            for _ in range(ROUNDS):  # every path in turn (the host's speed drifts: each path sees the same drift)
                for name, fn in calls.items():
                    # The servers finish their work after they answer (on 2 cores, beside the path timed
                    # next): without a pause the in-process path after the HTTP ones read 4.0 ms
                    # against 0.29 ms timed alone, and the runtime's overhead -92%.
                    time.sleep(0.2)
                    for _ in range(iters // ROUNDS):
                        started = time.perf_counter()
                        fn()
                        times[name].append((time.perf_counter() - started) * 1e3)
            handler_after = handler_seconds(client)
        client.close()
        bare_client.close()
    p50 = {k: percentile(v, 50) for k, v in times.items()}
    bare_mean = statistics.fmean(times["bare"])
    handler_ms = 1e3 * (handler_after[0] - handler_before[0]) / max(handler_after[1] - handler_before[1], 1)
    return {
        "configuration": [v.id for v in variants],
        "threads": cfg.runtime.threads,
        "p50_ms": p50,
        "p99_ms": {k: percentile(v, 99) for k, v in times.items()},
        "server_handler_ms_mean": handler_ms,
        "bare_ms_mean": bare_mean,
        "server_compute_ms_p50": percentile(compute, 50),
        "runtime_overhead": p50["runtime"] / p50["bare"] - 1,
        "server_overhead": p50["server"] / p50["bare"] - 1,
        "served_overhead": p50["server"] / p50["bare_server"] - 1,  # a request's latency at the client, ours vs a bare server's
        "served_overhead_by_round": [
            percentile(ours, 50) / percentile(theirs, 50) - 1 for ours, theirs in zip(rounds(times["server"], ROUNDS), rounds(times["bare_server"], ROUNDS))
        ],  # the host's drift, seen
        "handler_overhead": handler_ms / bare_mean - 1,  # means both: the server's metrics give its handlers' mean
    }


# Device fit -----------------------------------------------------------------------------------------------


def fit_all(run_dir: Path, registry_root: Path, keys: tuple[Path, Path]) -> dict[str, Any]:
    cfg = load_config(run_dir / "config.yaml")
    devices = [load_device(d) for d in device_names()]
    registry, key = ModelRegistry(registry_root), load_private_key(keys[0])
    for model in ["edge", *[t.name for t in cfg.students.tiers]]:
        try:
            artifact, tier, metrics = artifact_from_run(run_dir, model)
        except FileNotFoundError:
            continue
        registry.register(artifact, model, key, tier, metrics, device_fit(artifact, artifact_kind(artifact), devices))
    return {"releases": [r.summary() for r in registry.latest()], "plan": [a.as_dict() for a in plan(registry, devices)]}


# Offloading with the fog killed -----------------------------------------------------------------------------


def offload_kill(run_dir: Path, dataset: Any, requests: int, rate_hz: float) -> dict[str, Any]:
    import uvicorn

    fog_port, edge_port = free_port(), free_port()
    fog = ServerProcess([sys.executable, "-m", "racmkd.cli", "serve", "--role", "fog", "--run", str(run_dir), "--port", str(fog_port)], "fog server")
    try:
        wait_http(f"http://127.0.0.1:{fog_port}/health", process=fog)
        cfg = load_config(
            run_dir / "config.yaml",
            [f"serve.upstreams=[http://127.0.0.1:{fog_port}]", "serve.offload_margin=-1.0", "serve.probe_interval_s=0.5", "runtime.latency_target_ms=200"],
        )
        service = EdgeService(cfg, run_dir, cfg.serve)
        server = uvicorn.Server(uvicorn.Config(create_app(service, cfg.serve), host="127.0.0.1", port=edge_port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_http(f"http://127.0.0.1:{edge_port}/health")
        deadline = time.monotonic() + 30
        while service.upstreams[0].accuracy is None and time.monotonic() < deadline:
            time.sleep(0.1)
        fog_accuracy = service.upstreams[0].accuracy  # None: its run has no report.json, and the edge has no reason to forward
        rows = torch.arange(requests) % len(dataset.splits["test"])
        raw = dataset.raw_batch("test", rows)
        labels = dataset.splits["test"].labels[rows].numpy()
        records = []
        client = httpx.Client(base_url=f"http://127.0.0.1:{edge_port}", timeout=10)
        started = time.perf_counter()
        for i in progress(range(requests), desc="offload: fog killed halfway"):
            if i == requests // 2:
                fog.process.kill()  # (SIGKILL on POSIX)
            pause = started + i / rate_hz - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            buffer = io.BytesIO()
            np.savez(buffer, **{m: raw[m][i].numpy() for m in service.modalities()})
            t0 = time.perf_counter()
            try:
                reply = client.post("/predict", content=buffer.getvalue(), headers={"Content-Type": "application/x-npz"})
                answer = reply.json() if reply.status_code == 200 else None
                status = reply.status_code
            except httpx.HTTPError as err:
                answer, status = None, f"{type(err).__name__}"
            ms = (time.perf_counter() - t0) * 1e3
            records.append(
                {
                    "i": i,
                    "after_kill": i >= requests // 2,
                    "status": status,
                    "ms": ms,
                    "offloaded": bool(answer and answer["offloaded"]),
                    "fallback": bool(answer and any("offload failed" in f for f in answer["fallbacks"])),
                    "correct": bool(answer and answer["label"] == int(labels[i])),
                }
            )
        client.close()
        server.should_exit = True
        thread.join(10)
    except BaseException as err:
        fog.stop(error=err)
        raise
    fog.stop()  # (killed halfway through on purpose: the log of a clean run goes)
    after = [r for r in records if r["after_kill"]]
    affected = [r for r in after if r["fallback"]]
    return {
        "requests": requests,
        "fog_accuracy": fog_accuracy,
        "lost": sum(r["status"] != 200 for r in records),
        "offloaded_before_kill": sum(r["offloaded"] for r in records if not r["after_kill"]),
        "offloaded_after_kill": sum(r["offloaded"] for r in after),
        "affected": len(affected),
        "affected_ms_p50": percentile([r["ms"] for r in affected], 50),
        "affected_ms_p99": percentile([r["ms"] for r in affected], 99),
        "before_ms_p99": percentile([r["ms"] for r in records if not r["after_kill"]], 99),
        "after_ms_p99": percentile([r["ms"] for r in after], 99),
        "accuracy": sum(r["correct"] for r in records) / len(records),
        "records": records,
    }


# Load ----------------------------------------------------------------------------------------------------------


def load_test(run_dir: Path, dataset: Any, role: str, requests: int, seconds: float, clients: int = 8, soak: bool = False) -> dict[str, Any]:
    """A role's server in its own process under `clients` concurrent clients for `requests` or
    `seconds`, whichever ends first; with `soak`, the server's resident memory sampled throughout
    (`soak` in the result: a long-running server must not grow)."""
    port = free_port()
    argv = [sys.executable, "-m", "racmkd.cli", "serve", "--role", role, "--run", str(run_dir), "--port", str(port), "--set", "runtime.latency_target_ms=1000"]
    with ServerProcess(argv, f"{role} server") as proc:
        wait_http(f"http://127.0.0.1:{port}/health", process=proc)
        raw = dataset.raw_batch("test", torch.arange(64))
        modalities = load_bank(run_dir / "edge").table.modalities  # the run's, not image and audio by name
        bodies = []
        for i in range(64):
            buffer = io.BytesIO()
            np.savez(buffer, **{m: raw[m][i].numpy() for m in modalities})
            bodies.append(buffer.getvalue())
        deadline = time.monotonic() + seconds
        latencies: list[float] = []
        errors = [0]
        lock = threading.Lock()
        counter = iter(range(requests))

        def worker() -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                for i in counter:
                    if time.monotonic() > deadline:
                        return
                    t0 = time.perf_counter()
                    try:
                        ok = client.post("/predict", content=bodies[i % 64], headers={"Content-Type": "application/x-npz"}).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    with lock:
                        latencies.append((time.perf_counter() - t0) * 1e3)
                        errors[0] += not ok

        started = time.perf_counter()
        sampler = ResidentSampler(proc.pid, seconds / 60, f"{role} server soak").start() if soak else None
        with ThreadPoolExecutor(clients) as pool:
            for _ in range(clients):
                pool.submit(worker)
        wall = time.perf_counter() - started
        memory = sampler.stop() if sampler is not None else None
    return {
        "role": role,
        "clients": clients,
        "requests": len(latencies),
        "errors": errors[0],
        "seconds": wall,
        "throughput_rps": len(latencies) / wall,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        **({"soak": memory} if memory is not None else {}),
    }


# Report -----------------------------------------------------------------------------------------------------------


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Deployment benchmark",
        "",
        f"Commit `{result['commit']}`, {result['machine']['cpu']} ({result['machine']['cores']} cores), run `{result['run']}`, everything on loopback. Every figure below was measured in this run.",
        "",
    ]
    d = result["deltas"]
    lines += [
        "## Delta updates (zstd patch-from between packed variant banks)",
        "",
        "| fine-tune | full bank | delta | ratio | best test accuracy after |",
        "|---|---|---|---|---|",
    ]
    for name, r in d.items():
        lines.append(
            f"| {name.replace('_', ' ')} ({result['fine_tune_steps']} steps) | {r['full_bytes']:,} B | {r['delta_bytes']:,} B | {r['ratio']:.2%} | {r['test_accuracy_best']:.4f} |"
        )
    o = result["overhead"]
    lines += [
        "",
        f"## Serving overhead on the edge role ({o['threads']} ONNX Runtime thread(s) a session, same sample and variants)",
        "",
        f"Configuration: {', '.join(o['configuration'])}.",
        "",
        "| path | p50 (ms) | p99 (ms) |",
        "|---|---|---|",
    ]
    names = {
        "bare": "bare: numpy preprocessing + ONNX Runtime sessions + logits summed, softmax (the same answer)",
        "runtime": "EdgeRuntime.predict (allocator, input checks, quality, PID)",
        "bare_server": "bare server, its own process (benchmarks/bare_edge.py: FastAPI, np.load, the bare path, JSON): POST /predict at the client",
        "server": "edge server, its own process: POST /predict (.npz) at the client",
        "round_trip": "HTTP round trip alone: GET /openapi.json (cached)",
    }
    for k in ("bare", "runtime", "bare_server", "server", "round_trip"):
        lines.append(f"| {names[k]} | {o['p50_ms'][k]:.3f} | {o['p99_ms'][k]:.3f} |")
    lines += [
        "",
        f"A request's latency at the client, the edge server over the bare server: {o['served_overhead']:+.1%} (what the runtime and the serving layer add to a served request; "
        f"round by round {', '.join(f'{r:+.1%}' for r in o['served_overhead_by_round'])}). "
        f"In-process, the runtime over bare ONNX Runtime: {o['runtime_overhead']:+.1%}. The edge server over in-process bare: {o['server_overhead']:+.1%} at the client; inside the server, its /predict handler took "
        f"{o['server_handler_ms_mean']:.3f} ms on average ({o['handler_overhead']:+.1%} over bare's mean, {o['bare_ms_mean']:.3f} ms: parsing the .npz, checks, the runtime, the reply), of which the runtime's own compute {o['server_compute_ms_p50']:.3f} ms (p50); "
        "the rest is HTTP on both sides of loopback and the client.",
        "",
    ]
    lines += ["## Device fit (`deploy plan`)", "", "| device | release | why |", "|---|---|---|"]
    for a in result["fit"]["plan"]:
        lines.append(f"| {a['device']} | {a['release'] or '**none**'} | {a['reason']} |")
    k = result["offload"]
    lines += [
        "",
        "## Offloading, fog killed halfway",
        "",
        f"{k['requests']} requests at {result['offload_rate_hz']:g}/s through the edge to the fog; the fog SIGKILLed at request {k['requests'] // 2}. Lost: **{k['lost']}**. Offloaded before the kill: {k['offloaded_before_kill']}, after: {k['offloaded_after_kill']}. Requests that tried the dead fog first: {k['affected']}, p50 {k['affected_ms_p50']:.1f} ms, p99 {k['affected_ms_p99']:.1f} ms (p99 before the kill {k['before_ms_p99']:.1f} ms, after {k['after_ms_p99']:.1f} ms). Accuracy over the stream {k['accuracy']:.4f}."
        + (
            ""
            if k.get("fog_accuracy") is not None
            else " **The fog reported no test accuracy** (its run's report.json has none for its models), so the edge never forwarded and the offload path was not exercised."
        ),
        "",
    ]
    lines += [
        "## Each role under concurrent load (8 clients, .npz requests, server and clients on the same 2 cores)",
        "",
        "| role | requests | errors | throughput (req/s) | p50 (ms) | p99 (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["load"]:
        lines.append(f"| {r['role']} | {r['requests']} | {r['errors']} | {r['throughput_rps']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    if result.get("soak"):
        r, m = result["soak"], result["soak"]["soak"]
        lines += [
            "",
            "## Soak (the edge server, 2 clients back to back)",
            "",
            f"{m['minutes']:g} minutes: {r['requests']:,} requests, {r['errors']} errors, p50 {r['p50_ms']:.2f} ms; the server's {soak_memory_text(m)}.",
        ]
    lines += ["", *targets_table(result["targets"])]
    lines += ["", "![deploy](deploy.png)", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    records = result["offload"]["records"]
    colours = ["tab:blue" if r["offloaded"] else ("tab:red" if r["fallback"] else "tab:green") for r in records]
    axes[0].scatter([r["i"] for r in records], [r["ms"] for r in records], c=colours, s=6)
    axes[0].axvline(result["offload"]["requests"] // 2, color="black", linestyle="--", linewidth=1)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("request")
    axes[0].set_ylabel("latency at the client (ms)")
    axes[0].set_title("offloading: blue = fog, red = fog failed -> local, green = local")
    load = result["load"]
    axes[1].bar([r["role"] for r in load], [r["throughput_rps"] for r in load], color="tab:gray")
    axes[1].set_ylabel("requests / s (8 clients)")
    axes[1].set_title("throughput per role")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def fit_target(fit: dict[str, Any]) -> dict[str, Any]:
    """The device-fit row of the targets. Reached when some device got a release and every other
    one a reason; a registry holding no releases (nothing of the run registered), or releases that
    fit no device, exercised nothing: every device's reason then starts "nothing fits", which
    passed the target by construction."""
    assignments = fit["plan"]
    unfit = [a["device"] for a in assignments if a["release"] is None]
    measured = f"{len(assignments) - len(unfit)} of {len(assignments)} fitted" + (f"; no fit (with reasons): {', '.join(unfit)}" if unfit else "")
    if not fit["releases"]:
        return {"target": FIT_TARGET, "measured": f"{measured}: the registry holds no releases (nothing of the run was registered)", "reached": False}
    if len(unfit) == len(assignments):
        return {"target": FIT_TARGET, "measured": f"{measured}: no release fits any device profile", "reached": False}
    return {"target": FIT_TARGET, "measured": measured, "reached": all(a["release"] is not None or a["reason"].startswith("nothing fits") for a in assignments)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; values the experiments cannot run with are refused here, before any work."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="a run (default: runs/latest, with --quick runs/quick/latest)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--steps", type=at_least(0), default=300, help="fine-tuning steps for the delta experiment")
    parser.add_argument(
        "--iters",
        type=at_least(ROUNDS, why=f": each of the {ROUNDS} rounds times every path iters // {ROUNDS} times"),
        default=600,
        help=f"timed calls per path for the overhead (at least {ROUNDS}, one per round)",
    )
    parser.add_argument(
        "--requests",
        type=at_least(2, why=": the fog is killed halfway, so one request before and one after"),
        default=400,
        help="requests in the offload experiment (at least 2)",
    )
    parser.add_argument("--rate", type=at_least(0, float, ": requests a second, paced by 1 / rate", strictly=True), default=40.0)
    parser.add_argument("--load-requests", type=at_least(1), default=2000)
    parser.add_argument("--load-seconds", type=float, default=20.0)
    # 10 minutes: the server's first five fill its runtime's log of the last 200 decisions (switches
    # come often under load; a 5-minute soak at 41f25e4 grew +128 KB over its second half, a
    # 10-minute one +20 KB)
    parser.add_argument("--soak-minutes", type=float, default=10.0, help="the edge server under 2 clients, its memory watched (0: skip)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    refuse_with_quick(parser, args, ("steps", "iters", "requests", "load_requests", "load_seconds", "soak_minutes"), argv)
    check_out(parser, args.out)
    return args


@reports_errors
def main() -> None:
    args = parse_args()
    if args.quick:
        args.steps, args.iters, args.requests, args.load_requests, args.load_seconds, args.soak_minutes = 30, 60, 60, 200, 4.0, 0.5
    args.run = args.run or REPO / "runs" / ("quick" if args.quick else "") / "latest"  # (the other benchmarks' --quick runs are under runs/quick)
    try:
        run_dir, cfg = open_run(args.run)
    except RunError as err:
        sys.exit(f"error: {err}; make a run first (`make run`, or a benchmark's --quick) or name one with --run")
    dataset = prepare_data(cfg)
    if not (run_dir / "edge" / "bank.json").is_file():
        build_bank(cfg, dataset, run_dir)
    if not (run_dir / "report.json").is_file():
        # The fog advertises its models' test accuracy from the run's report; without one the edge
        # has no reason to forward, and the offload experiment would measure nothing (make bench's
        # runs have none).
        print(f"{run_dir}: no report.json; measuring the run (racmkd evaluate) so that the fog has an accuracy to advertise")
        evaluate_run(run_dir, dataset)
    result: dict[str, Any] = {"commit": git_commit(), "machine": machine(), "run": run_dir.name, "fine_tune_steps": args.steps, "offload_rate_hz": args.rate}
    result["deltas"] = delta_sizes(run_dir, dataset, args.steps)
    result["overhead"] = serving_overhead(run_dir, dataset, args.iters)
    with tempfile.TemporaryDirectory() as tmp:
        keys = generate_keypair(Path(tmp) / "keys")
        result["fit"] = fit_all(run_dir, Path(tmp) / "registry", keys)
    result["offload"] = offload_kill(run_dir, dataset, args.requests, args.rate)
    result["load"] = [load_test(run_dir, dataset, role, args.load_requests, args.load_seconds) for role in ("cloud", "fog", "edge")]
    if args.soak_minutes > 0:
        result["soak"] = load_test(run_dir, dataset, "edge", 10**12, args.soak_minutes * 60, clients=2, soak=True)
    head, overhead = result["deltas"]["head_only"], result["overhead"]
    result["targets"] = [
        {
            "target": f"delta for a head-only fine-tune <= {DELTA_TARGET:.0%} of the full artifact",
            "measured": f"{head['ratio']:.2%} ({head['delta_bytes']:,} of {head['full_bytes']:,} B); all weights: {result['deltas']['all_weights']['ratio']:.2%}",
            "reached": head["ratio"] <= DELTA_TARGET,
        },
        {
            "target": f"runtime + serving add <= {OVERHEAD_TARGET:.0%} over bare ONNX Runtime (edge), judged at the HTTP client against a bare ONNX Runtime server (benchmarks/bare_edge.py, the run's runtime.threads)",
            "measured": f"at the HTTP client, over a bare ONNX Runtime server: {overhead['served_overhead']:+.1%} (rounds {min(overhead['served_overhead_by_round']):+.1%} to {max(overhead['served_overhead_by_round']):+.1%}); in process: runtime {overhead['runtime_overhead']:+.1%}, server handler {overhead['handler_overhead']:+.1%}; at the HTTP client over in-process bare {overhead['server_overhead']:+.1%}",
            "reached": overhead["served_overhead"] <= OVERHEAD_TARGET,
        },
        fit_target(result["fit"]),
        {
            "target": "fog killed mid-run: zero lost requests",
            "measured": f"{result['offload']['lost']} lost of {result['offload']['requests']}; affected p99 {result['offload']['affected_ms_p99']:.1f} ms",
            "reached": result["offload"]["lost"] == 0 if result["offload"]["offloaded_before_kill"] else "not measured (nothing was offloaded)",
        },
    ]
    if result.get("soak"):
        result["targets"].append(
            soak_target("edge server soak", result["soak"]["soak"], f"{result['soak']['requests']:,} requests, {result['soak']['errors']} errors")
        )
    stem = "deploy-quick" if args.quick else "deploy"
    write_results(args.out, stem, result, render(result).replace("deploy.png", f"{stem}.png"), lambda path: plot(result, path))


if __name__ == "__main__":
    main()
