"""Benchmark of the foundation issue's targets: the whole pipeline over several seeds.

    python benchmarks/foundation.py                 # avmnist, seeds 0 1 2, then a clean run
    python benchmarks/foundation.py --quick         # the smoke config: minutes, for trying it out

Each seed is a full `racmkd run` (runs/bench-<protocol>-s<seed>/, reused when its report exists and
its config.yaml holds the settings asked for; one made with others is refused, not retrained).
The script writes benchmarks/results/foundation.json and foundation.md (accuracy mean +- std over
seeds, retention, distillation gain against label-only training and the seed-to-seed spread, the
targets reached or not, and the commit each run was measured at: a reused report keeps its own) and
foundation.png. No figure is typed in: everything is read from the runs' report.json files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results_io import check_out, refuse_with_quick, reports_errors, targets_table, write_results  # noqa: E402

from racmkd.config import config_differences, load_config  # noqa: E402
from racmkd.utils import save_figure  # noqa: E402
from racmkd.data.paths import git_commit  # noqa: E402
from racmkd.eval.report import RETENTION_TARGETS, TEACHER_TARGETS  # noqa: E402
from racmkd.measure.timing import machine  # noqa: E402
from racmkd.eval.suite import SEED_PAPER, mean_pm, mean_std, seed_spread  # noqa: E402
from racmkd.pipeline import run_pipeline  # noqa: E402

TIERS = ["high", "medium", "low", "critical"]


def run_seed(config: Path, protocol: str, seed: int, runs_dir: Path, overrides: list[str]) -> dict:
    """The report of one seed's run, running it when it is not there yet. A saved run is reused only
    when it was made with the settings this call asks for: before, one made with other --config or
    --set values was read while the result claimed the new settings. The report keeps the commit
    that measured it, which foundation.md shows beside the figures."""
    name = f"bench-{protocol}-s{seed}"
    report = runs_dir / name / "report.json"
    # Compression has its own benchmark (benchmarks/compression.py); these runs stop at the report.
    cfg = load_config(config, [f"name={name}", f"runs_dir={runs_dir}", f"seed={seed}", f"data.protocol={protocol}", "compress.tiers=[]", *overrides])
    if report.exists():
        # (compression settings aside: they act after the models this benchmark reads, so a run made
        # with them, such as `make run`'s copied here, holds the same teacher and students)
        differ = config_differences(load_config(runs_dir / name / "config.yaml"), cfg, ignore=("name", "runs_dir", "compress"))
        if differ:  # refused, not retrained: the run may be hours of work
            raise SystemExit(
                f"{runs_dir / name}: made with other settings than {config} and --set now give ({', '.join(differ)}). Remove that folder to run it again with these settings, or choose another --runs-dir."
            )
    else:
        shutil.rmtree(runs_dir / name, ignore_errors=True)  # an attempt that never reached its report: start over
        started = time.perf_counter()
        run_pipeline(cfg)
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads(report.read_text())


def summarise(reports: list[dict]) -> dict:
    """Per model: accuracy over seeds; per tier: retention and distillation gain against the spread.
    Only models every seed's report measured are summarised (a seed run by `make run` also has the
    compressed rows, which have their own benchmark); the teacher, tiers and label-only twins that
    some report lacks are listed in `missing` by run, so that their targets say so rather than
    vanish from the table (a seed without the critical tier dropped its target unsaid)."""
    runs = [r.get("run", f"report {i}") for i, r in enumerate(reports)]
    names = [name for name in reports[0]["models"] if all(name in r["models"] for r in reports)]
    wanted = ["teacher", *TIERS, *(f"{tier}_labels_only" for tier in TIERS)]
    missing = {name: [run for run, r in zip(runs, reports) if name not in r["models"]] for name in wanted if name not in names}
    models = {}
    for name in names:
        entries = [r["models"][name] for r in reports]
        models[name] = {
            "accuracy": mean_std([e["accuracy"] for e in entries]),
            "f1_macro": mean_std([e["f1_macro"] for e in entries]),
            # sizes: the first seed's, and every seed's where they differ (each seed selects its own designs)
            "param_bytes_fp32": entries[0]["param_bytes_fp32"],
            "memory_bytes": entries[0]["bytes_fp32"] + entries[0]["peak_activation_bytes"],
            **_seed_sizes(
                {"param_bytes_fp32": [e["param_bytes_fp32"] for e in entries], "memory_bytes": [e["bytes_fp32"] + e["peak_activation_bytes"] for e in entries]}
            ),
            "flops": entries[0]["flops"],
            "latency_ms_p50": statistics.median(e["latency_ms_p50"] for e in entries),
            "modalities": entries[0]["modalities"],
            "inputs": entries[0]["inputs"],
        }
        if all("retention" in e for e in entries):  # (a report without a teacher has none)
            models[name]["retention"] = mean_std([e["retention"] for e in entries])
    tiers = {}
    for tier in TIERS:
        if tier not in models:
            continue
        # Both over the seeds that have both rows: a gain from distilled seeds without a labels-only
        # twin would compare different seeds.
        paired = [r for r in reports if f"{tier}_labels_only" in r["models"]]
        distilled = [r["models"][tier]["accuracy"] for r in paired]
        baseline = [r["models"][f"{tier}_labels_only"]["accuracy"] for r in paired]
        gain = statistics.fmean(distilled) - statistics.fmean(baseline) if baseline else None
        spread = seed_spread(mean_std(distilled), mean_std(baseline)) if baseline else None
        # The budget is judged on every seed's student, not the first seed's alone.
        over = [run for run, r in zip(runs, reports) if r["models"][tier]["param_bytes_fp32"] > r["models"][tier]["budget_bytes"]]
        tiers[tier] = {
            "gain": gain,
            "spread": spread,
            "paired_seeds": len(paired),
            "budget_bytes": reports[0]["models"][tier]["budget_bytes"],
            "over_budget": over,
            "modalities": models[tier]["modalities"],
        }
    return {"models": models, "tiers": tiers, "missing": missing, "runs": runs}


def _seed_sizes(sizes: dict[str, list[int]]) -> dict[str, list[int]]:
    """`<key>_seeds`: every seed's figure, for the sizes whose seeds differ (one design per seed)."""
    return {f"{key}_seeds": values for key, values in sizes.items() if len(set(values)) > 1}


