"""The run report: every model of a run measured the same way, written as report.json,
report.md and PNG plots in the run directory."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from racmkd.compress.artifacts import ExportError, compress_again, read_compression_record
from racmkd.measure.timing import machine
from racmkd.config import EvalConfig, to_dict
from racmkd.data.dataset import PairedDataset, build_dataset
from racmkd.data.paths import git_commit
from racmkd.measure.cost import activation_memory, count_flops, energy_per_call_mj, latency_round_robin, model_bytes
from racmkd.eval.metrics import NonFiniteLogits, classification_metrics
from racmkd.eval.plots import plot_accuracy_vs_cost, plot_training_curves
from racmkd.models.checkpoint import load_model
from racmkd.models.inference import BatchFeatures, predict_split
from racmkd.runs import compressed_records, open_run, read_selection, record_timing, teacher_names
from racmkd.runtime.predictor import Predictor
from racmkd.utils import atomic_write_json, atomic_write_text, human_bytes, progress, sha256, torch_threads

log = logging.getLogger(__name__)

ORDER = ["teacher", "teacher_image", "teacher_audio", "high", "medium", "low", "critical"]
RETENTION_TARGETS = {"high": 0.99, "medium": 0.97, "low": 0.95, "critical": 0.90}
TEACHER_TARGETS = {"avmnist": 0.98, "clean": 0.995}


def report_order(name: str) -> tuple[float, str]:
    """Teachers, then each tier followed by its label-only baseline and its compressed artifact, then anything else
    (a unimodal teacher of a modality beyond image and audio among the teachers)."""
    base = name.removesuffix("_labels_only").removesuffix("_compressed")
    rank = ORDER.index(base) if base in ORDER else ORDER.index("teacher_audio") + 0.5 if base.startswith("teacher_") else len(ORDER)
    return (rank + (0.3 if name.endswith("_labels_only") else 0.6 if name.endswith("_compressed") else 0.0), name)


def split_metrics(logits: torch.Tensor, labels: torch.Tensor, source: Path, fix: str) -> dict[str, float | None]:
    """`classification_metrics`, its refusal of non-finite logits naming the model and the fix."""
    try:
        return classification_metrics(logits, labels)
    except NonFiniteLogits as err:
        raise ValueError(f"{source}: on the test split {err}; {fix}") from None


def measure(name: str, path: Path, dataset: PairedDataset) -> tuple[dict[str, Any], dict[str, Any]]:
    """Accuracy, size, FLOPs and activation memory of one checkpoint on the run's test split, and
    the callables that time it at batch 1 (model alone, and raw input to label)."""
    model, specs, modalities, meta = load_model(path)
    withheld = ((),) + (tuple((m,) for m in specs) if len(specs) > 1 else ())  # a missing sensor: each modality withheld
    logits, labels = predict_split(model, specs, dataset, "test", withheld=withheld)
    again = "`racmkd train-teacher` in a new run" if meta.get("role") == "teacher" else f"`racmkd distill --run {path.parent.parent}`"
    retrain = f"its weights are damaged or diverged: train it again ({again}, or a new `racmkd run`)"
    entry: dict[str, Any] = {"role": meta.get("role"), "modalities": list(specs), **split_metrics(logits[0], labels, path, retrain)}
    entry["inputs"] = {m: to_dict(s) for m, s in specs.items()}
    if len(withheld) > 1:
        entry["accuracy_without"] = {drop[0]: split_metrics(out, labels, path, retrain)["accuracy"] for drop, out in zip(withheld[1:], logits[1:])}
    raw = dataset.raw_batch("test", torch.tensor([0]))  # costs at batch 1, on the first test sample
    inputs = BatchFeatures(dataset.modalities, raw).get(specs)
    entry.update(model_bytes(model))
    entry["flops"] = count_flops(model, inputs)
    for key in ("tier", "budget_bytes", "trained_with", "val_accuracy", "train_seconds", "design", "objective", "history"):
        if key in meta:
            entry[key] = meta[key]
    if "budget_bytes" in meta:
        entry["within_budget"] = entry["param_bytes_fp32"] <= meta["budget_bytes"]
    predictor = Predictor(name, model, specs, modalities, meta)
    raw_one = {m: raw[m][0].numpy() for m in specs}
    run_model, entry["latency_engine"], graph = onnx_timer(name, model, specs, modalities, inputs)
    entry.update(checkpoint_memory(model, inputs, graph))
    timers = {"model": run_model, "predict": lambda: predictor.predict(**raw_one)}
    return entry, timers


def onnx_timer(name: str, model: torch.nn.Module, specs: dict[str, Any], modalities: dict[str, Any], inputs: dict[str, torch.Tensor]) -> tuple[Any, str, Any]:
    """What times a checkpoint at batch 1: its fp32 ONNX export run by ONNX Runtime on one thread,
    the engine every compressed row runs on (PyTorch eager ran the same students 10-50x slower at
    batch 1, and put the engine's difference into the compressed rows' gains); PyTorch itself only
    when the export fails, and the entry says which (`latency_engine`). Also the export's
    `graph_cost` (None when there is no export), what the row's memory is measured on."""
    import tempfile

    from racmkd.compress.export import export_onnx, session
    from racmkd.resources.profile import graph_cost

    feed = {m: x.numpy() for m, x in inputs.items()}
    try:
        with tempfile.TemporaryDirectory() as scratch:  # the session holds the graph once created
            exported = export_onnx(model, specs, modalities, Path(scratch) / f"{name}.onnx", name=name)
            onnx_session = session(exported)
            cost = graph_cost(exported)
    except ExportError as err:
        log.warning("%s: timed in PyTorch: its ONNX export failed (%s)", name, err)
        return (lambda: model(inputs)), "pytorch", None
    return (lambda: onnx_session.run(["logits"], feed)), "onnxruntime", cost


