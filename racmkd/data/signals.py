"""What a deployed model needs from a raw input, in numpy: the torch-free half of a modality.

A modality has two halves. Training (`racmkd.data.modalities`) loads datasets, degrades and
augments whole batches, in torch. Deployment needs much less: check one raw input, turn it into
the model's features exactly as training did, and describe those steps in the exported model's
contract. That half lives here, registered in SIGNALS under the modality's name, with no torch
import, so that the edge runtime, the ONNX predictor and the edge server run on numpy and ONNX
Runtime alone (the edge image carries no training stack).

Both halves compute the same features; tests/test_signal.py holds them to each other on real
data. Fixed linear maps (resize, mel bands, frame pooling) are matrices built once per spec, so a
request costs a few small matrix products:

    image  (B, 28, 28) in [0, 1] -> centre crop -> R_h @ x @ R_w^T (antialiased bilinear) -> (B, 1, res, res)
    audio  (B, samples) -> peak 1 -> |rfft(frames x Hann)|^2 (B, T, F) -> mel (B, n_mels, T)
           -> frame pooling (B, n_mels, n_frames) -> log(. + 1e-6) -> kept bands
    pen    points (n, 3) -> centred, longer side 1 -> resampled along the path (B, 3, samples)
           -> per window: mean (and standard deviation) (B, 3, statistics, windows)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np
import scipy.fft

from racmkd.config import ConfigError, from_dict
from racmkd.registry import SIGNALS

LOG_FLOOR = 1e-6  # added to band power before the log


class Signal(ABC):
    """The deployment side of one modality: input checks, features, contract. Stateless: a spec
    carries every knob."""

    name: ClassVar[str]
    spec_type: ClassVar[type]  # frozen dataclass of the feature knobs a model is built for
    # The spec's fields `to_raw` reads: models that share one raw input (the edge runtime converts a
    # request's input once per modality for all its variants) must agree on them.
    raw_fields: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def to_raw(self, value: Any, spec: Any, sample_rate: int | None = None) -> np.ndarray:
        """Check one user input and convert it to a float32 raw batch of one; ValueError names the problem."""

    @abstractmethod
    def blank(self, spec: Any) -> np.ndarray:
        """A raw batch of one that holds nothing (zeros), for warming up a model and its feature caches."""

    @abstractmethod
    def features(self, raw: np.ndarray, spec: Any) -> np.ndarray:
        """Model input (B, C, ...) float32 from a raw batch, as training computed it without augmentation."""

    @abstractmethod
    def feature_shape(self, spec: Any) -> tuple[int, ...]:
        """Shape of one sample of `features` (without the batch dimension)."""

    @abstractmethod
    def steps(self, spec: Any) -> list[str]:
        """The preprocessing from raw input to features, in words, for the contract."""

    layout: ClassVar[str] = "(batch, ...) float32"

    def contract(self, spec: Any) -> dict[str, Any]:
        """What a runtime must do to raw inputs for a model built for `spec` (written into exported
        models, so that a runtime needs nothing else)."""
        return {"spec": dataclasses.asdict(spec), "shape": list(self.feature_shape(spec)), "steps": self.steps(spec), "layout": self.layout}

    @classmethod
    def spec_from_dict(cls, values: dict[str, Any]) -> Any:
        """A spec saved in a checkpoint or a contract, read back (a class method: reading a contract
        makes no signal, so it costs no signal's set-up, such as audio's scipy.signal import)."""
        return from_dict(cls.spec_type, values, where=f"spec.{cls.name}")

    dead_range: ClassVar[float] = 1e-3  # raw values (in [0, 1] or [-1, 1]) spanning less than this: no signal
    dead_means: ClassVar[str] = "constant"  # what a dead input of this kind is, for the messages that refuse one

    def input_quality(self, raw: np.ndarray) -> float:
        """How usable one raw input looks: 0 for a dead sensor (a constant image; a recording whose
        samples all lie within 0.001 of full scale, below -60 dBFS; one its kind tells from a live
        one by its content: see `looks_live`), else 1. The edge runtime stops spending on a
        modality whose inputs keep coming in dead."""
        return 1.0 if self.varies(raw) and self.looks_live(raw) else 0.0

    def quick_quality(self, raw: np.ndarray) -> float:
        """`input_quality` without `looks_live` (the edge runtime judges by it on most requests: see
        THOROUGH_EVERY); a kind with its own `input_quality` (a plugin's, the pen's, a subclass's)
        is judged by that every time."""
        if type(self).input_quality is not Signal.input_quality:
            return self.input_quality(raw)
        return 1.0 if self.varies(raw) else 0.0

    def varies(self, raw: np.ndarray) -> bool:
        """Whether the raw values span `dead_range` or more. This runs on every request: a live
        signal varies all over, so the range of at most 1024 evenly spaced values says so; only an
        input that looks dead there is judged on every value. Judged on the sample alone, a short
        recording (one click, padded with silence to 8000 samples) fell between the sampled values
        and was refused as silent."""
        flat = raw.reshape(-1)
        sample = flat[:: max(1, flat.size // 1024)]
        return float(sample.max()) - float(sample.min()) >= self.dead_range or float(flat.max()) - float(flat.min()) >= self.dead_range

    def looks_live(self, raw: np.ndarray) -> bool:
        """Whether an input that varies is what a live sensor of this kind gives (a batch: any of
        it). Dearer than the range (tens of us): the edge runtime asks on some requests only."""
        return True


# ------------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class ImageSpec:
    """What an image model expects: the 28x28 digit centre-cropped to `crop`, resized to `resolution`."""

    crop: int = 24
    resolution: int = 24

    def __post_init__(self) -> None:
        # A contract edited by hand (crop 0) was read and answered from an empty image.
        if not (isinstance(self.crop, int) and isinstance(self.resolution, int) and self.crop >= 1 and self.resolution >= 1):
            raise ConfigError(f"crop and resolution must be whole numbers of pixels >= 1, got crop {self.crop!r}, resolution {self.resolution!r}")


def center_crop(images: np.ndarray, size: int) -> np.ndarray:
    """Central `size` x `size` window of a batch (B, H, W)."""
    h, w = images.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"cannot crop {h}x{w} images to {size}x{size}")
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size]


@functools.lru_cache(maxsize=64)
def resize_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of antialiased bilinear resampling along one axis, as torch's
    `interpolate(mode="bilinear", antialias=True, align_corners=False)` computes them (a triangle
    filter stretched over the input pixels one output pixel covers, as in PIL)."""
    scale = size_in / size_out
    support = max(scale, 1.0)
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    matrix = np.zeros((size_out, size_in), dtype=np.float64)
    for i in range(size_out):
        centre = scale * (i + 0.5)
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), size_in)
        taps = np.maximum(0.0, 1.0 - np.abs((np.arange(lo, hi) - centre + 0.5) * inv))
        matrix[i, lo:hi] = taps / taps.sum()
    return matrix.astype(np.float32)


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bilinear resize of a batch (B, H, W) to `size` x `size`."""
    h, w = images.shape[-2:]
    if h == size and w == size:
        return images
    return resize_matrix(h, size) @ images @ resize_matrix(w, size).T  # (size, H) @ (B, H, W) @ (W, size)


def as_array(value: Any) -> np.ndarray:
    """A request's input as a numpy array: a torch tensor through its own `.numpy()` (one that
    requires grad, or lives on a GPU, was torch's RuntimeError), anything else by np.asarray."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def came_in_dead(names: list[str]) -> str:
    """'audio came in dead (silent)': what the refusals of dead inputs say, each kind's own word."""
    said = [f"{name} ({SIGNALS.get(name).dead_means})" if name in SIGNALS else name for name in names]
    return f"{' and '.join(said)} came in dead"


