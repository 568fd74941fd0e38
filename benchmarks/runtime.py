"""Benchmark of the edge-runtime issue's targets: adaptation time, monitor overhead, SLO-accuracy of
dynamic allocation against static tiers, the critical modality under a 70% resource cut, the
Table 6.7 rows, a run under real CPU and memory load (stress-ng), and a soak run.

    python benchmarks/runtime.py                    # on runs/latest (its variant bank built if missing or built on another machine)
    python benchmarks/runtime.py --run runs/NAME
    python benchmarks/runtime.py --quick            # the smoke config: minutes, figures meaningless

The runtime settings (`runtime:` of --config, default configs/default.yaml) are this commit's; the
run supplies the models and their variant bank only.

What it does, all with the real runtime and real inference on the run's test split:

- Trace replay (`racmkd simulate`) of the five synthetic traces, `--requests` requests each over
  120 s of trace time, the dynamic runtime and every static tier on the same requests, `--repeats`
  times with the requests in different orders (one replay's SLO-accuracy moves by a point or two
  with this host's timing; the targets use the means). A trace
  cannot load this CPU, so latency on the traced device is modelled (measured compute x the
  processor-sharing slowdown of the trace's CPU load, this host's hiccups added once); see
  racmkd/runtime/simulate.py.
- Monitor overhead: the real monitor thread at its default settings on this machine for
  `--monitor-seconds`, its own CPU time over wall time, then the memory it holds (tracemalloc, a
  second run of at most 30 s).
- Critical modality: with the modality `runtime.critical` names marked critical (audio if it names
  none; configs/trimodal.yaml names the pen), the allocator's choice when the device's CPU share
  and free memory are cut to 30% of normal, and (stricter) when every budget is cut to 30% of what
  the richest configuration needs; the accuracy of its variant alone against its best one.
- Real load: the runtime on the real monitor while stress-ng loads the CPU and memory in phases,
  the static high tier beside it answering the same samples in turn (both under the same load;
  `--rate` samples a second, each answered by both). Latencies here are measured, not modelled.
- Inputs taken away (`racmkd simulate --outage`), at the bank's costs (the same on every host):
  the audio dead and the image missing for 20 s each of the sudden trace, and, on the critical,
  sudden and periodic traces, the audio silent on every other request throughout (a microphone
  silent between words: neither there nor gone), every static tier on the same requests.
- Soak: the periodic trace looped in real time with requests as fast as the runtime answers, for
  `--soak-minutes`, resident memory sampled throughout.
Everything is measured in this run but the variants' latencies and energies, read from the run's variant
bank (rebuilt here when it was built on another machine; the result says when it was built, and where);
no figure is typed in.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from racmkd.config import load_config  # noqa: E402
from racmkd.utils import percentile  # noqa: E402
from racmkd.utils import save_figure  # noqa: E402
from racmkd.data.paths import git_commit  # noqa: E402
from racmkd.measure.timing import machine  # noqa: E402
from racmkd.eval.suite import bank_record  # noqa: E402
from racmkd.pipeline import open_run, prepare_data, run_pipeline  # noqa: E402
from racmkd.resources.allocator import Allocator, Budget, config_costs  # noqa: E402
from racmkd.resources.monitor import ResourceMonitor  # noqa: E402
from racmkd.resources.sources import LEVEL_RANGES, MB, SYNTHETIC, ResourceSnapshot, SystemSource, TraceSource, level_value, synthetic_trace  # noqa: E402
from racmkd.runtime.edge import EdgeRuntime, budget_for  # noqa: E402
from racmkd.runtime.simulate import Outage, mean_of_present, serve_split, serve_together, simulate  # noqa: E402
from racmkd.runtime.variants import build_bank, load_bank  # noqa: E402
from racmkd.utils import progress  # noqa: E402
from results_io import ResidentSampler, at_least, check_out, refuse_with_quick, reports_errors, soak_memory_text, soak_target, targets_table, write_results  # noqa: E402

SWEEP_MULTIPLES = (1.5, 2.0, 3.0, 5.0, 10.0, 20.0)  # latency targets, in multiples of what static high needs unloaded
ADAPTATION_TARGET_MS = 5.0
MONITOR_TARGET = 0.01
SLO_RATIO_TARGET = 1.4
CRITICAL_RETENTION_TARGET = 0.9
# (trace, outages) replayed with inputs taken away: a stretch each of a dead and a missing input, and
# an input that flickers throughout on the three traces whose loads leave room for one modality only
# part of the time or all of it.
OUTAGE_REPLAYS = [
    ("sudden", ("audio:10-30:dead", "image:90-110")),
    ("critical", ("audio:0-120:dead:50%",)),
    ("sudden", ("audio:0-120:dead:50%",)),
    ("periodic", ("audio:0-120:dead:50%",)),
]
SOAK_TARGET_MULTIPLE = 3.0  # the soak's latency target, in multiples of what static high needs unloaded (see soak)


def ensure_run(config: Path, run: Path | None, runs_dir: Path) -> Path:
    """The run to measure: the one given, else <runs_dir>/latest or bench-runtime when either has
    its report, else bench-runtime made now with `config` (a whole `make run`: said before it starts)."""
    if run is not None:
        return run
    for made in (runs_dir / "latest", runs_dir / "bench-runtime"):
        if (made / "report.json").exists():
            return made
    print(
        f"no run with a report in {runs_dir / 'latest'}: making {runs_dir / 'bench-runtime'} from {config} first (a whole run; pass --run to measure another)",
        flush=True,
    )
    cfg = load_config(config, [f"runs_dir={runs_dir}", "name=bench-runtime"])
    shutil.rmtree(runs_dir / "bench-runtime", ignore_errors=True)  # an attempt that never reached its report: start over
    return run_pipeline(cfg)


def ratio(value: float, base: float | None) -> float:
    """value / base (inf when base is 0 or missing)."""
    return value / base if base else float("inf")


def times(multiple: float) -> str:
    """A multiple for the tables; a dash where static high answered nothing right (no multiple of 0)."""
    return f"{multiple:.2f}x" if math.isfinite(multiple) else "–"


def adaptation(trace: dict[str, Any]) -> str:
    """A trace's adaptation p99 (all switches / those that loaded a session); a dash without switches."""
    both = (trace["adaptation_ms_p99"], trace["adaptation_ms_p99_swaps"])
    return " / ".join(f"{v:.3f}" if math.isfinite(v) else "–" for v in both) if trace["switches"] else "– (no switch)"


