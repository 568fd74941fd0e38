"""A sensor's input-side compression, measured: at the same number of input values, does a
reduction that keeps what a window or a step holds beat plain downsampling (average pooling in time)?

    python benchmarks/sensor_inputs.py --sensor pen     # statistical aggregation: 3 seeds, 30 epochs
    python benchmarks/sensor_inputs.py --sensor imu     # PCA of the IMU's 6 axes (examples/imu_plugin)
    python benchmarks/sensor_inputs.py --quick          # 1 seed, 1 epoch, 1,000 samples: figures meaningless

- pen (the UCI pen digits, built in): levels (windows, statistics) of the 32-point trajectory, 1 the
  window's mean, 2 its mean and standard deviation; (w, 2) is compared with (2w, 1). Accuracy on the
  official test split, 3,498 digits of 14 writers no training digit comes from.
- imu (the example plugin's pen IMU, one writer): levels (steps, components) of the 6-axis trace of
  32 steps, components below 6 a projection onto the training traces' principal axes; (s, 3) is
  compared with (s/2, 6). Accuracy on its 206 test recordings (every fifth; the writer is the same).

One run per seed on the sensor alone (clean protocol; its teacher distils into each student), with
one tier per reduction, every tier the same settings (the sensor only, depth 2, the widest width
within 64 KB); runs/bench/<sensor>-inputs-s<seed> is reused when its report exists and its
config.yaml holds these settings, else run again. An input of fewer steps gets fewer stages (an
encoder halves a sequence down to 4 steps), so each row lists its parameters and FLOPs beside its
accuracy: at equal input values the two students may differ in size. Writes
benchmarks/results/<sensor>_inputs.{json,md,png}; every figure is read from the runs' report.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from racmkd.config import RunConfig, config_differences, load_config  # noqa: E402
from racmkd.utils import save_figure  # noqa: E402
from racmkd.data.paths import git_commit  # noqa: E402
from racmkd.measure.timing import machine  # noqa: E402
from racmkd.pipeline import run_pipeline  # noqa: E402
from results_io import check_out, refuse_with_quick, reports_errors, write_results  # noqa: E402


@dataclass(frozen=True)
class Sensor:
    """One sensor's experiment: its levels (steps, second knob), what the second knob means, and the
    level at full rate that a reduced one is compared with at the same input values."""

    name: str
    channels: int  # channels of the trace at full rate
    reductions: tuple[tuple[int, int], ...]  # (steps, knob) per tier
    full: int  # the knob's value that means "no reduction" (pen: 1 statistic, imu: 6 axes)
    knob: str  # what the second number is, for the table
    reduced_label: str  # the plot's legend for the reduced rows
    test_split: str  # what the test split is, for the table's caption

    def tier(self, steps: int, knob: int) -> str:
        return f"s{steps}-k{knob}"

    def values(self, steps: int, knob: int) -> int:
        """Input values of a level: the full rate's channels scaled by the knob against its full value
        (pen's statistics multiply its 3 channels, full 1; imu's components replace its 6, full 6)."""
        return steps * self.channels * knob // self.full

    def partner(self, steps: int, knob: int) -> tuple[int, int] | None:
        """The full-rate level with as many input values as a reduced one (None for a full-rate level)."""
        if knob == self.full:
            return None
        values = self.values(steps, knob)
        return next(((s, k) for s, k in self.reductions if k == self.full and self.values(s, k) == values), None)


SENSORS = {
    "pen": Sensor(
        "pen",
        3,
        ((32, 1), (16, 1), (8, 2), (8, 1), (4, 2), (4, 1), (2, 2), (2, 1)),
        1,
        "statistics per window",
        "mean and std per window (aggregation)",
        "digits of 14 writers no training digit comes from",
    ),
    "imu": Sensor(
        "imu",
        6,
        ((32, 6), (16, 6), (32, 3), (8, 6), (16, 3), (4, 6), (8, 3), (16, 2)),
        6,
        "principal components",
        "3 or 2 principal components (PCA)",
        "recordings of the same writer, every fifth",
    ),
}


def register_plugin(sensor: Sensor) -> None:
    """The imu modality lives in examples/imu_plugin: register it here as its entry points would."""
    if sensor.name != "imu":
        return
    sys.path.insert(0, str(REPO / "examples" / "imu_plugin"))
    from racmkd.registry import MODALITIES, SIGNALS
    from racmkd_imu import modality, signal

    if "imu" not in SIGNALS:
        signal.register()
    if "imu" not in MODALITIES:
        modality.register()


def overrides(sensor: Sensor, seed: int, epochs: int, quick: bool) -> list[str]:
    tiers = ", ".join(
        f"{{name: {sensor.tier(*r)}, budget_bytes: 65536, modalities: [{sensor.name}], scale: {i}, depth: 2, epochs: {epochs}}}"
        for i, r in enumerate(sensor.reductions)
    )
    return [
        f"seed={seed}",
        f"name={sensor.name}-inputs-s{seed}",
        "data.protocol=clean",
        f"data.modalities=[{sensor.name}]",
        f"data.options={{{sensor.name}: {{levels: {[list(r) for r in sensor.reductions]}}}}}",
        f"students.tiers=[{tiers}]",
        "students.labels_only=false",
        "compress.tiers=[]",
        "compress.tier_recipes={}",
        "runtime.build_bank=false",
        f"teacher.unimodal={{epochs: {epochs}}}",  # (the teacher as long as a student: a few thousand items make short epochs)
        "eval.latency_iters=20",
        "eval.latency_rounds=2",
        *(["data.max_train=1000", "data.max_eval=500", "teacher.unimodal={epochs: 1}", "teacher.fused={epochs: 1}"] if quick else []),
    ]


def seed_run(cfg: RunConfig) -> tuple[Path, float | None]:
    """One seed's run folder (runs_dir/name) with its report, and the seconds it took here (None:
    reused). The names are fixed, and `create_run` refuses a name that exists, so a second
    invocation failed at once: a run whose report exists and whose config.yaml holds these
    settings is reused; one cut short or made with other settings is deleted and run again."""
    run_dir = Path(cfg.runs_dir) / cfg.name
    if (run_dir / "report.json").is_file():
        differ = config_differences(load_config(run_dir / "config.yaml"), cfg)
        if not differ:
            print(f"{run_dir}: reusing its report (made with these settings)", flush=True)
            return run_dir, None
        print(f"{run_dir}: made with other settings ({', '.join(differ)}); deleting it and running it again", flush=True)
    elif run_dir.exists():
        print(f"{run_dir}: no report.json (an attempt cut short); deleting it and running it again", flush=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.perf_counter()
    run_pipeline(cfg)
    return run_dir, round(time.perf_counter() - started, 1)


def measure(sensor: Sensor, seeds: list[int], epochs: int, quick: bool, runs_dir: Path) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    runs = []
    for seed in seeds:
        cfg = load_config(None, [f"runs_dir={runs_dir}", *overrides(sensor, seed, epochs, quick)])  # (the defaults: default.yaml sets image and audio options)
        run_dir, seconds = seed_run(cfg)
        runs.append({"seed": seed, "run": str(run_dir), "seconds": seconds})
        report = json.loads((run_dir / "report.json").read_text())
        runs[-1]["commit"] = report.get("commit")  # (a reused run's: the code that measured it)
        models = report["models"]
        for steps, knob in sensor.reductions:
            m = models[sensor.tier(steps, knob)]
            row = rows.setdefault(
                sensor.tier(steps, knob),
                {"steps": steps, "knob": knob, "input_values": sensor.values(steps, knob), "params": m["params"], "flops": m["flops"], "accuracy": []},
            )
            row["accuracy"].append(m["accuracy"])
        runs[-1]["teacher_accuracy"] = models[f"teacher_{sensor.name}"]["accuracy"]  # (one modality: no fused teacher)
        runs[-1]["test_samples"] = report["data"].get("samples", {}).get("test")
    for row in rows.values():
        row["accuracy_mean"] = statistics.fmean(row["accuracy"])
        row["accuracy_std"] = statistics.stdev(row["accuracy"]) if len(row["accuracy"]) > 1 else None
    pairs = []  # the reduction against downsampling at the same input size
    for steps, knob in sensor.reductions:
        partner = sensor.partner(steps, knob)
        if partner is not None:
            reduced, down = rows[sensor.tier(steps, knob)], rows[sensor.tier(*partner)]
            diffs = [a - b for a, b in zip(reduced["accuracy"], down["accuracy"])]
            pairs.append(
                {
                    "input_values": reduced["input_values"],
                    "reduced": sensor.tier(steps, knob),
                    "downsampled": sensor.tier(*partner),
                    "difference": diffs,
                    "mean": statistics.fmean(diffs),
                }
            )
    return {
        "sensor": sensor.name,
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


def render(sensor: Sensor, result: dict[str, Any]) -> str:
    lines = [
        f"# {sensor.name} inputs: downsampling vs {sensor.reduced_label}",
        "",
        f"Commit {result['commit']}, {result['machine'].get('cpu', '')}; seeds {result['seeds']}, {result['epochs']} epochs per student"
        + (" (**quick: figures meaningless**)" if result["quick"] else "")
        + f". {sensor.name}-only students distilled from the {sensor.name} teacher (test "
        + ", ".join(f"{r['teacher_accuracy']:.4f}" for r in result["runs"])
        + f"), one per input reduction, the same settings (depth 2, widest within 64 KB; fewer steps, fewer stages); accuracy on the test split ({sensor.test_split}"
        + "".join(f", {r['test_samples']:,} of them" for r in result["runs"][:1] if r.get("test_samples"))
        + ")."
        + (
            ""
            if all(r.get("commit", result["commit"]) == result["commit"] for r in result["runs"])
            else " **Not every run was measured at this commit** (a run whose report exists is reused): "
            + ", ".join(f"seed {r['seed']} at `{r.get('commit')}`" for r in result["runs"])
            + "."
        ),
        "",
        f"| steps | {sensor.knob} | values | params | FLOPs | test accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['steps']} | {r['knob']} | {r['input_values']} | {r['params']:,} | {r['flops']:,} | {spread(r)} |")
    lines += ["", "The reduction against downsampling at the same number of input values (per-seed differences; see the rows for each network's size):", ""]
    for p in result["pairs"]:
        diffs = ", ".join(f"{d:+.4f}" for d in p["difference"])
        lines.append(f"- {p['input_values']} values: {p['reduced']} - {p['downsampled']} = {p['mean']:+.4f} ({diffs})")
    lines += ["", f"![{sensor.name} inputs]({sensor.name}_inputs.png)", ""]
    return "\n".join(lines)


def plot_lines(sensor: Sensor, rows: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The plot's lines, (legend, rows sorted by input values): downsampling, then one line per
    value of the reducing knob. One line for every reduced row joined the IMU's 3 and 2 components
    in list order (96, 48, 24, then 32 values), a zigzag between two different reductions."""
    lines = [("average pooling in time (downsampling)", [r for r in rows if r["knob"] == sensor.full])]
    knobs = sorted({r["knob"] for r in rows if r["knob"] != sensor.full}, reverse=True)
    for knob in knobs:
        label = sensor.reduced_label if len(knobs) == 1 else f"{knob} {sensor.knob}"
        lines.append((label, [r for r in rows if r["knob"] == knob]))
    return [(label, sorted(line, key=lambda r: r["input_values"])) for label, line in lines if line]