@SIGNALS.register("image")
class ImageSignal(Signal):
    """28x28 grey digits: scaled to [0, 1], centre-cropped, resized."""

    dead_means = "constant, or noise alone"

    name = "image"
    spec_type = ImageSpec
    size = 28
    layout = "(batch, 1, height, width) float32"

    def to_raw(self, value: Any, spec: ImageSpec, sample_rate: int | None = None) -> np.ndarray:
        array = as_array(value)
        if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
            array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
        if array.shape != (self.size, self.size):
            raise ValueError(f"image: expected a {self.size}x{self.size} grey image, got shape {array.shape}")
        if array.dtype.kind == "i" and array.min() >= 0 and array.max() <= 255 and (array.max() > 1 or array.min() == array.max()):
            # Whole pixels 0-255 as signed integers (a list is int64), as the server takes them; 0s and
            # 1s together are a binary image's, of no scale (one value alone: a blank image, a dead
            # input as any other). An unsigned wider type stays refused: a 16-bit image's values are
            # of another scale.
            array = array.astype(np.uint8)
        if array.dtype == np.uint8:
            return self._dark_background((array.astype(np.float32) / 255.0)[None])
        if array.dtype.kind != "f":  # (np.issubdtype's answer, at a fiftieth of its cost: this runs on every request)
            why = {"u": f" ({8 * array.dtype.itemsize}-bit pixels: scale them to 8 bits)"}.get(array.dtype.kind, "")
            if array.dtype.kind == "i":
                why = " of 0 and 1 alone (a binary image: pass floats, or uint8 0-255)" if array.min() >= 0 and array.max() <= 1 else " outside 0-255"
            raise ValueError(f"image: expected uint8 (0-255) or float (0-1) pixels, got {array.dtype}{why}")
        if not (float(array.min()) >= -1e-6 and float(array.max()) <= 1 + 1e-6):  # NaN fails both comparisons, infinities one
            raise ValueError("image: float pixels must be finite and in [0, 1] (pass uint8 for 0-255 images)")
        return self._dark_background(array.astype(np.float32)[None])

    # A picture's neighbouring pixels go together, noise's do not: an image whose pixels correlate
    # with their neighbours' (the four directions averaged, mean removed) less than this is no
    # picture (a camera giving only noise). Measured: MNIST's 60,000 training digits 0.372 and more,
    # a one-pixel line 0.21, test digits under added noise of 0.3 0.132 and more (of 0.5, 5.5%
    # under it); uniform, salt-and-pepper and Gaussian noise 0.07 at most (4,000 draws each). Taken
    # as live, salt-and-pepper noise fused with a clean recording scored 0.667 where the recording
    # alone scores 0.953 (300 test pairs, make-run bank).
    picture_correlation: ClassVar[float] = 0.1

    def looks_live(self, raw: np.ndarray) -> bool:
        """A picture, not noise alone (`picture_correlation`)."""
        for image in raw.reshape(-1, raw.shape[-2], raw.shape[-1]):
            c = image - float(image.mean())
            spread = float(np.einsum("ij,ij->", c, c))
            pairs = ((c[:, 1:], c[:, :-1]), (c[1:], c[:-1]), (c[1:, 1:], c[:-1, :-1]), (c[1:, :-1], c[:-1, 1:]))  # right, below, both diagonals
            together = sum(float(np.einsum("ij,ij->", a, b)) for a, b in pairs) / 4
            if spread > 0 and together >= self.picture_correlation * spread:
                return True
        return False

    # MNIST's digits: a border mean of at most 0.034 (60,000 training digits), 0.29 under noise of 0.5;
    # uniform noise about 0.5; an inverted digit 0.97 and more.
    light_border: ClassVar[float] = 0.65

    def _dark_background(self, raw: np.ndarray) -> np.ndarray:
        """`raw` (1, H, W), refused where its border is light: a dark digit on white paper (a scan,
        a drawing app) was read with confidence as another digit (the high student 0.095 on 200
        inverted digits, median confidence 0.998) and outweighed a clean recording beside it."""
        image = raw[0]
        border = (float(image[0].sum()) + float(image[-1].sum()) + float(image[1:-1, 0].sum()) + float(image[1:-1, -1].sum())) / (
            2 * image.shape[0] + 2 * image.shape[1] - 4
        )
        if border > self.light_border and float(image.max()) - float(image.min()) >= self.dead_range:  # (a constant image is a dead input, as any other)
            raise ValueError(
                f"image: a light background (its border averages {border:.2f} of white): the models read a light digit on a dark background, as MNIST's; invert it (255 - pixels, or 1 - pixels)"
            )
        return raw

    def blank(self, spec: ImageSpec) -> np.ndarray:
        return np.zeros((1, self.size, self.size), dtype=np.float32)

    def features(self, raw: np.ndarray, spec: ImageSpec) -> np.ndarray:
        return resize(center_crop(raw, spec.crop), spec.resolution)[:, None].astype(np.float32, copy=False)  # (B, 1, res, res)

    def feature_shape(self, spec: ImageSpec) -> tuple[int, ...]:
        return (1, spec.resolution, spec.resolution)

    def steps(self, spec: ImageSpec) -> list[str]:
        # Terse, as every model file carries them: docs/contract.md defines each step exactly.
        steps = [
            f"a {self.size}x{self.size} grey image, light digit on dark; uint8 divided by 255 (floats in [0, 1] as they are)",
            f"centre crop {spec.crop}x{spec.crop}",
        ]
        if spec.resolution != spec.crop:  # (named alone, plain bilinear or area averaging agreed with the model on 54-93% of the digits)
            steps.append(f"antialiased bilinear resize to {spec.resolution}x{spec.resolution} (PIL's BILINEAR; torch's antialias=True, align_corners=False)")
        return steps


