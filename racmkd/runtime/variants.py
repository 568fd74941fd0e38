"""The variant bank: every (tier, modality) the edge runtime can switch to, exported and measured.

A student's logits are its classifier's bias plus one term per modality (the classifier is linear
over the concatenated embeddings), so each tier's student splits into one ONNX graph per modality,
its *share* of the logits (encoder + its columns of the classifier + its presence term). The
runtime runs the shares of the modalities it chose, adds them, and adds the mean of their tiers'
biases: for variants of one tier this is exactly that student's output; shares of different
tiers can be combined too, and every such combination is measured here like the others.

`build_bank(run_dir)` writes runs/<run>/edge/:

    <tier>.<modality>.onnx   the share graphs: from the compressed student where the run has one
                             (int8, or int8 or 4-bit weights, where its recipe chose so), else from the distilled student
    logits.npz               every share's logits on the validation and test samples
    bank.json                per variant: latency (raw input to logits, numpy preprocessing included,
                             ONNX Runtime, one thread), resident memory, FLOPs, energy; per tier the
                             bias; the accuracy of every configuration on validation and test data

`load_bank(folder)` (racmkd.runtime.bank, which needs no torch) reads it back as the allocator's
`ProfileTable` plus what the runtime needs.
"""

from __future__ import annotations

import io
import itertools
import subprocess
import time
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx
import torch

from racmkd.compress.artifacts import FORMAT_PRECISION, WEIGHTS_ONLY_BITS, read_compression_record, stores_quantized_weights_only
from racmkd.compress.export import compact_file, export_onnx, onnx_logits, session
from racmkd.compress.quantize import calibration_inputs, layer_rows, quantize_int8, quantize_weights
from racmkd.config import RunConfig, RuntimeConfig
from racmkd.data.dataset import PairedDataset
from racmkd.measure.cost import energy_per_call_mj, latency_round_robin, rounds_for
from racmkd.data.paths import git_commit
from racmkd.measure.timing import machine
from racmkd.models.checkpoint import load_model
from racmkd.registry import SIGNALS
from racmkd.runtime.bank import BANK_FORMAT, Bank, BankError, key_text, load_bank  # noqa: F401 - loading lives in bank.py (no torch)
from racmkd.resources.profile import graph_cost
from racmkd.utils import atomic_write_bytes, atomic_write_json, building_folder, progress


class Source(NamedTuple):
    """The model a tier's variants come from, the precision to export them in and, for weights
    stored in 8 or 4 bits, how the shipped file stores them (see `quantize_weights`): the weights
    kept in 8 bits among 4-bit ones, those on clipped grids, those on one scale per layer, and the
    shifts its encoder biases took (`bias_shifts`)."""

    path: Path
    precision: str
    kept_int8: list[str]
    clipped: list[str]
    per_tensor: list[str]
    bias_shift: dict[str, list[float]]


def _source(run_dir: Path, tier: str) -> Source:
    """The compressed student and its recipe's choice where the run has one, else the distilled
    student in fp32."""
    manifest = run_dir / "compressed" / tier / "compression.json"
    if manifest.is_file():
        record = read_compression_record(manifest.parent)
        precision = FORMAT_PRECISION.get(record["format"], "fp32")
        shipped = record.get("candidates", {}).get(precision, {}) if precision in WEIGHTS_ONLY_BITS else {}
        return Source(
            manifest.parent / "model.pt",
            precision,
            shipped.get("kept_int8", []),
            shipped.get("clipped", []),
            shipped.get("per_tensor", []),
            shipped.get("bias_shift", {}),
        )
    return Source(run_dir / "checkpoints" / f"{tier}.pt", "fp32", [], [], [], {})


def configuration_logits(shares: dict[tuple[str, str], np.ndarray], biases: dict[str, np.ndarray], key: dict[str, str | None]) -> np.ndarray:
    """Logits of a configuration (modality -> tier or None): the sum of its shares and the mean of
    its tiers' biases."""
    active = [(m, t) for m, t in key.items() if t is not None]
    total = sum(shares[(t, m)] for m, t in active)
    return total + sum(biases[t] for _, t in active) / len(active)  # type: ignore[no-any-return]


def _accuracy_table(
    modalities: list[str], tiers_of: dict[str, list[str]], shares: dict[tuple[str, str], np.ndarray], biases: dict[str, np.ndarray], labels: np.ndarray
) -> dict[str, float]:
    table = {}
    for combo in itertools.product(*([None, *tiers_of[m]] for m in modalities)):
        if all(t is None for t in combo):
            continue
        logits = configuration_logits(shares, biases, dict(zip(modalities, combo)))
        table[key_text(combo)] = float((logits.argmax(1) == labels).mean())
    return table


