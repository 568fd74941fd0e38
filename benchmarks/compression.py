"""Benchmark of the compression issue's targets: modality-specific compression ratios, device fit,
and the compressed row of every tier.

    python benchmarks/compression.py                    # on runs/bench-compression (made if missing)
    python benchmarks/compression.py --run runs/latest  # on an existing run with compressed tiers
    python benchmarks/compression.py --quick            # the smoke config and cut-down recipes (runs/quick/recipes): minutes, figures meaningless

What it measures, all on the run's avmnist test split (10,000 samples):

- Visual encoder: each tier's student compressed with configs/recipes/visual.yaml (image encoder
  only), int8 (mixed: the fewest sensitive layers in fp32 that meet the parity bound). Ratio = the
  image encoder's fp32 bytes in the uncompressed student (parameters and BatchNorm buffers) / its
  bytes in the artifact the recipe deploys (weights, scales and zero points, read off the graph;
  beside it, stricter, the same against the encoder's BatchNorm-folded fp32 bytes, what an
  uncompressed fp32 export holds):
  the int8 model only when it passed its parity bound, else the fp32 one. Loss = the tier's test
  accuracy minus the artifact's.
- Audio path: the same with configs/recipes/audio.yaml (audio encoder pruned, fewer frames; see
  the recipe for why band selection is left out). The path counts the encoder's weights and its input and activations: ratio = (fp32
  encoder bytes + fp32 peak activation bytes of the audio encoder at its original input) / (deployed
  encoder bytes + peak activation bytes at the reduced input, stored as int8 in an int8 artifact; a layer kept in fp32
  writes its output requantized, as the profiler's graph model counts it). The weights-only
  ratio and the input ratio are reported beside it.
- Device fit: `racmkd profile` of each tier's deployed artifact (runs/<run>/compressed/) on every
  profile in configs/devices/.
Everything is read from the runs' files; no figure is typed in.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from racmkd.compress.artifacts import FORMAT_PRECISION  # noqa: E402
from racmkd.config import config_differences, load_config  # noqa: E402
from racmkd.measure.cost import activation_memory  # noqa: E402
from racmkd.utils import save_figure  # noqa: E402
from racmkd.data.paths import git_commit  # noqa: E402
from racmkd.eval.report import evaluate_run  # noqa: E402
from racmkd.measure.timing import machine  # noqa: E402
from racmkd.eval.suite import compressed_with, recipe_steps  # noqa: E402
from racmkd.models.checkpoint import load_model  # noqa: E402
from racmkd.models.inference import fold_batchnorm  # noqa: E402
from racmkd.pipeline import compress_students, open_run, prepare_data, run_pipeline  # noqa: E402
from racmkd.resources.devices import device_names, load_device  # noqa: E402
from racmkd.resources.profile import latency_model, profile_model  # noqa: E402
from results_io import check_out, refuse_with_quick, reports_errors, targets_table, write_results  # noqa: E402

TIERS = ["high", "medium", "low", "critical"]
EXPERIMENTS = {
    "visual": ("image", REPO / "configs" / "recipes" / "visual.yaml", 15.0, 0.01),
    "audio": ("audio", REPO / "configs" / "recipes" / "audio.yaml", 12.0, 0.02),
}
FIT_TARGETS = {"low": ("cortex-m7", None), "critical": ("cortex-m7", None), "high": ("raspberry-pi-4", 5.0)}


# --quick cuts the experiments' recipes down too: with their full fine-tunes and searches on the
# smoke run they took 36 minutes (the export step's searches alone 524 s for one tier).
QUICK_STEP_OPTIONS = {
    "prune": {"steps": 1, "recover": 0},
    "distill": {"epochs": 1, "samples": 1000},
    "qat": {"samples": 1000},
    "export": {"calibration_samples": 128, "sensitivity_samples": 200, "latency_iters": 30},
}


def quick_recipe(recipe: Path, folder: Path) -> Path:
    """A copy of `recipe` in `folder` with one pruning round, short fine-tunes and small searches."""
    steps = []
    for entry in yaml.safe_load(recipe.read_text())["steps"]:
        ((name, options),) = (entry if isinstance(entry, dict) else {entry: {}}).items()
        options = {**(options or {}), **QUICK_STEP_OPTIONS.get(name, {})}
        if "finetune" in options:
            options["finetune"] = {**options["finetune"], "epochs": 1, "samples": 1000}
        steps.append({name: options})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{recipe.stem}-quick.yaml"
    path.write_text(yaml.safe_dump({"steps": steps}, sort_keys=False))
    return path


def ensure_run(config: Path, run: Path | None, runs_dir: Path) -> Path:
    """The run to measure: the one given (measured first if it has no report.json, as make bench's
    runs have none), else runs/bench-compression (made with `config`)."""
    if run is not None:
        if not (run / "report.json").exists():
            print(f"{run}: no report.json; measuring the run first (racmkd evaluate)", flush=True)
            run_dir, cfg = open_run(run)
            evaluate_run(run_dir, prepare_data(cfg))
        return run
    name = "bench-compression"
    cfg = load_config(config, [f"name={name}", f"runs_dir={runs_dir}", f"compress.tiers={TIERS}"])
    if (runs_dir / name / "report.json").exists():
        # (as benchmarks/foundation.py's run_seed: a run made from another --config was measured in silence)
        differ = config_differences(load_config(runs_dir / name / "config.yaml"), cfg, ignore=("name", "runs_dir", "compress"))
        if differ:  # refused, not retrained: the run is a quarter of an hour's work
            raise SystemExit(
                f"{runs_dir / name}: made with other settings than {config} gives ({', '.join(differ)}). Remove that folder to run it again with these settings, or pass --run."
            )
    else:
        shutil.rmtree(runs_dir / name, ignore_errors=True)  # an attempt that never reached its report: start over
        started = time.perf_counter()
        run_pipeline(cfg)
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    return runs_dir / name


def encoder_bytes(model: torch.nn.Module, modality: str) -> int:
    """fp32 bytes of one encoder: parameters and floating buffers (what an uncompressed checkpoint stores)."""
    encoder = model.encoders[modality]
    return 4 * (sum(p.numel() for p in encoder.parameters()) + sum(b.numel() for b in encoder.buffers() if b.is_floating_point()))


def encoder_activation_bytes(model: torch.nn.Module, modality: str, spec: Any, modalities: dict) -> int:
    """Peak activation bytes (input included) of one encoder at batch 1, in fp32."""

    class One(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.encoder(inputs[modality])

    x = torch.zeros(1, *modalities[modality].feature_shape(spec))
    return activation_memory(One(model.encoders[modality]).eval(), {modality: x})["peak_activation_bytes"]


def modality_experiment(run_dir: Path, name: str, tiers: list[str]) -> list[dict[str, Any]]:
    """Compress each tier that uses the modality with the experiment's recipe; measure its path."""
    modality, recipe, ratio_goal, loss_goal = EXPERIMENTS[name]
    run_dir, cfg = open_run(run_dir)
    dataset = prepare_data(cfg)
    report = json.loads((run_dir / "report.json").read_text())
    use = [t for t in tiers if modality in report["models"][t]["modalities"]]
    into = f"experiments/{name}"
    steps = recipe_steps(recipe)
    missing = [t for t in use if not compressed_with(run_dir, t, recipe, steps, into=into)]  # (made before the student, or from other steps: stale)
    for tier in missing:  # stale: gone before compressing again, so a failed recipe cannot leave it to be read
        shutil.rmtree(run_dir / into / tier, ignore_errors=True)
    if missing:
        compress_students(cfg, dataset, run_dir, missing, recipe, into=into)
    rows = []
    for tier in use:
        folder = run_dir / into / tier
        manifest = json.loads((folder / "compression.json").read_text())
        source, source_specs, modalities, _ = load_model(run_dir / "checkpoints" / f"{tier}.pt")
        twin, specs, _, _ = load_model(folder / "model.pt")
        # The artifact the recipe deploys: int8 only where it passed its parity bound (agreement with
        # its own fp32 model), else fp32; a refused int8 model's bytes are not counted. Activations
        # are int8 only in an int8 graph (int8 weights with float arithmetic keep them float).
        deployed = manifest["candidates"][next(k for k, c in manifest["candidates"].items() if c["path"] == manifest["artifact"])]
        int8 = FORMAT_PRECISION.get(deployed["format"]) == "int8"
        bytes_before = encoder_bytes(source, modality)
        bytes_folded = encoder_bytes(fold_batchnorm(source), modality)  # what an uncompressed fp32 export holds: BatchNorm folded away
        bytes_after = deployed["weight_bytes_by_module"][f"encoders.{modality}"]
        act_before = encoder_activation_bytes(source, modality, source_specs[modality], modalities)
        act_after = encoder_activation_bytes(twin, modality, specs[modality], modalities) // (4 if int8 else 1)
        accuracy_before = report["models"][tier]["accuracy"]
        accuracy_after = deployed["parity"]["accuracy"]
        row = {
            "tier": tier,
            "modality": modality,
            "recipe": str(recipe.relative_to(REPO) if recipe.is_relative_to(REPO) else recipe),
            "format": deployed["format"],
            "why": manifest["reason"],
            "encoder_bytes_fp32": bytes_before,
            "encoder_bytes_deployed": bytes_after,
            "weights_ratio": bytes_before / bytes_after,
            "input_values_before": int(torch.tensor(modalities[modality].feature_shape(source_specs[modality])).prod()),
            "input_values_after": int(torch.tensor(modalities[modality].feature_shape(specs[modality])).prod()),
            "activation_bytes_before": act_before,
            "activation_bytes_after": act_after,
            "path_ratio": (bytes_before + act_before) / (bytes_after + act_after),
            "encoder_bytes_fp32_folded": bytes_folded,
            "weights_ratio_vs_folded": bytes_folded / bytes_after,
            "path_ratio_vs_folded": (bytes_folded + act_before) / (bytes_after + act_after),
            "accuracy_before": accuracy_before,
            "accuracy_after": accuracy_after,
            "accuracy_loss": accuracy_before - accuracy_after,
            "int8_agreement_with_fp32": manifest["candidates"]["int8"]["parity"]["argmax_agreement"] if "int8" in manifest["candidates"] else None,
            "steps": [{"step": s["step"], "params": s["after"]["params"], "val_accuracy": s["after"]["val_accuracy"]} for s in manifest["steps"]],
        }
        row["input_ratio"] = row["input_values_before"] / row["input_values_after"]
        ratio = row["weights_ratio"] if name == "visual" else row["path_ratio"]
        row["target"] = f"{name}: ratio >= {ratio_goal:g}x with <= {loss_goal * 100:g} point(s) accuracy loss"
        # Accuracies are shares of the test split's samples: a loss of exactly the goal (100 of
        # 10,000 samples) reads 0.010000000000000009 in floats, and is within it.
        row["reached"] = ratio >= ratio_goal and row["accuracy_loss"] <= loss_goal + 1e-9
        rows.append(row)
    return rows