def _absent(summary: dict, name: str) -> str:
    """Why a model has no summary row: the runs whose report lacks it."""
    runs = summary.get("missing", {}).get(name) or ["some seed's report"]
    return f"not measured: no {name} row in {', '.join(runs)}"


def teacher_accuracy(report: dict) -> float | None:
    """A report's fused teacher accuracy; None when it has no teacher row."""
    return report["models"].get("teacher", {}).get("accuracy")


def targets(summary: dict, protocol: str, clean_teacher: float | None, clean_run: str | None = None) -> list[dict]:
    """The foundation issue's targets: every one gets a row (a teacher, tier or labels-only twin that
    a report lacks is not reached, with the reason, as racmkd.eval.suite.table_targets does).
    `clean_run`: the clean run measured (its teacher may be missing); None with --no-clean."""
    rows = []
    goal = TEACHER_TARGETS[protocol]
    if "teacher" in summary["models"]:
        teacher = summary["models"]["teacher"]["accuracy"]["mean"]
        rows.append({"target": f"{protocol} teacher accuracy >= {goal:.1%}", "measured": teacher, "reached": teacher >= goal})
    else:
        rows.append({"target": f"{protocol} teacher accuracy >= {goal:.1%}", "measured": _absent(summary, "teacher"), "reached": False})
    if clean_teacher is not None or clean_run is not None:
        rows.append(
            {
                "target": f"clean teacher accuracy >= {TEACHER_TARGETS['clean']:.1%}",
                "measured": clean_teacher if clean_teacher is not None else f"not measured: no teacher in {clean_run}",
                "reached": clean_teacher is not None and clean_teacher >= TEACHER_TARGETS["clean"],
            }
        )
    for tier, goal in RETENTION_TARGETS.items():
        gain_target = f"{tier}: distillation beats labels only by more than the seed spread"
        if tier not in summary["tiers"]:
            rows.append({"target": f"{tier}: retention >= {goal:.0%} within its budget", "measured": _absent(summary, tier), "reached": False})
            rows.append({"target": gain_target, "measured": _absent(summary, tier), "reached": False})
            continue
        m, t = summary["models"][tier], summary["tiers"][tier]
        target = f"{tier}: retention >= {goal:.0%} within {t['budget_bytes'] // 1024} KB"
        if "retention" not in m:
            rows.append({"target": target, "measured": "not measured: no retention (a report without a teacher accuracy to divide by)", "reached": False})
        else:
            retention = m["retention"]["mean"]
            over = t.get("over_budget", [])
            measured = f"{retention:.4f}; over its budget in {', '.join(over)}" if over else retention
            rows.append({"target": target, "measured": measured, "reached": retention >= goal and not over})
        if t["gain"] is None:  # (students.labels_only off in the runs' config)
            rows.append({"target": gain_target, "measured": _absent(summary, f"{tier}_labels_only"), "reached": False})
            continue
        seeds = len(summary.get("runs", [])) or t["paired_seeds"]
        if t["paired_seeds"] < seeds:  # the gain compares the seeds that have both rows
            gain_target += f" (over the {t['paired_seeds']} of {seeds} seeds with a labels-only twin)"
        if t["spread"] is None:  # one seed: no spread to beat
            rows.append({"target": gain_target, "measured": t["gain"], "reached": "undecided: one seed has no spread (run --seeds with two or more)"})
        else:
            rows.append({"target": f"{gain_target} (spread {t['spread']:.4f})", "measured": t["gain"], "reached": t["gain"] > t["spread"]})
    return rows


