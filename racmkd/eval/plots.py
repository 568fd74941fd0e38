"""Matplotlib figures of a run, written as PNG files beside report.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the headless backend

from racmkd.utils import save_figure  # noqa: E402

COLOURS = {"teacher": "tab:red", "student": "tab:blue", "baseline": "tab:gray", "compressed": "tab:green"}
TIER_ORDER = ["high", "medium", "low", "critical"]


ROLE_LEGEND = {
    "teacher": "teacher",
    "student": "distilled student (tier)",
    "baseline": "labels-only baseline (the tier's network without the teacher)",
    "compressed": "compressed student, as deployed",
}
TIER_COLOURS = {"high": "tab:blue", "medium": "tab:orange", "low": "tab:green", "critical": "tab:purple"}
TEACHER_COLOURS = {"teacher": "tab:red", "teacher_image": "tab:brown", "teacher_audio": "tab:pink"}


def focus_range(models: dict[str, dict[str, Any]]) -> tuple[float, float]:
    """The accuracy range the students, their baselines and the fused teacher span, padded. A
    single-modality teacher far below it (the image teacher at 0.65 on avmnist) squeezed the 14
    other models into the top 7% of the plot, where a tier's student hid under its baseline."""
    focus = [e["accuracy"] for n, e in models.items() if e.get("role") != "teacher" or len(e.get("modalities") or ()) > 1]
    focus = focus or [e["accuracy"] for e in models.values()]
    low, high = min(focus), max(focus)
    pad = max(0.08 * (high - low), 0.002)
    return low - pad, high + pad


def plot_accuracy_vs_cost(models: dict[str, dict[str, Any]], out_dir: Path) -> list[Path]:
    """Accuracy against memory (weights as held once loaded + peak activations) and against
    latency, every model a point; the distilled tiers are joined by a line. A model below the range
    the tiers span is drawn on the bottom edge, its accuracy written beside its name."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter

    paths = []
    bottom, top = focus_range(models)
    for key, label, filename in (
        (
            "memory",
            "memory at batch 1: weights as held once loaded (int8 weights the runtime\nexpands count as fp32) + peak activations (bytes, log)",
            "accuracy_vs_memory.png",
        ),
        ("latency_ms_p50", "latency p50 at batch 1, one thread, ONNX Runtime (ms, log)", "accuracy_vs_latency.png"),
    ):
        fig, ax = plt.subplots(figsize=(7.5, 5))
        value = (
            (lambda e: max(e.get("bytes_deployable", e["bytes_fp32"]), e.get("resident_weight_bytes", 0)) + e["peak_activation_bytes"])
            if key == "memory"
            else (lambda e: e[key])
        )  # noqa: E731 - int8 weights are held as floats once loaded
        for name, e in models.items():
            role = e.get("role") or ""
            colour = COLOURS.get(role, "black")
            x, y = value(e), e["accuracy"]
            if y < bottom:  # off the range: on its edge, pointing down
                ax.scatter(x, bottom, marker="v", color=colour, zorder=3, clip_on=False)
                ax.annotate(f"{name} ({y:.3f}, below)", (x, bottom), textcoords="offset points", xytext=(5, 3), fontsize=7)
            elif role == "baseline":  # hollow, under its tier's student, which often sits on the same spot
                ax.scatter(x, y, facecolors="none", edgecolors=colour, s=70, linewidths=1.2, zorder=2)
            else:
                ax.scatter(x, y, color=colour, zorder=3)
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, -10 if role == "compressed" else 4), fontsize=7)
        tiers = [models[t] for t in TIER_ORDER if t in models]
        if len(tiers) > 1:
            ax.plot([value(e) for e in tiers], [e["accuracy"] for e in tiers], color=COLOURS["student"], alpha=0.5)
        compressed = [models[f"{t}_compressed"] for t in TIER_ORDER if f"{t}_compressed" in models]
        if len(compressed) > 1:
            ax.plot([value(e) for e in compressed], [e["accuracy"] for e in compressed], color=COLOURS["compressed"], alpha=0.5)
        roles = [r for r in ROLE_LEGEND if any(e.get("role") == r for e in models.values())]
        handles = [
            Line2D(
                [],
                [],
                linestyle="",
                marker="o",
                markersize=7,
                label=ROLE_LEGEND[r],
                color=COLOURS[r],
                markerfacecolor="none" if r == "baseline" else COLOURS[r],
            )
            for r in roles
        ]
        if handles:
            ax.legend(handles=handles, loc="upper left", fontsize=7)
        ax.set_ylim(bottom, top)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # (minor-tick labels ran into each other)
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = out_dir / filename
        save_figure(fig, path, dpi=120)
        paths.append(path)
    return paths


def curve_colour(name: str) -> str | None:
    """One colour per tier, its labels-only baseline's too (dashed), and the teachers' own:
    with eleven series on matplotlib's ten-colour cycle, the teacher and a baseline shared one."""
    if name.startswith("teacher"):  # (a modality's teacher other than image's and audio's: teacher_pen)
        return TEACHER_COLOURS.get(name, "tab:olive")
    return TIER_COLOURS.get(name.removesuffix("_labels_only"))  # (a tier of another name: matplotlib's next colour)


def plot_training_curves(models: dict[str, dict[str, Any]], out_dir: Path) -> list[Path]:
    """Validation accuracy per epoch of every model that recorded a history."""
    with_history = {n: e["history"] for n, e in models.items() if e.get("history")}
    if not with_history:
        return []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, history in with_history.items():
        ax.plot(
            [h["epoch"] for h in history],
            [h["val_accuracy"] for h in history],
            marker="o",
            label=name,
            color=curve_colour(name),
            linestyle="--" if "labels_only" in name else "-",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = out_dir / "training_curves.png"
    save_figure(fig, path, dpi=120)
    return [path]