def device_fit(run_dir: Path, tiers: list[str]) -> dict[str, Any]:
    """Every deployed tier artifact profiled on every device; the fit targets judged."""
    fitted = latency_model()
    matrix: dict[str, dict[str, Any]] = {}
    for tier in tiers:
        manifest_path = run_dir / "compressed" / tier / "compression.json"
        if not manifest_path.exists():
            continue
        artifact = run_dir / "compressed" / tier / json.loads(manifest_path.read_text())["artifact"]
        matrix[tier] = {d: profile_model(artifact, load_device(d), fitted, measure_here=(d == "raspberry-pi-4")) for d in device_names()}
    targets = []
    for tier, (device, latency) in FIT_TARGETS.items():
        if tier not in matrix:
            targets.append({"target": f"{tier} fits {device}", "reached": False, "note": "no compressed artifact"})
            continue
        p = matrix[tier][device]
        ok = (
            p["rom_bytes"] <= load_device(device).rom_bytes
            and p["ram_bytes"] <= load_device(device).ram_bytes
            and (latency is None or p["estimated_latency_ms"] <= latency)
        )
        what = f"{tier} fits {device} (ROM and RAM{f', estimated latency <= {latency:g} ms' if latency else ''})"
        targets.append(
            {
                "target": what,
                "reached": ok,
                "rom_bytes": p["rom_bytes"],
                "ram_bytes": p["ram_bytes"],
                "estimated_latency_ms": p["estimated_latency_ms"],
                "reason": p["reason"],
            }
        )
    return {
        "latency_model": {k: v for k, v in fitted.__dict__.items() if k != "peaks"} | {"peaks": fitted.peaks.__dict__},
        "profiles": matrix,
        "targets": targets,
    }


