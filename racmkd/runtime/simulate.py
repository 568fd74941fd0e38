"""Driving the runtime with test data: trace replay in simulated time, and live serving.

Trace replay: the real runtime, real inference on test samples, a resource trace driving it.

Requests arrive evenly over the trace (`rate` per second of trace time). Before each request the
monitor reads the trace at that moment (at its own adaptive interval) and the runtime re-plans;
the request then runs through the runtime for real (preprocessing, ONNX Runtime, fallbacks). What
the trace cannot do is load this machine's CPU, so the latency a request would see on the traced
device is modelled: the work it needs x the processor-sharing slowdown of the trace's CPU load
(1 / max(floor, cores x (1 - load)), one core for a trace). The work is its measured wall time up
to the median of its configuration's recent requests; wall time beyond that median is this host's
own interruptions (other tenants, the collector), which happen once, not once per slowdown: added
as measured, not multiplied by 20 on a traced 95% load. (Multiplied, a 50 us hiccup here read as a
1 ms late request on the traced device, and replays of one trace moved by up to 6 points.) The
same model and the same requests serve every static tier, so the comparison is like for like; real
load is the stress benchmark's job (benchmarks/runtime.py).

A request meets its SLO when it is answered correctly within the latency target; SLO-accuracy is
the share of requests that do.

`latency="bank"` replaces the measured work by the bank's: each request costs its variants' median
latencies plus the runtime's own cost (the bank's figures) x the slowdown. Answers are still real
inference, but no wall time enters, so a replay is the same on every run and every host: the way
to compare two versions of the runtime's decisions (a measured replay moves by a point or two
between runs, as much as many changes are worth).

Live serving (`serve_split`): test samples at a fixed rate in wall time, latencies measured, on
whatever monitor the runtime was given (`racmkd edge run`, the soak benchmark); `serve_together`
serves several runtimes the same samples in turn, under the same load (the stress benchmark).
"""

from __future__ import annotations

import math
import statistics
import time
import zipfile
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from racmkd.config import RuntimeConfig
from racmkd.data.dataset import PairedDataset
from racmkd.utils import percentile
from racmkd.resources.monitor import ResourceMonitor
from racmkd.resources.sources import LEVELS, MB, Trace, TraceSource, resource_level
from racmkd.runtime.edge import Answer, EdgeRuntime, NoVariantError, budget_for
from racmkd.runtime.bank import Bank
from racmkd.utils import Terminated, Window, atomic_write_json, atomic_write_text, cached_json, json_safe, progress


class SimClock:
    """Trace time, advanced by the simulation."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Policy:
    """A runtime to replay: the dynamic allocator, or one configuration held throughout."""

    name: str
    pinned: dict[str, str | None] | None = None


OUTAGE_KINDS = {
    "missing": "the requests carry no such input (a sensor unplugged, a stream that stopped)",
    "dead": "the requests carry the input, all zeros (a blank image, silence, a pen at rest: a sensor that reads nothing)",
}


@dataclass(frozen=True)
class Outage:
    """One modality's input gone for a stretch of the trace (`racmkd simulate --outage`), on every
    policy's requests alike. The resource traces alone never took an input away, so a replay never
    showed what the runtime does with one (answer from the others, stop spending on a dead sensor)
    nor what a static tier does (answer from what is left of its student).

    With `share` below 1 the input flickers: the outage takes it from that share of the stretch's
    requests, spread evenly (at 50%, every other one: a microphone silent between words, a loose
    connector). Such an input is neither there nor gone, and the runtime has to weigh it. Spread
    by the request's number, two flickering outages at once take their requests in step (at 50%
    each, the same ones)."""

    modality: str
    start_s: float
    end_s: float
    kind: str = "missing"  # OUTAGE_KINDS
    share: float = 1.0  # of the stretch's requests taken, in (0, 1]

    @classmethod
    def parse(cls, text: str) -> Outage:
        """`MODALITY:START-END[:KIND][:SHARE%]`, seconds of trace time, e.g. `audio:30-60:dead` or
        `audio:30-60:dead:50%`."""
        parts = text.split(":")
        usage = (
            f"--outage {text!r}: expected MODALITY:START-END[:KIND][:SHARE%] in seconds of trace time, KIND one of {', '.join(OUTAGE_KINDS)}, "
            "SHARE the percentage of the stretch's requests it takes (default 100) (e.g. audio:30-60:dead or audio:30-60:dead:50%)"
        )
        if not 2 <= len(parts) <= 4 or not parts[0] or parts[1].count("-") != 1:
            raise ValueError(usage)
        try:
            start, end = (float(x) for x in parts[1].split("-"))
        except ValueError:
            raise ValueError(usage) from None
        shares = [x for x in parts[2:] if x.endswith("%")]
        kinds = [x for x in parts[2:] if not x.endswith("%")]
        if len(shares) > 1 or len(kinds) > 1:
            raise ValueError(usage)
        try:
            share = float(shares[0].removesuffix("%")) / 100 if shares else 1.0
        except ValueError:
            raise ValueError(usage) from None
        outage = cls(parts[0], start, end, kinds[0] if kinds else "missing", share)
        if outage.kind not in OUTAGE_KINDS:
            raise ValueError(f"--outage {text!r}: unknown kind {outage.kind!r}; choose one of {', '.join(OUTAGE_KINDS)}")
        if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
            raise ValueError(f"--outage {text!r}: needs 0 <= START < END (seconds of trace time)")
        if not 0 < share <= 1:
            raise ValueError(f"--outage {text!r}: SHARE is a percentage of the stretch's requests, above 0 and at most 100")
        return outage

    @property
    def name(self) -> str:
        return f"{self.modality}:{self.start_s:g}-{self.end_s:g}:{self.kind}" + (f":{self.share * 100:g}%" if self.share < 1 else "")

    def covers(self, t: float) -> bool:
        """Whether trace time `t` lies in the outage's stretch (its input taken or, flickering, at risk)."""
        return self.start_s <= t < self.end_s

    def takes(self, request: int, t: float) -> bool:
        """Whether the outage takes the input of the `request`-th request of the replay, at trace
        time `t`: every one in its stretch, or its share of them, spread evenly."""
        return self.covers(t) and (self.share >= 1 or math.floor((request + 1) * self.share) > math.floor(request * self.share))