# Run in a fresh interpreter: the resident memory one more ONNX Runtime session adds once the
# runtime is up with the bank's other variants loaded and run (what the runtime frees by evicting
# it, and what loading it back costs). In the measuring process the heap would reuse what earlier
# sessions freed and the figure would read near zero; alone in a fresh interpreter, a session also
# pays for what every session shares (kernel registries, code paged in): measured here, the eight
# variants of a bank each read 1.2-2.2 MB alone, 4.7 MB all together.
# The session options are racmkd.compress.artifacts.session's, decided for every file before any
# session loads: session() parses the model to decide them, and the parse's freed memory would be
# reused by the measured session, which would then read too small.
_RESIDENT = """
import gc, sys
import numpy as np, onnxruntime as ort, psutil
gc.collect()
def load(argument):
    float_weights, path = argument.split(":", 1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    if float_weights == "1":
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    session.run(None, {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in session.get_inputs()})
    return session
others = [load(a) for a in sys.argv[2:]]
gc.collect()
before = psutil.Process().memory_info().rss
target = load(sys.argv[1])
print(psutil.Process().memory_info().rss - before)
"""


def resident_bytes(path: Path, others: list[Path], float_weights: dict[Path, bool]) -> int | None:
    """Resident memory a session of `path` adds to a process already holding sessions of `others`
    (measured in a fresh interpreter), or None when the measurement fails. `float_weights` says
    which files store int8 weights for float arithmetic (opened as `session` opens them): read by
    the caller, since importing onnx took the fresh interpreter 2 of its 3 seconds."""
    try:
        arguments = [f"{int(float_weights[p])}:{p}" for p in [path, *others]]
        done = subprocess.run([sys.executable, "-c", _RESIDENT, *arguments], capture_output=True, text=True, timeout=120, check=True)
        return max(0, int(done.stdout.strip().splitlines()[-1]))
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return None


def build_bank(
    cfg: RunConfig,
    dataset: PairedDataset,
    run_dir: Path,
    out_dir: Path | None = None,
    val_samples: int = 5000,
    test_samples: int = 0,
    latency_iters: int = 300,
    calibration_samples: int = 512,
) -> Path:
    """Export and measure every (tier, modality) variant of a run; returns the bank folder. The bank
    is built in a sibling temporary folder that replaces the old one whole at the end: an
    interrupted build leaves the previous bank as it was (written in place, it left a bank.json
    describing files since replaced, which the runtime served without a warning)."""
    if val_samples < 0 or test_samples < 0:  # a negative limit slices from the end: 9,995 of 10,000 for -5
        raise BankError(f"val_samples {val_samples}, test_samples {test_samples}: give counts of 0 (all) or more")
    run_dir = Path(run_dir)
    out_dir = Path(out_dir or run_dir / "edge")
    tiers = [t.name for t in cfg.students.tiers if (run_dir / "checkpoints" / f"{t.name}.pt").is_file()]
    if not tiers:  # before any folder is made
        raise BankError(f"{run_dir}/checkpoints: no tier students to build variants from. Run `racmkd distill --run {run_dir}` first.")
    with building_folder(out_dir, keep=carried_over) as work:
        _build_bank(cfg, dataset, run_dir, work, tiers, val_samples, test_samples, latency_iters, calibration_samples)
    return out_dir


def carried_over(entry: Path) -> bool:
    """What a rebuilt bank carries over from the old folder: the live log of `racmkd edge run`
    (live.json), a record of what was served that stays true. Nothing that describes the old
    variants: an old variant file the new bank no longer lists, nor a `racmkd profile` of one
    (<variant>.profile.json), which the rebuilt file no longer matches."""
    return entry.name == "live.json"


