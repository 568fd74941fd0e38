"""Models measured as they are deployed, for the benchmark suite's tables.

Every row of a comparison is an ONNX artifact run by ONNX Runtime at batch 1 on one thread:
accuracy, macro-F1 and AUC on the whole test split from the artifact's own logits; bytes from the
file; peak memory from the graph's tensor lifetimes (racmkd.resources.profile); FLOPs from the
PyTorch twin (torch.utils.flop_counter); energy estimated from FLOPs, bytes moved and latency.

Robustness and cost-growth sweeps run the PyTorch twin (same weights; the fp32 export matches it
argmax for argmax, see `racmkd export`), because they feed inputs the artifact's fixed shapes and
the protocol's fixed corruption do not allow: another SNR, a degraded image, a missing modality,
a batch of 256, twice the resolution.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from racmkd.compress.artifacts import read_compression_record
from racmkd.config import EvalConfig, RunConfig
from racmkd.data.dataset import PairedDataset
from racmkd.eval.baselines import matched_tier
from racmkd.measure.cost import activation_memory, count_flops, latency_round_robin, model_bytes, time_calls
from racmkd.measure.timing import estimated_energy_joules
from racmkd.eval.metrics import classification_metrics
from racmkd.data.paths import committed, git_commit
from racmkd.models.checkpoint import load_model
from racmkd.models.inference import BatchFeatures
from racmkd.models.multimodal import MultimodalNet
from racmkd.pipeline import checkpoint, compressed_dir, export_model
from racmkd.utils import cached_json, progress, same_source, torch_threads

INT8_ROWS = ("tinyml",)  # rows deployed as static int8 (post-training quantization), as for TFLite Micro; and every cost-matched TinyML row


@dataclass(frozen=True)
class Deployed:
    """One row's artifact and the PyTorch model it came from."""

    name: str
    artifact: Path
    twin: Path  # the checkpoint with the artifact's weights (before int8 rounding)
    format: str  # onnx-fp32, onnx-int8, onnx-mixed, onnx-int8-weights or onnx-int4-weights (a compressed tier: its recipe's choice)


def deploy(cfg: RunConfig, dataset: PairedDataset, run_dir: Path, name: str, out_dir: Path, compressed: bool = True) -> Deployed:
    """The artifact a row is measured as: a racmkd tier's compressed artifact where the run has one
    (unless `compressed` is False: then the row is "<name>_fp32"), else the model exported to ONNX
    (int8 for the TinyML row, fp32 otherwise). Exports are reused when out_dir holds them from the
    same commit: an exporter change since would make the rows' bytes incomparable."""
    folder = compressed_dir(run_dir, name)
    if compressed and (folder / "compression.json").is_file():
        manifest = read_compression_record(folder)
        return Deployed(name, folder / manifest["artifact"], twin(run_dir, name), manifest["format"])
    int8 = name in INT8_ROWS or matched_tier(name) is not None
    record = out_dir / f"{name}.export.json"
    result = cached_json(record)  # damaged: exported again

    def exported(key: str) -> Path:
        """The file the record names, in out_dir: it records absolute paths, and in a copied run
        folder (`cp -a`) they named the original's files (measured instead, or the row lost)."""
        return out_dir / Path(result[key]["path"]).name

    commit, source = git_commit(), checkpoint(run_dir, name)
    stale = (
        result is None
        or not isinstance(result.get("fp32"), dict)
        or not isinstance(result["fp32"].get("path"), str)
        or not exported("fp32").is_file()
        or not source.is_file()  # (gone: the export says why, not a leftover file measured)
        or not same_source(source, result.get("source_sha256"), exported("fp32"))
    )  # retrained since
    if stale or result.get("commit") != commit or not committed(commit) or (int8 and "int8" not in result):
        result = export_model(cfg, dataset, run_dir, name, out_dir, int8=int8)
    key = "int8" if int8 else "fp32"
    label = name if compressed or not (folder / "compression.json").is_file() else f"{name}_fp32"
    return Deployed(label, exported(key), source, f"onnx-{key}")


def twin(run_dir: Path, name: str) -> Path:
    """The PyTorch model a row deploys: a tier's compressed model where the run has one (pruned and
    fine-tuned; its artifact rounds these weights), else the checkpoint. The sweeps label their rows
    as Table 6.6 does, so they must run these, not the uncompressed students."""
    folder = compressed_dir(run_dir, name)
    return folder / "model.pt" if (folder / "compression.json").is_file() else checkpoint(run_dir, name)