def over_high(value: float, trace: dict[str, Any]) -> float:
    """A trace's SLO-accuracy figure as a multiple of the static high tier's (inf when that is 0)."""
    return ratio(value, trace["slo_accuracy_static"].get("high"))


def with_spread(s: dict[str, Any]) -> str:
    """A pooled trace's dynamic SLO-accuracy with its spread over replays ("one replay" when it has none)."""
    std = s.get("slo_accuracy_std")
    return f"{s['slo_accuracy']:.4f} ± {std:.4f}" if std is not None else f"{s['slo_accuracy']:.4f} (one replay)"


def pooled(replays: list[dict[str, Any]]) -> dict[str, Any]:
    """One trace's replays (the same trace, requests drawn in a different order each) as one summary:
    SLO-accuracies are their means (with the dynamic one's spread: a replay's wall-time latencies move
    it by a point or two on this host), adaptation p99s over their switches pooled, switches their
    sum; the rest (levels, latencies, the adaptation p50) is the first replay's."""
    first = dict(replays[0])
    dynamic = [r["slo_accuracy"] for r in replays]
    first["repeats"] = {
        "n": len(replays),
        "slo_accuracy": dynamic,
        "slo_accuracy_static": {t: [r["slo_accuracy_static"][t] for r in replays] for t in first["slo_accuracy_static"]},
    }
    first["slo_accuracy"] = statistics.fmean(dynamic)
    first["slo_accuracy_std"] = statistics.stdev(dynamic) if len(dynamic) > 1 else None  # one replay: no spread (not a spread of 0)
    first["slo_accuracy_static"] = {t: statistics.fmean(v) for t, v in first["repeats"]["slo_accuracy_static"].items()}
    first["oracle"] = {
        **{k: v for k, v in first["oracle"].items() if k != "per_level"},
        **{k: statistics.fmean(r["oracle"][k] for r in replays) for k in ("slo_accuracy", "clairvoyant_allocator", "best_per_level")},
    }  # NaN where it could not be computed; per_level (one replay's) left out
    # Switch times pooled over the replays: one replay's dozen switches have their largest as p99
    # (nearest rank), and the largest of those was reported as the p99.
    for key, pooled_key in (("adaptation_ms_p99", "adaptation_ms_all"), ("adaptation_ms_p99_swaps", "adaptation_ms_swaps_all")):
        if all(pooled_key in r for r in replays):
            first[pooled_key] = [a for r in replays for a in r[pooled_key]]
            first[key] = percentile(first[pooled_key], 99)
        else:  # (results written before the switch times were kept)
            first[key] = max((r[key] for r in replays if not math.isnan(r[key])), default=float("nan"))
    first["adaptation_ms_max"] = max((r["adaptation_ms_max"] for r in replays if not math.isnan(r["adaptation_ms_max"])), default=float("nan"))
    for key in ("switches", "switches_loading"):
        first[key] = sum(r[key] for r in replays)
    return first


def idle_high_ms(bank: Any) -> float:
    """What the static high deployment needs per request on an idle machine: its variants' median
    latencies and the runtime's own cost, from the bank."""
    high = [v for v in bank.data["variants"] if v["tier"] == "high"]
    return sum(v["latency_ms"] for v in high) + float(bank.data.get("request_overhead_ms", 0.0))


def slo_sweep(bank: Any, dataset: Any, runtime_cfg: Any, requests: int) -> dict[str, Any]:
    """SLO-accuracy of the dynamic runtime and of every static tier on the sudden and periodic
    traces, for latency targets that are multiples of what the static high deployment needs on an
    idle machine (its variants' median latencies and the runtime's own cost per request). Whether
    adapting pays depends on that ratio: with a loose target every tier meets it under any load."""
    base = idle_high_ms(bank)
    rows = []
    for multiple in progress(SWEEP_MULTIPLES, desc="latency-target sweep", leave=True):
        cfg = dataclasses.replace(runtime_cfg, latency_target_ms=multiple * base)
        for name in ("sudden", "periodic"):
            s = simulate(bank, dataset, synthetic_trace(name, 120.0, seed=0), cfg, requests)
            fixed = simulate(bank, dataset, synthetic_trace(name, 120.0, seed=0), cfg, requests, latency="bank")  # the deterministic figures
            rows.append(
                {
                    "multiple": multiple,
                    "target_ms": multiple * base,
                    "trace": name,
                    "dynamic": s["slo_accuracy"],
                    "static": s["slo_accuracy_static"],
                    "oracle": s["oracle"]["slo_accuracy"],
                    "clairvoyant_allocator": s["oracle"]["clairvoyant_allocator"],
                    "best_per_level": s["oracle"].get("best_per_level", float("nan")),
                    "bank_latency": {"dynamic": fixed["slo_accuracy"], "static": fixed["slo_accuracy_static"]},
                }
            )
    return {"base_ms": base, "rows": rows}