def check_outages(outages: Collection[Outage], modalities: Collection[str], trace: Trace) -> None:
    """ValueError for an outage of an input the bank has not, one that starts after the trace ends
    (it would change nothing, in silence), or two of one input that overlap (which of them took a
    request's input went by the order of the flags)."""
    for outage in outages:
        if outage.modality not in modalities:
            raise ValueError(f"--outage {outage.name}: the bank has no {outage.modality!r} input; its inputs are {', '.join(modalities)}")
        if outage.start_s >= trace.duration:
            raise ValueError(f"--outage {outage.name}: starts after the trace ends ({trace.duration:g} s)")
        for other in outages:
            if other is not outage and other.modality == outage.modality and other.start_s < outage.end_s and outage.start_s < other.end_s:
                raise ValueError(f"--outage {outage.name} and {other.name} overlap; give one input one outage at a time")


def apply_outages(inputs: dict[str, Any], outages: Collection[Outage], request: int, t: float) -> tuple[list[Outage], list[str]]:
    """Take out of `inputs` those the outages in force at trace time `t` take from the `request`-th
    request (missing: None; dead: zeros of the input's shape); returns the outages in force and
    the inputs taken (a flickering outage leaves some requests whole)."""
    in_force = [o for o in outages if o.covers(t) and o.modality in inputs]
    taken = []
    for outage in in_force:
        if outage.takes(request, t):
            inputs[outage.modality] = None if outage.kind == "missing" else np.zeros_like(inputs[outage.modality])
            taken.append(outage.modality)
    return in_force, taken


def default_out_folder(run_dir: Path, trace: Trace, outages: Collection[Outage] = ()) -> Path:
    """Where `racmkd simulate` writes without --out: <run>/simulate/<trace's name>, followed by the
    outages' (`+audio-30-60-dead`: a replay with an input taken away does not replace the trace's
    own). A trace file's name is its stem, which another file may share (tr.csv and
    elsewhere/tr.json): the replay of one replaced the other's in silence, so a folder holding
    another trace's replay (`trace_source`, as `simulate` writes it) is refused, naming --out."""
    folder = run_dir / "simulate" / (trace.name + "".join(f"+{o.name.replace(':', '-')}" for o in outages))
    recorded = [(cached_json(folder / name) or {}).get("trace_source") for name in ("summary.json", "timeline.json")]  # (a replay cut short has no summary)
    earlier = next((source for source in recorded if source), None)
    source = trace.source or trace.name
    if earlier is not None and earlier != source:
        raise ValueError(f"{folder} holds the replay of {earlier}, not of {source}; it is not replaced. Name another folder with --out")
    return folder


def check_bank_data(bank: Bank, dataset: PairedDataset) -> None:
    """Refuse a bank whose models learnt their inputs otherwise than `dataset` gives them now
    (`Modality.check_bank_spec`: a model made before the speech window) before a replay feeds it
    the dataset's samples: it answered them a few points down, in silence, beside the bank's own
    stored figures (a pre-window run's static high 0.805 -> 0.700)."""
    for variant in bank.table.variants:
        spec = bank.specs.get(variant.id)
        if spec is not None:  # (None: a file that could not be read, which the runtime skips)
            dataset.modalities[variant.modality].check_bank_spec(spec)


def static_policies(bank: Bank) -> list[Policy]:
    """One static deployment per tier: its student with every modality it has."""
    policies = []
    for tier in bank.table.tiers:
        pinned = {m: (tier if any(v.tier == tier and v.modality == m for v in bank.table.variants) else None) for m in bank.table.modalities}
        if any(pinned.values()):
            policies.append(Policy(f"static-{tier}", pinned))
    return policies


def request_rows(n_samples: int, requests: int, seed: int) -> np.ndarray:
    """The split's rows a replay's requests carry, in order (drawn with replacement only when there are more requests than rows)."""
    return np.random.default_rng(seed).choice(n_samples, size=requests, replace=requests > n_samples)


LATENCY_MODELS = {
    "measured": "work (measured compute time, at most its configuration's recent median) x processor-sharing slowdown of the trace's CPU load, plus compute time beyond that median as measured",
    "bank": "work (the variants' median latencies plus the runtime's own cost, the bank's figures) x processor-sharing slowdown of the trace's CPU load: no wall time, the same on every run",
}