def artifact_accuracy(row: Deployed, dataset: PairedDataset, split: str = "test") -> dict[str, Any]:
    """Accuracy, macro-F1 and AUC of the artifact itself on a split."""
    from racmkd.compress.export import onnx_logits, read_contract, session, specs_from_contract

    specs = specs_from_contract(read_contract(row.artifact))
    logits, labels = onnx_logits(session(row.artifact), specs, dataset, split)
    return classification_metrics(torch.from_numpy(logits), torch.from_numpy(labels))


def artifact_costs(rows: list[Deployed], dataset: PairedDataset, ev: EvalConfig, missing: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Parameters, deployable bytes, peak memory, FLOPs, latency p50/p95 (ONNX Runtime, batch 1, one
    thread, the rows timed in turn over several rounds) and estimated energy of every row; a row
    whose costs cannot be measured is left out and its reason put in `missing` (the others go on)."""
    costs, timers = {}, {}
    raw = dataset.raw_batch("test", torch.tensor([0]))
    for row in rows:
        try:
            costs[row.name], timers[row.name] = _row_costs(row, dataset, raw)
        except Exception as err:  # noqa: BLE001 - recorded in the table's rows not produced, never hidden
            if missing is None:
                raise
            missing[row.name] = f"costs: {type(err).__name__}: {err}"
    latency = latency_round_robin(timers, ev.latency_warmup, ev.latency_iters, ev.latency_rounds, threads=1)
    for name, entry in costs.items():
        entry["latency_ms_p50"], entry["latency_ms_p95"] = latency[name]["p50"], latency[name]["p95"]
        moved = entry["resident_weight_bytes"] + 2 * entry["activation_bytes_written"]
        entry["energy_mj_estimated"] = estimated_energy_joules(entry["flops"], moved, entry["latency_ms_p50"] / 1e3, ev.energy) * 1e3
    return costs


def _row_costs(row: Deployed, dataset: PairedDataset, raw: dict[str, torch.Tensor]) -> tuple[dict[str, Any], Any]:
    """One row's measured costs, and what times it."""
    from racmkd.compress.export import read_contract, session, specs_from_contract
    from racmkd.resources.profile import graph_cost

    twin, _, _, _ = load_model(row.twin)
    specs = specs_from_contract(read_contract(row.artifact))
    inputs = BatchFeatures(dataset.modalities, raw).get(specs)
    graph = graph_cost(row.artifact)
    costs = {
        "format": row.format,
        "params": model_bytes(twin)["params"],
        "bytes_deployable": row.artifact.stat().st_size,
        "weight_bytes": graph.weight_bytes,
        "resident_weight_bytes": graph.resident_weight_bytes,
        "peak_activation_bytes": graph.peak_activation_bytes,
        "memory_bytes": graph.resident_weight_bytes + graph.peak_activation_bytes,
        "flops": count_flops(twin, inputs),
        "activation_bytes_written": graph.activation_bytes_written,
        "inputs": {m: list(x.shape[1:]) for m, x in inputs.items()},
    }
    sess = session(row.artifact, threads=1)
    feed = {i.name: inputs[i.name].numpy() for i in sess.get_inputs()}
    return costs, (lambda: sess.run(None, feed))


# Robustness ----------------------------------------------------------------------------------------


def raw_test_batch(dataset: PairedDataset, rows: torch.Tensor, degrade: dict[str, float] | None = None, split: str = "test") -> dict[str, torch.Tensor]:
    """Raw test inputs, each modality in `degrade` at that level of its own degradation
    (`Modality.degraded`: audio at one SNR in dB, inf the clean recording; images with white noise
    of that standard deviation) instead of the protocol's; the others as the protocol has them."""
    raw = dataset.raw_batch(split, rows)
    s = dataset.splits[split]
    for name, level in (degrade or {}).items():
        if name not in raw:
            continue
        modality, bank = dataset.modalities[name], dataset.banks[name][split]
        bank_rows = s.index[name][rows]
        extra = {k: v[bank_rows] for k, v in bank.extra.items()}
        raw[name] = modality.degraded(modality.gather(bank, bank_rows), extra, level, s.seeds[rows].tolist())
    return raw


def accuracies_under(
    models: dict[str, tuple[MultimodalNet, dict[str, Any]]],
    dataset: PairedDataset,
    degrade: dict[str, float] | None = None,
    missing: str | None = None,
    limit: int = 0,
    batch_size: int = 500,
) -> dict[str, float | None]:
    """Test accuracy of several models (name -> (model, specs)) under one degradation (`raw_test_batch`),
    or with the modality `missing` withheld; each degraded batch is made once and shared by every
    model. None for a model that needs the missing modality (it has no other input)."""
    used = {name: [m for m in specs if m != missing] for name, (_, specs) in models.items()}
    correct = dict.fromkeys(models, 0)
    total = 0
    with torch.inference_mode():
        for rows in dataset.batches("test", batch_size, limit=limit):
            features = BatchFeatures(dataset.modalities, raw_test_batch(dataset, rows, degrade))
            labels = dataset.splits["test"].labels[rows]
            for name, (model, specs) in models.items():
                if used[name]:
                    correct[name] += int((model(features.get({m: specs[m] for m in used[name]})).argmax(1) == labels).sum())
            total += len(rows)
    return {name: correct[name] / max(total, 1) if used[name] else None for name in models}


def accuracy_under(model: MultimodalNet, specs: dict[str, Any], dataset: PairedDataset, **condition: Any) -> float | None:
    """`accuracies_under` for one model."""
    return accuracies_under({"model": (model, specs)}, dataset, **condition)["model"]


def robustness(
    models: dict[str, Path],
    dataset: PairedDataset,
    sweeps: dict[str, Iterable[float]],
    limit: int = 0,
    threads: int = 0,
    not_measured: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per model: accuracy at each level of each modality's degradation in `sweeps` (modality ->
    levels; a modality the dataset lacks is left out), with each modality missing, and under the
    protocol. A model that cannot be loaded is left out, and why goes into `not_measured`."""
    loaded = {}
    for name, path in models.items():
        try:
            model, specs, _, _ = load_model(path)
        except Exception as err:  # noqa: BLE001 - said in the table, the other models go on
            if not_measured is None:
                raise
            not_measured[name] = f"{type(err).__name__}: {err}"
            continue
        loaded[name] = (model.eval(), specs)
    swept = {m: list(levels) for m, levels in sweeps.items() if m in dataset.modalities}
    out: dict[str, dict[str, Any]] = {
        name: {"modalities": list(specs), "degraded": {m: {} for m in swept}, "missing": {}} for name, (_, specs) in loaded.items()
    }
    conditions = [("degraded", m, str(level), {"degrade": {m: level}}) for m, levels in swept.items() for level in levels]
    conditions += [("missing", m, m, {"missing": m}) for m in dataset.modalities] + [("protocol", None, None, {})]
    with torch_threads(threads):
        for kind, modality, label, condition in progress(conditions, desc="robustness"):
            # a sweep of a modality a model lacks is left out
            subset = {n: v for n, v in loaded.items() if kind != "degraded" or modality in v[1]}
            for name, accuracy in accuracies_under(subset, dataset, limit=limit, **condition).items():
                if kind == "protocol":
                    out[name]["protocol"] = accuracy
                elif kind == "missing":
                    out[name]["missing"][label] = accuracy
                else:
                    out[name]["degraded"][modality][label] = accuracy
    return out


# Cost growth ---------------------------------------------------------------------------------------


def scaling_exponent(xs: list[float], ys: list[float]) -> float | None:
    """Slope of log y against log x (least squares): y grows like x^slope. None with fewer than two points."""
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y and y > 0]
    if len(points) < 2:
        return None
    lx, ly = np.array(points).T
    return float(np.polyfit(lx, ly, 1)[0])


def _timed_sweep(calls: list[Any], budget_s: float = 0.5, rounds: int = 5) -> list[float]:
    """Median ms of each of a sweep's calls on one thread, timed in turn over `rounds` rounds (a
    passing disturbance of the machine hits every point alike, not the few it falls on: one-shot
    timings of 3-30 calls each bent a sweep, 2.1, 1.6, 2.1 ms over three input sizes), each with as
    many calls as fit in about `budget_s` over the rounds (at least one a round, at most 200 in all)."""
    per_round = []
    for fn in calls:
        first = min(time_calls(fn, warmup=2, iters=3))
        per_round.append(math.ceil(min(200, max(rounds, budget_s * 1e3 / max(first, 1e-3))) / rounds))
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(rounds):
        for i, fn in enumerate(calls):
            samples[i] += time_calls(fn, warmup=0, iters=per_round[i])
    return [float(np.median(times)) for times in samples]


def cost_growth(
    models: dict[str, Path], dataset: PairedDataset, batches: Iterable[int], scales: Iterable[float], not_measured: dict[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Per model: latency (PyTorch, one thread) and peak activation memory vs batch size, and vs input
    resolution (every input's sides scaled), with the fitted scaling exponents. A model whose sweep
    fails is left out, and why goes into `not_measured`."""
    batches, scales = list(batches), list(scales)
    out = {}
    for name, path in models.items():
        try:
            out[name] = _growth(path, dataset, batches, scales)
        except Exception as err:  # noqa: BLE001 - said in the table, the other models go on
            if not_measured is None:
                raise
            not_measured[name] = f"{type(err).__name__}: {err}"
    return out