def input_outages(bank: Any, dataset: Any, runtime_cfg: Any, requests: int) -> list[dict[str, Any]]:
    """SLO-accuracy of the dynamic runtime and every static tier with inputs taken away
    (OUTAGE_REPLAYS), at the bank's costs; each outage's stretch scored on its own too."""
    rows = []
    for trace, texts in progress(OUTAGE_REPLAYS, desc="replays with inputs taken away", leave=True):
        if any(Outage.parse(t).modality not in bank.table.modalities for t in texts):
            continue  # (a bank without that input: nothing to take away)
        s = simulate(bank, dataset, synthetic_trace(trace, 120.0, seed=0), runtime_cfg, requests, latency="bank", outages=[Outage.parse(t) for t in texts])
        rows.append(
            {
                "trace": trace,
                "outages": s["outages"],
                "dynamic": s["slo_accuracy"],
                "static": s["slo_accuracy_static"],
                "best_per_level": s["oracle"].get("best_per_level", float("nan")),
                "clairvoyant_allocator": s["oracle"].get("clairvoyant_allocator", float("nan")),
                "oracle": s["oracle"].get("slo_accuracy", float("nan")),
            }
        )
    return rows


def monitor_overhead(seconds: float, config: Any) -> dict[str, Any]:
    """The real monitor thread at its default settings, on an otherwise idle process: its CPU share,
    then (a second run, traced: tracemalloc slows allocation, so not while the CPU share is timed)
    the memory it holds, the Python heap the monitor and its source keep once running (every
    allocation of the process, which does nothing else meanwhile, traced from before they were made),
    its peak, and the process's resident growth over the run."""
    import tracemalloc

    import psutil

    with ResourceMonitor(SystemSource(), config) as monitor:
        time.sleep(seconds)
    cpu = monitor.overhead()
    process = psutil.Process()
    rss_before = process.memory_info().rss
    tracemalloc.start()
    try:
        with ResourceMonitor(SystemSource(), config) as traced:
            time.sleep(min(seconds, 30.0))
            held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {
        **cpu,
        "memory_held_bytes": held,
        "memory_peak_bytes": peak,
        "rss_growth_bytes": process.memory_info().rss - rss_before,
        "memory_polls": traced.polls,
    }


def critical_cut(bank: Any, runtime_cfg: Any) -> dict[str, Any]:
    """The critical modality (the first of the runtime config's `critical` in the bank, else audio)
    under two readings of "a 70% resource cut":
    - the device's (the target's reading): the CPU share and the free memory of normal conditions
      (the middle of Table 6.7's high level, one core) cut to 30%, planned by the runtime's own
      `budget_for` at the configured latency target;
    - the models' (stricter): every budget at 30% of what the best configuration needs, below the
      audio front end's own cost, so nothing fits and the allocator's fallback answers."""
    table = bank.table
    declared = [m for m in runtime_cfg.critical if m in table.modalities]
    critical_modality = declared[0] if declared else "audio" if "audio" in table.modalities else table.modalities[0]
    tiers = [v.tier for v in table.variants if v.modality == critical_modality]
    allocator = Allocator(table, {critical_modality: tiers[-1]})
    weights = allocator.weights()
    best_config = allocator.ranking(weights)[0][1]
    richest = config_costs(best_config)
    normal_cpu_free, normal_memory_mb = 1.0 - level_value("high", 0, 0.5) / 100, level_value("high", 1, 0.5)
    device_reading = ResourceSnapshot(
        t=0.0, cpu_percent=100.0 * (1.0 - 0.3 * normal_cpu_free), memory_available_bytes=int(0.3 * normal_memory_mb * MB), cpu_cores=1.0
    )
    cuts = {
        "device": budget_for(device_reading, runtime_cfg, overhead_ms=float(bank.data.get("request_overhead_ms", 0.0))),
        "model_needs": Budget(0.3 * richest.latency_ms, 0.3 * richest.memory_bytes, 0.3 * richest.energy_mj),
    }
    test = bank.accuracy("test")
    index = table.modalities.index(critical_modality)
    alone = {
        v.tier: test[tuple(v.tier if i == index else None for i in range(len(table.modalities)))] for v in table.variants if v.modality == critical_modality
    }
    result: dict[str, Any] = {
        "critical_modality": critical_modality,
        "critical_best_accuracy": max(alone.values()),
        "unconstrained": {
            "configuration": [v.id for v in best_config if v is not None],
            "test_accuracy": test[tuple(v.tier if v is not None else None for v in best_config)],
        },
        "device_reading": {"cpu_percent": device_reading.cpu_percent, "memory_available_mb": 0.3 * normal_memory_mb},
    }
    for name, cut in cuts.items():
        decision = allocator.solve(cut, weights)
        chosen = decision.config[index]
        result[name] = {
            "cut_budget": cut.as_dict(),
            "chosen": [v.id for v in decision.config if v is not None],
            "feasible": decision.feasible,
            "chosen_test_accuracy": test[tuple(v.tier if v is not None else None for v in decision.config)],
            "critical_alone_accuracy": alone[chosen.tier] if chosen is not None else 0.0,
            "retention": alone[chosen.tier] / max(alone.values()) if chosen is not None else 0.0,
        }
    return result