def replay(
    bank: Bank,
    dataset: PairedDataset,
    trace: Trace,
    policy: Policy,
    config: RuntimeConfig,
    requests: int,
    split: str = "test",
    seed: int = 0,
    latency: str = "measured",
    outages: Collection[Outage] = (),
) -> dict[str, Any]:
    """Replay `trace` with `requests` requests against one policy; returns its timeline and stats.
    `latency`: how a request's latency on the traced device is modelled (LATENCY_MODELS); `outages`:
    inputs taken away for a while (`Outage`)."""
    if latency not in LATENCY_MODELS:
        raise ValueError(f"latency model {latency!r}: choose one of {', '.join(LATENCY_MODELS)}")
    clock = SimClock()
    monitor = ResourceMonitor(TraceSource(trace, start=0.0), config.monitor, clock=clock)
    runtime = EdgeRuntime(bank, config, monitor if policy.pinned is None else None, clock=clock, pinned=policy.pinned, background_loads=False)
    rows = torch.from_numpy(request_rows(len(dataset.splits[split]), requests, seed))
    labels = dataset.splits[split].labels[rows].numpy()
    duration = max(trace.duration, 1e-9)
    next_poll = 0.0
    timeline: list[dict[str, Any]] = []
    correct_so_far = 0
    raw_all = dataset.raw_batch(split, rows)
    recent: dict[str, deque[float]] = {}  # configuration -> its last compute times (the work a request needs: their median)
    bank_overhead = float(bank.data.get("request_overhead_ms", 0.0))  # the runtime's own cost per request, by the bank (latency "bank")
    energy_of = {v.id: v.energy_mj for v in bank.table.variants}  # the bank's estimate per inference of each variant
    failed: set[str] = set()  # variants excluded for good at any time in the replay (not one tried again: see `oracle`)
    for i in progress(range(requests), desc=f"replay {trace.name}: {policy.name}"):
        clock.now = i * duration / requests
        if clock.now >= next_poll:
            monitor.poll(clock.now)
            next_poll = clock.now + monitor.interval_s
        reading = trace.at(clock.now)
        if policy.pinned is not None:
            runtime.snapshot = reading  # a static runtime does not re-plan, but its budget is reported
        inputs = {m: raw_all[m][i].numpy() for m in runtime.modalities}
        in_force, taken = apply_outages(inputs, outages, i, clock.now)
        try:
            answer = runtime.infer(inputs)
        except NoVariantError as err:  # recorded as an unanswered request, the replay goes on
            answer = Answer(-1, np.zeros(0), [], float("nan"), [str(err)])
        if runtime.failed:
            failed.update(runtime.failed_for_good())
        slowdown = budget_for(reading, config).slowdown
        if latency == "bank":
            work_ms = runtime.cost_ms(answer.variants) + bank_overhead if answer.variants else math.nan  # (NaN: unanswered)
            observed = work_ms * slowdown
        else:
            observed, work_ms = modelled_latency(answer, slowdown, recent), answer.work_ms
        if policy.pinned is None and answer.variants:
            runtime.feedback(observed, clock.now, answer.variants, work_ms)
        correct = answer.label == int(labels[i])
        correct_so_far += correct
        timeline.append(
            {
                "t": round(clock.now, 4),
                "cpu_percent": reading.cpu_percent,
                "memory_available_mb": None if reading.memory_available_bytes is None else reading.memory_available_bytes / MB,
                "level": resource_level(reading),
                "configuration": ",".join(answer.variants) or "unanswered",
                "compute_ms": answer.latency_ms,
                "latency_ms": observed,
                "correct": bool(correct),
                "slo_met": bool(correct and observed <= config.latency_target_ms),
                "running_accuracy": correct_so_far / (i + 1),
                "energy_mj": sum(energy_of[v] for v in answer.variants) if answer.variants else None,
                "memory_held_bytes": runtime.resident_bytes(),
                "fallbacks": answer.fallbacks,
                "inputs_out": taken,
                "outages": [o.name for o in in_force],  # (which of them: `outage_row` scores by it, not by the rounded time)
            }
        )
    runtime.close()
    return {
        "policy": policy.name,
        "timeline": timeline,
        "decisions": list(runtime.decisions),
        "adaptation_ms": list(runtime.adaptation_ms),
        "switch_loads": list(runtime.switch_loads),
        "decision_ms": list(runtime.decision_ms),
        "monitor_cpu_seconds": monitor.cpu_seconds,
        "monitor_polls": monitor.polls,
        "trace_seconds": duration,
        "failed": sorted(failed),
    }


