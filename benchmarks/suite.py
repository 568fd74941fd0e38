"""The benchmark suite (`make bench`): the seed paper's Tables 6.6, 6.7 and 6.8, robustness,
cross-modal transfer, cost growth and the Pareto front, every baseline trained and measured in
the same run (racmkd.eval.suite says how).

    python benchmarks/suite.py                     # avmnist and clean, seeds 0 1 2 -> BENCHMARKS.md, benchmarks/results/suite.*
    python benchmarks/suite.py --protocols avmnist # Table 6.6 of the clean protocol left out
    python benchmarks/suite.py --quick             # the smoke config, two seeds: minutes, figures meaningless
    python benchmarks/suite.py --teachers-from runs/<run>   # reuse a run's teachers (same data settings)

Runs live in runs/bench/<protocol>-s<seed>/ and are resumed: what exists is not trained again.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from racmkd.eval.suite import TIERS, SuiteSettings, plot_all, render, run_suite  # noqa: E402
from racmkd.utils import atomic_write_json, atomic_write_text, json_safe  # noqa: E402
from results_io import check_out, refuse_with_quick, reports_errors  # noqa: E402

# Training scale of the full suite: each student and baseline sees 3 x 20,000 samples (the make run
# students see 4 x 50,000), so that three seeds fit the two-hour budget on two cores.
FULL_SCALE = ("students.train.samples_per_epoch=20000", "students.train.epochs=3", "students.selection.samples=6400")


@reports_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--protocols", nargs="+", default=["avmnist", "clean"], choices=["avmnist", "clean"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="the smoke config, two seeds, small sweeps: minutes, figures meaningless")
    parser.add_argument("--teachers-from", type=Path, help="reuse this run's teachers (its data settings must match)")
    parser.add_argument("--recipe", type=Path, default=REPO / "configs" / "recipes" / "bench.yaml", help="the tiers' compression recipe")
    parser.add_argument(
        "--tier-recipe",
        action="append",
        default=[],
        metavar="TIER=PATH",
        help="a recipe that replaces --recipe for one tier (default: critical=configs/recipes/bench-critical.yaml)",
    )
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "bench")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE config override for every run")
    args = parser.parse_args()
    refuse_with_quick(parser, args, ("config",))
    check_out(parser, args.out)
    tier_recipes = {"critical": REPO / "configs" / "recipes" / "bench-critical.yaml"}
    for pair in args.tier_recipe:
        tier, sep, path = pair.partition("=")
        if not sep or not tier or not path:
            parser.error(f"--tier-recipe {pair!r}: expected TIER=PATH, e.g. critical=configs/recipes/bench-critical.yaml")
        tier_recipes[tier] = Path(path)
    if set(tier_recipes) - set(TIERS):
        parser.error(f"--tier-recipe: unknown tier in {sorted(tier_recipes)}; the tiers are {', '.join(TIERS)}")
    settings = SuiteSettings(
        config=args.config,
        protocols=tuple(args.protocols),
        seeds=tuple(args.seeds),
        runs_dir=args.runs_dir,
        overrides=(*FULL_SCALE, *args.overrides),
        recipe=args.recipe,
        tier_recipes=tier_recipes,
        teachers_from=args.teachers_from,
    )
    if args.quick:
        settings = replace(settings.quick(), config=REPO / "configs" / "smoke.yaml", runs_dir=args.runs_dir / "quick", overrides=tuple(args.overrides))
    result = run_suite(settings)
    stem = "suite-quick" if args.quick else "suite"
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"{stem}.json", json_safe(result))  # (NaN and Infinity: no other JSON reader takes them)
    # The markdown is written before the plots and again with their links after: a plot that fails
    # left suite.json new beside the previous run's markdown (as results_io.write_results does).
    write_markdown(result, {}, args.out, stem, args.quick)
    plots = plot_all(result, args.out, stem)
    write_markdown(result, plots, args.out, stem, args.quick)
    print(render(result, plots))


def write_markdown(result: dict[str, Any], plots: dict[str, str], out: Path, stem: str, quick: bool) -> None:
    """The suite's markdown: with --quick <out>/<stem>.md beside its JSON (BENCHMARKS.md holds only
    the full suite), else BENCHMARKS.md, its plots linked from the repository's root wherever --out
    put them."""
    if quick:
        atomic_write_text(out / f"{stem}.md", render(result, plots))
    else:
        links = {title: Path(os.path.relpath(out.resolve() / name, REPO)).as_posix() for title, name in plots.items()}
        atomic_write_text(REPO / "BENCHMARKS.md", render(result, links))


if __name__ == "__main__":
    main()
