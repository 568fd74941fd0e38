"""Matplotlib figures of a run, written as PNG files beside report.json."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the headless backend

from racmkd.utils import atomic_write_bytes  # noqa: E402

COLOURS = {"teacher": "tab:red", "student": "tab:blue", "baseline": "tab:gray", "compressed": "tab:green"}
TIER_ORDER = ["high", "medium", "low", "critical"]


def save_figure(fig: Any, path: Path, dpi: int = 120) -> Path:
    """Write a figure as PNG atomically (a plot stopped halfway is no PNG: the earlier one stays
    whole) and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def plot_accuracy_vs_cost(models: dict[str, dict[str, Any]], out_dir: Path) -> list[Path]:
    """Accuracy against memory (fp32 weights + peak activations) and against latency, every model
    a point; the distilled tiers are joined by a line."""
    paths = []
    for key, label, filename in (
        ("memory", "memory at batch 1: weights (fp32, or as deployed) + peak activations (bytes, log)", "accuracy_vs_memory.png"),
        ("latency_ms_p50", "latency p50 at batch 1, one thread, ONNX Runtime (ms, log)", "accuracy_vs_latency.png"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        value = (
            (lambda e: max(e.get("bytes_deployable", e["bytes_fp32"]), e.get("resident_weight_bytes", 0)) + e["peak_activation_bytes"])
            if key == "memory"
            else (lambda e: e[key])
        )  # noqa: E731 - int8 weights are held as floats once loaded
        for name, e in models.items():
            ax.scatter(value(e), e["accuracy"], color=COLOURS.get(e.get("role") or "", "black"), zorder=3)
            ax.annotate(name, (value(e), e["accuracy"]), textcoords="offset points", xytext=(4, 3), fontsize=7)
        tiers = [models[t] for t in TIER_ORDER if t in models]
        if len(tiers) > 1:
            ax.plot([value(e) for e in tiers], [e["accuracy"] for e in tiers], color=COLOURS["student"], alpha=0.5, label="racmkd tiers")
        compressed = [models[f"{t}_compressed"] for t in TIER_ORDER if f"{t}_compressed" in models]
        if len(compressed) > 1:
            ax.plot(
                [value(e) for e in compressed], [e["accuracy"] for e in compressed], color=COLOURS["compressed"], alpha=0.5, label="racmkd tiers, compressed"
            )
        if len(tiers) > 1 or len(compressed) > 1:
            ax.legend(loc="center right", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = out_dir / filename
        save_figure(fig, path, dpi=120)
        paths.append(path)
    return paths


def plot_training_curves(models: dict[str, dict[str, Any]], out_dir: Path) -> list[Path]:
    """Validation accuracy per epoch of every model that recorded a history."""
    with_history = {n: e["history"] for n, e in models.items() if e.get("history")}
    if not with_history:
        return []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, history in with_history.items():
        ax.plot([h["epoch"] for h in history], [h["val_accuracy"] for h in history], marker="o", label=name, linestyle="--" if "labels_only" in name else "-")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = out_dir / "training_curves.png"
    save_figure(fig, path, dpi=120)
    return [path]