STRESS_PHASES = [  # (name, seconds, stress-ng arguments or None)
    ("idle", 8, None),
    ("cpu 2x60%", 12, ["--cpu", "2", "--cpu-load", "60"]),
    ("cpu 4x100%", 12, ["--cpu", "4", "--cpu-load", "100"]),
    ("memory 2x1GB + cpu 2x100%", 12, ["--vm", "2", "--vm-bytes", "1G", "--cpu", "2", "--cpu-load", "100"]),
    ("idle again", 8, None),
]


def ensure_stress_ng() -> str | None:
    """stress-ng's path, installing Debian's package where we may; None when it cannot be had."""
    found = shutil.which("stress-ng")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        try:
            subprocess.run(["apt-get", "install", "-y", "-q", "stress-ng"], check=False, capture_output=True, timeout=600)
        except subprocess.TimeoutExpired:
            return None  # (an apt lock or a slow mirror): the real-load section is skipped, with its note
    return shutil.which("stress-ng")


def real_load(bank: Any, dataset: Any, runtime_cfg: Any, high: dict[str, str | None], rate_hz: float, stress: str) -> dict[str, Any]:
    """Serve test samples through the stress-ng phases with the dynamic runtime (on the real
    monitor) and the static high tier together, each answering every sample in turn
    (`serve_together`), so that both see the same load; returns, per runtime, per-phase latency and
    accuracy and its decisions."""
    out: dict[str, Any] = {"dynamic": {"phases": []}, "static_high": {"phases": []}}
    with ResourceMonitor(SystemSource(), runtime_cfg.monitor) as monitor:
        runtimes = {"dynamic": EdgeRuntime(bank, runtime_cfg, monitor), "static_high": EdgeRuntime(bank, runtime_cfg, pinned=high)}
        offset = 0.0
        for name, seconds, args in STRESS_PHASES:
            proc = subprocess.Popen([stress, *args, "--timeout", f"{seconds + 5}s", "--quiet"]) if args else None
            try:
                time.sleep(0.5 if proc else 0.0)  # let the load start
                served = serve_together(runtimes, dataset, seconds, rate_hz)
            finally:
                if proc is not None:
                    proc.terminate()
                    proc.wait(timeout=10)
            cpu = mean_of_present(r["cpu_percent"] for r in served["dynamic"]["records"])  # (the static runtime reads no monitor)
            for key, result in served.items():
                records = result["records"]
                for r in records:
                    r["t"] += offset
                out[key]["phases"].append({"phase": name, **result["summary"], "cpu_percent_mean": cpu, "records": records})
            offset += seconds
        for key, runtime in runtimes.items():
            out[key]["decisions"] = list(runtime.decisions)
        out["monitor"] = monitor.overhead()
    return out


def soak(bank: Any, dataset: Any, runtime_cfg: Any, minutes: float) -> dict[str, Any]:
    """The periodic trace looped in real time, requests back to back; RSS every few seconds.

    The latency target is SOAK_TARGET_MULTIPLE times what static high needs on an idle machine,
    so that the trace's busy phases make the runtime switch (at the configured 3 ms, an idle host
    serves high through the whole trace: a soak that never switches tests half the runtime)."""
    config = dataclasses.replace(runtime_cfg, latency_target_ms=SOAK_TARGET_MULTIPLE * idle_high_ms(bank))
    with ResourceMonitor(TraceSource(synthetic_trace("periodic", 120.0), loop=True), config.monitor) as monitor:
        runtime = EdgeRuntime(bank, config, monitor)
        sampler = ResidentSampler(os.getpid(), minutes, "soak").start()
        result = serve_split(runtime, dataset, minutes * 60.0, rate_hz=10_000.0, keep_records=False)  # the harness keeps no per-request history
        memory = sampler.stop()
    return {
        **memory,
        "latency_target_ms": config.latency_target_ms,
        "requests": result["summary"]["requests"],
        "switches": result["summary"]["switches"],
        "accuracy": result["summary"]["accuracy"],
    }


