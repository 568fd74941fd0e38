"""Input modalities: everything the pipeline needs to know about one kind of input.

A modality loads its raw items per split (a `Bank`), applies a protocol's degradations (static ones
to the stored data, dynamic ones per batch), augments training batches, and turns raw inputs into
model features for a given `spec` (resolution knobs). The dataset, the models, the trainer and the
predictor only call this interface, so a new modality (as the pen trajectories at the end of this
file, a sensor's time series) is added by registering a subclass in MODALITIES, not by editing the pipeline.

What a deployed model needs of a modality (input checks, features from one raw input, the
contract) is its torch-free half, a `Signal` registered in SIGNALS under the same name
(racmkd.data.signals); a Modality holds its signal and delegates those to it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from racmkd.config import PROTOCOLS, ConfigError, DataConfig, from_dict
from racmkd.data import audio as dsp
from racmkd.data.download import download_fsdd, download_mnist, download_pendigits
from racmkd.data.fsdd import FSDD_SAMPLE_RATE, load_fsdd
from racmkd.data.image import center_crop, fit_pca, pca_reconstruct, random_affine, resize
from racmkd.data.mnist import load_mnist
from racmkd.data.options import AudioOptions, ImageOptions, PenOptions
from racmkd.data.paths import DataError
from racmkd.data.pendigits import FILES as PEN_FILES
from racmkd.data.pendigits import load_pendigits
from racmkd.data.signals import AudioSpec, ImageSpec, PenSpec, Signal, fix_length, pen_trace, resample
from racmkd.registry import MODALITIES, SIGNALS

SPLITS = ("train", "val", "test")


@dataclass
class Bank:
    """The raw items of one modality in one split."""

    data: torch.Tensor  # (R, ...) in the modality's storage dtype
    labels: torch.Tensor  # (R,) int64 class
    ids: list[str]  # stable identifiers (file names), used to prove no item crosses splits
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # per-item side information

    def __len__(self) -> int:
        return len(self.labels)


class Modality(ABC):
    """One input modality. Subclasses set the class attributes and implement the abstract methods."""

    name: ClassVar[str]
    options_type: ClassVar[type]  # frozen dataclass of the options under data.options.<name>
    teacher_encoder: ClassVar[str]  # MODELS names of the encoders for this kind of input
    student_encoder: ClassVar[str]
    # The folders under the data root that `load_banks` reads (the dataset cache's key fingerprints
    # them); empty: the whole root.
    data_folders: ClassVar[tuple[str, ...]] = ()
    # Bump when `load_banks` makes other items from the same files and options (a plug-in's own
    # CACHE_VERSION: the dataset cache's key holds it; the built-in modalities share the cache's).
    cache_version: ClassVar[int] = 0

    def __init__(self, protocol: str = "clean", **options: Any) -> None:
        if protocol not in PROTOCOLS:
            raise ConfigError(f"data.protocol: unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        self.protocol = protocol
        self.options = from_dict(self.options_type, options, where=f"data.options.{self.name}")
        self.signal: Signal = SIGNALS.create(self.name)  # the deployment half: checks, features, contract

    @property
    def spec_type(self) -> type:
        """Frozen dataclass of the feature knobs a model is built for (the signal's)."""
        return self.signal.spec_type

    # Dataset side ---------------------------------------------------------------------------------

    @abstractmethod
    def load_banks(self, root: Path, cfg: DataConfig) -> dict[str, Bank]:
        """Raw items for 'train', 'val' and 'test', read from the data root."""

    def download(self, root: Path) -> None:
        """Fetch this modality's dataset from its official source into `root` (`racmkd data
        --download`), checked before it is kept; files already there and valid are kept."""
        raise DataError(f"{self.name}: no download; put its data under {root} by hand ({', '.join(self.data_folders) or 'see the modality'})")

    def fit(self, train: Bank) -> None:
        """Learn from the training items what this modality's specs carry (a sensor's principal
        axes, for PCA): the dataset calls it once it holds the banks, built or read from the cache.
        Nothing to learn by default."""

    def degrade_banks(self, banks: dict[str, Bank]) -> tuple[dict[str, Bank], dict[str, Any]]:
        """The protocol's static degradation of the stored items (fitted on train); info for the report."""
        return banks, {}

    def gather(self, bank: Bank, rows: torch.Tensor) -> torch.Tensor:
        """Raw float inputs for some rows of a bank."""
        return bank.data[rows].float()

    def corrupt(self, raw: torch.Tensor, extra: dict[str, torch.Tensor], generator: torch.Generator | None, seeds: torch.Tensor | None) -> torch.Tensor:
        """The protocol's per-sample degradation, drawn fresh from `generator` (training) or from one
        fixed seed per sample (`seeds`, validation and test)."""
        return raw

    # The benchmark suite's robustness sweeps (the seed's eq. 25): one degradation per modality, at
    # levels the suite names, instead of the protocol's. A modality without one is only withheld.
    degradation: ClassVar[str] = ""  # what a level means, for the report ("": no sweep)
    degradation_column: ClassVar[str] = "{level}"  # a level's column heading, after the modality's name
    degradation_levels: ClassVar[tuple[float, ...]] = ()  # the levels the suite sweeps unless told others

    def degraded(self, clean: torch.Tensor, extra: dict[str, torch.Tensor], level: float, seeds: list[int]) -> torch.Tensor:
        """Raw inputs gathered from a bank (`gather`), at one level of this modality's degradation, its
        noise drawn from each sample's fixed seed: every model sees the same degraded sample."""
        raise NotImplementedError(f"{self.name}: no degradation for the robustness sweeps (set `degradation` and write `degraded`)")

    # Model side (shared by training, evaluation and the predictor) ---------------------------------

    @abstractmethod
    def spec(self, level: int = 0) -> Any:
        """Feature knobs at a resolution level: 0 is full resolution, higher levels are cheaper."""

    @property
    @abstractmethod
    def n_levels(self) -> int:
        """How many resolution levels `spec` knows."""

    @abstractmethod
    def features(self, raw: torch.Tensor, spec: Any, augment_seed: int | None = None, memo: dict | None = None) -> torch.Tensor:
        """Model input (B, C, ...) from raw inputs; with `augment_seed`, a training augmentation drawn
        from that seed (so every model of a batch sees the same augmented sample). `memo` is scratch
        space shared by calls on the same raw batch, for intermediate results several specs share."""

    def check_bank_spec(self, spec: Any) -> None:
        """Refuse a spec (a saved model's) whose raw inputs are not what this modality's banks hold,
        before its features are computed from them (training, evaluation, fine-tuning); serving
        converts raw inputs by the spec itself and needs no such check."""

    def feature_shape(self, spec: Any) -> tuple[int, ...]:
        """Shape of one sample of `features` (without the batch dimension)."""
        return self.signal.feature_shape(spec)

    def to_raw(self, value: Any, spec: Any, sample_rate: int | None = None) -> torch.Tensor:
        """Check one user input and convert it to a raw batch of one, as `gather` returns."""
        return torch.from_numpy(self.signal.to_raw(value, spec, sample_rate=sample_rate))

    def spec_from_dict(self, values: dict[str, Any]) -> Any:
        """A spec saved in a checkpoint, read back."""
        return self.signal.spec_from_dict(values)

    # Input-side compression -----------------------------------------------------------------------

    reductions: ClassVar[dict[str, str]] = {}  # knob -> what lowering it does; the knobs compression and the runtime turn

    def reduce(self, spec: Any, **knobs: Any) -> Any:
        """A cheaper spec: `spec` with some `reductions` knobs lowered (checked by `check_reduction`)."""
        unknown = set(knobs) - set(self.reductions)
        if unknown:
            raise ValueError(f"{self.name}: unknown input reduction(s) {sorted(unknown)}; this modality knows {sorted(self.reductions)}")
        for k, v in knobs.items():  # a knob takes what the spec holds: a whole number, or a list of them
            listed = isinstance(getattr(spec, k), tuple)
            values = (v if isinstance(v, (list, tuple)) else None) if listed else [v]
            if values is None or not all(isinstance(x, int) and not isinstance(x, bool) for x in values):
                raise ValueError(f"{self.name}: input reduction {k}={v!r}: expected {'a list of whole numbers' if listed else 'a whole number'}")
        reduced = dataclasses.replace(spec, **{k: tuple(v) if isinstance(v, list) else v for k, v in knobs.items()})
        self.check_reduction(spec, reduced)
        return reduced

    def check_reduction(self, spec: Any, reduced: Any) -> None:
        """Raise ValueError when `reduced` is not a valid, no larger input than `spec`."""
        if math.prod(self.feature_shape(reduced)) > math.prod(self.feature_shape(spec)):
            raise ValueError(f"{self.name}: {reduced} is larger than {spec}, not a reduction")

    def input_quality(self, raw: Any) -> float:
        """The signal's: 0 for a dead input (a constant image or noise alone, silence or no speech), else 1."""
        return self.signal.input_quality(np.asarray(raw))

    def contract(self, spec: Any) -> dict[str, Any]:
        """The preprocessing a runtime must apply to raw inputs for a model built for `spec` (the
        signal's), and what the protocol made of the inputs the model learnt from where a raw input
        of the same kind is not what it saw (`trained_on`)."""
        note = self.trained_on()
        return {**self.signal.contract(spec), **({"trained_on": note} if note else {})}

    def trained_on(self) -> str | None:
        """How the protocol's training inputs differ from raw ones of the same kind, or None."""
        return None


def seeded_noise(shape: tuple[int, ...] | torch.Size, seeds: list[int], offset: int) -> torch.Tensor:
    """Standard normal noise (B, *shape), sample i's drawn from seed seeds[i] + offset (a modality's
    own stream: the noise of one modality does not follow another's)."""
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed + offset)) for seed in seeds])