def p50(row: dict[str, Any], kind: str) -> str:
    """A candidate's p50 in ms for the table, or a dash where the recipe made no such file."""
    return f"{row[kind + '_p50']:.4f}" if kind + "_p50" in row else "–"


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Compression benchmark",
        "",
        f"Commit `{result['commit']}`, {result['machine']['cpu']} ({result['machine']['cores']} cores), run `{result['run']}` ({result['protocol']} protocol). Every figure below is read from the run's files.",
        "",
    ]
    lines += [
        "## Compressed tiers (the run's default recipe)",
        "",
        "| tier | format | deployable | ratio | accuracy | student | fp32 p50 (ms) | int8 p50 (ms) | int8-weights p50 (ms) | int4-weights p50 (ms) | why |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["tiers"]:
        lines.append(
            f"| {row['tier']} | {row['format']} | {row['bytes_deployable']:,} B | {row['compression_ratio']:.1f}x | {row['accuracy']:.4f} | {row['student_accuracy']:.4f} | {row['fp32_p50']:.4f} | {p50(row, 'int8')} | {p50(row, 'int8-weights')} | {p50(row, 'int4-weights')} | {row['reason']} |"
        )
    for tier, why in result["tiers_not_compressed"].items():
        lines.append(f"| {tier} | not produced: {why} |" + " |" * 9)
    for name in ("visual", "audio"):
        lines += [
            "",
            f"## {name.capitalize()} path ({result[name][0]['recipe'] if result[name] else EXPERIMENTS[name][1].name})",
            "",
            "Ratios against the uncompressed student's fp32 encoder (the issue's measure: parameters and BatchNorm statistics), and, stricter, against its fp32 export, where BatchNorm folds into the convolutions at no cost.",
            "",
        ]
        lines += [
            "| tier | encoder fp32 (folded) | deployed (format) | weights ratio (vs folded) | input values | activations | path ratio (vs folded) | accuracy | loss | target |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result[name]:
            lines.append(
                f"| {r['tier']} | {r['encoder_bytes_fp32']:,} B ({r['encoder_bytes_fp32_folded']:,} B) | {r['encoder_bytes_deployed']:,} B ({r['format']}) | {r['weights_ratio']:.1f}x ({r['weights_ratio_vs_folded']:.1f}x) | {r['input_values_before']} -> {r['input_values_after']} | {r['activation_bytes_before']:,} -> {r['activation_bytes_after']:,} B | {r['path_ratio']:.1f}x ({r['path_ratio_vs_folded']:.1f}x) | {r['accuracy_before']:.4f} -> {r['accuracy_after']:.4f} | {r['accuracy_loss'] * 100:+.2f} pt | {'reached' if r['reached'] else '**not reached**'} |"
            )
    fit = result["device_fit"]
    devices = sorted(next(iter(fit["profiles"].values())).keys()) if fit["profiles"] else []
    lines += [
        "",
        "Deployed: the artifact the recipe chose, int8 (`onnx-mixed`: its most sensitive layers in fp32; `onnx-int8-weights` / `onnx-int4-weights`: int8 / int4 weights, float arithmetic) only where it passed its parity bound:",
    ]
    lines += [f"- {name} {r['tier']}: {r['why']}" for name in ("visual", "audio") for r in result[name]]
    lines += ["", "## Device fit (racmkd profile; latency and energy estimated)", "", "| tier | " + " | ".join(devices) + " |", "|---|" + "---|" * len(devices)]
    for tier, per in fit["profiles"].items():
        cells = [
            f"{'fits' if p['fits'] else '**no**'}: {p['estimated_latency_ms']:.3f} ms, RAM {p['ram_bytes'] / 1024:,.0f} KB" for _, p in sorted(per.items())
        ]
        lines.append(f"| {tier} | " + " | ".join(cells) + " |")
    lm = fit["latency_model"]
    lines += [
        "",
        "RAM: the model's peak activations (and its weights where the device loads them into RAM) plus the device profile's runtime overhead (`runtime_overhead_bytes`: a GPU node's CUDA context, 1 GB, is most of its figure).",
        "",
        f"Latency model fitted here ({lm['points']} synthetic graphs): t_op {lm['seconds_per_op'] * 1e6:.2f} us, eta_f {lm['flops_efficiency']:.2f}, eta_b {'none (traffic cost no time in the fit)' if lm['bandwidth_efficiency'] is None else format(lm['bandwidth_efficiency'], '.2f')}, median relative error {lm['fit_relative_error']:.1%}.",
    ]
    lines += ["", *targets_table(result["targets"])]
    lines += ["", "![compression](compression.png)", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """One panel per experiment: each tier's ratio (the one its target judges), its accuracy loss
    written on the bar, green where both the ratio and the loss meet the target."""
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, name in zip(axes, ("visual", "audio")):
        _, _, goal, max_loss = EXPERIMENTS[name]
        rows = result[name]
        key, what = ("weights_ratio", "encoder weights") if name == "visual" else ("path_ratio", "path (weights, input, activations)")
        ax.bar([r["tier"] for r in rows], [r[key] for r in rows], color=["tab:green" if r["reached"] else "tab:orange" for r in rows])
        for i, r in enumerate(rows):
            ax.annotate(f"{r['accuracy_loss'] * 100:+.2f} pt", (i, r[key]), ha="center", va="bottom", fontsize=8)
        target = ax.axhline(goal, color="black", linestyle="--", linewidth=1, label=f"target {goal:g}x")
        reached = Patch(color="tab:green", label=f"reached: >= {goal:g}x with <= {max_loss * 100:g} pt loss")
        missed = Patch(color="tab:orange", label="not reached (ratio or loss)")
        ax.set_title(f"{name} {what}: compression ratio\n(on each bar: accuracy loss, points)", fontsize=10)
        ax.set_ylabel(f"{key.replace('_', ' ')} (fp32 unpruned / deployed)")
        ax.legend(handles=[target, reached, missed], fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


@reports_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--run", type=Path, default=None, help="an existing run with compressed tiers (default: make runs/bench-compression)")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--quick", action="store_true", help="the smoke config: minutes, figures meaningless")
    args = parser.parse_args()
    refuse_with_quick(parser, args, ("config",))
    check_out(parser, args.out)
    if args.quick:
        args.config, args.runs_dir = REPO / "configs" / "smoke.yaml", args.runs_dir / "quick"
        for name, (modality, recipe, ratio_goal, loss_goal) in EXPERIMENTS.items():
            EXPERIMENTS[name] = (modality, quick_recipe(recipe, args.runs_dir / "recipes"), ratio_goal, loss_goal)
    run_dir = ensure_run(args.config, args.run, args.runs_dir).resolve()
    report = json.loads((run_dir / "report.json").read_text())
    tiers = [t for t in TIERS if t in report["models"]]
    rows = []
    not_compressed = {}  # tier -> why it has no row: said in the table and judged as a target, never dropped
    for tier in tiers:
        entry = report["models"].get(f"{tier}_compressed")
        if entry is None:
            not_compressed[tier] = "no compressed row in report.json"
            continue
        manifest = json.loads((run_dir / "compressed" / tier / "compression.json").read_text())
        c = manifest["candidates"]
        rows.append(
            {
                "tier": tier,
                "format": entry["format"],
                "bytes_deployable": entry["bytes_deployable"],
                "compression_ratio": entry["compression_ratio"],
                "accuracy": entry["accuracy"],
                "student_accuracy": report["models"][tier]["accuracy"],
                "fp32_p50": c["fp32"]["latency_ms"]["p50"],
                **{f"{k}_p50": c[k]["latency_ms"]["p50"] for k in ("int8", "int8-weights", "int4-weights") if k in c},
                "reason": entry["artifact_reason"],
            }
        )
    result: dict[str, Any] = {
        "commit": git_commit(),
        "machine": machine(),
        "run": run_dir.name,
        "protocol": report["protocol"],
        "tiers": rows,
        "tiers_not_compressed": not_compressed,
    }
    for name in EXPERIMENTS:
        result[name] = modality_experiment(run_dir, name, tiers)
    result["device_fit"] = device_fit(run_dir, tiers)
    targets = []
    for name in EXPERIMENTS:
        for r in result[name]:
            key = "weights_ratio" if name == "visual" else "path_ratio"
            targets.append({"target": f"{r['tier']}: {r['target']}", "measured": f"{r[key]:.1f}x, {r['accuracy_loss'] * 100:+.2f} pt", "reached": r["reached"]})
        if not result[name]:  # (no tier reads the modality: the target went from the table in silence)
            modality, _, ratio_goal, loss_goal = EXPERIMENTS[name]
            targets.append(
                {
                    "target": f"{name}: ratio >= {ratio_goal:g}x with <= {loss_goal * 100:g} point(s) accuracy loss",
                    "measured": f"not measured: no tier of the run reads {modality}",
                    "reached": False,
                }
            )
    for t in result["device_fit"]["targets"]:
        measured = (
            t["note"]
            if "note" in t
            else f"ROM {t['rom_bytes']:,} B, RAM {t['ram_bytes']:,} B" + (f", {t['estimated_latency_ms']:.3f} ms" if "estimated_latency_ms" in t else "")
        )
        targets.append({"target": t["target"], "measured": measured, "reached": t["reached"]})
    for row in rows:
        targets.append(
            {"target": f"{row['tier']}: a compressed row in report.json", "measured": f"{row['format']}, {row['compression_ratio']:.1f}x", "reached": True}
        )
    for tier, why in not_compressed.items():
        targets.append({"target": f"{tier}: a compressed row in report.json", "measured": why, "reached": False})
    result["targets"] = targets
    stem = "compression-quick" if args.quick else "compression"
    write_results(args.out, stem, result, render(result).replace("compression.png", f"{stem}.png"), lambda path: plot(result, path))


if __name__ == "__main__":
    main()