# ------------------------------------------------------------------------------------------------
# Audio


AUDIO_WINDOWS = ("speech", "loudest")  # see AudioSpec.window and fix_length


@dataclass(frozen=True)
class AudioSpec:
    """What an audio model expects: a log-mel spectrogram with these parameters."""

    sample_rate: int = 8000
    samples: int = 8000
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 256
    f_min: float = 0.0
    f_max: float = 4000.0
    n_mels: int = 64
    n_frames: int = 32
    bands: tuple[int, ...] = ()  # indices of the mel bands kept (band selection); () keeps all n_mels
    # How a recording is placed in its `samples` (fix_length): "speech", centred on its speech;
    # "loudest", the models made before this field (2026-12-06; their checkpoints and contracts name no window):
    # padded centred, a longer one cut to its loudest second. A model hears what it learned from.
    window: str = "speech"

    def __post_init__(self) -> None:
        if self.window not in AUDIO_WINDOWS:
            raise ConfigError(f"window {self.window!r}: one of {', '.join(AUDIO_WINDOWS)}")
        # Values a hand-edited contract can carry, each of which failed deep in resampling or the
        # mel filterbank (sample_rate -5: "up and down must be >= 1"; samples 0: a zero-size array).
        counts = {
            "sample_rate": self.sample_rate,
            "samples": self.samples,
            "n_fft": self.n_fft,
            "win_length": self.win_length,
            "hop_length": self.hop_length,
            "n_mels": self.n_mels,
            "n_frames": self.n_frames,
        }
        bad = {k: v for k, v in counts.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
        if bad:
            raise ConfigError(f"{', '.join(f'{k} {v!r}' for k, v in bad.items())}: each must be a whole number >= 1")
        if self.win_length > self.n_fft:
            raise ConfigError(f"win_length {self.win_length} is longer than n_fft {self.n_fft}")
        if not (0 <= self.f_min < self.f_max <= self.sample_rate / 2):
            raise ConfigError(f"need 0 <= f_min < f_max <= sample_rate / 2 ({self.sample_rate / 2:g} Hz), got f_min {self.f_min}, f_max {self.f_max}")
        if any(isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < self.n_mels for b in self.bands) or len(set(self.bands)) != len(self.bands):
            raise ConfigError(f"bands {list(self.bands)}: distinct mel band indices in [0, {self.n_mels})")


MIN_RATE, MAX_RATE = 1_000, 384_000  # Hz; outside, a typo (8 for 8000) more likely than a recording


def audio_rate(value: Any) -> int:
    """A sample rate as given by a caller, checked: a whole number of Hz in [MIN_RATE, MAX_RATE]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value) or value != int(value):
        raise ValueError(f"audio: sample_rate must be a whole number of Hz, got {value!r}")
    if not MIN_RATE <= value <= MAX_RATE:
        raise ValueError(f"audio: sample_rate {int(value)} Hz is outside {MIN_RATE:,}-{MAX_RATE:,} Hz")
    return int(value)


def fix_length(wave: np.ndarray, length: int, window: str = "speech") -> tuple[np.ndarray, int, int]:
    """The `length`-sample window of a waveform (n,) centred on its speech (`speech_start`), zeros
    where it reaches past the recording; return it and the span [start, end) of the window that
    holds the recording's samples. Short and long recordings alike, training and serving alike, so
    the word sits where the models learned it whatever clip it came in. Trimmed to its centre, a
    clip longer than the window lost the word spoken early or late in it: two FSDD recordings
    (7_theo_36, 9_theo_16) kept almost none of their speech, and a user's 3-second clip with the
    digit in its first second none at all. `window` "loudest" places it as the models made before
    AudioSpec.window learned it: padded centred, a longer one cut to its loudest second."""
    n = wave.shape[-1]
    if window == "speech":
        start = speech_start(wave, length)
    elif window == "loudest":
        start = loudest_start(wave, length) if n > length else -((length - n) // 2)
    else:
        raise ValueError(f"audio: window {window!r} is not one of {', '.join(AUDIO_WINDOWS)}")
    if start >= 0 and start + length <= n:
        return wave[..., start : start + length], 0, length
    lo, hi = max(start, 0), min(start + length, n)
    padded = np.zeros((*wave.shape[:-1], length), dtype=wave.dtype)  # (np.pad took six times as long: 19 against 3 us, on every request)
    padded[..., lo - start : hi - start] = wave[..., lo:hi]
    return padded, lo - start, hi - start


def speech_start(wave: np.ndarray, length: int) -> int:
    """Where a `length`-sample window over a waveform (n,) starts so that it is centred on the
    energy centroid of the recording's speech: the whole recording when it is no longer than the
    window, else its loudest stretch (`loudest_start`). The window may start before 0 or end past
    n (the rest is silence). Why the centroid: a recording padded centred has its word wherever
    the speaker put it in the recording (FSDD's: a median 441 samples early, one in twenty more than 985), and in a
    longer noisy clip every window holding the whole word is about as loud, so the loudest one had
    the word anywhere in it, often at its edge; the students, trained on centred recordings, heard
    such shifts badly. Measured on the 298 FSDD test recordings in 2-second clips with noise 25 dB
    below the speech (benchmarks/audio_windows.py, the run of cbd1614, trained on centred
    recordings): the word in the clip's last second, the loudest window gave the high student
    0.785, this window 0.926; the word in the clip's middle, its middle second gave the low
    student 0.859, this window 0.728: a 441-sample shift from what it learned cost it 13 points.
    Trained on windows placed this way (avmnist-20261206-214029), the word at the clip's end: high
    0.963, low 0.886 (the recording alone 0.993, 0.926). Silence, or NaN samples in the stretch: a longer recording's loudest
    window as it is, a shorter one centred.
    A recording of exactly the window's length is taken as placed (start 0): a window the dataset
    made (placed, noised, placed again by `dsp.centre_on_energy`), served back, is heard as it was
    evaluated, not moved again."""
    if wave.ndim != 1:
        raise ValueError(f"audio: expected a mono waveform (1-D array), got shape {wave.shape}")
    n = wave.shape[-1]
    if n == length:
        return 0
    start = loudest_start(wave, length) if n > length else 0
    stretch = wave[start : start + min(length, n)]
    energy = np.square(stretch, dtype=np.float64)
    total = float(energy.sum())
    if not (math.isfinite(total) and total > 0):
        return start if n > length else -((length - n) // 2)
    centroid = start + float(np.dot(np.arange(len(stretch)), energy)) / total
    return math.floor(centroid - length / 2 + 0.5)  # (a steady stretch keeps its start; round() halves to even)


def loudest_start(wave: np.ndarray, length: int) -> int:
    """Where the `length`-sample window of a waveform (n,), n > length, with the most energy (sum of
    squares) starts; of windows within a millionth of the most, the one nearest the centre (a
    steady tone, or silence: centred)."""
    if wave.ndim != 1:
        raise ValueError(f"audio: expected a mono waveform (1-D array), got shape {wave.shape}")
    cumulative = np.concatenate([[0.0], np.cumsum(np.square(wave, dtype=np.float64))])
    energy = cumulative[length:] - cumulative[:-length]  # (n - length + 1,) each window's
    loudest = np.flatnonzero(energy >= energy.max() * (1 - 1e-6))
    centred = (wave.shape[-1] - length) // 2
    if not loudest.size:  # (NaN samples compare false: to_raw refuses them; a direct caller gets the centre)
        return centred
    return int(loudest[np.argmin(np.abs(loudest - centred))])


def hz_to_mel(hz: Any) -> Any:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: Any) -> Any:
    """Inverse of `hz_to_mel`."""
    return 700.0 * (np.power(10.0, np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=32)
def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> np.ndarray:
    """Triangular HTK mel filters, shape (n_mels, n_freqs), each row normalised to sum to one so that
    a band's value is the mean power under it whatever the number of bands."""
    freqs = np.linspace(0.0, sample_rate / 2, n_freqs)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    bank = np.clip(np.minimum(rising, falling), 0.0, None)
    # A band narrower than one FFT bin catches no bin: give it the bin nearest its centre.
    empty = bank.sum(axis=1) == 0
    if empty.any():
        nearest = np.argmin(np.abs(freqs[None, :] - centre[empty]), axis=1)
        bank[np.flatnonzero(empty), nearest] = 1.0
    bank = (bank / bank.sum(axis=1, keepdims=True)).astype(np.float32)
    bank.flags.writeable = False  # shared by every caller through the cache
    return bank


@functools.lru_cache(maxsize=32)
def pooling_matrix(frames_in: int, frames_out: int, dtype: type = np.float32) -> np.ndarray:
    """(frames_in, frames_out) averaging weights of adaptive average pooling (torch's bins:
    output i averages inputs floor(i n / m) .. ceil((i + 1) n / m) - 1)."""
    matrix = np.zeros((frames_in, frames_out), dtype=dtype)
    for i in range(frames_out):
        lo, hi = (i * frames_in) // frames_out, -(-((i + 1) * frames_in) // frames_out)
        matrix[lo:hi, i] = 1.0 / (hi - lo)
    return matrix


def principal_axes(traces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The channels' mean (C,) and principal axes (C, C) of a sensor's traces (R, C, T), every time
    step of every trace a sample: row i of the axes is the direction of the i-th most variance across
    channels (a PCA of the channels). Each row's largest entry is made positive, so that a fit on the
    same traces gives the same axes. A sensor whose channels move together (an IMU's axes as the
    hand turns) keeps most of its variance in a few of them: projecting onto those is the sensor's
    PCA compression, fewer channels for the encoder, the same time steps."""
    samples = np.moveaxis(np.asarray(traces, dtype=np.float64), 1, -1).reshape(-1, traces.shape[1])  # (R T, C)
    centre = samples.mean(axis=0)
    variances, vectors = np.linalg.eigh(np.cov(samples - centre, rowvar=False))
    axes = vectors[:, np.argsort(variances)[::-1]].T
    axes *= np.where(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]
    return centre, axes


def project_channels(raw: np.ndarray, centre: Sequence[float], axes: Sequence[Sequence[float]]) -> np.ndarray:
    """(B, k, T) from (B, C, T): each time step's channels, centred, projected onto k principal axes (k, C)."""
    return np.einsum("kc,bct->bkt", np.asarray(axes, dtype=np.float32), raw - np.asarray(centre, dtype=np.float32)[:, None])


@functools.lru_cache(maxsize=8)
def _window(win_length: int, n_fft: int) -> np.ndarray:
    """Periodic Hann window (torch.hann_window's default) of `win_length`, centred in `n_fft` zeros
    as torch.stft places it."""
    window = np.zeros(n_fft, dtype=np.float32)
    start = (n_fft - win_length) // 2
    window[start : start + win_length] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)
    window.flags.writeable = False  # shared by every caller through the cache
    return window


def frames_for(sample_count: int, n_fft: int, hop_length: int) -> int:
    """Number of centred STFT frames `power_spectrogram` yields (torch.stft's count: every frame
    whole within the signal padded by n_fft // 2 each side)."""
    return 1 + (sample_count + 2 * (n_fft // 2) - n_fft) // hop_length


def power_spectrogram(wave: np.ndarray, n_fft: int, win_length: int, hop_length: int) -> np.ndarray:
    """|STFT|^2 of waveforms (B, L) -> (B, frames, n_fft // 2 + 1): centred frames (zero padding of
    n_fft / 2 each side), periodic Hann window of `win_length` centred in the FFT, as torch.stft.
    The frames are a strided view of the padded signal at the FFT's length, copied once by the
    window's product: gathering the window's samples by index and padding each frame to the FFT's
    length took a quarter longer (one second at 8 kHz, interleaved runs here: 0.060-0.098 ms against
    0.044-0.073; a whole log-mel 0.076-0.134 against 0.061-0.104)."""
    if not 0 < win_length <= n_fft or hop_length < 1:
        raise ValueError(
            f"audio: the STFT needs 0 < win_length <= n_fft and hop_length >= 1, got win_length {win_length}, n_fft {n_fft}, hop_length {hop_length}"
        )
    b, length = wave.shape
    pad = n_fft // 2
    padded = np.zeros((b, length + 2 * pad), dtype=np.float32)
    padded[:, pad : pad + length] = wave
    step, item = padded.strides
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(b, frames_for(length, n_fft, hop_length), n_fft), strides=(step, hop_length * item, item), writeable=False
    )
    power = np.abs(scipy.fft.rfft(frames * _window(win_length, n_fft), axis=-1))
    power *= power
    return power


def peak_normalise(wave: np.ndarray) -> np.ndarray:
    """Scale each waveform (B, L) to a peak of 1 so that recording gain does not change the features."""
    return wave / np.maximum(np.abs(wave).max(axis=-1, keepdims=True), 1e-8)


MAX_RESAMPLE_FACTOR = 1000  # the largest up or down factor resampled exactly (44.1 -> 8 kHz is 80/441)
RESAMPLE_MAX_ERROR = 5.3e-4  # the largest relative rate error of `resample_ratio` from 1-384 kHz (see there)


@functools.cache
def polyphase_resampler() -> Callable[..., np.ndarray]:
    """scipy.signal's resample_poly, imported once. scipy.signal takes 0.5-1 s to import: the audio
    signal imports it when it is made (a runtime or predictor loading), not the first request at
    another rate (which took 745 ms); a process that never makes one never pays it."""
    from scipy.signal import resample_poly

    return resample_poly


@functools.cache
def resample_ratio(rate: int, to_rate: int) -> Fraction:
    """The up/down ratio `resample` applies: exact when both factors are at most
    MAX_RESAMPLE_FACTOR (the usual rates: 16, 22.05, 44.1, 48 kHz to 8 kHz), else the nearest
    ratio whose factors are. An exact ratio of co-prime rates (44,101 Hz: 8000/44101) made
    resample_poly design and run a filter of 900,000 taps, 146 ms a call; the nearest (119/656) is
    off by 4e-6, 5 ms. A scan of every rate of 1-384 kHz to 8, 16 and 22.05 kHz finds at most
    `RESAMPLE_MAX_ERROR` (383,800 Hz to 8 kHz by 1/48: a pitch shift of 0.9 cent, a hundredth of a
    semitone); a rate below 1 kHz, upsampled hundreds of times, up to 8.2e-4 (36 Hz to 22.05 kHz)."""
    exact = Fraction(to_rate, rate)
    if max(exact.numerator, exact.denominator) <= MAX_RESAMPLE_FACTOR:
        return exact
    upsampling = max(1.0, to_rate / rate)  # the numerator is the denominator times this
    return exact.limit_denominator(max(1, int(MAX_RESAMPLE_FACTOR / upsampling)))


@functools.lru_cache(maxsize=32)
def resample_taps(up: int, down: int, dtype: str) -> np.ndarray:
    """resample_poly's own low-pass filter for `up`/`down` in `dtype` (its default design: a Kaiser
    (5.0) windowed sinc of 20 max(up, down) + 1 taps), designed once per ratio: scipy designs it on
    every call, 0.73 ms of a 44.1 kHz request's 1.9 (the largest, 1000/999's, holds 160 KB)."""
    from scipy.signal import firwin

    most = max(up, down)
    taps = firwin(2 * 10 * most + 1, 1.0 / most, window=("kaiser", 5.0)).astype(dtype)
    taps.flags.writeable = False  # shared by every caller through the cache (resample_poly copies it)
    return taps


def resample(wave: np.ndarray, rate: int, to_rate: int) -> np.ndarray:
    """A waveform (float32) sampled at `rate` Hz, resampled to `to_rate` (polyphase, as the dataset's
    recordings are when a config asks for another rate than theirs: training and serving alike),
    by `resample_ratio`, with scipy's filter for it (`resample_taps`)."""
    ratio = resample_ratio(rate, to_rate)
    if ratio == 1:
        return wave.astype(np.float32, copy=False)
    taps = resample_taps(ratio.numerator, ratio.denominator, wave.dtype.str if wave.dtype.kind == "f" else "<f8")  # (scipy's: the input's float type)
    return polyphase_resampler()(wave, ratio.numerator, ratio.denominator, window=taps).astype(np.float32)


@SIGNALS.register("audio")
class AudioSignal(Signal):
    """Mono recordings: fixed length, peak-normalised, log-mel spectrogram pooled in time."""

    dead_means = "silent, or steady: no speech"

    name = "audio"
    spec_type = AudioSpec
    raw_fields = ("sample_rate", "samples", "window")
    layout = "(batch, 1, bands, frames) float32"

    def __init__(self) -> None:
        polyphase_resampler()  # imported at load, not on the first request at another rate (see there)

    # A recording whose loudness holds steady is no speech: speech comes in syllables, mains hum,
    # a microphone's hiss and a DC offset do not. Steady: over frames of `steady_frame` samples (25
    # ms at 8 kHz, from the first sound to the last: the zero padding left out), the 95th percentile of their energy (DC removed) is
    # within `steady_db` of the 10th. Peak-normalised, a hum-only microphone reached the model at
    # full scale and counted live (0.087 accuracy fused with the image, 0.650 with the image alone;
    # a -60 dBFS hiss 0.437; 300 test pairs, make-run bank). Measured: of the 70,000 avmnist
    # recordings (FSDD, noise of 0-10 dB SNR added), 14 count steady, all training ones, none of the
    # test split's; hum and hiss span 1.7 dB at most; speech clipped after 10x gain counts steady 2%
    # of the time, after 30x 30%.
    steady_frame: ClassVar[int] = 200
    steady_db: ClassVar[float] = 2.5

    def looks_live(self, raw: np.ndarray) -> bool:
        """Not silent (each recording of a batch judged on its own) nor steady (hum, hiss, an offset:
        `steady_db`). One of fewer than four frames with sound (100 ms at 8 kHz) is too short to
        tell, and one with digital silence between its sounds (a noise gate's) is not steady: both
        count by their range alone."""
        return not all(self._dead(wave) for wave in raw.reshape(-1, raw.shape[-1]))

    def _dead(self, wave: np.ndarray) -> bool:
        """One recording silent (its range under `dead_range`) or steady (see `steady_db`). Runs on
        every request: a handful of numpy calls (about 20 us on 8,000 samples here)."""
        first, last = 0, wave.size
        if wave[0] == 0 or wave[-1] == 0:  # (the zero padding around the sound left out)
            sound = wave != 0
            first, last = int(sound.argmax()), wave.size - int(sound[::-1].argmax())
            if not sound[first]:
                return True  # digital silence throughout
        count = (last - first) // self.steady_frame
        if count < 4:  # too short to tell: silent or not by its range
            return float(wave.max()) - float(wave.min()) < self.dead_range
        frames = wave[first : first + count * self.steady_frame].reshape(count, self.steady_frame).astype(np.float32, copy=False)  # (int16 squares overflow)
        power, means = np.einsum("ij,ij->i", frames, frames) / self.steady_frame, frames.mean(axis=1)
        if not power.all():
            return False  # digital silence between sounds, a noise gate's: no steady source
        mean = float(means.mean())
        energy = power - 2 * mean * means + mean * mean  # about the recording's mean: its DC removed (a constant one: all 0, steady)
        low, high = len(energy) // 10, len(energy) - 1 - len(energy) // 20
        energy = np.partition(energy, (low, high))
        return float(energy[high]) < 10 ** (self.steady_db / 10) * max(float(energy[low]), 1e-20)

    @classmethod
    def spec_from_dict(cls, values: dict[str, Any]) -> Any:
        """A saved spec; one that names no window was saved before AudioSpec.window (2026-12-06), by
        a model trained on recordings placed the "loudest" way."""
        return super().spec_from_dict(values if "window" in values else {**values, "window": "loudest"})

    def to_raw(self, value: Any, spec: AudioSpec, sample_rate: int | None = None) -> np.ndarray:
        array = as_array(value)
        if array.ndim == 2 and 1 in array.shape:
            array = array.reshape(-1)
        if array.ndim != 1:
            raise ValueError(f"audio: expected a mono waveform (1-D array), got shape {array.shape}")
        if array.size == 0:
            raise ValueError("audio: the waveform holds no samples")
        if array.dtype.kind == "i" and array.dtype.itemsize == 2:  # int16 of either byte order (a big-endian one was refused as "not int16")
            wave = array.astype(np.float32) / 32768.0
        elif array.dtype.kind == "f":  # (np.issubdtype's answer, at a fiftieth of its cost: this runs on every request)
            if array.dtype == np.float32:
                wave = array.copy()  # (a copy, as for the other types: callers may write to what they get)
            else:
                with np.errstate(over="ignore"):  # float64 beyond float32's range becomes infinite: refused below
                    wave = array.astype(np.float32)
            if not np.isfinite(wave).all():
                raise ValueError("audio: the waveform holds NaN or infinite samples (or samples beyond float32's range)")
        else:
            raise ValueError(f"audio: expected int16 or float samples, got {array.dtype}")
        usual = sample_rate is None or (type(sample_rate) is int and sample_rate == spec.sample_rate)  # the usual call: nothing to check
        rate = spec.sample_rate if usual else audio_rate(sample_rate)
        if rate != spec.sample_rate:
            wave = resample(wave, rate, spec.sample_rate)
            if not np.isfinite(wave).all():  # interpolation overshoots samples near float32's limits into infinities (NaN features)
                raise ValueError(
                    f"audio: resampled from {rate} Hz to {spec.sample_rate} Hz, the waveform goes beyond float32's range (its samples lie near float32's limits): scale it to [-1, 1]"
                )
        # A constant recording shorter than the window, padded with zeros, stepped and looked live:
        # it is silence. (One that fills the window is constant there, and `input_quality` sees it:
        # not looked at again on every request.)
        if wave.size < spec.samples and wave.size and float(wave.max()) - float(wave.min()) < self.dead_range:
            wave = np.zeros_like(wave)
        return fix_length(wave, spec.samples, spec.window)[0][None]

    def blank(self, spec: AudioSpec) -> np.ndarray:
        return np.zeros((1, spec.samples), dtype=np.float32)

    def features(self, raw: np.ndarray, spec: AudioSpec) -> np.ndarray:
        power = power_spectrogram(peak_normalise(raw), spec.n_fft, spec.win_length, spec.hop_length)  # (B, T, F)
        bank = mel_filterbank(spec.n_fft // 2 + 1, spec.n_mels, spec.sample_rate, spec.f_min, spec.f_max)
        if power.shape[1] != spec.n_frames:  # (as many frames as asked: nothing to pool)
            power = pooling_matrix(power.shape[1], spec.n_frames).T @ power  # (n_frames, T) @ (B, T, F): pooling first is cheaper
        features = np.log(bank @ power.transpose(0, 2, 1) + LOG_FLOOR)  # (B, n_mels, n_frames)
        if spec.bands:
            features = features[:, list(spec.bands)]
        return features[:, None].astype(np.float32, copy=False)  # (B, 1, bands, frames)

    def feature_shape(self, spec: AudioSpec) -> tuple[int, ...]:
        return (1, len(spec.bands) or spec.n_mels, spec.n_frames)

    def steps(self, spec: AudioSpec) -> list[str]:
        steps = [
            f"mono waveform at {spec.sample_rate} Hz (int16 divided by 32768; other rates resampled)",
            f"a recording of {spec.samples} samples as it is; else the {spec.samples} samples from floor(c - {spec.samples}/2 + 0.5), c the energy centroid (sum of squares, 0-based sample index) of the recording, "
            f"or of a longer one's {spec.samples} consecutive samples of most energy (of windows within a millionth of the most, the most central); zeros past the recording's ends; silence: centred"
            if spec.window == "speech"
            else f"pad to {spec.samples} samples, centred; or trim to the {spec.samples} consecutive samples of most energy (sum of squares; of windows within a millionth of the most, the most central)",
            "scale to a peak of 1",
            # (scipy.signal.stft's default scaling read as chance: the unscaled power and the frame count are said)
            f"power spectrogram |rfft|^2, unscaled (torch.stft's): periodic Hann window {spec.win_length} centred in FFT {spec.n_fft}, hop {spec.hop_length}, "
            f"centred frames (zero padding of {spec.n_fft // 2} each side): {frames_for(spec.samples, spec.n_fft, spec.hop_length)} frames",
            f"{spec.n_mels} triangular HTK mel bands from {spec.f_min:g} to {spec.f_max:g} Hz, each normalised to sum to 1",
            f"adaptive average pooling in time to {spec.n_frames} frames (torch's bins)",
            "natural log of (band power + 1e-6)",
        ]
        if spec.bands:
            steps.append(f"keep bands {list(spec.bands)}, in that order")
        return steps


# ------------------------------------------------------------------------------------------------
# Pen trajectories (a sensor: a tablet's pen positions, stroke by stroke)

PEN_CHANNELS = 3  # x, y, pen down (1 on a stroke, 0 on the jump between two strokes)


@dataclass(frozen=True)
class PenSpec:
    """What a pen model expects: the trajectory resampled to `samples` points evenly spaced along its
    path, then cut into `length` windows, each described by `statistics` numbers per channel: 1, the
    window's mean (average pooling: downsampling), or 2, its mean and standard deviation (statistical
    aggregation: how much the pen moved within the window, which pooling alone averages away)."""

    samples: int = 32
    length: int = 32
    statistics: int = 1

    def __post_init__(self) -> None:
        whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.samples, self.length, self.statistics))
        if not (whole and 4 <= self.samples and 1 <= self.length <= self.samples and self.statistics in (1, 2)):
            raise ConfigError(
                f"need whole numbers samples >= 4, 1 <= length <= samples and statistics 1 or 2, got samples {self.samples!r}, length {self.length!r}, statistics {self.statistics!r}"
            )


TRACE_SLACK = 1e-5  # float32 rounding of a trace's extremes, +-0.5


def pen_trace(points: np.ndarray, samples: int) -> np.ndarray:
    """(3, samples) float32 from a trajectory (n, 3) of x, y and stroke number: centred on its bounding
    box and scaled so that its longer side spans 1 (where and how large the digit was written does
    not matter), then resampled at `samples` points evenly spaced along the path, the jumps between
    strokes included (the tablet's sampling rate and the writer's speed do not matter either, as in
    the dataset's own preprocessing); the third channel says whether a point lies on a stroke."""
    xy, stroke = points[:, :2].astype(np.float64), points[:, 2]
    xy = xy / max(float(np.abs(xy).max()), 1e-300)  # first to |x| <= 1: coordinates near float64's limits overflowed in the span below
    low, high = xy.min(axis=0), xy.max(axis=0)
    xy = (xy - (low + high) / 2) / max(float((high - low).max()), 1e-12)  # (a span below 1e-12 of the coordinates is rounding: a dot)
    step = np.linalg.norm(np.diff(xy, axis=0), axis=1)  # (n - 1,) segment lengths
    moving = np.flatnonzero(step > 0)
    if moving.size == 0:  # a single position: a dot
        return np.concatenate([np.repeat(xy[:1].T, samples, axis=1), np.ones((1, samples))]).astype(np.float32)
    along = np.concatenate([[0.0], np.cumsum(step[moving])])  # path length at each kept point
    kept = np.concatenate([[0], moving + 1])
    at = np.linspace(0.0, along[-1], samples)
    out = np.empty((PEN_CHANNELS, samples))
    out[0], out[1] = np.interp(at, along, xy[kept, 0]), np.interp(at, along, xy[kept, 1])
    segment = np.clip(np.searchsorted(along, at, side="right") - 1, 0, len(moving) - 1)  # the segment each sample lies on (or starts)
    jump = stroke[moving[segment]] != stroke[moving[segment] + 1]
    slack = 1e-9 * along[-1]  # (a sample meant to land on a point lands a rounding error beside it)
    out[2] = ~(jump & (at > along[segment] + slack) & (at < along[segment + 1] - slack))  # a stroke's ends are pen down; only a jump's inside is not
    return out.astype(np.float32)


def window_statistics(raw: np.ndarray, length: int, statistics: int) -> np.ndarray:
    """(B, C, statistics, length) from (B, C, T): each window's mean, and with 2 its standard deviation
    (the same windows as torch's adaptive average pooling). The spread is E[x^2] - E[x]^2 in float64:
    in float32 it cancelled to errors of 2e-5 where a window's mean is large beside its spread, and
    training (racmkd.data.modalities.PenModality.features) computes it the same way."""
    pool = pooling_matrix(raw.shape[-1], length)
    mean = raw @ pool
    if statistics == 1:
        return mean[:, :, None]
    wide, wide_pool = raw.astype(np.float64), pooling_matrix(raw.shape[-1], length, np.float64)
    wide_mean = wide @ wide_pool
    spread = np.sqrt(np.maximum((wide * wide) @ wide_pool - wide_mean * wide_mean, 0.0))
    return np.stack([mean, spread.astype(mean.dtype)], axis=2)


@SIGNALS.register("pen")
class PenSignal(Signal):
    """Pen trajectories: normalised, resampled along the path, described window by window."""

    dead_means = "a dot, or jitter in place"

    name = "pen"
    spec_type = PenSpec
    raw_fields = ("samples",)
    layout = "(batch, 3, statistics, windows) float32"

    def to_raw(self, value: Any, spec: PenSpec, sample_rate: int | None = None) -> np.ndarray:
        """A trajectory as a tablet gives it, points (n, 3) of x, y and stroke number, y growing
        upwards (as on the tablet the pen digits were written on; screen coordinates grow downwards:
        negate their y, or a 6 reads as a 9), resampled here; or one already resampled, (3, samples)
        as `pen_trace` returns it (a dataset's items, which the runtime's replays and checks feed).
        Such a trace is told from points by its shape, so it must look like one: x and y within
        [-0.5, 0.5] and the pen channel 0 or 1. Points stacked the other way round, (3, n), are
        refused for any n, also the n that matches the trace's shape (a tablet's coordinates would
        otherwise skip the centring and scaling and reach the model hundreds of times too large)."""
        try:
            array = as_array(value)
        except ValueError as err:  # (ragged lists: strokes given one list each)
            raise ValueError(f"pen: expected points (n, 3) of x, y and stroke number, one array for all strokes ({err})") from None
        if (
            array.dtype.kind not in "iuf"
            or array.ndim != 2
            or not (array.shape[1] == PEN_CHANNELS or array.shape == (PEN_CHANNELS, spec.samples))
            or not array.size
        ):
            raise ValueError(
                f"pen: expected points (n, 3) of x, y and stroke number (0, 1, ...), or a trace (3, {spec.samples}) resampled along its path, got shape {array.shape}, dtype {array.dtype}"
            )
        if not np.isfinite(array).all():
            raise ValueError("pen: the trajectory holds NaN or infinite values")
        if array.shape == (PEN_CHANNELS, spec.samples):
            if np.abs(array[:2]).max() > 0.5 + TRACE_SLACK or not np.isin(array[2], (0, 1)).all():
                raise ValueError(
                    f"pen: a (3, {spec.samples}) array is read as a trace resampled by pen_trace, and this is none (x and y must lie within"
                    f" [-0.5, 0.5], the pen channel be 0 or 1); points go in one row each, (n, 3): transpose it"
                )
            return array.astype(np.float32)[None]
        return pen_trace(array, spec.samples)[None]

    def blank(self, spec: PenSpec) -> np.ndarray:
        return np.zeros((1, PEN_CHANNELS, spec.samples), dtype=np.float32)

    def features(self, raw: np.ndarray, spec: PenSpec) -> np.ndarray:
        return window_statistics(raw, spec.length, spec.statistics).astype(np.float32, copy=False)

    def feature_shape(self, spec: PenSpec) -> tuple[int, ...]:
        return (PEN_CHANNELS, spec.statistics, spec.length)

    def steps(self, spec: PenSpec) -> list[str]:
        return [
            "points (n, 3): x, y (any unit, y growing upwards: negate screen coordinates' y) and stroke number; a new stroke where the number changes (a trace (3, samples) already resampled skips the next two steps)",
            "centre on the bounding box, scale its longer side to 1",
            f"resample at {spec.samples} points evenly spaced along the path, both ends included (jumps between strokes included); channels x, y, pen down (1 on a stroke and at its ends, 0 inside a jump)",
            f"cut into {spec.length} windows (torch's adaptive average pooling bins); per window and channel: "
            + ("the mean" if spec.statistics == 1 else "the mean, then the standard deviation"),
        ]

    # A path turning by more than this on average from one resampled point to the next is jitter, not
    # writing: the 10,992 pendigits digits (both splits, 32 points) turn by 16 degrees at the median and
    # 40.4 at most; a pen resting on the tablet, its jitter of 32 to 500 points, by 70-144 (median 116).
    # Judged on traces of at least `jitter_samples` points only: on fewer, writing turns more from one
    # point to the next (a circle at 8 points, 51 degrees a step), and more points turn it less.
    jitter_turn_degrees: ClassVar[float] = 50.0
    jitter_samples: ClassVar[int] = 32

    def input_quality(self, raw: np.ndarray) -> float:
        """0 for a pen that did not move (x and y each constant: a dot, or nothing), or one that only
        jittered in place, else 1 (a batch: 0 when every trace in it is so). The centring scales a
        resting pen's jitter to a full-size trace, so the size of the movement tells nothing: its
        shape does. A path that turns by more than `jitter_turn_degrees` on average between its
        resampled points is no writing (a resting pen reporting 32 points or more is caught every
        time, 16 points 69% of the time, 8 never: resampled, their few segments run straight)."""
        positions = raw.reshape(-1, raw.shape[-2], raw.shape[-1])[:, :2]
        spans = (positions.max(axis=-1) - positions.min(axis=-1)).max(axis=-1)  # each coordinate's own range (x at 0.3, y at -0.2 is still a dot)
        dead = spans < self.dead_range
        if dead.all():
            return 0.0
        if positions.shape[-1] < self.jitter_samples:
            return 1.0
        x, y = np.diff(positions, axis=-1).transpose(1, 0, 2)
        turns = np.arctan2(np.abs(x[:, :-1] * y[:, 1:] - y[:, :-1] * x[:, 1:]), x[:, :-1] * x[:, 1:] + y[:, :-1] * y[:, 1:])  # between consecutive steps
        return 0.0 if (dead | (turns.mean(axis=-1) > math.radians(self.jitter_turn_degrees))).all() else 1.0
