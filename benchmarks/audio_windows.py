"""Benchmark of how a recording longer than the model's window is cut: does a digit spoken early or
late in a long, noisy clip still reach the model as it learned it?

    python benchmarks/audio_windows.py                        # on runs/latest
    python benchmarks/audio_windows.py --run RUN --tiers high low --seconds 3

Each FSDD test recording shorter than the window (repetitions 0-4: 298 of 300) is placed at the
start, middle or end of a clip of `--seconds` seconds of Gaussian noise `--noise-db` below the
speech's RMS, and each audio-reading model of the run answers it from its audio alone, with the
window cut three ways (each handed to the model as it is):

- centre: the clip's middle second (how racmkd cut long recordings until cbd1614);
- loudest: `fix_length`'s "loudest" window: the clip's second of most energy (cbd1614 until
  AudioSpec.window; recordings shorter than the window were padded centred);
- speech: `fix_length`'s "speech" window: centred on the energy centroid of that second (now).

Beside them, "as recorded": the recording alone in the same noise, placed in the window as the
model learned (its spec's window): the ceiling. Then each recording alone with white noise over it
at 10, 5 and 0 dB SNR (the avmnist protocol's span), as the dataset evaluates it and as a predictor
serves it: the two must agree, or the accuracy a run reports is not what it serves. Everything is
measured here; no figure is typed in.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from racmkd.data.fsdd import load_fsdd  # noqa: E402
from racmkd.data.paths import data_root  # noqa: E402
from racmkd.data import audio as dsp  # noqa: E402
from racmkd.data.signals import fix_length, speech_start  # noqa: E402
from racmkd.utils import save_figure  # noqa: E402
from racmkd.data.paths import git_commit  # noqa: E402
from racmkd.measure.timing import machine  # noqa: E402
from racmkd.runtime.predictor import load  # noqa: E402
from racmkd.utils import progress  # noqa: E402
from results_io import check_out, reports_errors, write_results  # noqa: E402

PLACES = ["start", "middle", "end"]
SNRS_DB = (10.0, 5.0, 0.0)  # the avmnist protocol's noise spans 0-10 dB
WINDOWS = ["centre", "loudest", "speech"]
TEST_REPETITIONS = range(5)  # FSDD's official test split


def noisy_clip(recording: np.ndarray, seconds: float, rate: int, place: str, noise_db: float, rng: np.random.Generator) -> np.ndarray:
    """`recording` (float) at `place` in `seconds` of Gaussian noise `noise_db` relative to its RMS."""
    total = max(int(seconds * rate), len(recording))
    clip = rng.normal(0.0, np.sqrt(np.mean(recording**2)) * 10 ** (noise_db / 20), total)
    at = {"start": 0, "middle": (total - len(recording)) // 2, "end": total - len(recording)}[place]
    clip[at : at + len(recording)] += recording
    return clip.astype(np.float32)


def cut(clip: np.ndarray, length: int, window: str) -> np.ndarray:
    """The `length` samples of a clip the model hears with one way of cutting it: "centre", the
    clip's middle; "speech" or "loudest", `fix_length`'s (AudioSpec.window)."""
    if window == "centre":
        start = (len(clip) - length) // 2
        return clip[start : start + length]
    return fix_length(clip, length, window)[0]


def as_given(model: Any) -> Any:
    """The model as a view that hears a window of its own length as it is: the "loudest" way passes
    such a window through (the "speech" way would centre it on its speech again)."""
    view = copy.copy(model)
    view.specs = {**model.specs, "audio": dataclasses.replace(model.specs["audio"], window="loudest")}
    return view


def answer(model: Any, window: np.ndarray, rate: int) -> int | None:
    """The label of a model (`as_given`) for one window of audio, or None where it refuses the window
    as dead (noise alone, cut from a quiet recording's clip away from the word: silent, or steady
    noise with no speech in it; a wrong answer, counted as one)."""
    features, dead = model.live_features({"audio": window}, rate)
    return None if dead else int(np.argmax(model.logits(features)))


def measure(run: Path, tiers: list[str], seconds: float, noise_dbs: list[float], seed: int) -> dict[str, Any]:
    models = {name: load(run, name) for name in ["teacher_audio", *tiers]}
    for name, model in models.items():
        if "audio" not in model.specs:
            raise SystemExit(f"{run}: model {name!r} reads no audio ({', '.join(model.specs)}); pick tiers that do with --tiers")
    rate = next(iter(models.values())).specs["audio"].sample_rate
    length = next(iter(models.values())).specs["audio"].samples
    recordings = [r for r in load_fsdd(data_root() / "fsdd" / "recordings") if r.index in TEST_REPETITIONS and len(r.samples) < length]
    if any(m.specs["audio"].sample_rate != rate or m.specs["audio"].samples != length for m in models.values()) or rate != 8000:
        raise SystemExit(f"{run}: this benchmark needs models that hear FSDD's 8 kHz in one window length ({rate} Hz, {length} samples)")
    rows = []
    for noise_db in noise_dbs:
        rng = np.random.default_rng(seed)
        cases = [("as recorded", "-", [noisy_clip(r.samples / 32768.0, 0, rate, "middle", noise_db, rng) for r in recordings])]
        for place in PLACES:
            clips = [noisy_clip(r.samples / 32768.0, seconds, rate, place, noise_db, rng) for r in recordings]
            cases += [(place, window, clips) for window in WINDOWS]
        for place, window, clips in progress(cases, desc=f"noise {noise_db:g} dB"):
            for name, model in models.items():
                how = model.specs["audio"].window if window == "-" else window  # as recorded: placed as the model learned
                answers = [answer(as_given(model), cut(c, length, how), rate) for c in clips]
                right = sum(a == r.digit for a, r in zip(answers, recordings))
                refused = sum(a is None for a in answers)
                rows.append({"noise_db": noise_db, "place": place, "window": window, "model": name, "accuracy": right / len(recordings), "refused": refused})
    served = [
        {"snr_db": snr_db, "model": name, **accuracies}
        for snr_db in SNRS_DB
        for name, accuracies in evaluated_and_served(models, recordings, length, rate, snr_db, seed).items()
    ]
    return {"recordings": len(recordings), "rate": rate, "window_samples": length, "rows": rows, "served": served}


def evaluated_and_served(models: dict[str, Any], recordings: list, length: int, rate: int, snr_db: float, seed: int) -> dict[str, dict[str, float]]:
    """Each recording with white noise at `snr_db` over it (the avmnist corruption), heard two ways:
    as the dataset evaluates it (placed clean by the model's spec, the noise added over it, and for
    the speech window placed again on its noisy energy: `dsp.centre_on_energy`) and as a predictor
    serves it (the noisy recording placed as it comes). Per model, both accuracies."""
    rng = np.random.default_rng(seed)
    evaluated: dict[str, list[np.ndarray]] = {window: [] for window in ("speech", "loudest")}
    served = []
    for r in recordings:
        wave = r.samples / 32768.0
        noise = rng.standard_normal(len(wave)) * np.sqrt(np.mean(wave**2) / 10 ** (snr_db / 10))
        served.append((wave + noise).astype(np.float32))
        for window in evaluated:
            placed, lo, hi = fix_length(wave, length, window)
            first = max(speech_start(wave, length) if window == "speech" else 0, 0)  # the recording's first sample in the window
            placed = placed.copy()
            placed[lo:hi] += noise[first : first + hi - lo]
            evaluated[window].append(placed)
    windows = {
        "speech": dsp.centre_on_energy(torch.from_numpy(np.stack(evaluated["speech"]))).numpy().astype(np.float32),
        "loudest": np.stack(evaluated["loudest"]).astype(np.float32),
    }
    out = {}
    for name, model in models.items():
        right_evaluated = sum(answer(as_given(model), w, rate) == r.digit for w, r in zip(windows[model.specs["audio"].window], recordings))
        right_served = sum(model.predict(audio=w, sample_rate=rate)[0] == r.digit for w, r in zip(served, recordings))
        out[name] = {"evaluated": right_evaluated / len(recordings), "served": right_served / len(recordings)}
    return out


def markdown(result: dict[str, Any]) -> str:
    models = list(dict.fromkeys(r["model"] for r in result["rows"]))
    lines = [
        "# Audio windows: a digit early or late in a long, noisy clip",
        "",
        f"Commit `{result['commit']}`, {result['machine']['cpu']} ({result['machine']['cores']} cores), run `{result['run']}`. {result['recordings']} FSDD test recordings, each in a "
        f"{result['seconds']:g}-s clip of Gaussian noise (dB below the speech's RMS); audio-only answers. "
        "Windows: `centre` the clip's middle second, `loudest` its second of most energy, `speech` that second centred on its "
        "energy centroid (`fix_length`'s two ways); `as recorded`: the recording alone in the same noise, placed as the model learned (its spec's window). "
        "A window the model refuses as dead (noise alone, from a quiet recording's clip: silent, or steady with no speech in it) counts as a wrong answer.",
        "",
        "| noise (dB) | word at | window | " + " | ".join(models) + " |",
        "|---|---|---|" + "---|" * len(models),
    ]
    keyed = {(r["noise_db"], r["place"], r["window"], r["model"]): r["accuracy"] for r in result["rows"]}
    refused = {(r["noise_db"], r["place"], r["window"], r["model"]): r["refused"] for r in result["rows"]}
    for noise_db, place, window in dict.fromkeys((r["noise_db"], r["place"], r["window"]) for r in result["rows"]):
        cells = " | ".join(
            f"{keyed[(noise_db, place, window, m)]:.3f}"
            + (f" ({refused[(noise_db, place, window, m)]} silent)" if refused[(noise_db, place, window, m)] else "")
            for m in models
        )
        lines.append(f"| {noise_db:g} | {place} | {window} | {cells} |")
    lines += [
        "",
        "## As evaluated and as served",
        "",
        "Each recording alone with white noise over it at the avmnist protocol's SNRs: as the dataset evaluates it (placed clean, "
        "the noise added, placed again on its noisy energy for the speech window) and as a predictor serves it (the noisy recording placed as it comes).",
        "",
        "| SNR (dB) | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
    ]
    served = {(r["snr_db"], r["model"]): r for r in result["served"]}
    for snr_db in dict.fromkeys(r["snr_db"] for r in result["served"]):
        lines.append(f"| {snr_db:g} | " + " | ".join(f"{served[(snr_db, m)]['evaluated']:.3f} -> {served[(snr_db, m)]['served']:.3f}" for m in models) + " |")
    lines += ["", f"![audio windows]({result['stem']}.png)", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    noise_dbs = list(dict.fromkeys(r["noise_db"] for r in result["rows"]))
    models = list(dict.fromkeys(r["model"] for r in result["rows"]))
    keyed = {(r["noise_db"], r["place"], r["window"], r["model"]): r["accuracy"] for r in result["rows"]}
    fig, axes = plt.subplots(len(noise_dbs), len(models), figsize=(3.2 * len(models), 2.8 * len(noise_dbs)), squeeze=False, sharey=True)
    x = np.arange(len(PLACES))
    for i, noise_db in enumerate(noise_dbs):
        for j, model in enumerate(models):
            ax = axes[i][j]
            for k, window in enumerate(WINDOWS):
                ax.bar(x + (k - 1) * 0.27, [keyed[(noise_db, p, window, model)] for p in PLACES], 0.27, label=window)
            ax.axhline(keyed[(noise_db, "as recorded", "-", model)], color="k", linestyle="--", linewidth=1, label="as recorded")
            ax.set_xticks(x, PLACES, fontsize=8)
            ax.set_title(f"{model}, noise {noise_db:g} dB", fontsize=9)
            ax.set_ylim(0, 1)
    for ax in axes[-1]:
        ax.set_xlabel("where the word is in the recording", fontsize=8)
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), title="window", title_fontsize=7)  # (inside, it covered a bar)
    fig.tight_layout()
    save_figure(fig, path)


@reports_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "latest", help="a run with an audio teacher and tiers (default runs/latest)")
    parser.add_argument("--tiers", nargs="+", default=["high", "low"], help="students to measure beside the audio teacher")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of the clips the recordings are placed in (> 1)")
    parser.add_argument("--noise-db", type=float, nargs="+", default=[-40.0, -25.0], help="noise level(s), dB relative to the speech's RMS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    if not args.seconds > 1.0:
        parser.error(f"--seconds {args.seconds:g}: the clips must be longer than the one-second window")
    check_out(parser, args.out)
    started = time.perf_counter()
    result = measure(args.run, args.tiers, args.seconds, args.noise_db, args.seed)
    result.update(
        stem="audio_windows",
        run=args.run.resolve().name,
        seconds=args.seconds,
        seed=args.seed,
        commit=git_commit(),
        machine=machine(),
        seconds_taken=round(time.perf_counter() - started, 1),
    )
    write_results(args.out, "audio_windows", result, markdown(result), lambda path: plot(result, path))


if __name__ == "__main__":
    main()