def _sizes(m: dict, key: str, scale: float, unit: str, digits: int) -> str:
    """A size cell: the first seed's, and every seed's where they differ."""
    text = f"{m[key] / scale:.{digits}f} {unit}"
    seeds = m.get(f"{key}_seeds")
    return text + (f" (seeds: {', '.join(f'{v / scale:.{digits}f}' for v in seeds)})" if seeds else "")


def _measured_at(result: dict) -> str:
    """Which commit measured each run's figures: a reused report keeps its own commit, which may not
    be the one this file was assembled at."""
    runs = result.get("measured_at", [])
    if not runs:
        return ""
    if all(r["commit"] == result["commit"] for r in runs):
        return " Every run was measured at this commit."
    return (
        " **Not every run was measured at this commit** (a run whose report exists is reused): "
        + ", ".join(f"{r['label']} measured at `{r['commit']}`" for r in runs)
        + "; each run's figures are its commit's code."
    )


def render(result: dict) -> str:
    s = result["avmnist"]
    lines = [
        "# Foundation benchmark",
        "",
        f"Commit `{result['commit']}`, {result['machine']['cpu']} ({result['machine']['cores']} cores). Protocol {result['protocol']}, seeds {result['seeds']}; every figure read from the runs' report.json files. Accuracy is mean ± std over seeds on the {result['test_samples']:,} test samples; sizes are the first seed's, each seed's in brackets where they differ."
        + _measured_at(result),
        "",
    ]
    lines += [
        "| model | inputs | accuracy | retention | fp32 params | memory (weights + peak act.) | FLOPs | latency p50 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in s["models"].items():
        ret = (f"{m['retention']['mean']:.2%}" + (f" ± {m['retention']['std']:.2%}" if m["retention"]["std"] is not None else "")) if "retention" in m else ""
        inputs = ", ".join(
            f"{k} {v.get('resolution', v.get('n_mels'))}" + (f"x{v['n_frames']}" if "n_frames" in v else f"x{v['resolution']}" if "resolution" in v else "")
            for k, v in m["inputs"].items()
        )
        lines.append(
            f"| {name} | {inputs} | {mean_pm(m['accuracy'])} | {ret} | {_sizes(m, 'param_bytes_fp32', 1024, 'KB', 1)} | {_sizes(m, 'memory_bytes', 1024, 'KB', 1)} | {m['flops'] / 1e6:.2f} M | {m['latency_ms_p50']:.3f} ms |"
        )
    lines += ["", *targets_table(result["targets"])]
    lines += [
        "",
        "## Beside the seed paper (their figures, not measured here)",
        "",
        "| tier | retention here | seed paper's retention | memory here | seed paper's memory |",
        "|---|---|---|---|---|",
    ]
    for tier in TIERS:
        if "retention" in s["models"].get(tier, {}):
            paper_mem = SEED_PAPER["memory_mb"].get(tier)
            lines.append(
                f"| {tier} | {s['models'][tier]['retention']['mean']:.2%} | {SEED_PAPER['retention'][tier]:.1%} | {s['models'][tier]['memory_bytes'] / 2**20:.3f} MB | {f'{paper_mem} MB' if paper_mem else 'less than 6.2 MB'} |"
            )
    lines += ["", "![accuracy vs memory](foundation.png)", ""]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, m in summary["models"].items():
        colour = "tab:gray" if "labels_only" in name else "tab:red" if name.startswith("teacher") else "tab:blue"
        ax.errorbar(m["memory_bytes"], m["accuracy"]["mean"], yerr=m["accuracy"]["std"], fmt="o", color=colour, capsize=3)
        ax.annotate(name, (m["memory_bytes"], m["accuracy"]["mean"]), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("memory at batch 1: fp32 weights + peak activations (bytes)")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


@reports_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--protocol", default="avmnist", choices=sorted(TEACHER_TARGETS))
    parser.add_argument("--no-clean", action="store_true", help="skip the clean-protocol run (its teacher target)")
    parser.add_argument("--quick", action="store_true", help="the smoke config and two seeds: minutes, figures meaningless")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override for every run")
    args = parser.parse_args()
    refuse_with_quick(parser, args, ("config",))
    check_out(parser, args.out)
    config, seeds, overrides = args.config, args.seeds, list(args.overrides)
    if args.quick:
        config, seeds = REPO / "configs" / "smoke.yaml", args.seeds[:2]
        args.runs_dir = args.runs_dir / "quick"
    reports = [run_seed(config, args.protocol, seed, args.runs_dir, overrides) for seed in seeds]
    # Each report's own commit: a reused run's figures are those of the code that measured them.
    measured_at = [{"label": f"seed {seed}", "run": r.get("run"), "commit": r.get("commit")} for seed, r in zip(seeds, reports)]
    clean = None
    if not args.no_clean and args.protocol != "clean":
        clean = run_seed(config, "clean", seeds[0], args.runs_dir, overrides)
        measured_at.append({"label": f"clean seed {seeds[0]}", "run": clean.get("run"), "commit": clean.get("commit")})
    clean_teacher = teacher_accuracy(clean) if clean is not None else None
    summary = summarise(reports)
    result = {
        "commit": git_commit(),
        "machine": machine(),
        "config": str(config),
        "protocol": args.protocol,
        "seeds": seeds,
        "overrides": overrides,
        "avmnist": summary,
        "clean_teacher_accuracy": clean_teacher,
        "runs": [r["run"] for r in reports],
        "measured_at": measured_at,
        "test_samples": reports[0]["data"]["samples"]["test"],
    }
    result["targets"] = targets(summary, args.protocol, clean_teacher, clean.get("run", "the clean run") if clean is not None else None)
    stem = "foundation-quick" if args.quick else "foundation"
    write_results(args.out, stem, result, render(result).replace("foundation.png", f"{stem}.png"), lambda path: plot(summary, path))


if __name__ == "__main__":
    main()
