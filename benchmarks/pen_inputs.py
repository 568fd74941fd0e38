"""The pen modality's input-side compression, measured: does statistical aggregation (each window's
mean and standard deviation) keep more of a trajectory than plain downsampling (each window's mean)
at the same number of input values?

    python benchmarks/pen_inputs.py                 # 3 seeds, 30 epochs
    python benchmarks/pen_inputs.py --quick         # 1 seed, 1 epoch, 1,000 samples: figures meaningless

One run per seed on the pen digits alone (clean protocol; the pen teacher distils into each
student), with one tier per reduction of the 32-point trajectory: (windows, statistics) = (32, 1),
(16, 1), (8, 2), (8, 1), (4, 2), (4, 1), (2, 2), (2, 1); every tier the same settings (pen only,
depth 2, the widest width within 64 KB). An input of fewer windows gets fewer stages (an encoder
halves a sequence down to 4 steps; statistics x 4 windows is a map it does not halve), so each
row lists its parameters and FLOPs beside its accuracy: at equal input values the aggregated
student may be the larger or the smaller network. Accuracy is on the official test split: 3,498
digits of 14 writers no training digit comes from. Writes
benchmarks/results/pen_inputs.{json,md,png}; every figure is read from the runs' report.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from racmkd.config import load_config  # noqa: E402
from racmkd.data.signals import PEN_CHANNELS  # noqa: E402
from racmkd.eval.plots import save_figure  # noqa: E402
from racmkd.eval.report import git_commit, machine  # noqa: E402
from racmkd.pipeline import run_pipeline  # noqa: E402
from results_io import write_results  # noqa: E402

REDUCTIONS = [(32, 1), (16, 1), (8, 2), (8, 1), (4, 2), (4, 1), (2, 2), (2, 1)]  # (windows, statistics)


def tier_name(windows: int, stats: int) -> str:
    return f"w{windows}-{'mean-std' if stats == 2 else 'mean'}"


def overrides(seed: int, epochs: int, quick: bool) -> list[str]:
    tiers = ", ".join(
        f"{{name: {tier_name(w, s)}, budget_bytes: 65536, modalities: [pen], scale: {i}, depth: 2, epochs: {epochs}}}" for i, (w, s) in enumerate(REDUCTIONS)
    )
    return [
        f"seed={seed}",
        f"name=pen-inputs-s{seed}",
        "data.protocol=clean",
        "data.modalities=[pen]",
        f"data.options.pen.levels={[list(r) for r in REDUCTIONS]}",
        f"students.tiers=[{tiers}]",
        "students.labels_only=false",
        "compress.tiers=[]",
        "compress.tier_recipes={}",
        "runtime.build_bank=false",
        f"teacher.unimodal={{epochs: {epochs}}}",  # (the pen teacher as long as a student: a few thousand digits make short epochs)
        "eval.latency_iters=20",
        "eval.latency_rounds=2",
        *(["data.max_train=1000", "data.max_eval=500", "teacher.unimodal={epochs: 1}", "teacher.fused={epochs: 1}"] if quick else []),
    ]


def measure(seeds: list[int], epochs: int, quick: bool, runs_dir: Path) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    runs = []
    for seed in seeds:
        cfg = load_config(None, [f"runs_dir={runs_dir}", *overrides(seed, epochs, quick)])  # (the defaults: default.yaml sets image and audio options)
        started = time.perf_counter()
        run_dir = run_pipeline(cfg)
        runs.append({"seed": seed, "run": str(run_dir), "seconds": round(time.perf_counter() - started, 1)})
        report = json.loads((run_dir / "report.json").read_text())
        models = report["models"]
        for windows, stats in REDUCTIONS:
            name = tier_name(windows, stats)
            m = models[name]
            row = rows.setdefault(
                name,
                {
                    "windows": windows,
                    "statistics": stats,
                    "input_values": PEN_CHANNELS * windows * stats,
                    "params": m["params"],
                    "flops": m["flops"],
                    "accuracy": [],
                },
            )
            row["accuracy"].append(m["accuracy"])
        runs[-1]["teacher_accuracy"] = models["teacher_pen"]["accuracy"]  # (one modality: no fused teacher)
    for row in rows.values():
        row["accuracy_mean"] = statistics.fmean(row["accuracy"])
        row["accuracy_std"] = statistics.stdev(row["accuracy"]) if len(row["accuracy"]) > 1 else None
    pairs = []  # aggregation against downsampling at the same input size: (w, 2) vs (2w, 1)
    for windows, stats in REDUCTIONS:
        twice = tier_name(windows * 2, 1)
        if stats == 2 and twice in rows:
            agg, down = rows[tier_name(windows, 2)], rows[twice]
            diffs = [a - b for a, b in zip(agg["accuracy"], down["accuracy"])]
            pairs.append(
                {
                    "input_values": agg["input_values"],
                    "aggregated": tier_name(windows, 2),
                    "downsampled": twice,
                    "difference": diffs,
                    "mean": statistics.fmean(diffs),
                }
            )
    return {
        "commit": git_commit(),
        "machine": machine(),
        "seeds": seeds,
        "epochs": epochs,
        "quick": quick,
        "runs": runs,
        "rows": list(rows.values()),
        "pairs": pairs,
    }


def spread(row: dict[str, Any]) -> str:
    return f"{row['accuracy_mean']:.4f}" + (f" ± {row['accuracy_std']:.4f}" if row["accuracy_std"] is not None else " (one seed)")


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Pen inputs: downsampling vs statistical aggregation",
        "",
        f"Commit {result['commit']}, {result['machine'].get('cpu', '')}; seeds {result['seeds']}, {result['epochs']} epochs per student"
        + (" (**quick: figures meaningless**)" if result["quick"] else "")
        + ". Pen-only students distilled from the pen teacher (test "
        + ", ".join(f"{r['teacher_accuracy']:.4f}" for r in result["runs"])
        + "), one per input reduction, the same settings (depth 2, widest within 64 KB; fewer windows, fewer stages); accuracy on the test split (digits of 14 writers no training digit comes from"
        + (", 500 of them" if result["quick"] else ", 3,498")
        + ").",
        "",
        "| input | values | params | FLOPs | test accuracy |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        kind = "mean and spread" if r["statistics"] == 2 else "mean"
        lines.append(f"| {r['windows']} windows, {kind} | {r['input_values']} | {r['params']:,} | {r['flops']:,} | {spread(r)} |")
    lines += ["", "Aggregation against downsampling at the same number of input values (per-seed differences; see the rows for each network's size):", ""]
    for p in result["pairs"]:
        diffs = ", ".join(f"{d:+.4f}" for d in p["difference"])
        lines.append(f"- {p['input_values']} values: {p['aggregated']} - {p['downsampled']} = {p['mean']:+.4f} ({diffs})")
    lines += ["", "![pen inputs](pen_inputs.png)", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for stats, style in ((1, "o-"), (2, "s--")):
        rows = [r for r in result["rows"] if r["statistics"] == stats]
        ax.errorbar(
            [r["input_values"] for r in rows],
            [r["accuracy_mean"] for r in rows],
            yerr=[r["accuracy_std"] or 0 for r in rows],
            fmt=style,
            capsize=3,
            label="mean per window (downsampling)" if stats == 1 else "mean and std per window (aggregation)",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("input values per trajectory")
    ax.set_ylabel("test accuracy (unseen writers)")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "bench")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--quick", action="store_true", help="one seed, one epoch, 1,000 samples: minutes, figures meaningless")
    args = parser.parse_args()
    seeds, epochs = ([args.seeds[0]], 1) if args.quick else (args.seeds, args.epochs)
    result = measure(seeds, epochs, args.quick, args.runs_dir)
    write_results(args.out, "pen_inputs", result, render(result), lambda path: plot(result, path))


if __name__ == "__main__":
    main()
