"""What every benchmark script shares: its command line checked before any work (`at_least`,
`check_out`, `refuse_with_quick`, `reports_errors`), its JSON, plot and markdown written last into
benchmarks/results/; and the soak runs' resident-memory sampling and verdict, which the runtime and
deployment benchmarks share."""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from racmkd.compress.artifacts import ExportError
from racmkd.config import ConfigError
from racmkd.data.paths import DataError
from racmkd.models.checkpoint import CheckpointError
from racmkd.runs import RunError
from racmkd.runtime.variants import BankError
from racmkd.utils import atomic_write_json, atomic_write_text, exit_on_sigterm, json_safe, progress

SOAK_SAMPLE_S = 5.0  # resident memory read this often
# Resident memory moves in 4 KB pages as allocators touch them; 64 KB is 16 of those, and less
# than a byte a request over the second half of any soak of two minutes (over 60,000 requests
# here): anything kept per request (16 bytes at the least, a Python object) goes past it. Kept
# per switch (a decision record is about a kilobyte), only in a soak whose second half makes more
# than 64 switches: the runtime's 30-minute soak made 380 in all, its default 10 minutes 44. The
# windows of records the runtime's soak harness kept until 6efa166 read as +712 KB in 30 min.
SOAK_GROWTH_LIMIT = 64 * 1024