def render(result: dict[str, Any]) -> str:
    b = result["bank"]
    bank = f"variant bank built {b['built']} on {b['machine']['cpu']} ({b['machine']['cores']} cores)"
    lines = [
        "# Edge runtime benchmark",
        "",
        f"Commit `{result['commit']}`, {result['machine']['cpu']} ({result['machine']['cores']} cores), run `{result['run']}`, latency target {result['latency_target_ms']:g} ms. Every figure below was measured in this run except the variants' latencies and energies and what is computed from them (the sweep's base, the replays at the bank's costs), read from the {bank}.",
        "",
    ]
    lines += [
        "## Variants (one thread, unloaded)",
        "",
        f"From the {bank}.",
        "",
        "| variant | precision | latency p50 (ms) | model only (ms) | memory | energy (mJ, estimated) |",
        "|---|---|---|---|---|---|",
    ]
    for v in result["variants"]:
        lines.append(
            f"| {v['tier']}/{v['modality']} | {v['precision']} | {v['latency_ms']:.3f} | {v['model_latency_ms']:.3f} | {v['memory_bytes'] / 1024:.0f} KB | {v['energy_mj']:.4f} |"
        )
    lines += [
        "",
        "## Trace replay: SLO-accuracy (correct within the latency target), dynamic vs static",
        "",
        "| trace | dynamic | "
        + " | ".join(f"static {t}" for t in result["tiers"])
        + " | dynamic / static high | dynamic at the bank's costs / static high | best configuration per level (hindsight) / static high | clairvoyant allocator / static high | oracle (ceiling) / static high | adaptation p99 (ms): all / pointer swaps | switches (loading sessions) |",
        "|---|---|" + "---|" * len(result["tiers"]) + "---|---|---|---|---|---|---|",
    ]
    for name, s in result["traces"].items():
        statics = " | ".join(f"{s['slo_accuracy_static'].get(t, float('nan')):.4f}" for t in result["tiers"])
        gain, ceiling = over_high(s["slo_accuracy"], s), over_high(s["oracle"]["slo_accuracy"], s)
        fixed = s["bank_latency"]
        lines.append(
            f"| {name} | {with_spread(s)} | {statics} | {times(gain)} | {fixed['slo_accuracy']:.4f}: {times(over_high(fixed['slo_accuracy'], fixed))} | {s['oracle']['best_per_level']:.4f}: {times(over_high(s['oracle']['best_per_level'], s))} | {s['oracle']['clairvoyant_allocator']:.4f}: {times(over_high(s['oracle']['clairvoyant_allocator'], s))} | {s['oracle']['slo_accuracy']:.4f}: {times(ceiling)} | {adaptation(s)} | {s['switches']} ({s['switches_loading']}) |"
        )
    n = next(iter(result["traces"].values())).get("repeats", {}).get("n", 1)
    lines += [
        "",
        f"Each trace replayed {n} times (requests drawn in a different order each time): SLO-accuracies are the means (± the dynamic runtime's standard deviation), adaptation p99s over the replays' switches pooled (nearest rank: with fewer than 100 switches, the largest), switches summed over the replays. Latency on a trace is modelled: the work a request needs (its measured compute time, at most its configuration's recent median) x the processor-sharing slowdown of the trace's CPU load (one core), plus any compute time beyond that median (this host's own hiccups) as measured. Real load is in the stress-ng section. The same trace once more with every request at the bank's costs (its variants' medians plus the runtime's own cost, x the slowdown: no wall time, the same on every run) against static high at those costs. Three reference figures, estimated at the bank's median latencies plus the runtime's cost (not strict bounds: a replayed request can run faster than its median; a runtime can beat the first two): the best configuration per resource level, chosen in hindsight on each level's requests (the most a runtime choosing one configuration per level could get); the clairvoyant allocator answers each request with the most accurate configuration that meets its deadline (an allocator that knows the latencies); the oracle with a configuration that gets it right in time, if any does (no runtime knows which one a request needs).",
        "",
    ]
    missing = {name: s["oracle"]["why_not"] for name, s in result["traces"].items() if s["oracle"].get("why_not")}
    if missing:
        lines += [f"No ceilings for {', '.join(missing)}: {next(iter(missing.values()))}.", ""]
    if result.get("sweep"):
        sw = result["sweep"]
        lines += [
            "## SLO-accuracy against the latency target",
            "",
            f"The same replays with the latency target set to multiples of what the static high deployment needs on an idle machine ({sw['base_ms']:.3f} ms: its variants' median latencies and the runtime's own cost per request, from the {bank}). The configured target above, {result['latency_target_ms']:g} ms, is {result['latency_target_ms'] / sw['base_ms']:.0f}x that.",
            "",
            "| target | trace | dynamic | static high | best static tier | best configuration per level (hindsight) | clairvoyant allocator | oracle (ceiling) | dynamic / static high | at the bank's costs: dynamic / static high | best per level / static high | oracle / static high | dynamic / best static |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sw["rows"]:
            best_tier = max(r["static"], key=r["static"].get)
            high = r["static"].get("high", float("nan"))
            fixed = r["bank_latency"]
            lines.append(
                f"| {r['multiple']:g}x = {r['target_ms']:.3f} ms | {r['trace']} | {r['dynamic']:.4f} | {high:.4f} | {r['static'][best_tier]:.4f} ({best_tier}) | {r['best_per_level']:.4f} | {r['clairvoyant_allocator']:.4f} | {r['oracle']:.4f} | {ratio(r['dynamic'], high):.2f}x | {fixed['dynamic']:.4f} / {fixed['static'].get('high', float('nan')):.4f} = {ratio(fixed['dynamic'], fixed['static'].get('high', float('nan'))):.2f}x | {ratio(r['best_per_level'], high):.2f}x | {ratio(r['oracle'], high):.2f}x | {ratio(r['dynamic'], r['static'][best_tier]):.2f}x |"
            )
        lines.append("")
    if result.get("outages"):
        lines += [
            "## Inputs taken away",
            "",
            "Replays at the bank's costs (`racmkd simulate --outage ... --latency bank`, 120 s, the same requests for every policy): the whole trace, then each outage's stretch alone. `dead:50%`: the input silent on every other request of the stretch. Best per level holds one configuration per resource level through the outages, as a static tier is held (the requests it lost an input of answered from the inputs it has left).",
            "",
            "| trace | outages | dynamic | "
            + " | ".join(f"static {t}" for t in result["tiers"])
            + " | best per level (hindsight) | clairvoyant allocator | oracle (ceiling) |",
            "|---|---|---|" + "---|" * len(result["tiers"]) + "---|---|---|",
        ]
        for r in result["outages"]:
            statics = " | ".join(f"{r['static'].get(t, float('nan')):.4f}" for t in result["tiers"])
            names = ", ".join(o["outage"] for o in r["outages"])
            lines.append(
                f"| {r['trace']} | {names} | {r['dynamic']:.4f} | {statics} | {r['best_per_level']:.4f} | {r['clairvoyant_allocator']:.4f} | {r['oracle']:.4f} |"
            )
            for o in r["outages"]:
                if o["requests"] and len(r["outages"]) > 1:
                    stretch = " | ".join(f"{o['static'][t]['slo_accuracy']:.4f}" if t in o["static"] else "" for t in result["tiers"])
                    lines.append(f"| {r['trace']}: its {o['requests']} requests | {o['outage']} | {o['dynamic']['slo_accuracy']:.4f} | {stretch} | | | |")
        lines.append("")
    lines += [
        "## Table 6.7: per resource level (dynamic runtime, periodic trace)",
        "",
        "| level | seed's CPU / free memory | our CPU (%) | our free memory (MB) | accuracy | SLO-accuracy | latency mean / p95 (ms) | active modalities |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["traces"]["periodic"]["levels"]:
        (c0, c1), (m0, m1) = LEVEL_RANGES[r["level"]]
        seed = f"{c0:.0f}-{c1:.0f}% / {m0:.0f}-{m1:.0f} MB" if r["level"] != "critical" else "> 90% / < 20 MB"
        lines.append(
            f"| {r['level']} | {seed} | {r['cpu_percent']:.0f} | {r['memory_available_mb']:.0f} | {r['accuracy']:.4f} | {r['slo_accuracy']:.4f} | {r['latency_ms_mean']:.2f} / {r['latency_ms_p95']:.2f} | {r['active_modalities']} |"
        )
    lines += [
        "",
        "The seed paper's accuracy and latency per level are not in this repository (the issue quotes only its CPU and memory ranges), so only those ranges stand beside ours.",
        "",
    ]
    c = result["critical_cut"]
    m, d, n = c["critical_modality"], c["device"], c["model_needs"]
    lines += [
        "## The critical modality under a 70% resource cut",
        "",
        f"{m} marked critical; unconstrained, the best configuration is {', '.join(c['unconstrained']['configuration'])} (test accuracy {c['unconstrained']['test_accuracy']:.4f}); the best {m} variant alone: {c['critical_best_accuracy']:.4f}.",
        "",
        "| the cut | budget (latency ms / memory MB) | chosen | fits | accuracy | its " + m + " variant alone | retained |",
        "|---|---|---|---|---|---|---|",
        f"| the device's CPU share and free memory at 30% of normal ({c['device_reading']['cpu_percent']:.1f}% CPU, {c['device_reading']['memory_available_mb']:.1f} MB free) | {d['cut_budget']['latency_ms']:.3f} / {d['cut_budget']['memory_bytes'] / MB:.2f} | {', '.join(d['chosen'])} | {d['feasible']} | {d['chosen_test_accuracy']:.4f} | {d['critical_alone_accuracy']:.4f} | {d['retention']:.1%} |",
        f"| stricter: every budget at 30% of what the best configuration needs | {n['cut_budget']['latency_ms']:.3f} / {n['cut_budget']['memory_bytes'] / MB:.2f} | {', '.join(n['chosen'])} | {n['feasible']} | {n['chosen_test_accuracy']:.4f} | {n['critical_alone_accuracy']:.4f} | {n['retention']:.1%} |",
        "",
    ]
    if result.get("real_load"):
        lines += [
            "## Under real load (stress-ng), latencies measured",
            "",
            "The dynamic runtime and static high answer each sample in turn (the order alternating), under the same load.",
            "",
            "| phase | CPU (%) | dynamic: deadline met | SLO-acc. | p50 / p99 (ms) | main configuration | static high: deadline met | SLO-acc. | p50 / p99 (ms) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for d, s in zip(result["real_load"]["dynamic"]["phases"], result["real_load"]["static_high"]["phases"]):
            main = next(iter(d["configurations"]), "")
            lines.append(
                f"| {d['phase']} | {d['cpu_percent_mean']:.0f} | {d['deadline_met']:.3f} | {d['slo_accuracy']:.3f} | {d['latency_ms_p50']:.2f} / {d['latency_ms_p99']:.2f} | {main} | {s['deadline_met']:.3f} | {s['slo_accuracy']:.3f} | {s['latency_ms_p50']:.2f} / {s['latency_ms_p99']:.2f} |"
            )
        lines.append("")
    elif result.get("real_load_note"):
        lines += ["## Under real load", "", result["real_load_note"], ""]
    if result.get("soak"):
        s = result["soak"]
        lines += [
            "## Soak",
            "",
            f"{s['minutes']:g} minutes of the periodic trace in real time (latency target {s.get('latency_target_ms', result['latency_target_ms']):.3f} ms): {s['requests']:,} requests, {s['switches']} switches, accuracy {s['accuracy']:.4f}; {soak_memory_text(s)}."
            "",
        ]
    lines += targets_table(result["targets"])
    lines += ["", "![runtime](runtime.png)", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    rows = 1 + bool(result.get("real_load")) + bool(result.get("sweep"))
    fig, axes = plt.subplots(rows, 2, figsize=(12, 4.2 * rows), squeeze=False)
    names = list(result["traces"])
    x = np.arange(len(names))
    policies = ["dynamic", *[f"static {t}" for t in result["tiers"]]]
    width = 0.8 / len(policies)
    ax = axes[0][0]
    for i, p in enumerate(policies):
        values = [result["traces"][n]["slo_accuracy"] if p == "dynamic" else result["traces"][n]["slo_accuracy_static"].get(p.split()[1], 0.0) for n in names]
        ax.bar(x + i * width, values, width, label=p)
    ax.set_xticks(x + width * (len(policies) - 1) / 2, names)
    ax.set_ylabel("SLO-accuracy")
    ax.set_title("trace replay: correct within the latency target")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    levels = result["traces"]["periodic"]["levels"]
    ax.bar([r["level"] for r in levels], [r["accuracy"] for r in levels], color="tab:blue", label="accuracy")
    ax.bar([r["level"] for r in levels], [r["slo_accuracy"] for r in levels], color="tab:green", alpha=0.6, label="SLO-accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Table 6.7: dynamic runtime per resource level (periodic)")
    ax.legend(fontsize=8)
    if result.get("sweep"):
        sweep_axes = axes[-1]
        for ax, name in zip(sweep_axes, ("sudden", "periodic")):
            rows_ = [r for r in result["sweep"]["rows"] if r["trace"] == name]
            xs = [r["multiple"] for r in rows_]
            ax.plot(xs, [r["dynamic"] for r in rows_], "o-", color="black", label="dynamic")
            for tier in result["tiers"]:
                ax.plot(xs, [r["static"].get(tier, float("nan")) for r in rows_], ".--", label=f"static {tier}")
            ax.set_xscale("log")
            ax.set_xlabel("latency target / static high's idle latency")
            ax.set_ylabel("SLO-accuracy")
            ax.set_title(f"{name}: SLO-accuracy against the latency target")
            ax.legend(fontsize=7)
    if result.get("real_load"):
        for ax, key in ((axes[1][0], "dynamic"), (axes[1][1], "static_high")):
            records = [r for p in result["real_load"][key]["phases"] for r in p["records"]]
            ax.plot([r["t"] for r in records], [r["latency_ms"] for r in records], ".", markersize=2)
            ax.axhline(result["latency_target_ms"], color="black", linestyle="--", linewidth=1)
            ax.set_yscale("log")
            ax.set_xlabel("time (s)")
            ax.set_ylabel("latency (ms), measured")
            ax.set_title(f"stress-ng phases: {key.replace('_', ' ')}")
            end = 0.0
            for name, seconds, _ in STRESS_PHASES:
                ax.axvline(end, color="gray", linewidth=0.5)
                ax.annotate(name, (end, ax.get_ylim()[1]), fontsize=6, va="top")
                end += seconds
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


@reports_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--run", type=Path, default=None, help="a run (default: runs/latest with a report, else runs/bench-runtime, made if missing)")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--requests", type=at_least(1), default=2000)
    parser.add_argument("--repeats", type=at_least(1), default=3, help="replays of each trace (request orders); SLO-accuracies are their means")
    parser.add_argument("--monitor-seconds", type=at_least(0, float, strictly=True), default=30.0)
    parser.add_argument("--soak-minutes", type=at_least(0, float), default=10.0, help="0: no soak")
    parser.add_argument(
        "--rate",
        type=at_least(0, float, ": samples a second, paced by 1 / rate", strictly=True),
        default=100.0,
        help="samples per second under real load (each answered by the dynamic runtime and by static high)",
    )
    parser.add_argument("--no-stress", action="store_true")
    parser.add_argument("--no-sweep", action="store_true", help="skip the latency-target sweep (12 more replays)")
    parser.add_argument("--quick", action="store_true", help="the smoke config and short runs: minutes, figures meaningless")
    args = parser.parse_args()
    refuse_with_quick(parser, args, ("config", "requests", "monitor_seconds", "soak_minutes", "repeats"))
    check_out(parser, args.out)
    if args.quick:
        args.config, args.runs_dir = REPO / "configs" / "smoke.yaml", args.runs_dir / "quick"
        args.requests, args.monitor_seconds, args.soak_minutes, args.repeats = 200, 3.0, 0.5, 2  # (0.25 min of soak was too short to judge)
        STRESS_PHASES[:] = [(n, 2, a) for n, _, a in STRESS_PHASES]
    run_dir = ensure_run(args.config, args.run, args.runs_dir).resolve()
    run_dir, cfg = open_run(run_dir)
    dataset = prepare_data(cfg)
    bank_file = run_dir / "edge" / "bank.json"
    built = bank_record(run_dir / "edge")
    # none yet, or its latencies measured on another machine (the bank of another commit is kept: the benchmark measures this commit's runtime on the bank's variants)
    if built is None or built.get("machine") != machine():
        build_bank(cfg, dataset, run_dir)
    bank = load_bank(run_dir / "edge")
    # The runtime's settings come from --config (this commit's), not from the run's config.yaml: the
    # benchmark measures this commit's runtime on that run's models.
    rc = load_config(args.config).runtime
    result: dict[str, Any] = {
        "commit": git_commit(),
        "machine": machine(),
        "run": run_dir.name,
        "latency_target_ms": rc.latency_target_ms,
        "runtime_config": dataclasses.asdict(rc),
        "variants": bank.data["variants"],
        "tiers": list(bank.table.tiers),
    }
    # The variants' figures (and the sweep's base, and the replays at the bank's costs) are the bank's,
    # measured when it was built: the result says when and where, not "in this run".
    result["bank"] = {"machine": bank.data["machine"], "built": datetime.fromtimestamp(bank_file.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    result["traces"] = {}
    for name in SYNTHETIC:
        replays = [
            simulate(bank, dataset, synthetic_trace(name, 120.0, seed=0), rc, args.requests, run_dir / "simulate" / name if seed == 0 else None, seed=seed)
            for seed in range(args.repeats)
        ]
        summary = pooled(replays)
        # The same trace with every request at the bank's costs: no wall time enters, so the figure
        # is the same on every run and host (the one to compare versions of the runtime by).
        fixed = simulate(bank, dataset, synthetic_trace(name, 120.0, seed=0), rc, args.requests, latency="bank")
        summary["bank_latency"] = {
            "slo_accuracy": fixed["slo_accuracy"],
            "slo_accuracy_static": fixed["slo_accuracy_static"],
            "latency_model": fixed["latency_model"],
        }
        result["traces"][name] = summary
        print(f"{name}: dynamic {with_spread(summary)}, static {summary['slo_accuracy_static']}", flush=True)
    if not args.no_sweep:
        result["sweep"] = slo_sweep(bank, dataset, rc, args.requests)
    result["outages"] = input_outages(bank, dataset, rc, args.requests)
    result["monitor_overhead"] = monitor_overhead(args.monitor_seconds, rc.monitor)
    result["critical_cut"] = critical_cut(bank, rc)
    stress = None if args.no_stress else ensure_stress_ng()
    if stress:
        high = {m: ("high" if any(v.id == f"high/{m}" for v in bank.table.variants) else None) for m in bank.table.modalities}
        result["real_load"] = real_load(bank, dataset, rc, high, args.rate, stress)
    else:
        result["real_load_note"] = "not run: " + (
            "--no-stress" if args.no_stress else "stress-ng is not installed and could not be installed (apt-get install stress-ng)"
        )
    if args.soak_minutes > 0:
        result["soak"] = soak(bank, dataset, rc, args.soak_minutes)
    traces = result["traces"]
    switched = [t for t in traces.values() if t["switches"]]  # (none in a quick run can happen: then the target is not shown reached)
    worst = max((t["adaptation_ms_p99"] for t in switched), default=math.nan)
    worst_swaps = max((t["adaptation_ms_p99_swaps"] for t in switched), default=math.nan)
    targets = [
        {
            "target": f"adaptation time p99 <= {ADAPTATION_TARGET_MS:g} ms (worst trace)",
            "measured": f"{worst:.3f} ms; switches that loaded no session (pointer swaps): {worst_swaps:.3f} ms; switches that had to load sessions evicted under memory pressure: {sum(t['switches_loading'] for t in traces.values())} of {sum(t['switches'] for t in traces.values())}",
            "reached": worst <= ADAPTATION_TARGET_MS,
        },
        {
            "target": f"monitor overhead <= {MONITOR_TARGET:.0%} of one core (default interval)",
            "measured": f"{result['monitor_overhead']['cpu_fraction']:.4%}; memory held {result['monitor_overhead']['memory_held_bytes'] / 1024:.1f} KB (peak {result['monitor_overhead']['memory_peak_bytes'] / 1024:.1f} KB)",
            "reached": result["monitor_overhead"]["cpu_fraction"] <= MONITOR_TARGET,
        },
    ]
    for name in ("sudden", "periodic"):
        s = traces[name]
        gain = over_high(s["slo_accuracy"], s)
        swept = [r["dynamic"] / r["static"]["high"] for r in result.get("sweep", {}).get("rows", []) if r["trace"] == name and r["static"].get("high")]
        span = f"; {min(swept):.2f}x-{max(swept):.2f}x over targets of {SWEEP_MULTIPLES[0]:g}-{SWEEP_MULTIPLES[-1]:g}x static high's cost" if swept else ""
        ceiling, clairvoyant, per_level = (
            over_high(s["oracle"]["slo_accuracy"], s),
            over_high(s["oracle"]["clairvoyant_allocator"], s),
            over_high(s["oracle"]["best_per_level"], s),
        )
        fixed = s["bank_latency"]
        at_bank = f"; at the bank's costs (deterministic) {fixed['slo_accuracy']:.4f} vs {fixed['slo_accuracy_static'].get('high', float('nan')):.4f}, {over_high(fixed['slo_accuracy'], fixed):.2f}x"
        targets.append(
            {
                "target": f"{name}: SLO-accuracy dynamic >= {SLO_RATIO_TARGET}x static high (at {rc.latency_target_ms:g} ms)",
                "measured": f"{s['slo_accuracy']:.4f} vs {s['slo_accuracy_static'].get('high', float('nan')):.4f} ({gain:.2f}x; the best configuration per level in hindsight {per_level:.2f}x, a clairvoyant allocator {clairvoyant:.2f}x, the oracle's ceiling {ceiling:.2f}x){at_bank}{span}",
                "reached": math.isfinite(gain) and gain >= SLO_RATIO_TARGET,  # (static high at 0, or none: no multiple, not a pass)
            }
        )
        best = max(s["slo_accuracy_static"].values())
        targets.append(
            {
                "target": f"{name}: dynamic no worse than the best static tier",
                "measured": f"{with_spread(s)} vs {best:.4f} (means of {s['repeats']['n']} replays)",
                "reached": s["slo_accuracy"] >= best,
            }
        )
    c = result["critical_cut"]
    for name, reading in (("device", "the device's resources"), ("model_needs", "stricter: 30% of the best configuration's needs")):
        targets.append(
            {
                "target": f"70% resource cut ({reading}): the critical modality keeps >= {CRITICAL_RETENTION_TARGET:.0%} of its best accuracy",
                "measured": f"{c[name]['retention']:.1%}",
                "reached": c[name]["retention"] >= CRITICAL_RETENTION_TARGET,
            }
        )
    if result.get("soak"):
        s = result["soak"]
        targets.append(soak_target("soak", s, f"{s['requests']:,} requests, {s['switches']} switches"))
    result["targets"] = targets
    stem = "runtime-quick" if args.quick else "runtime"
    write_results(args.out, stem, result, render(result).replace("runtime.png", f"{stem}.png"), lambda path: plot(result, path))


if __name__ == "__main__":
    main()
