"""Run a racmkd ONNX model without racmkd: numpy, scipy and onnxruntime only, every step read from
the model's contract (its `racmkd.contract` metadata) as docs/contract.md defines it.

    python examples/onnx_without_racmkd.py MODEL.onnx --image digit.png --audio word.wav
    python examples/onnx_without_racmkd.py PEN_MODEL.onnx --pen trajectory.npy   # points (n, 3): x, y, stroke

It is the proof that a model file carries what a runtime needs (tests/test_contract.py and
tests/test_pen.py hold its answers to racmkd's own on real digits, recordings and pen trajectories).
"""

from __future__ import annotations

import argparse
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from scipy.signal import resample_poly


def read_contract(path: Path) -> dict:
    metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(metadata["racmkd.contract"])


# Image: a 28x28 grey digit (light on dark), centre crop, antialiased bilinear resize ----------------


def resize_weights(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in): a triangle of half-width max(in/out, 1) input pixels around each output
    pixel's centre, pixel centres at i + 0.5, each row normalised (PIL's BILINEAR)."""
    scale = size_in / size_out
    support = max(scale, 1.0)
    centres = (np.arange(size_out) + 0.5) * scale
    distance = (np.arange(size_in)[None, :] + 0.5 - centres[:, None]) / support
    weights = np.clip(1.0 - np.abs(distance), 0.0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def image_features(image: np.ndarray, spec: dict) -> np.ndarray:
    pixels = image.astype(np.float64) / 255.0 if image.dtype == np.uint8 else image.astype(np.float64)
    crop = spec["crop"]
    top, left = (pixels.shape[0] - crop) // 2, (pixels.shape[1] - crop) // 2
    pixels = pixels[top : top + crop, left : left + crop]
    if spec["resolution"] != crop:
        weights = resize_weights(crop, spec["resolution"])
        pixels = weights @ pixels @ weights.T
    return pixels[None].astype(np.float32)  # (1, res, res)


# Audio: mono at the model's rate, placed in its window, peak 1, log-mel, pooled in time -----------


def place(wave: np.ndarray, length: int, window: str) -> np.ndarray:
    """The `length` samples the model hears: "speech", centred on the energy centroid of the
    recording (of a longer one, of its loudest `length` samples); "loudest", padded centred or cut
    to the loudest `length` samples. Zeros past the recording's ends."""
    n = len(wave)
    if n == length:
        return wave
    energy = wave.astype(np.float64) ** 2
    if n > length:
        sums = np.concatenate([[0.0], np.cumsum(energy)])
        sums = sums[length:] - sums[:-length]
        candidates = np.flatnonzero(sums >= sums.max() * (1 - 1e-6))
        start = int(candidates[np.argmin(np.abs(candidates - (n - length) // 2))])
    else:
        start = -((length - n) // 2)
    if window == "speech":
        stretch = energy[max(start, 0) : max(start, 0) + min(length, n)]
        if stretch.sum() > 0:
            first = max(start, 0)
            start = math.floor(first + float(np.dot(np.arange(len(stretch)), stretch)) / stretch.sum() - length / 2 + 0.5)
    out = np.zeros(length, dtype=wave.dtype)
    lo, hi = max(start, 0), min(start + length, n)
    out[lo - start : hi - start] = wave[lo:hi]
    return out


def mel_bank(n_fft: int, n_mels: int, rate: int, f_min: float, f_max: float) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular HTK mel filters, each row summing to 1 (a band that
    catches no FFT bin takes the bin nearest its centre)."""
    to_mel = lambda hz: 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)  # noqa: E731
    to_hz = lambda mel: 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)  # noqa: E731
    freqs = np.linspace(0.0, rate / 2, n_fft // 2 + 1)
    edges = to_hz(np.linspace(to_mel(f_min), to_mel(f_max), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bank = np.clip(np.minimum((freqs - lower) / (centre - lower), (upper - freqs) / (upper - centre)), 0.0, None)
    for band in np.flatnonzero(bank.sum(axis=1) == 0):
        bank[band, np.argmin(np.abs(freqs - centre[band, 0]))] = 1.0
    return bank / bank.sum(axis=1, keepdims=True)


def audio_features(wave: np.ndarray, rate: int, spec: dict, format_: str) -> np.ndarray:
    if wave.ndim == 2:  # (samples, channels), as WAV readers give it
        wave = wave.mean(axis=1)
    wave = wave.astype(np.float64) / 32768.0 if wave.dtype == np.int16 else wave.astype(np.float64)
    if rate != spec["sample_rate"]:  # by the exact ratio where both factors are at most 1000, else the nearest such
        ratio = Fraction(spec["sample_rate"], rate)
        if max(ratio.numerator, ratio.denominator) > 1000:
            ratio = ratio.limit_denominator(max(1, int(1000 / max(1.0, spec["sample_rate"] / rate))))
        wave = resample_poly(wave, ratio.numerator, ratio.denominator)
    window = spec.get("window", "loudest" if format_ == "racmkd-onnx/1" else "speech")
    wave = place(wave, spec["samples"], window)
    peak = np.abs(wave).max()
    wave = wave / peak if peak > 0 else wave
    n_fft, win, hop = spec["n_fft"], spec["win_length"], spec["hop_length"]
    hann = np.zeros(n_fft)
    hann[(n_fft - win) // 2 : (n_fft - win) // 2 + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic
    padded = np.pad(wave, n_fft // 2)
    count = 1 + (len(padded) - n_fft) // hop
    frames = np.stack([padded[t * hop : t * hop + n_fft] for t in range(count)]) * hann
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (frames, bins): unscaled
    bands = mel_bank(n_fft, spec["n_mels"], spec["sample_rate"], spec["f_min"], spec["f_max"]) @ power.T  # (mels, frames)
    wanted = spec["n_frames"]
    if wanted != count:  # adaptive average pooling: frame i averages floor(i T / m) .. ceil((i + 1) T / m) - 1
        bands = np.stack([bands[:, (i * count) // wanted : -(-((i + 1) * count) // wanted)].mean(axis=1) for i in range(wanted)], axis=1)
    features = np.log(bands + 1e-6)
    if spec.get("bands"):
        features = features[spec["bands"]]
    return features[None].astype(np.float32)  # (1, bands, frames)


# Pen: normalised, resampled along its path, described window by window ---------------------------


def pen_features(points: np.ndarray, spec: dict) -> np.ndarray:
    samples, length, statistics = spec["samples"], spec["length"], spec["statistics"]
    points = np.asarray(points, dtype=np.float64)
    if points.shape == (3, samples) and np.abs(points[:2]).max() <= 0.5 + 1e-5 and np.isin(points[2], (0, 1)).all():
        trace = points  # already resampled
    else:
        xy, stroke = points[:, :2], points[:, 2]
        low, high = xy.min(axis=0), xy.max(axis=0)
        xy = (xy - (low + high) / 2) / max(float((high - low).max()), 1e-12)
        starts = [k for k in range(len(xy) - 1) if np.any(xy[k + 1] != xy[k])]  # segments: consecutive points that differ
        trace = np.ones((3, samples))
        if not starts:  # a dot
            trace[:2] = xy[0][:, None]
        else:
            lengths = np.array([np.linalg.norm(xy[k + 1] - xy[k]) for k in starts])
            s = np.concatenate([[0.0], np.cumsum(lengths)])  # path length at each segment's start, and the total
            corners = np.array([xy[0]] + [xy[k + 1] for k in starts])
            a = np.linspace(0.0, s[-1], samples)
            trace[0], trace[1] = np.interp(a, s, corners[:, 0]), np.interp(a, s, corners[:, 1])
            for i, at in enumerate(a):
                k = min(int(np.searchsorted(s, at, side="right")) - 1, len(starts) - 1)  # the last segment starting at or before
                jump = stroke[starts[k]] != stroke[starts[k] + 1]
                inside = s[k] + 1e-9 * s[-1] < at < s[k + 1] - 1e-9 * s[-1]
                trace[2, i] = 0.0 if jump and inside else 1.0
    windows = [trace[:, (j * samples) // length : -(-((j + 1) * samples) // length)] for j in range(length)]
    mean = np.stack([w.mean(axis=1) for w in windows], axis=1)  # (3, length)
    if statistics == 1:
        return mean[:, None].astype(np.float32)
    spread = np.stack([np.sqrt(np.maximum((w * w).mean(axis=1) - w.mean(axis=1) ** 2, 0.0)) for w in windows], axis=1)
    return np.stack([mean, spread], axis=1).astype(np.float32)  # (3, 2, length)


# The model -----------------------------------------------------------------------------------------


class Model:
    """One racmkd ONNX file; `logits(image=..., audio=..., pen=...)` for the inputs its contract lists."""

    def __init__(self, path: Path) -> None:
        self.contract = read_contract(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def logits(
        self, image: np.ndarray | None = None, audio: np.ndarray | None = None, sample_rate: int | None = None, pen: np.ndarray | None = None
    ) -> np.ndarray:
        feeds = {}
        for name, entry in self.contract["inputs"].items():
            if entry["modality"] == "image":
                feeds[name] = image_features(image, entry["spec"])[None]
            elif entry["modality"] == "audio":
                feeds[name] = audio_features(audio, sample_rate or entry["spec"]["sample_rate"], entry["spec"], self.contract["format"])[None]
            elif entry["modality"] == "pen":
                feeds[name] = pen_features(pen, entry["spec"])[None]
            else:
                raise SystemExit(f"input {name}: modality {entry['modality']!r} is not covered by this example (docs/contract.md)")
        output = self.session.run(None, feeds)[0][0]
        if self.contract.get("share"):  # a bank variant answering alone: its share plus its tier's bias
            output = output + np.asarray(self.contract["logit_bias"], dtype=np.float32)
        return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--image", type=Path, help="a 28x28 grey PNG (Pillow) or .npy")
    parser.add_argument("--audio", type=Path, help="a WAV file")
    parser.add_argument("--pen", type=Path, help="a .npy of points (n, 3): x, y (growing upwards), stroke number")
    args = parser.parse_args()
    image = audio = rate = None
    pen = np.load(args.pen) if args.pen else None
    if args.image:
        if args.image.suffix == ".npy":
            image = np.load(args.image)
        else:
            from PIL import Image

            image = np.asarray(Image.open(args.image).convert("L"))
    if args.audio:
        from scipy.io import wavfile

        rate, audio = wavfile.read(args.audio)
    logits = Model(args.model).logits(image=image, audio=audio, sample_rate=rate, pen=pen)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    print(json.dumps({"label": int(np.argmax(logits)), "probabilities": np.round(probabilities, 4).tolist()}))


if __name__ == "__main__":
    main()