def plot(sensor: Sensor, result: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, rows) in enumerate(plot_lines(sensor, result["rows"])):
        ax.errorbar(
            [r["input_values"] for r in rows],
            [r["accuracy_mean"] for r in rows],
            yerr=[r["accuracy_std"] or 0 for r in rows],
            fmt="o-" if i == 0 else ("s--", "^:", "d-.")[(i - 1) % 3],
            capsize=3,
            label=label,
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"input values per {sensor.name} item")
    ax.set_ylabel("test accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()  # (the x label was cut off)
    save_figure(fig, path)


@reports_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sensor", choices=sorted(SENSORS), default="pen")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "bench")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--quick", action="store_true", help="one seed, one epoch, 1,000 samples: minutes, figures meaningless")
    args = parser.parse_args()
    refuse_with_quick(parser, args, ("epochs",))
    check_out(parser, args.out)
    sensor = SENSORS[args.sensor]
    register_plugin(sensor)
    seeds, epochs = ([args.seeds[0]], 1) if args.quick else (args.seeds, args.epochs)
    if args.quick:  # its own runs and files, as the other benchmarks' --quick: the full results stay
        args.runs_dir = args.runs_dir / "quick"
    result = measure(sensor, seeds, epochs, args.quick, args.runs_dir)
    stem = f"{sensor.name}_inputs" + ("-quick" if args.quick else "")
    write_results(args.out, stem, result, render(sensor, result).replace(f"{sensor.name}_inputs.png", f"{stem}.png"), lambda path: plot(sensor, result, path))


if __name__ == "__main__":
    main()