def oracle(bank: Bank, trace: Trace, config: RuntimeConfig, rows: np.ndarray, failed: Collection[str] = (), outages: Collection[Outage] = ()) -> dict[str, Any]:
    """Three reference figures for a replay of `trace` whose requests carry these test rows (`request_rows`,
    as `replay` draws them), scored as replays are (correct, and within the latency target), with
    every configuration at its variants' median latencies (the bank's) plus the runtime's own cost
    (the bank's figure), times the trace's slowdown:

    slo_accuracy           a request counts when *some* configuration that meets its deadline
                           answers it correctly: what the bank could give a policy that knew which
                           configuration each request needs (none does);
    clairvoyant_allocator  each request answered by the most accurate configuration (test accuracy;
                           the cheaper of a tie) that meets its deadline: an allocator that knows
                           each request's load exactly, the ceiling of choosing by the readings;
    best_per_level         one configuration per resource level (Table 6.7's), the best on that
                           level's requests in hindsight (`per_level` names them): the most a
                           runtime that picks a configuration for each level could get. A runtime
                           that follows the load within a level can beat it; where the load jumps
                           between readings (the synthetic traces' noise), only the clairvoyant
                           allocator, which sees each jump, gets far above it.

    All three judge configurations by latency alone: the memory and energy budgets and the
    critical modalities the runtime must obey are not applied (on a trace that binds those, the
    first two may name configurations the runtime may not run, and overstate what it could reach).

    Estimates at the bank's median costs, not strict bounds for measured replays: a replayed
    request that runs faster than its configuration's median meets deadlines these count as missed
    (and replays' requests have mostly run slower: the runtime's own work, cold caches between
    requests); for replays at the bank's costs (`latency="bank"`) the first is a strict bound.
    A configuration that reads an input an `outage` takes away answers none of the requests it
    takes in the first two; in `best_per_level`, a configuration held through them, it answers
    them from the inputs it has left, as a static tier does (image+audio with the audio taken: its
    image part), or, with nothing left, from the other inputs, as the runtime does, by the best
    configuration of those held on the level (audio-only with the audio taken: the best image-only
    one); of configurations that score alike the one that reads fewer taken inputs is named.
    Counted as unanswered there, an audio input silent every other request halved every fused
    configuration's score on it, and the reference with it.
    Variants excluded for good in the replays (`failed`: a damaged file, NaN weights) are left
    out: a reference that names a configuration the replayed runtime could not run is none it
    could have reached. One that failed once and was tried again stays: left out, one fault in a
    static baseline's replay dropped it from every policy's ceiling, and the dynamic runtime,
    which had served 1,300 requests with it, beat its "strict bound". Needs the test shares of those rows in the bank's logits.npz; says why when it has not."""
    from itertools import product

    from racmkd.resources.allocator import config_costs
    from racmkd.runtime.variants import configuration_logits

    path = bank.folder / "logits.npz"
    why_not = ""
    try:
        with np.load(path) as stored:
            logits = {k: stored[k] for k in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        logits, why_not = {}, f"{path}: unreadable ({err})"
    labels = logits.get("labels/test")
    table = bank.table
    variants = {(v.tier, v.modality): v for v in table.variants if bank.specs.get(v.id) is not None and v.id not in failed}  # (a damaged file runs nowhere)
    if not why_not and not variants:
        why_not = f"{bank.folder}: no readable variant that ran in the replay"
    elif not why_not and (labels is None or any(f"test/{t}/{m}" not in logits for t, m in variants)):
        why_not = f"{path}: no test logits for every variant (rebuild the bank)"
    elif not why_not and (len(rows) == 0 or rows.max() >= len(labels)):
        why_not = f"{path}: the bank holds the logits of {len(labels)} test samples, the replay draws from more (build it with every test sample)"
    if why_not:
        return {"slo_accuracy": float("nan"), "clairvoyant_allocator": float("nan"), "best_per_level": float("nan"), "why_not": why_not}
    overhead = float(bank.data.get("request_overhead_ms", 0.0))
    accuracy = bank.accuracy("test")
    shares = {(t, m): logits[f"test/{t}/{m}"] for t, m in variants}
    configurations = []  # (name, unloaded cost, right on each request, test accuracy, modalities read, tier per modality)
    for combo in product(*([None, *sorted({t for t, m in variants if m == modality})] for modality in table.modalities)):
        chosen = tuple(None if t is None else variants[(t, m)] for t, m in zip(combo, table.modalities))
        if any(chosen):
            total = configuration_logits(shares, bank.biases, dict(zip(table.modalities, combo)))
            name = ",".join(f"{t}/{m}" for t, m in zip(combo, table.modalities) if t is not None)
            reads = {m for t, m in zip(combo, table.modalities) if t is not None}
            configurations.append((name, config_costs(chosen).typical_ms + overhead, (total.argmax(1) == labels)[rows], accuracy[combo], reads, combo))
    configurations.sort(key=lambda c: (-c[3], c[1]))  # the most accurate first, the cheaper of a tie
    duration = max(trace.duration, 1e-9)
    times = np.arange(len(rows)) * duration / len(rows)  # each request's trace time, as `replay` spreads them
    readings = [trace.at(float(t)) for t in times]
    slowdown = np.array([budget_for(r, config).slowdown for r in readings])
    in_time = np.array([c[1] for c in configurations])[:, None] * slowdown[None, :] <= config.latency_target_ms  # configuration x request
    taken_by = [(o.modality, np.array([o.takes(i, float(t)) for i, t in enumerate(times)], dtype=bool)) for o in outages]  # each outage's requests
    reads_taken = np.zeros_like(in_time)  # configuration x request: it reads an input taken from the request
    for modality, taken in taken_by:
        for c, configuration in enumerate(configurations):
            if modality in configuration[4]:
                reads_taken[c] |= taken
    in_time &= ~reads_taken  # a configuration that reads a taken input answers nothing then
    met = in_time & np.array([c[2] for c in configurations])
    first_in_time = in_time.argmax(axis=0)  # the most accurate configuration that meets each deadline
    clairvoyant = met[first_in_time, np.arange(len(rows))] & in_time.any(axis=0)
    held = met.copy()  # a configuration held throughout: the requests it lost inputs of answered by what it has left
    position = {c[5]: i for i, c in enumerate(configurations)}
    gone_at = [frozenset(m for m, taken in taken_by if taken[i]) for i in range(len(times))]
    orphaned = []  # (requests, configurations left with nothing to read on them, configurations that read none of the inputs gone)
    for gone in set(gone_at) - {frozenset()}:
        requests_of = np.array([g == gone for g in gone_at])
        for c, configuration in enumerate(configurations):
            if configuration[4] & gone:
                left = tuple(None if m in gone else t for t, m in zip(configuration[5], table.modalities))
                held[c, requests_of] = met[position[left], requests_of] if any(left) else False
        nothing_left = np.array([c[4] <= gone for c in configurations])
        orphaned.append((requests_of, nothing_left, ~np.array([bool(c[4] & gone) for c in configurations])))
    levels = np.array([resource_level(r) for r in readings])
    per_level = {}
    for level in LEVELS:
        mine = levels == level
        if mine.any():
            scores = held[:, mine].sum(axis=1)
            for requests_of, nothing_left, reads_none in orphaned:  # answered, as the runtime does, from the other inputs: by their best configuration held
                if (mine & requests_of).any() and reads_none.any():
                    scores = scores + nothing_left * met[reads_none][:, mine & requests_of].sum(axis=1).max()
            best = int((scores * (len(rows) + 1) - reads_taken[:, mine].sum(axis=1)).argmax())  # (a tie: the fewer taken inputs read, then the more accurate)
            per_level[level] = {"configuration": configurations[best][0], "requests": int(mine.sum()), "slo_accuracy": float(scores[best] / mine.sum())}
    best_per_level = sum(p["slo_accuracy"] * p["requests"] for p in per_level.values()) / len(rows)
    return {
        "slo_accuracy": float(met.any(axis=0).mean()),
        "clairvoyant_allocator": float(clairvoyant.mean()),
        "best_per_level": float(best_per_level),
        "per_level": per_level,
        "left_out": sorted(set(failed)),  # variants that failed in the replays
        "latency_model": "each configuration at its variants' median latencies plus the runtime's own cost (the bank's), x the trace's slowdown: estimates for measured replays, the oracle a strict bound for replays at the bank's costs",
    }


def modelled_latency(answer: Answer, slowdown: float, recent: dict[str, deque[float]]) -> float:
    """The latency `answer` would have had on the traced device (the module docstring): its work
    (measured, at most its configuration's recent median) x the slowdown, plus any wall time beyond
    that median as measured."""
    if not answer.variants:
        return answer.latency_ms * slowdown  # NaN: unanswered
    times = recent.setdefault(",".join(answer.variants), deque(maxlen=51))
    times.append(answer.latency_ms)
    work = min(answer.latency_ms, statistics.median(times))
    return work * slowdown + (answer.latency_ms - work)


def _summary(result: dict[str, Any], target_ms: float) -> dict[str, Any]:
    t = result["timeline"]
    lat = [r["latency_ms"] for r in t if r["configuration"] != "unanswered"]
    energy = [r["energy_mj"] for r in t if r["energy_mj"] is not None]  # (None: unanswered)
    held = [r["memory_held_bytes"] for r in t]
    return {
        "requests": len(t),
        "unanswered": sum(r["configuration"] == "unanswered" for r in t),
        "accuracy": sum(r["correct"] for r in t) / len(t),
        "slo_accuracy": sum(r["slo_met"] for r in t) / len(t),
        "deadline_met": sum(r["latency_ms"] <= target_ms for r in t) / len(t),
        "latency_ms_p50": percentile(lat, 50),
        "latency_ms_p95": percentile(lat, 95),
        "latency_ms_p99": percentile(lat, 99),
        # The bank's figures for what served: estimated energy per answered request, and the memory
        # the runtime's loaded sessions held (every variant it may switch to, when they fit).
        "energy_mj_mean": statistics.fmean(energy) if energy else None,
        "memory_held_bytes_max": max(held) if held else None,
    }


def level_rows(timeline: list[dict[str, Any]], target_ms: float) -> list[dict[str, Any]]:
    """The seed paper's Table 6.7: per resource level, CPU, free memory, accuracy, latency, modalities."""
    rows = []
    for level in LEVELS:
        part = [r for r in timeline if r["level"] == level]
        if not part:
            continue
        modality_sets = Counter("+".join(sorted({v.split("/")[1] for v in r["configuration"].split(",") if "/" in v})) or "none" for r in part)
        configs = Counter(r["configuration"] for r in part)
        rows.append(
            {
                "level": level,
                "requests": len(part),
                "cpu_percent": mean_of_present(r["cpu_percent"] for r in part),  # a trace may lack a column, or start it late
                "memory_available_mb": mean_of_present(r["memory_available_mb"] for r in part),
                "accuracy": sum(r["correct"] for r in part) / len(part),
                "slo_accuracy": sum(r["slo_met"] for r in part) / len(part),
                "latency_ms_mean": statistics.fmean([r["latency_ms"] for r in part if r["configuration"] != "unanswered"] or [float("nan")]),
                "latency_ms_p95": percentile([r["latency_ms"] for r in part if r["configuration"] != "unanswered"], 95),
                "active_modalities": modality_sets.most_common(1)[0][0],
                "configurations": dict(configs.most_common()),
            }
        )
    return rows


def outage_row(outage: Outage, dynamic: dict[str, Any], static: list[dict[str, Any]], target_ms: float) -> dict[str, Any]:
    """How each policy did on the requests of one outage's stretch (a flickering one's too, those it
    left whole included): what a sensor dropping out costs."""

    def during(result: dict[str, Any]) -> list[dict[str, Any]]:
        return [r for r in result["timeline"] if outage.name in r["outages"]]

    mine = during(dynamic)
    return {
        "outage": outage.name,
        "modality": outage.modality,
        "kind": outage.kind,
        "share": outage.share,
        "start_s": outage.start_s,
        "end_s": outage.end_s,
        "requests": len(mine),
        "dynamic": _summary({"timeline": mine}, target_ms) if mine else None,
        "configurations": dict(Counter(r["configuration"] for r in mine).most_common()),
        "static": {r["policy"].removeprefix("static-"): _summary({"timeline": during(r)}, target_ms) for r in static} if mine else {},
    }


def mean_of_present(values: Iterable[float | None]) -> float:
    """The mean of the readings a trace had (NaN when it had none): an absent reading is not a zero."""
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else float("nan")


def switch_overheads(timeline: list[dict[str, Any]]) -> list[float]:
    """For each switch of configuration: the compute time of the first request served by the new
    configuration minus the median compute time of that configuration over the replay (the cost of
    a cold switch; preloaded sessions keep it near zero)."""
    medians: dict[str, float] = {}
    by_config: dict[str, list[float]] = {}
    timeline = [r for r in timeline if r["configuration"] != "unanswered"]
    for r in timeline:
        by_config.setdefault(r["configuration"], []).append(r["compute_ms"])
    medians = {c: statistics.median(v) for c, v in by_config.items()}
    return [cur["compute_ms"] - medians[cur["configuration"]] for prev, cur in zip(timeline, timeline[1:]) if cur["configuration"] != prev["configuration"]]


def simulate(
    bank: Bank,
    dataset: PairedDataset,
    trace: Trace,
    config: RuntimeConfig,
    requests: int = 2000,
    out_dir: Path | None = None,
    statics: bool = True,
    seed: int = 0,
    latency: str = "measured",
    outages: Collection[Outage] = (),
) -> dict[str, Any]:
    """Replay a trace with the dynamic runtime and (with `statics`) every static tier, latencies
    modelled by `latency` (LATENCY_MODELS), the inputs of `outages` taken away on every policy's
    requests alike; writes summary.json, timeline.json, timeline.png and table.md into `out_dir`
    when given."""
    check_bank_data(bank, dataset)
    check_outages(outages, bank.table.modalities, trace)
    dynamic = replay(bank, dataset, trace, Policy("dynamic"), config, requests, seed=seed, latency=latency, outages=outages)
    static = [replay(bank, dataset, trace, p, config, requests, seed=seed, latency=latency, outages=outages) for p in static_policies(bank)] if statics else []
    target = config.latency_target_ms
    overheads = switch_overheads(dynamic["timeline"])
    swaps = [a for a, n in zip(dynamic["adaptation_ms"], dynamic["switch_loads"]) if n == 0]  # switches that loaded no session
    dynamic_summary = _summary(dynamic, target)
    summary: dict[str, Any] = {
        "trace": trace.name,
        "trace_source": trace.source or trace.name,  # (a file's path: two files of one name share a default folder)
        "trace_seconds": dynamic["trace_seconds"],
        "requests": requests,
        "latency_target_ms": target,
        "latency_model": LATENCY_MODELS[latency],
        "dynamic": dynamic_summary,
        "slo_accuracy": dynamic_summary["slo_accuracy"],
        # the ceiling of the SLO-accuracies above, with the variants that could run
        "oracle": oracle(
            bank, trace, config, request_rows(len(dataset.splits["test"]), requests, seed), {v for r in [dynamic, *static] for v in r["failed"]}, outages
        ),
        "slo_accuracy_static": {r["policy"].removeprefix("static-"): _summary(r, target)["slo_accuracy"] for r in static},
        "static": {r["policy"].removeprefix("static-"): _summary(r, target) for r in static},
        "adaptation_ms_p50": percentile(dynamic["adaptation_ms"], 50),
        "adaptation_ms_p99": percentile(dynamic["adaptation_ms"], 99),
        "adaptation_ms_max": max(dynamic["adaptation_ms"], default=float("nan")),
        # (nearest rank: with fewer than 100 switches the p99 is the largest; benchmarks pool these across replays)
        "adaptation_ms_all": list(dynamic["adaptation_ms"]),
        "adaptation_ms_swaps_all": swaps,
        # A switch to variants evicted under memory pressure loads their sessions first (milliseconds each).
        "adaptation_ms_p99_swaps": percentile(swaps, 99),
        "switches_loading": sum(n > 0 for n in dynamic["switch_loads"]),
        "switches": len(dynamic["adaptation_ms"]),
        "decision_ms_p99": percentile(dynamic["decision_ms"], 99),
        "switch_overhead_ms_p50": percentile(overheads, 50),
        "switch_overhead_ms_p99": percentile(overheads, 99),
        "monitor_cpu_fraction": dynamic["monitor_cpu_seconds"] / dynamic["trace_seconds"],
        "monitor_polls": dynamic["monitor_polls"],
        "levels": level_rows(dynamic["timeline"], target),
        "levels_static": {r["policy"].removeprefix("static-"): level_rows(r["timeline"], target) for r in static},
        "outages": [outage_row(o, dynamic, static, target) for o in outages],
    }
    if out_dir is not None:
        # summary.json marks a whole replay: the last one's goes first and this one's comes last, so
        # a replay cut short leaves none (it left new figures beside the last replay's plot).
        # timeline.json, which names the trace as the summary does, comes next, so that a folder of
        # a cut-short replay still says whose it is (`racmkd simulate` refuses another trace's). The
        # folder itself may be the user's (--out), so it is written into, not swapped.
        out_dir = Path(out_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "summary.json").unlink(missing_ok=True)
            timeline = {"dynamic": dynamic["timeline"], "decisions": dynamic["decisions"], **{r["policy"]: r["timeline"] for r in static}}
            atomic_write_json(out_dir / "timeline.json", json_safe({"trace_source": summary["trace_source"], **timeline}))
            plot_timeline(dynamic, static, target, out_dir / "timeline.png", trace.name, {v.id: v.typical_ms for v in bank.table.variants}, outages)
            atomic_write_text(out_dir / "table.md", render_table(summary))
            atomic_write_json(out_dir / "summary.json", json_safe(summary))  # (for other tools: no NaN, no Infinity)
        except OSError as err:
            raise ReplayNotWritten(err, summary) from None
    return summary


class ReplayNotWritten(OSError):
    """A replay that ran, whose files could not be written (a full or read-only disk): `summary`
    holds its figures, for the caller to show (they were lost with the files)."""

    def __init__(self, err: OSError, summary: dict[str, Any]) -> None:
        message = f"the replay's files were not written ({err.strerror or err})"
        if err.errno is None:  # ("[Errno None] ..." otherwise)
            super().__init__(message + (f": {err.filename}" if err.filename else ""))
        else:
            super().__init__(err.errno, message, err.filename)
        self.summary = summary


def _figure(value: float, spec: str, unit: str = "") -> str:
    """A figure for the table; "n/a" where there is none (NaN: a trace without that column, no switch to time)."""
    return format(value, spec) + unit if math.isfinite(value) else "n/a"


def render_table(summary: dict[str, Any]) -> str:
    """The summary as markdown: Table 6.7 for the dynamic runtime, then dynamic vs each static tier."""
    lines = [
        f"# Trace `{summary['trace']}`: {summary['requests']} requests over {summary['trace_seconds']:.0f} s, latency target {summary['latency_target_ms']:g} ms",
        "",
        *replay_markdown(summary),
        *outage_markdown(summary.get("outages", [])),
        "",
        f"Switches: {summary['switches']}; adaptation p50 {_figure(summary['adaptation_ms_p50'], '.3f', ' ms')}, p99 {_figure(summary['adaptation_ms_p99'], '.3f', ' ms')}; "
        f"switch overhead p99 {_figure(summary['switch_overhead_ms_p99'], '.3f', ' ms')}; monitor CPU {_figure(summary['monitor_cpu_fraction'], '.4%')} of one core.",
        "",
    ]
    return "\n".join(lines)


def replay_markdown(summary: dict[str, Any]) -> list[str]:
    """Table 6.7 (the dynamic runtime per resource level) and the policies side by side with their
    ceilings, as markdown lines: what `racmkd simulate` prints and the suite's report holds (each
    had its own columns, and "nan%" where the other wrote "n/a")."""
    lines = [
        "| level | requests | CPU (%) | memory free (MB) | accuracy | SLO-accuracy | latency mean / p95 (ms) | active modalities |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["levels"]:
        lines.append(
            f"| {r['level']} | {r['requests']} | {_figure(r['cpu_percent'], '.0f')} | {_figure(r['memory_available_mb'], '.0f')} | {r['accuracy']:.4f} | {r['slo_accuracy']:.4f} | {_figure(r['latency_ms_mean'], '.2f')} / {_figure(r['latency_ms_p95'], '.2f')} | {r['active_modalities']} |"
        )
    lines += ["", "| runtime | accuracy | SLO-accuracy | deadline met | latency p50 / p99 (ms) | unanswered |", "|---|---|---|---|---|---|"]
    rows = {"dynamic": summary["dynamic"], **{f"static {k}": v for k, v in summary["static"].items()}}
    for name, s in rows.items():
        figures = [_figure(s.get(key, math.nan), spec) for key, spec in (("deadline_met", ".4f"), ("latency_ms_p50", ".2f"), ("latency_ms_p99", ".2f"))]
        lines.append(f"| {name} | {s['accuracy']:.4f} | {s['slo_accuracy']:.4f} | {figures[0]} | {figures[1]} / {figures[2]} | {s.get('unanswered', 'n/a')} |")
    return lines + ceiling_rows(summary.get("oracle", {}))  # (replays cached before the ceilings have none)


def outage_markdown(outages: list[dict[str, Any]]) -> list[str]:
    """The outages' rows (`outage_row`): each policy's SLO-accuracy on the requests of each outage's stretch."""
    if not outages:
        return []
    policies = list(next((o["static"] for o in outages if o["requests"]), {}))  # (an outage between two requests has none)
    lines = [
        "",
        "Inputs taken away (SLO-accuracy on the requests of each outage's stretch):",
        "",
        "| " + " | ".join(["outage", "requests", "dynamic", *(f"static {p}" for p in policies), "dynamic served"]) + " |",
        "|---|---|---|" + "---|" * len(policies) + "---|",
    ]
    for o in outages:
        if o["requests"]:
            served = ", ".join(f"{c} ({n})" for c, n in list(o["configurations"].items())[:2])
            cells = [f"{o['dynamic']['slo_accuracy']:.4f}", *(f"{o['static'][p]['slo_accuracy']:.4f}" for p in policies), served]
        else:  # (between two requests)
            cells = [""] * (len(policies) + 2)
        lines.append("| " + " | ".join([o["outage"], str(o["requests"]), *cells]) + " |")
    return lines


def ceiling_rows(oracle: dict[str, Any]) -> list[str]:
    """The ceilings (`oracle`) as rows of a policy table (SLO-accuracy in the third of six columns),
    or a line saying why there are none."""
    if not math.isfinite(oracle.get("slo_accuracy", math.nan)):
        return ["", f"No ceilings: {oracle.get('why_not', 'not computed')}."]
    rows = []
    if "best_per_level" in oracle:  # (summaries written before it have none)
        chosen = "; ".join(f"{level} {p['configuration']}" for level, p in oracle.get("per_level", {}).items())
        rows.append(f"| best configuration per resource level, in hindsight ({chosen}) | | {oracle['best_per_level']:.4f} | | | |")
    rows += [
        f"| clairvoyant allocator: the most accurate configuration that meets each deadline | | {oracle['clairvoyant_allocator']:.4f} | | | |",
        f"| oracle: any configuration right in time, per request | | {oracle['slo_accuracy']:.4f} | | | |",
    ]
    return [
        *rows,
        "",
        f"The last {len(rows)} rows are reference figures at the bank's costs ({oracle['latency_model']}); only the last, the oracle, bounds what a runtime can reach.",
    ]


def configurations_by_cost(timeline: list[dict[str, Any]], variant_ms: dict[str, float]) -> list[str]:
    """The configurations a timeline served, cheapest first by their variants' unloaded median
    latencies (`variant_ms`, by variant id, from the bank), "unanswered" below them all. Sorted by
    name, "high/image,low/audio" sat below "low/image,low/audio", and a step down on the plot was
    no step down in cost."""

    def cost(configuration: str) -> float:  # (a variant the bank lacks: on top, ties by name)
        if configuration == "unanswered":
            return -math.inf
        return sum(variant_ms.get(v, math.inf) for v in configuration.split(","))

    return sorted({r["configuration"] for r in timeline}, key=lambda c: (cost(c), c))


def plot_timeline(
    dynamic: dict[str, Any],
    static: list[dict[str, Any]],
    target_ms: float,
    path: Path,
    title: str,
    variant_ms: dict[str, float],
    outages: Collection[Outage] = (),
) -> None:
    """Four panels over the trace's time: resources (shaded by level), the configuration served
    (ordered by cost, `configurations_by_cost`), latencies against the target, and the running
    SLO-accuracy of every policy; the outages hatched on the last three."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from racmkd.utils import save_figure

    t = [r["t"] for r in dynamic["timeline"]]
    fig, axes = plt.subplots(4, 1, figsize=(11, 10), sharex=True)
    ax = axes[0]
    # absent: a gap
    ax.plot(t, [math.nan if r["cpu_percent"] is None else r["cpu_percent"] for r in dynamic["timeline"]], color="tab:red", label="CPU load (%)")
    ax.set_ylabel("CPU (%)")
    twin = ax.twinx()
    twin.plot(
        t, [math.nan if r["memory_available_mb"] is None else r["memory_available_mb"] for r in dynamic["timeline"]], color="tab:blue", label="free memory (MB)"
    )
    twin.set_ylabel("free memory (MB)")
    ax.set_title(f"trace {title}: resources, shaded by resource level", loc="left", pad=16)
    shades = {"high": "tab:green", "medium": "gold", "low": "tab:orange", "critical": "tab:red"}
    timeline = dynamic["timeline"]
    start, labelled = 0, set()
    for i in range(1, len(timeline) + 1):  # one band per run of requests at one level
        if i == len(timeline) or timeline[i]["level"] != timeline[start]["level"]:
            level = timeline[start]["level"]
            ax.axvspan(t[start], t[min(i, len(t) - 1)], color=shades.get(level, "grey"), alpha=0.12, linewidth=0, label=None if level in labelled else level)
            labelled.add(level)
            start = i
    # One legend for both axes (the free memory's line is the twin's), above the panel, beside its
    # title: inside it, it covered the load's curve on a trace with many switches.
    handles, labels = (sum(pair, []) for pair in zip(ax.get_legend_handles_labels(), twin.get_legend_handles_labels()))
    twin.legend(handles, labels, fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=6, frameon=False, borderaxespad=0.1)
    configs = configurations_by_cost(dynamic["timeline"], variant_ms)
    index = {c: i for i, c in enumerate(configs)}
    axes[1].step(t, [index[r["configuration"]] for r in dynamic["timeline"]], where="post", color="black")
    axes[1].set_yticks(range(len(configs)), configs, fontsize=7)
    axes[1].set_title("configuration served (dynamic), ordered by unloaded cost: a step down is a cheaper one")
    axes[2].plot(t, [r["latency_ms"] for r in dynamic["timeline"]], ".", markersize=2, label="dynamic")
    if static:  # the most capable static tier, the deployment one would pick for normal conditions
        axes[2].plot(t, [x["latency_ms"] for x in static[0]["timeline"]], ".", markersize=2, alpha=0.5, label=static[0]["policy"].replace("-", " "))
    axes[2].axhline(target_ms, color="black", linestyle="--", linewidth=1, label="target")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("latency (ms)")
    axes[2].legend(fontsize=8, loc="upper right")
    for r in [dynamic, *static]:
        met = np.cumsum([x["slo_met"] for x in r["timeline"]]) / np.arange(1, len(r["timeline"]) + 1)
        axes[3].plot(t, met, label=r["policy"], linewidth=2 if r is dynamic else 1)
    axes[3].plot(
        t, [x["running_accuracy"] for x in dynamic["timeline"]], color="black", linestyle=":", label=f"{dynamic['policy']}: running accuracy (any latency)"
    )
    for outage in outages:
        for ax in axes[1:]:
            ax.axvspan(
                outage.start_s,
                min(outage.end_s, t[-1]),  # (one that ends after the trace stretched the axis: 120 s in the first tenth of it)
                facecolor="none",
                edgecolor="grey",
                hatch="//" if outage.kind == "dead" else "\\\\",  # (a dead input and a missing one told apart)
                linewidth=0,
                label=None if ax is not axes[1] else f"{outage.modality} {outage.kind}" + (f", {outage.share:.0%} of requests" if outage.share < 1 else ""),
            )
    if outages:
        axes[1].legend(fontsize=7, loc="upper right")
    axes[3].set_ylabel("running SLO-accuracy / accuracy")
    axes[3].set_xlabel("trace time (s)")
    axes[3].legend(fontsize=8, loc="best")  # (lower left hid the dynamic curve's start)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=110)


def serve_split(
    runtime: EdgeRuntime,
    dataset: Any,
    seconds: float,
    rate_hz: float,
    split: str = "test",
    on_request: Callable[[int, Answer], None] | None = None,
    keep_records: bool = True,
    interruptible: bool = False,
) -> dict[str, Any]:
    """Serve a split's samples (raw, with the protocol's degradations) at `rate_hz` for `seconds`
    of wall time, as a device would see them; returns per-request records and a summary. Without
    `keep_records` no record is kept, and the latency percentiles are those of the last 10,000
    answers, held in a Window: a soak run watches memory, and a bounded window of records (one dict
    each) filling up and turning over reads as growth. `interruptible`: Ctrl-C ends the serving
    early with the figures so far, as does SIGTERM under `exit_on_sigterm` (the summary's `interrupted`
    names the signal, SIGINT or SIGTERM; false for a serving that ran its time), instead of losing them."""
    call = (lambda i, _name, answer: on_request(i, answer)) if on_request is not None else None
    return serve_together({"": runtime}, dataset, seconds, rate_hz, split, call, keep_records, interruptible)[""]


def serve_together(
    runtimes: dict[str, EdgeRuntime],
    dataset: Any,
    seconds: float,
    rate_hz: float,
    split: str = "test",
    on_request: Callable[[int, str, Answer], None] | None = None,
    keep_records: bool = True,
    interruptible: bool = False,
) -> dict[str, dict[str, Any]]:
    """`serve_split` for several runtimes at once: every runtime answers each sample, one after
    the other (the order turning with each sample, so that none always runs first after the pause),
    so runtimes compared under a load that moves by the second see the same load. Served one after
    the other instead, a dynamic runtime and static high under the same stress-ng phases ran their
    idle phases at p50 1.25 and 0.82 ms with configurations of the same cost. Each runtime's
    figures are its own; the load on the host is every runtime's requests together."""
    for runtime in runtimes.values():
        check_bank_data(runtime.bank, dataset)
    n = len(dataset.splits[split])
    names = list(runtimes)
    records: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    latencies = {name: [] if keep_records else Window(10_000) for name in names}  # answered requests'
    configurations: dict[str, Counter[str]] = {name: Counter() for name in names}
    counts = {name: {"requests": 0, "correct": 0, "in_time": 0, "slo": 0, "unanswered": 0} for name in names}
    decided_before = {name: runtimes[name].decision_count for name in names}  # (a runtime serving phase after phase)
    started = time.perf_counter()
    i, interrupted = 0, False
    try:
        while time.perf_counter() - started < seconds:
            due = started + i / rate_hz
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            row = torch.tensor([i % n])
            raw = {m: values[0].numpy() for m, values in dataset.raw_batch(split, row).items()}  # (once per sample, whatever the runtimes)
            label = int(dataset.splits[split].labels[row[0]])
            for k in range(len(names)):
                name = names[(i + k) % len(names)]
                runtime = runtimes[name]
                try:
                    answer = runtime.predict(**{m: raw[m] for m in runtime.modalities})
                except NoVariantError as err:
                    answer = Answer(-1, np.zeros(0), [], float("nan"), [str(err)])
                correct, in_time = answer.label == label, answer.latency_ms <= runtime.config.latency_target_ms
                tally = counts[name]
                tally["requests"] += 1
                tally["correct"] += correct
                tally["in_time"] += in_time
                tally["slo"] += correct and in_time
                tally["unanswered"] += not answer.variants
                configuration = ",".join(answer.variants) or "unanswered"
                configurations[name][configuration] += 1
                if answer.variants:
                    latencies[name].append(answer.latency_ms)
                if keep_records:
                    records[name].append(
                        {
                            "t": round(time.perf_counter() - started, 4),
                            "latency_ms": answer.latency_ms,
                            "correct": correct,
                            "configuration": configuration,
                            "level": runtime.level,
                            "budget_latency_ms": runtime.budget.latency_ms,
                            "slowdown": runtime.budget.slowdown,
                            "pid_scale": runtime.controller.scale,
                            "cpu_percent": runtime.snapshot.cpu_percent if runtime.snapshot else None,
                        }
                    )
                if on_request is not None:
                    on_request(i, name, answer)
            i += 1
    except (KeyboardInterrupt, Terminated) as stop:
        if not interruptible:
            raise
        interrupted = "SIGTERM" if isinstance(stop, Terminated) else "SIGINT"  # (a request cut short is not counted: its tally comes after its answer)
    served = {name: _served(runtimes[name], counts[name], records[name], latencies[name], configurations[name], decided_before[name]) for name in names}
    for result in served.values():
        result["summary"]["interrupted"] = interrupted
    return served


def _served(
    runtime: EdgeRuntime,
    counts: dict[str, int],
    records: list[dict[str, Any]],
    latencies: Iterable[float],
    configurations: Counter[str],
    decided_before: int = 0,
) -> dict[str, Any]:
    """One runtime's figures from live serving: the summary over every request, the kept records;
    switches and adaptation times of this serving's decisions only (`decided_before`: the runtime's
    count when it began; each decision records one adaptation time). A runtime serving stress-ng's
    phases one after another reported each phase with every phase's switches before it."""
    n = max(counts["requests"], 1)
    switches = runtime.decision_count - decided_before
    adaptations = runtime.adaptation_ms.values()[-switches:] if switches else []
    summary = {
        "requests": counts["requests"],
        "unanswered": counts["unanswered"],
        "accuracy": counts["correct"] / n,
        "deadline_met": counts["in_time"] / n,
        "slo_accuracy": counts["slo"] / n,
        "latency_ms_p50": percentile(latencies, 50),
        "latency_ms_p99": percentile(latencies, 99),
        "switches": switches,
        "adaptation_ms_p99": percentile(adaptations, 99),
        "configurations": dict(configurations.most_common()),
    }
    return {"summary": summary, "records": records, "decisions": list(runtime.decisions)[-switches:] if switches else []}
