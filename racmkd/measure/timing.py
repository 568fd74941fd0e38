"""Timing, energy arithmetic (and the RAPL counters that measure it), and the machine's
description, without PyTorch: what the edge install
(numpy and ONNX Runtime) needs to profile an ONNX model (it imported the exporter, and torch, and
failed). racmkd.measure.cost adds the PyTorch side (FLOPs, activation memory, timing under torch's
thread settings)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from racmkd.config import EnergyModel
from racmkd.utils import percentile


def wall_times_ms(fn: Callable[[], Any], warmup: int, iters: int) -> list[float]:
    """Wall times in ms of `iters` calls of `fn()`, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def percentiles(times: list[float]) -> dict[str, float]:
    """Median and 95th percentile of some timings."""
    return {"p50": statistics.median(times), "p95": percentile(times, 95)}


def wall_latency_ms(fn: Callable[[], Any], warmup: int, iters: int) -> dict[str, float]:
    """Median and 95th percentile wall time of `fn()` in ms, after `warmup` calls."""
    return percentiles(wall_times_ms(fn, warmup, iters))


def estimated_energy_joules(flops: int, bytes_moved: int, seconds: float, model: EnergyModel) -> float:
    """E = a * FLOPs + b * bytes moved + c * time (see EnergyModel and the README)."""
    return model.joules_per_flop * flops + model.joules_per_byte * bytes_moved + model.static_watts * seconds


def rapl_domains(root: Path) -> list[Path]:
    """Readable top-level RAPL package counters under `root` (/sys/class/powercap), or none."""
    found = []
    for path in sorted(Path(root).glob("intel-rapl:*/energy_uj")):
        if path.parent.name.count(":") == 1:  # packages, not their sub-zones
            try:
                int(path.read_text())
                found.append(path)
            except (OSError, ValueError):
                continue
    return found


def machine() -> dict[str, Any]:
    """What the measurements ran on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": _torch_version(),
    }


def _torch_version() -> str | None:
    """PyTorch's version where it is installed (training), else None (an edge install)."""
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__