def _build_bank(
    cfg: RunConfig,
    dataset: PairedDataset,
    run_dir: Path,
    out_dir: Path,
    tiers: list[str],
    val_samples: int,
    test_samples: int,
    latency_iters: int,
    calibration_samples: int,
) -> None:
    """`build_bank`'s work, written into `out_dir` (the temporary folder)."""
    records: list[dict[str, Any]] = []
    biases: dict[str, np.ndarray] = {}
    shares: dict[str, dict[tuple[str, str], np.ndarray]] = {"val": {}, "test": {}}
    labels: dict[str, np.ndarray] = {}
    modality_order = [m for m in dataset.modalities]
    for tier in progress(tiers, desc="edge variants", leave=True):
        source, precision, kept_int8, clipped, per_tensor, bias_shift = _source(run_dir, tier)
        model, specs, _, _ = load_model(source)
        modalities = {m: dataset.modalities[m] for m in specs}  # (the run's: a checkpoint's own know no protocol, and the contract said clean)
        biases[tier] = model.classifier.bias.detach().numpy().astype(np.float32)
        paths = {m: out_dir / f"{tier}.{m}.onnx" for m in specs}
        for m, path in paths.items():
            meta = {"precision": precision, "tier": tier, "share": True, "logit_bias": biases[tier].tolist(), "source": str(source.relative_to(run_dir))}
            export_onnx(model, specs, modalities, path, name=f"{tier}/{m}", present=[m], extra_meta=meta, share=True)
        bits = WEIGHTS_ONLY_BITS.get(precision)
        if bits:
            # Each share holds the classifier's columns for its modality only; scaled by those alone,
            # its rows would round on other grids than the tier's artifact (the tests' tiny run: int8
            # shares summed to within 0.028 of its logits, not exactly). Every share scales by the whole
            # layer: each output channel's range (or, on one scale, the layer's) from its weights over all the shares.
            held = {m: layer_rows(path) for m, path in paths.items()}
            whole = {w: np.concatenate([rows[w] for rows in held.values() if w in rows], axis=1) for w in set().union(*held.values())}
            initializers = {m: {i.name for i in onnx.load(path).graph.initializer} for m, path in paths.items()}
            missing = sorted((set(kept_int8) | set(clipped) | set(per_tensor)) - set(whole)) + sorted(set(bias_shift) - set().union(*initializers.values()))
            if missing:
                raise BankError(
                    f"{run_dir / 'compressed' / tier / 'compression.json'}: weights kept in 8 bits, on clipped grids or on one scale, or corrected biases, that the tier's model lacks: {missing}; compress the tier again"
                )
        for m, path in paths.items():
            if precision == "int8":
                quantize_int8(path, path, calibration_inputs(dataset, {m: specs[m]}, calibration_samples))
            elif bits:  # this share's weights, of those the tier kept in 8 bits too
                kept = {w: 8 for w in kept_int8 if w in held[m]} if bits == 4 else {}
                quantize_weights(
                    path,
                    path,
                    bits=bits,
                    bits_by_weight=kept,
                    clipped=[w for w in clipped if w in held[m]],
                    whole_rows={w: whole[w] for w in held[m]},
                    per_tensor=[w for w in per_tensor if w in held[m]],
                    bias_shift={b: np.asarray(shift, dtype=np.float32) for b, shift in bias_shift.items() if b in initializers[m]},
                )
            compact_file(path)
            sess = session(path)
            for split, limit in (("val", val_samples), ("test", test_samples)):
                logits, split_labels = onnx_logits(sess, {m: specs[m]}, dataset, split, limit=limit)
                shares[split][(tier, m)] = logits
                labels[split] = split_labels
            records.append({"tier": tier, "modality": m, "path": path.name, "precision": precision, "spec": specs[m]})
    # Costs, measured on one raw test sample from raw input to logits term, every variant in turn, as
    # the runtime runs them: numpy preprocessing (the modality's signal), then ONNX Runtime.
    raw = dataset.raw_batch("test", torch.tensor([0]))
    runners, feeds = {}, {}
    for r in records:
        signal = SIGNALS.create(r["modality"])
        sess = session(out_dir / r["path"], cfg.runtime.threads)
        value = raw[r["modality"]][0].numpy()
        feeds[r["path"]] = {r["modality"]: signal.features(signal.to_raw(value, r["spec"]), r["spec"])}
        runners[r["path"]] = lambda s=sess, sig=signal, v=value, spec=r["spec"], name=r["modality"]: s.run(
            None, {name: sig.features(sig.to_raw(v, spec), spec)}
        )
    latency = latency_round_robin(runners, warmup=20, iters=latency_iters, rounds=rounds_for(latency_iters))
    model_only = latency_round_robin(
        {p: (lambda s=session(out_dir / p, cfg.runtime.threads), f=feeds[p]: s.run(None, f)) for p in runners},
        warmup=20,
        iters=latency_iters,
        rounds=rounds_for(latency_iters),
    )
    variants = []
    float_weights = {out_dir / r["path"]: stores_quantized_weights_only(onnx.load(out_dir / r["path"])) for r in records}
    for r in records:
        path = out_dir / r["path"]
        cost = graph_cost(path)
        moved = cost.resident_weight_bytes + 2 * cost.activation_bytes_written
        lat = latency[r["path"]]
        energy, energy_source = energy_per_call_mj(
            runners[r["path"]], latency_iters, Path(cfg.eval.rapl_root), cost.flops, moved, lat["p50"] / 1e3, cfg.eval.energy
        )
        graph_memory = cost.resident_weight_bytes + cost.peak_activation_bytes
        resident = resident_bytes(path, [out_dir / o["path"] for o in records if o is not r], float_weights)
        # A session holds at least its file's bytes and the graph's weights (as it runs them) and
        # activations; a resident-memory delta below that (the heap reused memory the other sessions'
        # loading freed: 60 KB read for a 64 KB model in one CI run) gives way to that floor.
        floor = max(graph_memory, cost.file_bytes)
        memory, source = (
            (graph_memory, "graph estimate") if resident is None else (max(resident, floor), "measured" if resident >= floor else "floor (measured below it)")
        )
        variants.append(
            {
                "tier": r["tier"],
                "modality": r["modality"],
                "path": r["path"],
                "precision": r["precision"],
                "latency_ms": lat["p50"],
                "latency_ms_p95": lat["p95"],
                "model_latency_ms": model_only[r["path"]]["p50"],
                "memory_bytes": memory,
                "memory_source": source,
                "memory_measured_bytes": resident,
                "graph_memory_bytes": graph_memory,
                "flops": cost.flops,
                "file_bytes": cost.file_bytes,
                "energy_mj": energy,
                "energy_source": energy_source,
            }
        )
    tiers_of = {m: [t for t in tiers if (t, m) in shares["val"]] for m in modality_order}
    bank = {
        "format": BANK_FORMAT,
        "run": run_dir.name,
        "machine": machine(),  # where the latencies were measured
        "commit": git_commit(),  # the code that measured them (the suite builds the bank again under another)
        "modalities": modality_order,
        "tiers": tiers,
        "biases": {t: b.tolist() for t, b in biases.items()},
        "variants": variants,
        "accuracy": {split: _accuracy_table(modality_order, tiers_of, shares[split], biases, labels[split]) for split in ("val", "test")},
        "samples": {split: int(len(labels[split])) for split in ("val", "test")},
    }
    buffer = io.BytesIO()
    np.savez(buffer, **{f"{split}/{t}/{m}": z for split, per in shares.items() for (t, m), z in per.items()}, **{f"labels/{s}": y for s, y in labels.items()})
    atomic_write_bytes(out_dir / "logits.npz", buffer.getvalue())
    atomic_write_json(out_dir / "bank.json", bank)
    bank["request_overhead_ms"] = request_overhead_ms(out_dir, {m: raw[m][0].numpy() for m in modality_order}, latency_iters, cfg.runtime)
    atomic_write_json(out_dir / "bank.json", bank)