def _growth(path: Path, dataset: PairedDataset, batches: list[int], scales: list[float]) -> dict[str, Any]:
    """`cost_growth` of one model."""
    model, specs, _, _ = load_model(path)
    model.eval()
    rows = torch.arange(min(max(batches), len(dataset.splits["test"])))
    features = BatchFeatures(dataset.modalities, dataset.raw_batch("test", rows)).get(specs)
    batch_inputs = [{m: x[torch.arange(b) % len(x)] for m, x in features.items()} for b in batches]
    scaled_inputs = [{m: torch.zeros(1, x.shape[1], max(2, round(x.shape[2] * s)), max(2, round(x.shape[3] * s))) for m, x in features.items()} for s in scales]
    latency = _timed_sweep([lambda inputs=inputs, model=model: model(inputs) for inputs in batch_inputs + scaled_inputs])
    by_batch = [
        {"batch": b, "latency_ms": ms, "peak_activation_bytes": activation_memory(model, inputs)["peak_activation_bytes"]}
        for b, inputs, ms in zip(batches, batch_inputs, latency)
    ]
    by_scale = [
        {
            "scale": s,
            "input_values": sum(x[0].numel() for x in inputs.values()),
            "latency_ms": ms,
            "peak_activation_bytes": activation_memory(model, inputs)["peak_activation_bytes"],
        }
        for s, inputs, ms in zip(scales, scaled_inputs, latency[len(batches) :])
    ]
    return {
        "batch": by_batch,
        "resolution": by_scale,
        "exponent_latency_vs_batch": scaling_exponent([r["batch"] for r in by_batch], [r["latency_ms"] for r in by_batch]),
        "exponent_memory_vs_batch": scaling_exponent([r["batch"] for r in by_batch], [r["peak_activation_bytes"] for r in by_batch]),
        "exponent_latency_vs_input": scaling_exponent([r["input_values"] for r in by_scale], [r["latency_ms"] for r in by_scale]),
        "exponent_memory_vs_input": scaling_exponent([r["input_values"] for r in by_scale], [r["peak_activation_bytes"] for r in by_scale]),
    }


# Pareto front --------------------------------------------------------------------------------------


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names of the points (cost, accuracy) no other point beats: none has lower or equal cost and
    higher or equal accuracy with one of them strictly better. Sorted by cost."""
    front = []
    for name, (cost, acc) in points.items():
        dominated = any((c <= cost and a >= acc) and (c < cost or a > acc) for other, (c, a) in points.items() if other != name)
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: points[n][0])


def dominates(a: dict[str, float], b: dict[str, float]) -> bool:
    """Row a dominates row b: higher accuracy at lower or equal bytes and latency."""
    return a["accuracy"] > b["accuracy"] and a["bytes_deployable"] <= b["bytes_deployable"] and a["latency_ms_p50"] <= b["latency_ms_p50"]


def closest_in_cost(row: dict[str, float], others: dict[str, dict[str, float]]) -> str:
    """The name of the row among `others` nearest to `row` in cost: the smallest sum of |log ratio| of
    deployable bytes and of latency."""

    def distance(o: dict[str, float]) -> float:
        return abs(math.log(o["bytes_deployable"] / row["bytes_deployable"])) + abs(math.log(o["latency_ms_p50"] / row["latency_ms_p50"]))

    return min(others, key=lambda n: distance(others[n]))