# ------------------------------------------------------------------------------------------------
# Images: MNIST digits.


@MODALITIES.register("image")
class ImageModality(Modality):
    """28x28 grey digit images; avmnist keeps only the leading PCA components (~75% of the energy gone)."""

    name = "image"
    options_type = ImageOptions
    teacher_encoder = "cnn2d"
    student_encoder = "dscnn2d"
    data_folders = ("mnist",)

    def download(self, root: Path) -> None:
        download_mnist(root)

    size = 28  # the digits' side, in pixels

    def load_banks(self, root: Path, cfg: DataConfig) -> dict[str, Bank]:
        train_images, train_labels = load_mnist(root / "mnist", "train")
        test_images, test_labels = load_mnist(root / "mnist", "test")
        if not 0 < cfg.val_images < len(train_images):
            raise ConfigError(f"data.val_images: {cfg.val_images} must be between 1 and {len(train_images) - 1}")
        order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(cfg.seed))
        val_rows, train_rows = order[: cfg.val_images].sort().values, order[cfg.val_images :].sort().values

        def bank(images: np.ndarray, labels: np.ndarray, rows: torch.Tensor, prefix: str) -> Bank:
            return Bank(
                torch.from_numpy(images[rows.numpy()].copy()), torch.from_numpy(labels[rows.numpy()].astype(np.int64)), [f"{prefix}-{int(r)}" for r in rows]
            )

        everything = torch.arange(len(test_images))
        return {
            "train": bank(train_images, train_labels, train_rows, "mnist-train"),
            "val": bank(train_images, train_labels, val_rows, "mnist-train"),
            "test": bank(test_images, test_labels, everything, "mnist-test"),
        }

    def degrade_banks(self, banks: dict[str, Bank]) -> tuple[dict[str, Bank], dict[str, Any]]:
        if self.protocol != "avmnist":
            return banks, {}
        train = banks["train"].data.numpy()
        pca, kept = fit_pca(train, self.options.pca_variance)
        degraded = {split: Bank(torch.from_numpy(pca_reconstruct(b.data.numpy(), pca, kept)), b.labels, b.ids, b.extra) for split, b in banks.items()}
        flat = train.reshape(len(train), -1).astype(np.float64) / 255.0
        recon = degraded["train"].data.numpy().reshape(len(train), -1).astype(np.float64) / 255.0
        centred = ((flat - flat.mean(0)) ** 2).sum()
        info = {
            "pca_components": kept,
            "pca_explained_variance": float(np.sum(pca.explained_variance_ratio_[:kept])),
            "energy_removed": float(((flat - recon) ** 2).sum() / centred),  # share of the train images' variance removed
        }
        return degraded, info

    def gather(self, bank: Bank, rows: torch.Tensor) -> torch.Tensor:
        return bank.data[rows].float() / 255.0  # (B, 28, 28) in [0, 1]

    def trained_on(self) -> str | None:
        if self.protocol != "avmnist":
            return None
        return f"MNIST digits rebuilt from the principal components keeping {self.options.pca_variance:g} of their variance (AV-MNIST; docs/contract.md)"

    degradation = "added white noise, its standard deviation on [0, 1] (clipped)"
    degradation_column = "noise {level}"
    degradation_levels = (0.0, 0.1, 0.2, 0.3, 0.5)

    def degraded(self, clean: torch.Tensor, extra: dict[str, torch.Tensor], level: float, seeds: list[int]) -> torch.Tensor:
        if level == 0:
            return clean
        return (clean + level * seeded_noise(clean.shape[1:], seeds, offset=11)).clamp(0.0, 1.0)

    @property
    def n_levels(self) -> int:
        return len(self.options.levels)

    def spec(self, level: int = 0) -> ImageSpec:
        return ImageSpec(crop=self.options.crop, resolution=self.options.levels[level])

    def features(self, raw: torch.Tensor, spec: ImageSpec, augment_seed: int | None = None, memo: dict | None = None) -> torch.Tensor:
        if augment_seed is not None:
            o = self.options
            raw = random_affine(raw, torch.Generator().manual_seed(augment_seed), o.rotation_deg, o.shift, o.zoom)
        return resize(center_crop(raw, spec.crop), spec.resolution).unsqueeze(1)  # (B, 1, res, res)

    reductions = {
        "resolution": "side of the square input (24 -> 16 -> 12 -> 8)",
        "crop": "centre region of interest, in pixels of the 28x28 digit, before resizing",
    }

    def check_reduction(self, spec: ImageSpec, reduced: ImageSpec) -> None:
        super().check_reduction(spec, reduced)
        if not 1 <= reduced.resolution or not reduced.resolution <= reduced.crop <= self.size:
            raise ValueError(f"image: need 1 <= resolution <= crop <= {self.size}, got resolution {reduced.resolution}, crop {reduced.crop}")