def checkpoint_memory(model: torch.nn.Module, inputs: dict[str, torch.Tensor], graph: Any) -> dict[str, Any]:
    """A checkpoint's activation memory measured as the compressed rows' is, on its fp32 ONNX graph
    (`graph`: BatchNorm folded, Conv + activation fused), so the peak-memory column compares like
    with like (PyTorch eager also stores every BatchNorm output, which no deployed graph has).
    PyTorch's own allocations only when there is no export, and the row says which (`memory_method`)."""
    if graph is None:
        return {**activation_memory(model, inputs), "memory_method": "pytorch"}
    return {"peak_activation_bytes": graph.peak_activation_bytes, "activation_bytes_written": graph.activation_bytes_written, "memory_method": "onnx-graph"}


def measure_compressed(name: str, folder: Path, run_dir: Path, dataset: PairedDataset, source: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A compressed tier measured as it is deployed: its ONNX artifact run by ONNX Runtime on the
    test split; size and RAM from the artifact's graph; FLOPs from its PyTorch twin (model.pt)."""
    from racmkd.compress.export import onnx_logits
    from racmkd.resources.profile import graph_cost
    from racmkd.runtime.predictor import OnnxPredictor

    manifest = read_compression_record(folder, whole=True)
    again = compress_again(folder)
    artifact = folder / manifest["artifact"]
    twin, specs, modalities, meta = load_model(folder / "model.pt")
    predictor = OnnxPredictor(artifact, fix=again)  # (not `racmkd export`, which writes elsewhere: a tier's artifact comes from compress)
    logits, labels = onnx_logits(predictor.session, specs, dataset, "test")
    metrics = split_metrics(torch.from_numpy(logits), torch.from_numpy(labels), artifact, again)
    entry: dict[str, Any] = {"role": "compressed", "modalities": list(specs), **metrics}
    entry["inputs"] = {m: to_dict(s) for m, s in specs.items()}
    raw = dataset.raw_batch("test", torch.tensor([0]))
    inputs = BatchFeatures(dataset.modalities, raw).get(specs)
    cost = graph_cost(artifact)
    entry.update(model_bytes(twin))
    entry.update(
        flops=count_flops(twin, inputs),
        peak_activation_bytes=cost.peak_activation_bytes,
        activation_bytes_written=cost.activation_bytes_written,
        memory_method="onnx-graph",
        weight_bytes=cost.weight_bytes,
        resident_weight_bytes=cost.resident_weight_bytes,
        bytes_deployable=artifact.stat().st_size,
        artifact_sha256=sha256(artifact.read_bytes()),  # what a release of this tier checks it signs these figures with
        format=manifest["format"],
        artifact=str(artifact.relative_to(run_dir)),
        artifact_reason=manifest["reason"],
        compression_ratio=(source["bytes_fp32"] / artifact.stat().st_size) if source else None,
        tier=manifest["tier"],
        budget_bytes=meta.get("budget_bytes"),
        recipe=manifest["recipe"],
        compression_steps=[{"step": s["step"], "before": s["before"], "after": s["after"], "seconds": s["seconds"]} for s in manifest["steps"]],
    )
    raw_one = {m: raw[m][0].numpy() for m in specs}
    feed = {m: x.numpy() for m, x in inputs.items()}
    timers = {"model": lambda: predictor.session.run(["logits"], feed), "predict": lambda: predictor.predict(**raw_one)}
    entry["latency_engine"] = "onnxruntime"
    return entry, timers


def add_latency_and_energy(models: dict[str, dict[str, Any]], timers: dict[str, dict[str, Any]], ev: EvalConfig) -> None:
    """Latency of every model (round-robin, one thread), then energy: RAPL-measured where readable,
    else estimated from FLOPs, bytes moved and the measured latency."""
    model_lat = latency_round_robin({n: t["model"] for n, t in timers.items()}, ev.latency_warmup, ev.latency_iters, ev.latency_rounds)
    predict_lat = latency_round_robin({n: t["predict"] for n, t in timers.items()}, ev.latency_warmup, ev.latency_iters // 2, ev.latency_rounds)
    for name, entry in models.items():
        entry["latency_ms_p50"], entry["latency_ms_p95"] = model_lat[name]["p50"], model_lat[name]["p95"]
        entry["predict_latency_ms_p50"] = predict_lat[name]["p50"]
        # weights read once (as the kernels read them), activations written and read
        moved = entry.get("resident_weight_bytes", entry["param_bytes_fp32"]) + 2 * entry["activation_bytes_written"]
        with torch_threads(1):
            entry["energy_mj"], entry["energy_source"] = energy_per_call_mj(
                timers[name]["model"], ev.latency_iters, Path(ev.rapl_root), entry["flops"], moved, entry["latency_ms_p50"] / 1e3, ev.energy
            )
        entry["energy_device"] = ev.energy.device


def add_retention(models: dict[str, dict[str, Any]], modalities: list[str] | tuple[str, ...]) -> None:
    """Each student's, baseline's and compressed tier's accuracy over the primary teacher's: the
    fused one, or a one-modality run's own (`teacher` alone was read, and such a run's report had
    no retention and no targets)."""
    primary = models.get(teacher_names(modalities)[0])
    if primary is None or not primary["accuracy"]:
        return
    for entry in models.values():
        if entry.get("role") in ("student", "baseline", "compressed"):
            entry["retention"] = entry["accuracy"] / primary["accuracy"]


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The foundation issue's targets, measured on this run."""
    models, rows = report["models"], []
    teacher = models.get("teacher")
    if teacher is not None and report["protocol"] in TEACHER_TARGETS:
        goal = TEACHER_TARGETS[report["protocol"]]
        rows.append({"target": f"teacher accuracy >= {goal:.1%}", "measured": teacher["accuracy"], "reached": teacher["accuracy"] >= goal})
    for tier, goal in RETENTION_TARGETS.items():
        if tier not in models or "retention" not in models[tier]:
            continue  # no retention to hold to its target (no teacher accuracy to divide by, or no student's row)
        m = models[tier]
        rows.append(
            {
                "target": f"{tier}: retention >= {goal:.0%} within {m['budget_bytes'] // 1024} KB",
                "measured": m["retention"],
                "bytes": m["param_bytes_fp32"],
                "reached": m["retention"] >= goal and m["within_budget"],
            }
        )
        baseline = models.get(f"{tier}_labels_only")
        if baseline is not None:
            gain = m["accuracy"] - baseline["accuracy"]
            rows.append(
                {
                    "target": f"{tier}: distillation beats labels only",
                    "measured": gain,
                    "reached": gain > 0,
                    "note": "single seed here; the benchmark compares against the seed-to-seed spread",
                }
            )
    return rows


def evaluate_run(run_dir: str | Path, dataset: PairedDataset | None = None) -> dict[str, Any]:
    """Measure every checkpoint of a run and write report.json, report.md and the plots."""
    run_dir, cfg = open_run(run_dir)
    started = time.perf_counter()
    dataset = dataset or build_dataset(cfg.data)
    paths = sorted((run_dir / "checkpoints").glob("*.pt"), key=lambda p: report_order(p.stem))
    if not paths:
        raise FileNotFoundError(f"{run_dir}/checkpoints: no models to evaluate. Run `racmkd train-teacher` and `racmkd distill` first.")
    models, timers = {}, {}
    compressed = [p.parent for p in compressed_records(run_dir)]
    with torch_threads(cfg.threads):
        for path in progress(paths, desc="evaluate", leave=True):
            models[path.stem], timers[path.stem] = measure(path.stem, path, dataset)
        for folder in progress(compressed, desc="evaluate compressed", leave=True):
            name = f"{folder.name}_compressed"
            models[name], timers[name] = measure_compressed(name, folder, run_dir, dataset, models.get(folder.name))
    models = dict(sorted(models.items(), key=lambda kv: report_order(kv[0])))
    add_latency_and_energy(models, timers, cfg.eval)
    add_retention(models, cfg.data.modalities)
    report: dict[str, Any] = {
        "protocol": cfg.data.protocol,
        "commit": git_commit(),
        "run": run_dir.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "data": dataset.info,
        "seed": cfg.seed,
        "models": models,
    }
    report["targets"] = targets(report)
    selection = read_selection(run_dir)
    if selection:
        report["selection"] = selection
    report["timings_s"] = record_timing(run_dir, "evaluate", time.perf_counter() - started)
    plots = plot_accuracy_vs_cost(models, run_dir) + plot_training_curves(models, run_dir)
    report["plots"] = [p.name for p in plots]
    atomic_write_json(run_dir / "report.json", report)
    atomic_write_text(run_dir / "report.md", render_markdown(report))
    return report


def _inputs(entry: dict[str, Any]) -> str:
    parts = []
    for m, spec in entry["inputs"].items():
        if "resolution" in spec:
            parts.append(f"{m} {spec['resolution']}x{spec['resolution']}")
        elif "n_mels" in spec:
            parts.append(f"{m} {spec['n_mels']}x{spec['n_frames']}")
        else:  # another modality: its spec's knobs as they are (not what it fitted, a PCA's axes)
            parts.append(
                " ".join([m, *(f"{k}={v}" for k, v in spec.items() if not (isinstance(v, list) and (not v or any(isinstance(x, (float, list)) for x in v))))])
            )
    return ", ".join(parts)


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: the tables a reader looks at first."""
    lines = [
        f"# racmkd report: {report['run']}",
        "",
        f"Protocol **{report['protocol']}**, commit `{report['commit']}`, {report['machine']['cpu']} ({report['machine']['cores']} cores), torch {report['machine']['torch']}, seed {report['seed']}.",
        "",
    ]
    samples = report["data"].get("samples", {})
    lines += [
        f"Samples: train {samples.get('train')}, validation {samples.get('val')}, test {samples.get('test')}. All figures on the test split; latency at batch 1 on one thread.",
        "",
    ]
    image_info = report["data"].get("modalities", {}).get("image", {})
    if "pca_components" in image_info:
        lines += [
            f"avmnist images: {image_info['pca_components']} PCA components ({image_info['pca_explained_variance']:.1%} of the variance kept; {image_info['energy_removed']:.1%} of the train images' variance removed). Audio: white noise at a uniform 0-10 dB SNR.",
            "",
        ]
    lines += [
        "## Models",
        "",
        "| model | inputs | accuracy | macro-F1 | AUC | retention | params | weights | FLOPs | peak act. | latency p50 / p95 (ms) | energy (mJ) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in report["models"].items():
        retention = f"{e['retention']:.1%}" if "retention" in e else ""
        auc = f"{e['auc_roc']:.4f}" if e["auc_roc"] is not None else "n/a"
        weights = human_bytes(e["param_bytes_fp32"]) if "bytes_deployable" not in e else f"{human_bytes(e['weight_bytes'])} ({e['format']})"
        lines.append(
            f"| {name} | {_inputs(e)} | {e['accuracy']:.4f} | {e['f1_macro']:.4f} | {auc} | {retention} | {e['params']:,} | {weights} | {e['flops'] / 1e6:.2f} M | {human_bytes(e['peak_activation_bytes'])} | {e['latency_ms_p50']:.3f} / {e['latency_ms_p95']:.3f} | {e['energy_mj']:.4f} ({e['energy_source']}) |"
        )
    lines += [
        "",
        "Weights: fp32 parameter bytes (what the tier budgets count), or for compressed rows the initializer bytes of the deployed ONNX graph; BatchNorm running statistics add `bytes_fp32 - param_bytes_fp32` in report.json and fold into the convolutions on export. Latency: batch 1, one thread, ONNX Runtime for every row (a checkpoint through its fp32 export; a row timed in PyTorch, its export having failed, says so in report.json's `latency_engine`), every model timed in turn over several rounds (`eval.latency_rounds`), so a passing disturbance of the machine hits all alike; absolute figures on a shared VM vary from run to run. Peak act.: live activations at the worst moment of the row's ONNX graph (a checkpoint's fp32 export, BatchNorm folded, Conv + activation fused, as a compressed row's artifact), or of PyTorch's forward pass where report.json's `memory_method` says `pytorch`.",
    ]
    compressed = {n: e for n, e in report["models"].items() if e.get("role") == "compressed"}
    if compressed:
        lines += [
            "",
            "## Compressed tiers",
            "",
            "Each tier's student after its compression recipe, measured as deployed: the ONNX artifact run by ONNX Runtime (batch 1, one thread). Ratio = fp32 bytes of the uncompressed student / deployable bytes.",
            "",
            "| model | format | deployable | ratio | accuracy | vs student | retention | FLOPs | peak act. | latency p50 (ms) | why this artifact (as timed when the recipe chose it) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, e in compressed.items():
            source = report["models"].get(e["tier"])
            delta = f"{e['accuracy'] - source['accuracy']:+.4f}" if source else ""
            ratio = f"{e['compression_ratio']:.1f}x" if e.get("compression_ratio") else ""
            retention = f"{e['retention']:.1%}" if "retention" in e else ""  # blank, not 0.0%, without a teacher
            lines.append(
                f"| {name} | {e['format']} | {human_bytes(e['bytes_deployable'])} | {ratio} | {e['accuracy']:.4f} | {delta} | {retention} | {e['flops'] / 1e6:.2f} M | {human_bytes(e['peak_activation_bytes'])} | {e['latency_ms_p50']:.3f} | {e['artifact_reason']} |"
            )
    missing = {n: e["accuracy_without"] for n, e in report["models"].items() if "accuracy_without" in e}
    if missing:
        withheld = list(dict.fromkeys(m for row in missing.values() for m in row))  # one column per modality, whatever order a model lists them in
        lines += [
            "",
            "## A missing modality",
            "",
            "Accuracy when one input is withheld (the model answers from the rest).",
            "",
            "| model | " + " | ".join(f"without {m}" for m in withheld) + " |",
            "|---|" + "---|" * len(withheld),
        ]
        for name, row in missing.items():
            lines.append(f"| {name} | " + " | ".join(f"{row[m]:.4f}" if m in row else "" for m in withheld) + " |")
    lines += ["", "## Targets", "", "| target | measured | reached |", "|---|---|---|"]
    for t in report["targets"]:
        value = f"{t['measured']:+.4f}" if "beats" in t["target"] else f"{t['measured']:.4f}"
        lines.append(f"| {t['target']} | {value} | {'yes' if t['reached'] else '**no**'} |")
    if "selection" in report:
        lines += [
            "",
            "## Why each tier uses what it uses",
            "",
            f"Every candidate below was trained on {report['selection']['samples_per_candidate']} samples with its tier's distillation objective, at the widest width within the budget, and ranked on {report['selection']['val_samples']} validation samples.",
            "",
        ]
        for tier, t in report["selection"]["tiers"].items():
            lines += [
                f"**{tier}** (budget {human_bytes(t['budget_bytes'])}): chose `{t.get('chosen')}`, {t.get('reason', '')}.",
                "",
                "| candidate | width | params | FLOPs | val accuracy |",
                "|---|---|---|---|---|",
            ]
            for c in sorted(t["candidates"], key=lambda c: -c["val_accuracy"]):
                lines.append(f"| {c['name']} | {c['width']:.3f} | {c['params']:,} | {c['flops'] / 1e6:.2f} M | {c['val_accuracy']:.4f} |")
            for s in t["skipped"]:
                lines.append(f"| {s} | | | | skipped |")
            lines.append("")
    lines += [
        "## Energy",
        "",
        "Energy per inference is *estimated* unless marked measured: E = a·FLOPs + b·bytes moved + c·time, with the coefficients of the device profile in the run's config (eval.energy); bytes moved = fp32 weights read once + activations written and read once. Measured energy comes from RAPL package counters where the machine exposes them.",
        "",
    ]
    lines += ["## Time", "", " | ".join(f"{k}: {v:.0f} s" for k, v in report.get("timings_s", {}).items()), ""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in report.get("plots", [])] + [""]
    return "\n".join(lines)
