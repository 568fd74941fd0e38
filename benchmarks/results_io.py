"""What every benchmark script does last: write its JSON, plot and markdown into benchmarks/results/."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from racmkd.utils import atomic_write_json, atomic_write_text


def targets_table(targets: list[dict[str, Any]]) -> list[str]:
    """The markdown's "Targets" section: every target with its measured figure and verdict (yes, no,
    or a sentence saying why there is none: a target the run could not exercise is not reached)."""
    lines = ["## Targets", "", "| target | measured | reached |", "|---|---|---|"]
    for t in targets:
        measured = f"{t['measured']:.4f}" if isinstance(t["measured"], float) else t["measured"]
        verdict = t["reached"] if isinstance(t["reached"], str) else "yes" if t["reached"] else "**no**"
        lines.append(f"| {t['target']} | {measured} | {verdict} |")
    return lines


def write_results(out: Path, stem: str, result: dict[str, Any], markdown: str, plot: Callable[[Path], None]) -> None:
    """<out>/<stem>.json, <stem>.md and <stem>.png (the markdown links the PNG by that name); prints the
    markdown. The figures are written before the plot, so a failing plot loses no measurement, and the
    PNG is drawn beside its place and renamed into it, so a failure never leaves half an image."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{stem}.json", result)
    atomic_write_text(out / f"{stem}.md", markdown)
    print(markdown)
    partial = out / f".{stem}.{os.getpid()}.partial.png"  # (ends in .png: matplotlib picks the format by it)
    try:
        plot(partial)
        os.replace(partial, out / f"{stem}.png")
    finally:
        partial.unlink(missing_ok=True)