# ------------------------------------------------------------------------------------------------
# Audio: spoken digits.


@functools.lru_cache(maxsize=32)
def _filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    return dsp.mel_filterbank(n_freqs, n_mels, sample_rate, f_min, f_max)


@MODALITIES.register("audio")
class AudioModality(Modality):
    """Spoken-digit recordings as log-mel spectrograms; avmnist adds white noise at 0-10 dB SNR."""

    name = "audio"
    options_type = AudioOptions
    teacher_encoder = "cnn2d"
    student_encoder = "dscnn2d"
    data_folders = ("fsdd",)

    def download(self, root: Path) -> None:
        download_fsdd(root)

    @property
    def samples(self) -> int:
        return int(round(self.options.sample_rate * self.options.duration))

    def load_banks(self, root: Path, cfg: DataConfig) -> dict[str, Bank]:
        recordings = load_fsdd(root / "fsdd" / "recordings")
        (val_lo, val_hi), (test_lo, test_hi) = self.options.val_repetitions, self.options.test_repetitions
        if not (val_hi < test_lo or test_hi < val_lo):
            raise ConfigError(f"data.options.audio: val_repetitions {self.options.val_repetitions} overlap test_repetitions {self.options.test_repetitions}")

        def split_of(index: int) -> str:
            return "test" if test_lo <= index <= test_hi else "val" if val_lo <= index <= val_hi else "train"

        grouped: dict[str, list] = {s: [] for s in SPLITS}
        for rec in recordings:
            grouped[split_of(rec.index)].append(rec)
        banks = {}
        for split, recs in grouped.items():
            if not recs:
                raise DataError(
                    f"FSDD: no recording falls in the {split} split (repetitions {self.options.val_repetitions} val, {self.options.test_repetitions} test)"
                )
            windows, spans, power = [], [], []
            for rec in recs:
                window, start, end = fix_length(self._at_rate(rec.samples), self.samples)
                windows.append(torch.from_numpy(window))
                spans.append((start, end))
                # The SNR is over what the model hears: the recording's part in the window. Over the
                # whole of it, the 20 recordings longer than a second got noise 0.1-3 dB off the SNR
                # drawn, and two (7_theo_36, 9_theo_16, mostly silence at their centre, which was their
                # window until windows were a recording's loudest second) 21-25 dB.
                power.append(float(np.mean((window[start:end].astype(np.float64) / 32768.0) ** 2)))
            banks[split] = Bank(
                torch.stack(windows),  # (R, samples) int16
                torch.tensor([r.digit for r in recs], dtype=torch.int64),
                [r.name for r in recs],
                {"span": torch.tensor(spans, dtype=torch.int64), "power": torch.tensor(power, dtype=torch.float32)},
            )
        return banks

    def _at_rate(self, samples: np.ndarray) -> np.ndarray:
        """A recording (int16 at FSDD's 8 kHz) at the configured sample rate, as a runtime given an
        8 kHz waveform resamples it (racmkd.data.signals.resample)."""
        if self.options.sample_rate == FSDD_SAMPLE_RATE:
            return samples.astype(np.int16)
        wave = resample(samples.astype(np.float32) / 32768.0, FSDD_SAMPLE_RATE, self.options.sample_rate)
        return np.clip(np.round(wave * 32768.0), -32768, 32767).astype(np.int16)

    def gather(self, bank: Bank, rows: torch.Tensor) -> torch.Tensor:
        return bank.data[rows].float() / 32768.0  # (B, samples) in [-1, 1]

    def trained_on(self) -> str | None:
        if self.protocol != "avmnist":
            return None
        lo, hi = self.options.snr_db
        return f"recordings mixed with white noise at {lo:g}-{hi:g} dB SNR (AV-MNIST; docs/contract.md)"

    def corrupt(self, raw: torch.Tensor, extra: dict[str, torch.Tensor], generator: torch.Generator | None, seeds: torch.Tensor | None) -> torch.Tensor:
        if self.protocol != "avmnist":
            return raw
        lo, hi = self.options.snr_db
        b, n = raw.shape
        if seeds is None:  # training: fresh draws
            snr = lo + (hi - lo) * torch.rand(b, generator=generator)
            noise = torch.randn(b, n, generator=generator)
        else:  # evaluation: one fixed draw per sample
            snr, noise = torch.empty(b), torch.empty(b, n)
            for i, seed in enumerate(seeds.tolist()):
                g = torch.Generator().manual_seed(int(seed))
                snr[i] = lo + (hi - lo) * torch.rand(1, generator=g)
                noise[i] = torch.randn(n, generator=g)
        return self.add_noise(raw, extra, snr, noise)

    degradation = "white noise at a fixed SNR in dB over the clean recording (inf: the recording as it is)"
    degradation_column = "{level} dB"
    degradation_levels = (-5.0, 0.0, 5.0, 10.0, 20.0, math.inf)

    def degraded(self, clean: torch.Tensor, extra: dict[str, torch.Tensor], level: float, seeds: list[int]) -> torch.Tensor:
        if math.isinf(level):
            return clean
        return self.add_noise(clean, extra, torch.full((len(clean),), float(level)), seeded_noise(clean.shape[1:], seeds, offset=7))

    def add_noise(self, raw: torch.Tensor, extra: dict[str, torch.Tensor], snr_db: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Recordings (B, n) with unit white `noise` (B, n) scaled to each one's SNR (B,) in dB, over the
        recording itself, not the zero padding around it (the avmnist corruption; the benchmark's SNR
        sweep), then placed again on their noisy energy, as the predictor places a noisy recording
        (`dsp.centre_on_energy`)."""
        positions = torch.arange(raw.shape[1])
        inside = (positions >= extra["span"][:, :1]) & (positions < extra["span"][:, 1:])
        std = dsp.noise_std_for_snr(extra["power"], snr_db)
        return dsp.centre_on_energy(raw + noise * std[:, None] * inside)

    @property
    def n_levels(self) -> int:
        return len(self.options.levels)

    def spec(self, level: int = 0) -> AudioSpec:
        o = self.options
        n_mels, n_frames = o.levels[level]
        return AudioSpec(o.sample_rate, self.samples, o.n_fft, o.win_length, o.hop_length, o.f_min, o.f_max, n_mels, n_frames)

    def check_bank_spec(self, spec: AudioSpec) -> None:
        if spec.window != "speech":  # (the banks' windows are fix_length's default; the spec came from a saved model)
            raise DataError(
                f"audio: this model learned recordings placed the {spec.window!r} way (it was made before AudioSpec.window), the dataset places them "
                "the 'speech' way (centred on the speech): train it again on this data (`racmkd run`; a benchmark's saved run or teachers: "
                "remove that folder) to evaluate, fine-tune, compress, export or bank it. An artifact already exported needs nothing: its "
                "predictor places each recording as the model learned it"
            )

    def features(self, raw: torch.Tensor, spec: AudioSpec, augment_seed: int | None = None, memo: dict | None = None) -> torch.Tensor:
        key = ("power", spec.n_fft, spec.win_length, spec.hop_length)  # every mel/frame count shares the spectrogram
        if memo is not None and key in memo:
            power = memo[key]
        else:
            power = dsp.power_spectrogram(dsp.peak_normalise(raw), spec.n_fft, spec.win_length, spec.hop_length)
            if augment_seed is not None:
                g, b = torch.Generator().manual_seed(augment_seed), raw.shape[0]
                rate = 1.0 + (torch.rand(b, generator=g) * 2 - 1) * self.options.stretch
                pitch = torch.pow(2.0, (torch.rand(b, generator=g) * 2 - 1) * self.options.semitones / 12.0)
                power = dsp.stretch_and_shift(power, rate, pitch)
            if memo is not None:
                memo[key] = power
        bank = _filterbank(power.shape[1], spec.n_mels, spec.sample_rate, spec.f_min, spec.f_max)
        features = dsp.log_mel(power, bank, spec.n_frames)  # (B, n_mels, n_frames)
        if augment_seed is not None and self.options.masks > 0:  # on all the bands, before selection: the same spans whatever the spec
            features = dsp.spec_augment(features, self.options.masks, self.options.mask_fraction, torch.Generator().manual_seed(augment_seed))
        if spec.bands:
            features = features[:, list(spec.bands)]  # (B, len(bands), n_frames)
        return features.unsqueeze(1)  # (B, 1, n_mels, n_frames)

    reductions = {
        "n_mels": "mel bands (64 -> 32 -> 16 -> 8)",
        "n_frames": "frames, by temporal average pooling (32 -> 16 -> 8)",
        "bands": "which mel bands are kept (band selection, most informative first)",
    }

    def check_reduction(self, spec: AudioSpec, reduced: AudioSpec) -> None:
        super().check_reduction(spec, reduced)
        if reduced.n_mels < 1 or reduced.n_frames < 1:
            raise ValueError(f"audio: n_mels and n_frames must be positive, got {reduced.n_mels}, {reduced.n_frames}")
        if any(not 0 <= b < reduced.n_mels for b in reduced.bands) or len(set(reduced.bands)) != len(reduced.bands):
            raise ValueError(f"audio: bands must be distinct indices below n_mels={reduced.n_mels}, got {list(reduced.bands)}")
        if spec.bands and reduced.bands == spec.bands and reduced.n_mels != spec.n_mels:
            # (the same indices of another filterbank are other frequencies: the model would read bands it never learnt, its input no smaller)
            raise ValueError(
                f"audio: the kept bands {list(spec.bands)} are rows of the {spec.n_mels}-band filterbank; lowering n_mels to {reduced.n_mels} would keep other frequencies under the same indices. Lower n_mels before selecting bands, not after"
            )


# ------------------------------------------------------------------------------------------------
# Pen trajectories: a sensor's time series (the UCI pen digits, written on a tablet).


@MODALITIES.register("pen")
class PenModality(Modality):
    """Pen trajectories, resampled along their path to a fixed number of points (racmkd.data.signals.
    pen_trace), read window by window. The dataset's split is by writer; validation holds out some of
    the training file's writers, so that it is writer-independent too. Neither protocol degrades the
    trajectories: avmnist degrades the image and the audio."""

    name = "pen"
    options_type = PenOptions
    teacher_encoder = "cnn2d"  # a (3, statistics, windows) input: x, y and pen down as channels
    student_encoder = "dscnn2d"
    data_folders = ("pendigits",)

    def download(self, root: Path) -> None:
        download_pendigits(root)

    def load_banks(self, root: Path, cfg: DataConfig) -> dict[str, Bank]:
        folder, (lo, hi) = root / "pendigits", self.options.val_writers
        grouped: dict[str, list] = {"train": [], "val": [], "test": load_pendigits(folder, "test")}
        for digit in load_pendigits(folder, "train"):
            grouped["val" if lo <= digit.writer <= hi else "train"].append(digit)
        banks = {}
        for split, digits in grouped.items():
            file = PEN_FILES["test" if split == "test" else "train"]
            if not digits:
                raise ConfigError(f"data.options.pen.val_writers {[lo, hi]}: leaves no writer of {folder / file} to the {split} split")
            traces = np.stack([pen_trace(d.points, self.options.samples) for d in digits])  # (R, 3, samples) float32
            banks[split] = Bank(torch.from_numpy(traces), torch.tensor([d.digit for d in digits], dtype=torch.int64), [f"{file}#{d.item}" for d in digits])
        return banks

    degradation = "added white noise on x and y, its standard deviation as a share of the digit's longer side"
    degradation_column = "noise {level}"
    degradation_levels = (0.0, 0.05, 0.1, 0.2)

    def degraded(self, clean: torch.Tensor, extra: dict[str, torch.Tensor], level: float, seeds: list[int]) -> torch.Tensor:
        if level == 0:
            return clean
        noise = seeded_noise(clean.shape[1:], seeds, offset=17)
        noise[:, 2] = 0  # (whether the pen was down is the tablet's, not a measurement)
        return clean + level * noise

    @property
    def n_levels(self) -> int:
        return len(self.options.levels)

    def spec(self, level: int = 0) -> PenSpec:
        return PenSpec(self.options.samples, *self.options.levels[level])

    def features(self, raw: torch.Tensor, spec: PenSpec, augment_seed: int | None = None, memo: dict | None = None) -> torch.Tensor:
        if augment_seed is not None:  # the digit turned and scaled a little about its centre
            g, b = torch.Generator().manual_seed(augment_seed), raw.shape[0]
            angle = (torch.rand(b, generator=g) * 2 - 1) * math.radians(self.options.rotation_deg)
            scale = 1 + (torch.rand(b, generator=g) * 2 - 1) * self.options.zoom
            cos, sin = (torch.cos(angle) * scale)[:, None], (torch.sin(angle) * scale)[:, None]
            x, y = raw[:, 0], raw[:, 1]
            raw = torch.stack([cos * x - sin * y, sin * x + cos * y, raw[:, 2]], dim=1)
        mean = F.adaptive_avg_pool1d(raw, spec.length)  # (B, 3, windows)
        if spec.statistics == 1:
            return mean.unsqueeze(2)  # (B, 3, 1, windows)
        wide = raw.double()  # (E[x^2] - E[x]^2 cancels in float32; see racmkd.data.signals.window_statistics)
        wide_mean = F.adaptive_avg_pool1d(wide, spec.length)
        spread = torch.sqrt(torch.clamp(F.adaptive_avg_pool1d(wide * wide, spec.length) - wide_mean * wide_mean, min=0.0)).to(mean.dtype)
        return torch.stack([mean, spread], dim=2)  # (B, 3, 2, windows)

    # Statistical aggregation (`statistics`, mean and spread per window) is a level's design, not a
    # reduction: a network trained on means has no weights for spreads (lowered after training, its
    # single-row kernels read the spread row through the means' weights, or dropped it).
    reductions = {"length": "windows along the path, by average pooling (32 -> 16 -> 8 -> 4)"}