def at_least(low: float, kind: type = int, why: str = "", strictly: bool = False) -> Callable[[str], Any]:
    """An argparse type: a number of `kind` no less than `low` (above it, `strictly`), refused at
    once with `why` (a value below it failed only after the delta experiment's minutes, or divided
    by zero)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {'a whole number' if kind is int else 'a number'}") from None
        if value < low or (strictly and value == low):
            raise argparse.ArgumentTypeError(f"{value} is {'not above' if strictly else 'below'} {low:g}{why}")
        return value

    return parse


def check_out(parser: argparse.ArgumentParser, out: Path) -> None:
    """Refuse an --out folder that cannot be made or written to now: found when the results were
    written, it lost every measurement before it (an hour's, for some benchmarks) to a traceback."""
    probe = out / f".write-test.{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        parser.error(f"--out {out}: cannot write results there ({err.strerror or err}); name a writable folder")


def refuse_with_quick(parser: argparse.ArgumentParser, args: argparse.Namespace, names: tuple[str, ...], argv: list[str] | None = None) -> None:
    """--quick sets these options itself: one given beside it is refused, not replaced in silence,
    even at its default value. What was given is read by parsing `argv` (the command line) again
    with no defaults, so that an option absent from it is absent from the answer."""
    if not args.quick:
        return
    defaults = {action: action.default for action in parser._actions}
    try:
        for action in defaults:
            action.default = argparse.SUPPRESS
        given_args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    finally:
        for action, default in defaults.items():
            action.default = default
    given = [f"--{name.replace('_', '-')}" for name in names if hasattr(given_args, name)]
    if given:
        parser.error(f"--quick sets {', '.join(given)} itself; leave {'it' if len(given) == 1 else 'them'} out, or drop --quick")


# racmkd's errors about what a benchmark was given (a run that is not one, a missing checkpoint,
# bank or file, a bad config): one line naming the problem and its fix, not a traceback.
INPUT_ERRORS = (RunError, ConfigError, DataError, CheckpointError, BankError, ExportError, FileNotFoundError)


def reports_errors(main: Callable[[], None]) -> Callable[[], None]:
    """A benchmark's main, whose errors about its input (INPUT_ERRORS) end the script with their
    message, exit code 1; anything else is a bug and keeps its traceback. SIGTERM (`kill`, a CI
    cancel) runs its cleanup as Ctrl-C does: it ended the script on the spot, and the servers it
    had started kept running, their parent gone."""

    @functools.wraps(main)
    def run() -> None:
        try:
            with exit_on_sigterm():
                main()
        except INPUT_ERRORS as err:
            sys.exit(f"error: {err}")

    return run


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
    atomic_write_json(out / f"{stem}.json", json_safe(result))  # (NaN and Infinity: no other JSON reader takes them)
    atomic_write_text(out / f"{stem}.md", markdown)
    print(markdown)
    partial = out / f".{stem}.{os.getpid()}.partial.png"  # (ends in .png: matplotlib picks the format by it)
    try:
        plot(partial)
        os.replace(partial, out / f"{stem}.png")
    finally:
        partial.unlink(missing_ok=True)


class ResidentSampler:
    """A process's resident memory every SOAK_SAMPLE_S seconds on a thread, from `start()` until
    `stop()` or `minutes` are up, into an array made before the first sample (a list of them grew
    40 KB in 30 minutes, measured with what it measures)."""

    def __init__(self, pid: int, minutes: float, desc: str) -> None:
        self.process, self.minutes, self.desc = psutil.Process(pid), minutes, desc
        self._samples = np.full((int(minutes * 60 / SOAK_SAMPLE_S) + 2, 2), np.nan)  # (seconds since the start, resident bytes)
        self._taken = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ResidentSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.perf_counter()
        for _ in progress(itertools.count(), desc=f"{self.desc} (resident memory every {SOAK_SAMPLE_S:g} s)", total=len(self._samples) - 2, leave=True):
            if self._stop.wait(SOAK_SAMPLE_S) or self._taken == len(self._samples):
                break
            self._samples[self._taken] = (time.perf_counter() - started, self.process.memory_info().rss)
            self._taken += 1

    def stop(self) -> dict[str, Any]:
        """The samples and their verdict (`soak_figures`)."""
        self._stop.set()
        self._thread.join()
        return soak_figures(self._samples[: self._taken].tolist(), self.minutes)


def soak_figures(samples: list[list[float]], minutes: float) -> dict[str, Any]:
    """Resident-memory growth of a soak: over its second half (the first is the warm-up, where
    pools and bounded windows settle: the runtime's 30-minute soak at 6efa166 gained 264 KB in
    minutes 1-7, then nothing in 23 minutes; a leak, growing with the requests, grows in the
    second half as in the first), its fitted slope, and the growth after the first minute. NaN
    from fewer than three samples: too short to judge."""

    def growth_from(seconds: float) -> tuple[float, float]:
        kept = [s for s in samples if s[0] >= seconds]
        if len(kept) < 3:
            return math.nan, math.nan
        return kept[-1][1] - kept[0][1], float(np.polyfit([s[0] for s in kept], [s[1] for s in kept], 1)[0])

    growth, slope = growth_from(minutes * 60.0 / 2)
    return {
        "minutes": minutes,
        "rss_samples": samples,
        "rss_growth_bytes_after_warmup": growth,  # over the second half
        "rss_slope_bytes_per_minute": slope * 60,
        "rss_growth_bytes_after_first_minute": growth_from(min(60.0, minutes * 60.0 / 4))[0],
    }


def soak_memory_text(soak: dict[str, Any]) -> str:
    """A soak's resident memory for the markdown (after "its" or "the server's"): its growth over the
    second half, the fitted slope and the growth after the first minute, or too short to judge."""
    growth, after_first = soak["rss_growth_bytes_after_warmup"], soak.get("rss_growth_bytes_after_first_minute", math.nan)
    if not math.isfinite(growth):
        return f"resident memory: too short to judge ({soak['minutes']:g} min: fewer than three samples over its second half, one every {SOAK_SAMPLE_S:g} s)"
    return (
        f"resident memory grew {growth / 1024:+.0f} KB over the second half (fitted slope {soak['rss_slope_bytes_per_minute'] / 1024:+.1f} KB/min), "
        + (f"{after_first / 1024:+.0f} KB after the first minute" if math.isfinite(after_first) else "no minute after the first to judge")
        + "; the first half is the warm-up, where pools and bounded windows settle"
    )


def soak_target(what: str, soak: dict[str, Any], served: str) -> dict[str, Any]:
    """The targets-table row of a soak (`served`: what it served, e.g. "1,000 requests")."""
    growth = soak["rss_growth_bytes_after_warmup"]
    return {
        "target": f"{what}: no memory growth (resident memory grows less than {SOAK_GROWTH_LIMIT // 1024} KB over the second half)",
        "measured": f"{growth / 1024:+.0f} KB over the last {soak['minutes'] / 2:g} of {soak['minutes']:g} min ({served})"
        if math.isfinite(growth)
        else f"too short to judge ({soak['minutes']:g} min: fewer than three samples of resident memory over its second half, one every {SOAK_SAMPLE_S:g} s)",
        "reached": growth < SOAK_GROWTH_LIMIT,  # (NaN, too short to judge: not reached)
    }