def request_overhead_ms(folder: Path, inputs: dict[str, np.ndarray], iters: int, config: RuntimeConfig | None = None) -> float:
    """What the edge runtime spends on a request beyond its variants' work (combining the shares,
    its checks and bookkeeping, the answer), unloaded: with every variant of the widest tier
    pinned, the median time of requests less the median time of the same variants run alone (each
    input read, its features computed, its session run, as the bank's latencies time them), the
    two interleaved in one loop on the same sessions and input. Taken against the bank's latencies
    instead, measured round-robin over every variant's session with colder caches, the difference
    came out negative and was clamped to 0 where it was about 0.035 ms. The runtime takes it off
    its latency budget. `config`: the runtime's, whose session threads the variants run on."""
    from racmkd.runtime.edge import EdgeRuntime

    bank = load_bank(folder)
    widest = max(bank.table.tiers, key=lambda t: sum(v.tier == t for v in bank.table.variants))
    pinned = {m: widest if any(v.id == f"{widest}/{m}" for v in bank.table.variants) else None for m in bank.table.modalities}
    runtime = EdgeRuntime(bank, config, pinned=pinned)
    used = [v for v in runtime.current.config if v is not None]
    sessions = {v.id: runtime._session(v) for v in used}
    requests, alone = [], []
    for i in range(iters + 20):
        answer = runtime.infer(inputs)
        started = time.perf_counter()
        for v in used:
            raws: dict[str, Any] = {}
            runtime._read(v.modality, inputs[v.modality], None, raws, {})
            runtime._run(v, raws[v.modality], sessions[v.id])
        if i >= 20:
            requests.append(answer.latency_ms)
            alone.append((time.perf_counter() - started) * 1e3)
    runtime.close()
    return max(0.0, float(np.median(requests)) - float(np.median(alone)))  # (below 0 only by timing noise)
