"""Typed, frozen configuration for every stage of the pipeline.

YAML files in `configs/` only fill values of these dataclasses; the command line overrides single
fields (`--set students.train.epochs=2`). Every value is type-checked on load, and an unknown or
mistyped key is an error that names the file, the field and the closest valid names.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import reprlib
import types
import typing
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from racmkd.registry import did_you_mean

C = TypeVar("C")


def finite_number(x: object) -> bool:
    """A real, finite number: an int or float, not a bool (True is 1 to Python), NaN or infinite."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the file, the field and the fix."""

    where: str | None = None  # the dotted field a value check failed at (`students.tiers[0].epochs`), when known


# --------------------------------------------------------------------------------------------------
# The dataclasses, in pipeline order.


PROTOCOLS = ("clean", "avmnist")  # how the data is prepared (README: The pipeline, 1. Data)
MAX_SEED = 2**32  # what every generator takes (a larger seed was refused by torch, with no field named, after the run folder was made)
MAX_THREADS = 256  # a thread setting beyond it is a typo: 100000 ONNX Runtime threads hung the process


def check_seed(seed: int, where: str) -> None:
    """ConfigError unless `seed` is one every random generator takes."""
    if not 0 <= seed < MAX_SEED:
        raise ConfigError(f"{where} must be in [0, 2**32), got {seed}")


@dataclass(frozen=True)
class DataConfig:
    """Which data, which protocol, and how it is split and paired."""

    protocol: str = "avmnist"  # "clean" | "avmnist" (PCA-degraded images, noisy audio)
    modalities: tuple[str, ...] = ("image", "audio")  # names in racmkd.registry.MODALITIES
    root: str = ""  # "" -> $RACMKD_DATA, else ../shared/data if it exists, else ./data
    cache_dir: str = ".cache/racmkd"  # decoded and degraded data are cached here
    # The dataset caches there may hold this much together (GB; one AV-MNIST cache is 0.1): writing
    # a new one removes the least recently used beyond it. 0 keeps every one.
    cache_max_gb: float = 2.0
    seed: int = 0  # split, pairing and fixed-noise seed
    val_images: int = 10000  # carved out of MNIST train (the rest, 50,000, is train)
    max_train: int = 0  # 0 = all; small values make smoke runs and tests fast
    max_eval: int = 0  # 0 = all validation / test samples
    augment: bool = True  # training-time augmentation of every modality
    # Per-modality options, validated by the modality's own options dataclass
    # (e.g. image: {pca_variance: 0.25}, audio: {snr_db: [0, 10], levels: [[64, 32], [32, 16]]}).
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_seed(self.seed, "data.seed")
        if self.protocol not in PROTOCOLS:  # (refused when the dataset was built, naming no file)
            raise ConfigError(f"unknown protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}.{did_you_mean(self.protocol, PROTOCOLS)}")
        if self.max_train < 0 or self.max_eval < 0:
            raise ConfigError(f"max_train and max_eval must be >= 0 (0 = all samples), got {self.max_train} and {self.max_eval}")
        if not self.cache_max_gb >= 0:  # (NaN fails too)
            raise ConfigError(f"cache_max_gb must be >= 0 (0 = keep every cache), got {self.cache_max_gb}")
        if len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"modalities names a modality twice: {list(self.modalities)}; name each once")


@dataclass(frozen=True)
class TrainConfig:
    """One optimisation run (AdamW, one-cycle learning rate)."""

    epochs: int = 3
    batch_size: int = 128
    samples_per_epoch: int = 0  # 0: the whole training split each epoch; fewer for shorter runs (the benchmark suite)
    lr: float = 3e-3
    weight_decay: float = 1e-4
    modality_dropout: float = 0.0  # per-sample chance to hide a modality (never all of them)
    label_smoothing: float = 0.0
    # Arithmetic of the forward passes: "fp32", "bf16" autocast, or "auto" (bf16 where oneDNN has it).
    # bf16 halves a teacher's time on CPUs with AVX512-BF16 but triples a tiny student's (casts dominate).
    precision: str = "fp32"
    # Mixup: each batch is mixed with a permutation of itself, lam ~ Beta(mixup, mixup); 0 = off.
    # Distilled students and their teachers see the same mix ("function matching", Beyer et al.
    # 2022): on a mix the teacher's answer is informative even where it memorised the samples.
    mixup: float = 0.0

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "auto"):
            raise ConfigError(f"precision {self.precision!r}: choose fp32, bf16 or auto")
        # No training means no model: an `epochs: 0` was refused by the trainer only when its stage
        # began, after the stages before it had run (the students' after the teachers' minutes).
        if self.batch_size < 1 or self.epochs < 1 or self.samples_per_epoch < 0:
            raise ConfigError(
                f"batch_size and epochs must be >= 1, samples_per_epoch >= 0 (0: the whole training split); got {self.batch_size}, {self.epochs}, {self.samples_per_epoch}"
            )
        if not (0 < self.lr < math.inf and 0 <= self.weight_decay < math.inf and 0 <= self.modality_dropout < 1 and 0 <= self.label_smoothing < 1):
            raise ConfigError(
                f"need lr > 0, weight_decay >= 0, modality_dropout and label_smoothing in [0, 1); got {self.lr}, {self.weight_decay}, {self.modality_dropout}, {self.label_smoothing}"
            )
        # Beta(inf, inf) draws NaN: every mixed batch, and so every weight, went NaN without an error.
        if not 0 <= self.mixup < math.inf:
            raise ConfigError(f"mixup must be a finite number >= 0 (0 turns mixing off), got {self.mixup}")


@dataclass(frozen=True)
class TeacherConfig:
    """The cloud-tier teacher: one CNN encoder per modality plus a fusion MLP."""

    # Channels of the first conv, doubled at each stage: one number for every modality, or per
    # modality (32 if absent).
    width: int | dict[str, int] = 32
    depth: dict[str, int] = field(default_factory=lambda: {"audio": 2})  # convolutions per stage, per modality (1 if absent)
    # Input-resolution level per modality (0, full resolution, if absent): the teachers may see a
    # cheaper input than the students' richest. Teachers are the run's costliest stage on a CPU, and
    # most of it is the audio teacher's 64-band spectrogram; students keep their own levels.
    level: dict[str, int] = field(default_factory=dict)
    embed_dim: int = 128  # per-modality embedding size
    fusion_hidden: int = 256
    dropout: float = 0.2
    unimodal: TrainConfig = TrainConfig(epochs=2, precision="auto")  # image-only and audio-only teachers
    # the fusion on top of the unimodal encoders; its precision is also the teachers' during distillation
    fused: TrainConfig = TrainConfig(epochs=1, modality_dropout=0.25, precision="auto")
    freeze_encoders: bool = True  # the fused teacher trains its fusion only, on the unimodal teachers' encoders

    def __post_init__(self) -> None:
        widths = list(self.width.values()) if isinstance(self.width, dict) else [self.width]
        if min(widths + list(self.depth.values()), default=1) < 1:
            raise ConfigError(f"teacher.width and teacher.depth must be >= 1 (one number, or per modality), got width {self.width}, depth {self.depth}")
        # These reach torch only when the first teacher is built (or, for dropout, trained), whose
        # errors name no setting; an embedding of 0 even trains, on nothing.
        if self.embed_dim < 1:
            raise ConfigError(f"teacher.embed_dim must be >= 1 (each modality's embedding size), got {self.embed_dim}")
        if self.fusion_hidden < 0:
            raise ConfigError(
                f"teacher.fusion_hidden must be >= 0 (0: no hidden layer, the embeddings go straight to the classifier), got {self.fusion_hidden}"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"teacher.dropout must be in [0, 1) (the fusion layer's dropout probability), got {self.dropout}")


# A tier's name is the file stem of its students' checkpoints (checkpoints/<tier>.pt and
# <tier>_labels_only.pt), of its compressed folder (compressed/<tier>/) and of its report rows
# (<tier>, <tier>_labels_only, <tier>_compressed). So it is a plain file name, and none of the names
# the run gives its other models, whose files it would overwrite (a tier named `teacher` replaced the
# fused teacher's checkpoint with its student): the teachers (racmkd.pipeline.TEACHER and
# teacher_<modality>), the benchmark's baselines (racmkd.eval.baselines: standard_kd, emd_kd,
# mobilenetv3, tinyml, tinyml_<tier>, kd_align, kd_align_resource, transfer_<modality>_*) and `edge`, the name a
# release takes for the run's variant bank (racmkd.deploy.orchestrator.artifact_from_run).
TIER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
RESERVED_NAMES = ("teacher", "edge", "standard_kd", "emd_kd", "mobilenetv3", "tinyml", "kd_align", "kd_align_resource")
RESERVED_PREFIXES = ("teacher_", "tinyml_", "transfer_")
RESERVED_SUFFIXES = ("_labels_only", "_compressed")


@dataclass(frozen=True)
class TierConfig:
    """One resource tier: a size budget, and optionally a fixed student design."""

    name: str
    budget_bytes: int  # fp32 parameter bytes
    modalities: tuple[str, ...] = ()  # () -> chosen by measurement (see SelectionConfig)
    scale: int = -1  # input-resolution level; -1 -> chosen by measurement
    depth: int = 0  # blocks per encoder stage; 0 -> chosen by measurement
    # Among candidates within selection.tolerance of the best: "flops" takes the cheapest, "capacity"
    # the one with the most parameters. A 100-step proxy training cannot tell a deeper student from
    # a shallower one (on avmnist, high's d2 and d3 tied within 0.1 point in three seeds of four) but
    # full distillation can (0.984 for d3 vs 0.972-0.979 for d2): the tier whose job is accuracy says "capacity".
    ties: str = "flops"
    # Distillation epochs for this tier's students; 0 = students.train.epochs. The smallest student
    # (4K parameters) was still climbing after 4 epochs, and one seed's distilled student ended
    # below its label-only twin (0.9274 vs 0.9343); with 8, 0.9449 vs 0.9413 (measured, seed 0).
    epochs: int = 0
    # Round every layer's channels of this tier's students to a multiple of this (1: as the width
    # gives them). ONNX Runtime runs aligned channel counts much faster (the 1 MB student at batch 1:
    # 0.32 ms with 64/128/248 channels, 0.88-0.91 ms with 63/126/252); where a budget is small the
    # rounding costs capacity: at 64 KB, multiples of 8 leave 12,586 of 15,282 parameters, at 16 KB
    # 2,922 of 4,050 (at 1 MB, 259,530 of 260,956). The compression recipes' pruning aligns every
    # tier's deployed artifact to multiples of 4 anyway; this is for students deployed as trained.
    channel_multiple: int = 1

    def __post_init__(self) -> None:
        if not TIER_NAME.fullmatch(self.name):
            raise ConfigError(
                f"tier {self.name!r}: name it with 1-64 letters, digits, '_' or '-', starting with a letter or digit (e.g. high, edge-16k): the name is its checkpoints' file name"
            )
        folded = self.name.lower()  # on a case-insensitive file system Teacher.pt is teacher.pt
        if folded in RESERVED_NAMES or folded.startswith(RESERVED_PREFIXES) or folded.endswith(RESERVED_SUFFIXES):
            raise ConfigError(
                f"tier {self.name!r}: the name is taken by the run's other models, whose checkpoints and report rows the tier's would overwrite; rename the tier: not {', '.join(RESERVED_NAMES)}, not starting with {', '.join(RESERVED_PREFIXES)}, not ending in {', '.join(RESERVED_SUFFIXES)}"
            )
        if self.budget_bytes <= 0:
            raise ConfigError(f"tier {self.name!r}: budget_bytes must be positive (fp32 parameter bytes), got {self.budget_bytes}")
        if self.ties not in ("flops", "capacity"):
            raise ConfigError(f"tier {self.name!r}: ties {self.ties!r}: choose flops or capacity")
        if self.epochs < 0:
            raise ConfigError(f"tier {self.name!r}: epochs must be >= 0 (0 = students.train.epochs), got {self.epochs}")
        if self.channel_multiple < 1:
            raise ConfigError(f"tier {self.name!r}: channel_multiple must be >= 1 (1 = no rounding), got {self.channel_multiple}")
        if self.scale < -1 or self.depth < 0:  # any other negative value was read as "chosen by measurement"
            raise ConfigError(
                f"tier {self.name!r}: scale must be >= -1 (-1 = chosen by measurement) and depth >= 0 (0 = chosen by measurement), got scale {self.scale}, depth {self.depth}"
            )


@dataclass(frozen=True)
class SelectionConfig:
    """How a tier's modalities and input resolution are chosen: short trainings, compared on validation."""

    modality_sets: tuple[tuple[str, ...], ...] = (("image", "audio"), ("audio",), ("image",))
    scales: tuple[int, ...] = (0, 1, 2, 3)  # resolution levels defined by each modality
    depths: tuple[int, ...] = (1, 2, 3)  # depthwise-separable blocks per encoder stage
    samples: int = 12800  # training samples seen by each candidate (100 steps of 128; 0: the whole split)
    val_samples: int = 5000  # validation samples that rank the candidates (0: all)
    tolerance: float = 0.005  # a cheaper candidate within this validation accuracy wins
    # A modality set whose own teacher (trained on it alone) ended more than this below the fused
    # teacher on validation is not a candidate: its students cannot get near what the fused teacher
    # knows. 1.0 keeps every set.
    teacher_gap: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.teacher_gap:
            raise ConfigError(f"students.selection.teacher_gap must be >= 0 (1.0 keeps every modality set), got {self.teacher_gap}")
        if not 0.0 <= self.tolerance or self.samples < 0 or self.val_samples < 0:
            raise ConfigError(f"tolerance, samples and val_samples must be >= 0 (samples 0: all); got {self.tolerance}, {self.samples}, {self.val_samples}")
        # Each of these met its first use in `candidates`, after the teachers had trained: no
        # candidate at all (an empty list), a ZeroDivisionError (depth 0), a level -1 that Python's
        # indexing took as the coarsest one.
        if not self.modality_sets or not all(self.modality_sets):
            raise ConfigError(
                f"students.selection.modality_sets must list at least one set of modalities, none of them empty (e.g. [[image, audio], [audio]]); got {[list(s) for s in self.modality_sets]}"
            )
        if not self.scales or min(self.scales) < 0:
            raise ConfigError(f"students.selection.scales must list at least one resolution level, each >= 0 (0: full resolution); got {list(self.scales)}")
        if not self.depths or min(self.depths) < 1:
            raise ConfigError(f"students.selection.depths must list at least one depth, each >= 1 (blocks per encoder stage); got {list(self.depths)}")


MIN_STUDENT_WIDTH = 0.25  # 2 / DSCNN2dEncoder.base_channels: two stem channels (a test keeps them equal)


@dataclass(frozen=True)
class StudentsConfig:
    """The student family and its tiers."""

    tiers: tuple[TierConfig, ...] = (
        TierConfig("high", 1024 * 1024, ties="capacity", channel_multiple=8),
        TierConfig("medium", 256 * 1024),
        TierConfig("low", 64 * 1024),
        TierConfig("critical", 16 * 1024, epochs=8),
    )
    max_width: float = 8.0  # widest width multiplier any student may take (wider costs time more than it buys)
    selection: SelectionConfig = SelectionConfig()
    train: TrainConfig = TrainConfig(epochs=4, lr=0.01, modality_dropout=0.1)
    labels_only: bool = True  # also train each tier's student without a teacher (the report's baseline)
    # A tier that trains longer than `train.epochs` replays those epochs' batches (the same rows,
    # corruption, augmentation and mixup) and reads the frozen teachers' answers on them back from
    # memory (at most `replay_cache_bytes`; 0 keeps none and the teachers answer again) instead of
    # drawing new batches for the teachers to answer: the teachers' forward pass and their inputs
    # were most of the critical tier's own epochs. Its inputs are kept too (at most as many bytes),
    # so the replayed batches are not featurised again. false: draw new batches. The process holds
    # more than the caches: the heap fragments around what they keep (the high tier replaying its
    # 0.8 MB-a-batch inputs took `make run` from 3.4 to 9.9 GB resident; docs/measurements.md).
    replay: bool = True
    replay_cache_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        if self.replay_cache_bytes < 0:
            raise ConfigError(f"students.replay_cache_bytes must be >= 0 (0 = no cache), got {self.replay_cache_bytes}")
        # Two tiers of one name write one checkpoint; the trainer refused them only when distillation
        # began, naming no setting. (Without case: one file on a case-insensitive file system.)
        seen: dict[str, str] = {}
        for tier in self.tiers:
            if tier.name.lower() in seen:
                raise ConfigError(
                    f"students.tiers: two tiers are named {seen[tier.name.lower()]!r} and {tier.name!r}; each tier's name names its checkpoints, so rename one"
                )
            seen[tier.name.lower()] = tier.name
        # The narrowest student `widest_student` tries (racmkd/models/multimodal.py) is two stem
        # channels: width 2 / DSCNN2dEncoder.base_channels. Below it no tier has a design; NaN and inf
        # failed in its search, after the teachers had trained.
        if not MIN_STUDENT_WIDTH <= self.max_width < math.inf:
            raise ConfigError(
                f"students.max_width must be a finite number >= {MIN_STUDENT_WIDTH} (the narrowest student's width multiplier), got {self.max_width}"
            )


@dataclass(frozen=True)
class Schedule:
    """A weight that depends on the tier's budget: `low` at the smallest tier, `high` at the largest,
    linear in log(budget) between them."""

    low: float
    high: float


@dataclass(frozen=True)
class DistillConfig:
    """The adaptive objective (seed eq. 28): L = a(R) L_task + b(R) L_distill + g(R) L_align + d(R) L_resource."""

    alpha: Schedule = Schedule(0.5, 0.5)  # task (cross-entropy on labels)
    beta: Schedule = Schedule(1.0, 1.0)  # response distillation
    gamma: Schedule = Schedule(0.5, 1.0)  # feature alignment
    delta: Schedule = Schedule(1e-4, 1e-5)  # resource penalty (group sparsity on channels)
    temperature: Schedule = Schedule(2.0, 2.0)
    # Weighted sums of registered losses (racmkd.registry.LOSSES) that make up each term.
    distill_losses: dict[str, float] = field(default_factory=lambda: {"kd": 1.0})
    align_losses: dict[str, float] = field(default_factory=lambda: {"feature": 1.0})
    resource_loss: str = "group_sparsity"
    feature_cost: float = 1e-3  # lambda of eq. 27: cost penalty on the learned feature projection
    reliability_temperature: float = 0.1  # sharpness of the per-sample teacher reliability weights (eq. 3)

    def __post_init__(self) -> None:
        # A temperature of 0 makes the KD loss NaN, and a NaN student would be saved as the best one;
        # a negative one trains towards the teacher's reversed ranking.
        if not (0 < self.temperature.low < math.inf and 0 < self.temperature.high < math.inf and 0 < self.reliability_temperature < math.inf):
            raise ConfigError(
                f"temperature (low {self.temperature.low}, high {self.temperature.high}) and reliability_temperature ({self.reliability_temperature}) must be finite and > 0"
            )
        weights = {name: getattr(self, name) for name in ("alpha", "beta", "gamma", "delta")}
        bad = {name: (w.low, w.high) for name, w in weights.items() if not (0 <= w.low < math.inf and 0 <= w.high < math.inf)}
        if bad or not 0 <= self.feature_cost < math.inf:
            raise ConfigError(f"the objective's weights must be finite and >= 0; got {bad or {'feature_cost': self.feature_cost}}")
        # A NaN weight made every student NaN; a negative one pushes the student away from the teacher.
        losses = {f"{term}.{name}": w for term in ("distill_losses", "align_losses") for name, w in getattr(self, term).items()}
        bad_losses = {name: w for name, w in losses.items() if not (finite_number(w) and w >= 0)}
        if bad_losses:
            raise ConfigError(f"loss weights must be finite numbers >= 0; got {', '.join(f'distill.{k}: {v!r}' for k, v in bad_losses.items())}")


@dataclass(frozen=True)
class CompressConfig:
    """Which tiers `racmkd run` compresses after distillation, and with which recipe (configs/recipes/)."""

    tiers: tuple[str, ...] = ()  # () = none; `racmkd compress` names tiers itself
    recipe: str = "configs/recipes/default.yaml"
    tier_recipes: dict[str, str] = field(default_factory=dict)  # tier -> a recipe that replaces `recipe` for it
    val_samples: int = 5000  # validation samples that judge every step
    # The teachers' answers on the fine-tunes' training batches, kept for the other tiers' fine-tunes
    # (they draw the same batches), and the inputs of students that several tiers share, each cache
    # at most this many bytes; 0 = every tier's fine-tunes run the teachers and featurise themselves.
    teacher_cache_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        if self.teacher_cache_bytes < 0:
            raise ConfigError(f"compress.teacher_cache_bytes must be >= 0 (0 = no cache), got {self.teacher_cache_bytes}")


@dataclass(frozen=True)
class EnergyModel:
    """E = a * FLOPs + b * bytes moved + c * time, in joules; coefficients per device (see README)."""

    device: str = "generic-x86-server-core"
    joules_per_flop: float = 1.0e-10
    joules_per_byte: float = 1.0e-10
    static_watts: float = 5.0

    def __post_init__(self) -> None:
        for name in ("joules_per_flop", "joules_per_byte", "static_watts"):  # (eval.energy's were taken unchecked: negative or NaN energy)
            if not 0 <= getattr(self, name) < math.inf:
                raise ConfigError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class EvalConfig:
    """How models are measured."""

    latency_warmup: int = 20  # calls of each model before the first timed round
    latency_iters: int = 200  # timed calls per model, split over the rounds
    latency_rounds: int = 20  # every model is timed in each round, in turn (short rounds: racmkd.measure.cost.CALLS_PER_ROUND)
    rapl_root: str = "/sys/class/powercap"  # read when present: energy is then "measured"
    energy: EnergyModel = EnergyModel()

    def __post_init__(self) -> None:
        # (0 timed calls divided measured energy by zero at the end of a run; a negative count
        # reported negative energy as measured)
        if self.latency_warmup < 0 or self.latency_iters < 1 or self.latency_rounds < 1:
            raise ConfigError(
                f"latency_warmup must be >= 0, latency_iters and latency_rounds >= 1; got {self.latency_warmup}, {self.latency_iters} and {self.latency_rounds}"
            )


@dataclass(frozen=True)
class MonitorConfig:
    """How the resource monitor samples, smooths and forecasts (racmkd/resources/monitor.py)."""

    interval_s: float = 0.5  # the first interval; then adaptive between the two bounds below
    min_interval_s: float = 0.1  # while readings change
    max_interval_s: float = 2.0  # while they stay put
    change_threshold: float = 0.05  # a move of 5 CPU points, or of 5% of free memory, is a change
    smoothing: float = 0.5  # EWMA weight of a new reading (also Holt's level weight)
    trend: float = 0.5  # Holt's slope weight (both weights are per interval_s, scaled to the actual gap)
    # The share of the slope a forecast carries on after one second. Measured on a 5 MB/s fall: the
    # forecast leads the reading by 3.7 MB (5 would be exact); after a 140 -> 10 MB step it
    # overshoots below 5 MB for 2.9 s (undamped: 5.0 MB lead, 3.8 s overshoot).
    damping: float = 0.8
    horizon_s: float = 1.0  # how far ahead the forecast looks

    def __post_init__(self) -> None:
        for name in ("smoothing", "trend", "damping"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"runtime.monitor.{name} {getattr(self, name)}: a weight in (0, 1]")
        if (
            not 0 < self.min_interval_s <= self.interval_s <= self.max_interval_s < math.inf
            or not 0 <= self.horizon_s < math.inf
            or not 0 <= self.change_threshold < math.inf
        ):
            raise ConfigError(
                f"runtime.monitor: need 0 < min_interval_s <= interval_s <= max_interval_s (got {self.min_interval_s}, {self.interval_s}, {self.max_interval_s}), horizon_s and change_threshold finite and >= 0 (got {self.horizon_s}, {self.change_threshold})"
            )


@dataclass(frozen=True)
class PIDGains:
    """A PID controller on observed latency / target (simple-pid); its output scales the latency budget."""

    kp: float = 0.4
    ki: float = 0.4  # per second
    kd: float = 0.0
    # step in when a period's mean latency runs 20% over the target (a load the readings miss); the tail is the deadline risk's (runtime.objective slo); with objective accuracy, 0.8 leaves headroom for it
    setpoint: float = 1.2
    min_scale: float = 0.25
    max_scale: float = 1.0
    # the PID acts on the mean latency of the requests in each such period (per request it would chase noise, and cost every request a step)
    interval_s: float = 0.02
    # ... and of at least this many requests: at 100 requests a second a 20 ms period held two, and one
    # preempted request stepped the budget down (a tier less accurate, no deadline more met)
    min_requests: int = 8

    def __post_init__(self) -> None:
        # simple-pid refused reversed limits only when the runtime started, naming no setting.
        if not all(0 <= g < math.inf for g in (self.kp, self.ki, self.kd)) or not 0 < self.setpoint < math.inf or not 0 < self.interval_s < math.inf:
            raise ConfigError(
                f"kp, ki and kd must be finite and >= 0, setpoint and interval_s finite and > 0; got kp {self.kp}, ki {self.ki}, kd {self.kd}, setpoint {self.setpoint}, interval_s {self.interval_s}"
            )
        if self.min_requests < 1:
            raise ConfigError(f"min_requests {self.min_requests}: a period holds at least one request")
        if not 0 < self.min_scale <= self.max_scale < math.inf:
            raise ConfigError(
                f"need 0 < min_scale <= max_scale (the latency budget's scale bounds), got min_scale {self.min_scale}, max_scale {self.max_scale}"
            )


@dataclass(frozen=True)
class RuntimeConfig:
    """The resource-aware edge runtime (racmkd/runtime/edge.py) and its allocator."""

    build_bank: bool = False  # `racmkd run` ends by building the variant bank (<run>/edge/), as `racmkd edge build` does
    latency_target_ms: float = 3.0  # per request, preprocessing included
    objective: str = "slo"  # slo: accuracy x chance of meeting the latency target; accuracy: eq. 26, latency a hard budget
    risk_memory_s: float = 30.0  # the deadline risk forgets a load band no request has fallen in for this long (objective slo)
    threads: int = 1  # ONNX Runtime threads per variant session: more threads stall under other programs' load
    priorities: dict[str, float] = field(default_factory=dict)  # modality -> priority in [0, 1] (default 1)
    critical: dict[str, str] = field(default_factory=dict)  # modality -> lowest tier it may run at; it is never switched off
    memory_reserve_bytes: int = 4 * 2**20  # free memory left to other programs
    memory_share: float = 0.5  # of what is free beyond the reserve, the share the runtime may use
    energy_budget_mj: float = 0.0  # per request on battery power; 0 = no energy limit
    low_battery_percent: float = 20.0  # below it, the energy budget is halved
    contention_floor: float = 0.05  # the least CPU share assumed left to us (bounds the predicted slowdown at 20x)
    step_up_margin: float = 0.2  # a better configuration must fit with this much slack on every resource ...
    step_up_window_s: float = 1.0  # ... for this long before the runtime switches up to it
    switch_gain: float = 0.01  # objective slo: a switch nothing forces, to a configuration unsure of its deadline, worth less than this more expected SLO-accuracy, waits 10 windows
    preload: bool = True  # load every variant at start (memory permitting; a pinned runtime, its configuration alone); else lazily, least recently used out
    max_loaded: int = 0  # sessions kept loaded at most; 0 = no limit
    pid: PIDGains = PIDGains()
    monitor: MonitorConfig = MonitorConfig()

    def __post_init__(self) -> None:
        if self.objective not in ("slo", "accuracy"):
            raise ConfigError(f"runtime.objective {self.objective!r}: choose slo or accuracy")
        if not 0 < self.latency_target_ms < math.inf:
            raise ConfigError(f"runtime.latency_target_ms {self.latency_target_ms}: a positive number of milliseconds")
        # A negative margin marked over-budget configurations as fitting (a step up, then a step down,
        # flapping); a margin of 1 or more, or a NaN window, never let the runtime step up.
        if not 0 <= self.step_up_margin < 1:
            raise ConfigError(f"runtime.step_up_margin {self.step_up_margin}: a share of the budget in [0, 1)")
        if not 0 <= self.step_up_window_s < math.inf:
            raise ConfigError(f"runtime.step_up_window_s {self.step_up_window_s}: a number of seconds >= 0")
        if not 0 <= self.switch_gain < 1:
            raise ConfigError(f"runtime.switch_gain {self.switch_gain}: a share of SLO-accuracy in [0, 1) (0.01: one request in a hundred)")
        if not 0 < self.risk_memory_s <= math.inf:
            raise ConfigError(f"runtime.risk_memory_s {self.risk_memory_s}: a positive number of seconds (.inf: never forget)")
        if not 1 <= self.threads <= MAX_THREADS or self.max_loaded < 0 or self.memory_reserve_bytes < 0:
            raise ConfigError(f"threads must be in [1, {MAX_THREADS}] (got {self.threads}), max_loaded and memory_reserve_bytes >= 0")
        if not 0 < self.memory_share <= 1 or not 0 < self.contention_floor <= 1:
            raise ConfigError(f"runtime.memory_share {self.memory_share} and contention_floor {self.contention_floor}: shares in (0, 1]")
        bad = {m: p for m, p in self.priorities.items() if not 0 <= p <= 1}
        if bad:
            raise ConfigError(f"runtime.priorities {bad}: each in [0, 1]")
        if not 0 <= self.energy_budget_mj < math.inf or not 0 <= self.low_battery_percent <= 100:
            # (a negative budget read as none, silently; a battery threshold of 150% as always low)
            raise ConfigError(
                f"runtime.energy_budget_mj {self.energy_budget_mj} (mJ per request, >= 0; 0: no limit) and low_battery_percent {self.low_battery_percent} (in [0, 100])"
            )


def url_problem(url: str) -> str | None:
    """What makes `url` unusable as a server's address, or None: an http(s) scheme, a host, and a
    port in 1-65535 if one is given (port 99999 was taken, and failed as "connection refused")."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as err:  # ("http://[::1": "Invalid IPv6 URL", naming no URL)
        return f"is not a valid URL ({err})"
    if parts.scheme not in ("http", "https") or not host:
        return "is not an http(s) URL with a host (e.g. http://fog.local:8001)"
    if parts.username is not None or parts.password is not None:  # (httpx sent them; /models, open to all, and the logs showed them)
        return "holds a user name or password; give an upstream's token in the variable serve.upstream_token_env names, a device's in RACMKD_TOKEN"
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        return f"has an invalid port {parts.netloc.rpartition(':')[2]!r} (a port is a number in 1-65535)"
    return None


def shown_url(url: str) -> str:
    """`url` for a message: any password in it replaced by ***, in a URL that does not parse too
    (everything between :// and the last @ before the path)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))
    except ValueError:
        return re.sub(r"//[^/]*@", "//***@", url)


def read_token(variable: str) -> str | None:
    """The management token held in environment variable `variable`, without surrounding
    whitespace, or None when it is unset or blank. A token file written with `echo`, or a
    Kubernetes secret made from one, ends in a newline: the server compared it whole and refused
    every client, and the client could not send it. ValueError (naming the variable, never the
    token) when what is left holds what an HTTP header cannot carry as sent: a control character
    (a tab aside), a non-ASCII one."""
    import os

    token = os.environ.get(variable, "").strip()
    if not token:
        return None
    # (a space or tab inside is carried, and compared, as it is: such tokens worked before this check)
    kinds = {"a control character" if ord(c) < 0x80 else "a non-ASCII character" for c in token if (ord(c) < 0x20 and c != "\t") or ord(c) >= 0x7F}
    if kinds:
        raise ValueError(f"${variable}: the token holds {' and '.join(sorted(kinds))}; a token is printable ASCII (e.g. `openssl rand -hex 32`)")
    return token


@dataclass(frozen=True)
class ServeConfig:
    """The cloud, fog and edge servers (racmkd/deploy/server.py) and what the edge talks to."""

    host: str = "127.0.0.1"
    port: int = 8000
    token_env: str = "RACMKD_TOKEN"  # environment variable holding the management token (deploy, rollback)
    protect_inference: bool = False  # also require the token on /predict
    max_body_bytes: int = 4 * 2**20
    body_timeout_s: float = (
        30.0  # a /predict body must have come whole within this, an upload to /deploy pause no longer (one that never ends held its connection for ever)
    )
    shutdown_timeout_s: float = 5.0  # on SIGTERM or Ctrl-C, requests still open are cut after this (a stalled upload held the server for minutes)
    # A connection whose request line and headers have not come whole this long after it opened (or
    # after its last answer) is closed: 300 that sent nothing, or half their headers, stayed open
    # for good, and 1,100 took an edge under a 1024-file limit off the network.
    header_timeout_s: float = 10.0
    max_update_bytes: int = 64 * 2**20  # the largest release an edge takes over /deploy
    # /predict requests answered on worker threads or waiting for one, at most; past it 503 at once
    # (an edge then answers itself). Unbounded, a fog under 200 edges that give up after 250 ms
    # answered none of them in time: each answer was computed after its edge had gone.
    max_waiting: int = 64
    compute_workers: int = 0  # cloud and fog: answers computed at once, the rest waiting their turn (0: one per core)
    max_audio_seconds: float = 10.0
    fog_models: tuple[str, ...] = ("high", "medium")  # what the fog role serves (the first by default)
    upstreams: tuple[str, ...] = ()  # the edge's fog/cloud URLs, nearest first
    upstream_token_env: str = ""  # environment variable with the upstreams' token, when they protect /predict
    upstream_timeout_s: float = 0.5
    upstream_retries: int = 1
    breaker_failures: int = 3
    breaker_reset_s: float = 5.0
    probe_interval_s: float = 5.0  # how often the edge asks its upstreams for their health
    offload_margin: float = 0.005  # accuracy an upstream must add to be worth the trip
    fleet: str = "default"
    device: str = "edge-0"
    mqtt_host: str = ""  # "" = no telemetry
    mqtt_port: int = 1883
    telemetry_interval_s: float = 1.0
    telemetry_buffer: int = 1000
    store_dir: str = ""  # the edge's installed releases; "" = <run>/device
    public_key: str = ""  # the fleet's Ed25519 public key (PEM) that updates must verify with
    accept_releases: tuple[str, ...] = ()  # release names this device installs; () = any

    def __post_init__(self) -> None:
        # A URL without a scheme or host was accepted and only ever failed at request time, where
        # the edge's circuit breaker opened on it: the operator saw offloading silently off.
        for url in self.upstreams:
            problem = url_problem(url)
            if problem:
                raise ConfigError(f"upstreams: {shown_url(url)!r} {problem}")
        if self.mqtt_host and (not 1 <= self.mqtt_port <= 65535 or self.mqtt_host.startswith("[")):
            raise ConfigError(
                f"mqtt_host {self.mqtt_host!r}, mqtt_port {self.mqtt_port}: a host name or address (an IPv6 one without brackets) and a port in 1-65535"
            )
        if not 0 < self.shutdown_timeout_s < math.inf:
            raise ConfigError(
                f"shutdown_timeout_s must be finite and > 0 (seconds open requests get once the server is told to stop); got {self.shutdown_timeout_s}"
            )
        if not 0 < self.body_timeout_s < math.inf:
            raise ConfigError(f"body_timeout_s must be finite and > 0 (seconds a request body may take to come whole); got {self.body_timeout_s}")
        if not 0 < self.header_timeout_s < math.inf:
            raise ConfigError(
                f"header_timeout_s must be finite and > 0 (seconds a request's line and headers may take to come whole); got {self.header_timeout_s}"
            )
        if not 0 < self.upstream_timeout_s < math.inf or self.upstream_retries < 0:
            raise ConfigError(f"upstream_timeout_s must be finite and > 0 and upstream_retries >= 0; got {self.upstream_timeout_s}, {self.upstream_retries}")
        if self.telemetry_buffer < 1 or not 0 < self.telemetry_interval_s < math.inf:
            # (0 kept nothing: every message dropped, none sent, even while connected; -1 failed when the server started)
            raise ConfigError(
                f"telemetry_buffer {self.telemetry_buffer} and telemetry_interval_s {self.telemetry_interval_s}: a buffer of at least 1 message, an interval finite and > 0"
            )
        limits = {
            "max_body_bytes": self.max_body_bytes,
            "max_update_bytes": self.max_update_bytes,
            "max_audio_seconds": self.max_audio_seconds,
            "max_waiting": self.max_waiting,
        }
        if not all(0 < v < math.inf for v in limits.values()):  # (-1 started a server that answered every /predict 413)
            raise ConfigError(f"{', '.join(f'{k} {v}' for k, v in limits.items())}: each limit must be finite and > 0")
        if self.breaker_failures < 1 or not (0 < self.breaker_reset_s < math.inf and 0 < self.probe_interval_s < math.inf and -1 <= self.offload_margin <= 1):
            raise ConfigError(
                f"breaker_failures {self.breaker_failures} (>= 1), breaker_reset_s {self.breaker_reset_s} and probe_interval_s {self.probe_interval_s} (finite, > 0), offload_margin {self.offload_margin} (an accuracy difference in [-1, 1]; below 0 offloads to a less accurate upstream)"
            )
        if self.compute_workers < 0:
            raise ConfigError(f"compute_workers must be >= 0 (answers a cloud or fog computes at once; 0: one per core); got {self.compute_workers}")
        if not self.fog_models:  # (the fog server failed at start with an IndexError)
            raise ConfigError("fog_models is empty: the fog role serves these models (the first by default); name at least one, e.g. [high, medium]")


@dataclass(frozen=True)
class RunConfig:
    """Everything one run of the pipeline needs; written to runs/<name>/config.yaml."""

    name: str = ""  # "" -> <protocol>-<timestamp>
    runs_dir: str = "runs"
    seed: int = 0  # model initialisation and training order
    threads: int = 0  # torch intra-op threads; 0 = all cores
    # Students trained in one pass step side by side on this many threads, each op on threads/workers
    # of them (small models' ops cannot keep two cores busy; two models at once can). 1 = one after another.
    workers: int = 2
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    students: StudentsConfig = StudentsConfig()
    distill: DistillConfig = DistillConfig()
    compress: CompressConfig = CompressConfig()
    eval: EvalConfig = EvalConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    serve: ServeConfig = ServeConfig()

    def __post_init__(self) -> None:
        check_seed(self.seed, "seed")
        if not 0 <= self.threads <= MAX_THREADS or not 1 <= self.workers <= MAX_THREADS:
            raise ConfigError(
                f"threads must be in [0, {MAX_THREADS}] (0 = all cores) and workers in [1, {MAX_THREADS}]; got threads={self.threads}, workers={self.workers}"
            )
        # A misspelt tier in compress.tiers was refused after the teachers and students had trained,
        # and one in compress.tier_recipes left that tier on the default recipe, silently.
        tiers = [t.name for t in self.students.tiers]
        for where, names in (("compress.tiers", list(self.compress.tiers)), ("compress.tier_recipes", list(self.compress.tier_recipes))):
            unknown = [n for n in names if n not in tiers]
            if unknown:
                hint = did_you_mean(unknown[0], tiers)
                raise ConfigError(
                    f"{where} names {unknown}, not tiers of students.tiers ({', '.join(tiers) or 'none'}).{hint} Name the tiers it should apply to."
                )


# --------------------------------------------------------------------------------------------------
# Loading, overriding, saving.


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"  # as YAML writes it
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


# A number in scientific notation without a dot (1e-3, 2E5), which YAML 1.2 reads as a float and
# YAML 1.1 as a string: taken as a number where a number goes, and left a string elsewhere (a run
# named 1e5 stays one; read as a float everywhere, such a name no longer read back as a string).
SCIENTIFIC = re.compile(r"[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+")
SHORT_REPR = reprlib.Repr()  # a value as an error shows it: nested lists and long strings cut short
SHORT_REPR.maxlevel, SHORT_REPR.maxlist, SHORT_REPR.maxdict, SHORT_REPR.maxstring, SHORT_REPR.maxother = 3, 6, 6, 80, 80


def _convert(value: Any, tp: Any, where: str, source: str) -> Any:
    """Check `value` against the annotation `tp`, converting YAML lists to tuples and dicts to dataclasses."""

    def fail(expected: str) -> ConfigError:
        shown = SHORT_REPR.repr(value)  # (a few hundred bytes of YAML aliases expanded to gigabytes)
        error = ConfigError(f"{source}: {where}: expected {expected}, got {shown}. Fix this value in {source}.")
        error.where = where
        return error

    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail(f"a mapping of {tp.__name__} fields")
        return from_dict(tp, value, where=where, source=source)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(value, option, where, source)
            except ConfigError:
                pass  # the next option, else the error below names them all
        raise fail(" or ".join(_type_name(a) for a in typing.get_args(tp)))
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise fail(f"a list ({_type_name(tp)})")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]", source) for i, v in enumerate(value))
        if len(args) != len(value):
            raise fail(f"a list of {len(args)} values")
        return tuple(_convert(v, a, f"{where}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise fail("a mapping")
        return {_convert(k, key_tp, where, source): _convert(v, val_tp, f"{where}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        if abs(value) >= 2**63:  # (beyond what numpy and torch take: OverflowError deep in a run)
            raise fail("an integer within ±2**63")
        return value
    if tp is float:
        if isinstance(value, str) and SCIENTIFIC.fullmatch(value):
            value = float(value.replace("_", ""))  # YAML 1.1 (PyYAML) needs a dot in a float: `lr: 1e-3` is the string '1e-3'
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        try:
            return float(value)
        except OverflowError:  # an integer of 400 digits
            raise fail("a number within ±1.8e308") from None
    if tp is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    raise TypeError(f"config type {tp!r} at {where} is not supported")  # a bug in a dataclass, not in a YAML file


@functools.cache
def run_config_paths() -> tuple[dict[str, tuple[str, ...]], frozenset[type]]:
    """Every setting of a run's config by its last name (max_loaded -> ("runtime.max_loaded",)),
    and the sections' classes (a recipe's or a device profile's keys are not a run config's)."""
    found: dict[str, list[str]] = {}
    sections: set[type] = set()

    def walk(cls: type, prefix: str) -> None:
        sections.add(cls)
        for f in dataclasses.fields(cls):
            path = f"{prefix}{f.name}"
            found.setdefault(f.name, []).append(path)
            kind = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(kind):
                walk(kind, path + ".")

    walk(RunConfig, "")
    return {name: tuple(paths) for name, paths in found.items()}, frozenset(sections)


def from_dict(cls: type[C], data: dict[str, Any], where: str = "", source: str = "config") -> C:
    """Build the dataclass `cls` from plain values, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where or cls.__name__} must be a mapping of settings, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in data:
        if key not in names:
            close = did_you_mean(key, names)
            hint = close or f" Valid keys: {', '.join(names)}."
            paths, sections = run_config_paths()
            elsewhere = list(paths.get(str(key), ())) if cls in sections else []
            if elsewhere and not close:  # (serve.max_loaded listed serve's keys, not that it is runtime's)
                hint = f" It is a setting of {'another section' if len(elsewhere) == 1 else 'other sections'}: {', '.join(elsewhere)}."
            raise ConfigError(f"{source}: unknown key {(where + '.' if where else '') + str(key)!r}.{hint}")
    missing = [
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        keys = ", ".join((where + "." if where else "") + name for name in missing)
        one = len(missing) == 1
        raise ConfigError(
            f"{source}: {keys} {'is' if one else 'are'} missing: {where or cls.__name__} has no default for {'it' if one else 'them'}; add {'it' if one else 'them'}"
        )
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k, source) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:  # a value its section's own checks refuse: say which file and key
        raise ConfigError(f"{source}: {where or cls.__name__}: {err}") from None


def to_dict(cfg: Any) -> Any:
    """Plain YAML-ready values (tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Set one `dotted.path=value` in a RunConfig's plain-dict tree; the value is parsed as YAML (`3`,
    `[a, b]`, `true`). A mapping set on a config section merges into it as a config file's does
    (`students.train={epochs: 2}` changes the epochs and keeps the rest); any other value replaces
    what was there whole."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r}: expected KEY=VALUE, e.g. students.train.epochs=2")
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    node: Any = tree
    section: Any = RunConfig
    for i, key in enumerate(keys[:-1]):
        node = _child(node, key, ".".join(keys[: i + 1]))
        section = _field_type(section, key)
    last = keys[-1]
    try:
        value = load_yaml(raw)
    except yaml.YAMLError as err:
        raise ConfigError(
            f"override {assignment!r}: the value is not valid YAML ({str(err).splitlines()[0]}); quote lists and mappings whole, e.g. 'data.modalities=[image, audio]'"
        ) from None
    if not isinstance(node, (list, dict)):
        raise ConfigError(f"override {path!r}: {path.rsplit('.', 1)[0]!r} is a single value, with no sub-keys")
    slot = _index(node, last, path) if isinstance(node, list) else last
    target = _field_type(section, last)
    current = node[slot] if isinstance(node, list) else node.get(last)
    if isinstance(value, dict) and dataclasses.is_dataclass(target) and isinstance(current, dict):
        _merge(current, value, target, f"override {assignment!r}")  # type: ignore[arg-type]
    else:
        node[slot] = value


class _ModalityOptions:
    """The type of `data.options`: each key a modality, its value a section of that modality's
    registered options class."""


def _field_type(owner: Any, key: str) -> Any:
    """The declared type of `owner`'s field `key` (a dataclass's field, a tuple's item for an index,
    a modality's options class under `data.options`), or None where the path leaves the config
    classes (a plain dict's values)."""
    if owner is None:
        return None
    if owner is DataConfig and key == "options":
        return _ModalityOptions
    if owner is _ModalityOptions:
        registry = modality_options()
        return registry.get(key) if key in registry else None
    if typing.get_origin(owner) in (tuple, list):
        items = [a for a in typing.get_args(owner) if a is not Ellipsis]
        return items[0] if key.isdigit() and len(items) == 1 else None
    if dataclasses.is_dataclass(owner):
        return typing.get_type_hints(owner).get(key)
    return None


def _index(node: list, key: str, path: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise ConfigError(f"override {path!r}: {key!r} is not an index of a list of {len(node)}")
    return int(key)


def _child(node: Any, key: str, path: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, key, path)]
    if not isinstance(node, dict):
        raise ConfigError(f"override {path!r}: {path.rsplit('.', 1)[0]!r} has no sub-keys")
    return node.setdefault(key, {})


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping names one key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that names a key twice: the plain one keeps the last
    value silently, so of two `ram_bytes:` lines in a device profile one was ignored unseen."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # Only keys written in this mapping count: a merge key (`<<: *base`) is not a key, and a
        # key set here on top of a merged one overrides it (YAML's merge rule), so it is no repeat.
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if not isinstance(key, Hashable):
                break  # PyYAML's own construct_mapping names it ("found unhashable key")
            if key in seen:
                raise DuplicateKeyError(f"key {key!r} appears twice in one mapping (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)  # flattens merges, as the plain SafeLoader does


def load_yaml(text: str) -> Any:
    """YAML text as plain values (PyYAML's safe subset), a key named twice in one mapping an error."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml_mapping(path: str | Path, missing_hint: str) -> dict[str, Any]:
    """A values-only YAML file that must hold a mapping; errors name the file (and, for a missing
    file, `missing_hint`: where to find a valid one)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a YAML file. {missing_hint}")
    if not path.is_file():
        raise ConfigError(f"{path} does not exist. {missing_hint}")
    try:
        loaded = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text (UTF-8) file ({err.reason} at byte {err.start})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
    return loaded


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a values-only YAML file (or the defaults) and apply `KEY=VALUE` overrides on top."""
    tree: dict[str, Any] = to_dict(RunConfig())
    source = "defaults"
    if path is not None:
        layers = config_layers(Path(path))  # the file its `base` names first, then this one over it
        source = " over ".join(str(p) for p, _ in reversed(layers)) if len(layers) > 1 else str(path)  # (a value may come from either file)
        for _, layer in layers:
            _merge(tree, layer, RunConfig, source)
    for assignment in overrides:
        apply_override(tree, assignment)
    if overrides:
        source = f"{source} + overrides {list(overrides)}"
    try:
        cfg = from_dict(RunConfig, tree, source=source)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, options=check_modality_options(cfg.data, source)))
    except ConfigError as err:
        raise _blame_override(err, overrides, source) from None
    check_modality_keys(cfg, source)
    return cfg


def config_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """A config file's values, after those of the file its `base` key names (a path relative to
    the file; that file may name a base too): a variant of a config says only what differs
    (configs/trimodal.yaml is default.yaml with the pen added), and keeps every later change of its
    base. Nested sections merge as they do over the defaults (a mapping that is a value, such as
    data.options, is replaced whole). Returns (file, values) pairs, the deepest base first."""
    loaded = read_yaml_mapping(path, "Pass an existing config file, e.g. configs/default.yaml." if not seen else f"{seen[-1]} names it as its base.")
    base = loaded.pop("base", None)
    if base is None:
        return [(path, loaded)]
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base must be the path of another config file, relative to this one (e.g. base: default.yaml), got {base!r}")
    target, chain = (path.parent / base).resolve(), (*seen, path.resolve())
    if target in chain:
        raise ConfigError(f"{path}: base {base!r} leads back to {target}: configs name their bases in a circle; break it")
    return [*config_layers(target, chain), (path, loaded)]


def _blame_override(err: ConfigError, overrides: list[str] | tuple[str, ...], source: str) -> ConfigError:
    """A bad value that came from `--set` is fixed there, not in the file the message named."""
    for assignment in reversed(overrides):  # the last one that set the field is the one that counts
        key = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", assignment.split("=", 1)[0].strip())  # students.tiers.0.epochs -> students.tiers[0].epochs
        if err.where is not None and (err.where == key or err.where.startswith((key + ".", key + "["))):
            return ConfigError(str(err).replace(f"Fix this value in {source}.", f"Fix the override {assignment!r} (--set)."))
    return err


def modality_options() -> Any:
    """The registry of modality options classes, with image's and audio's registered (torch-free)."""
    from racmkd.data import options as _options  # noqa: F401 - registers image, audio and pen
    from racmkd.registry import MODALITY_OPTIONS

    return MODALITY_OPTIONS


def check_modality_options(data: DataConfig, source: str) -> dict[str, dict[str, Any]]:
    """Check `data.options` against each modality's options dataclass when the config is read, so
    that a mistyped key fails at once and names its file (it failed when the dataset was built,
    minutes into a run, naming only "config"); returns the options as checked."""
    registry = modality_options()
    result = {}
    for name, options in data.options.items():
        if name not in registry:
            raise ConfigError(
                f"{source}: data.options.{name}: no options registered for a modality {name!r} (racmkd/data/options.py, MODALITY_OPTIONS); registered: {', '.join(registry.names())}"
            )
        checked = to_dict(from_dict(registry.get(name), options, where=f"data.options.{name}", source=source))
        # The values as checked (`f_max: 4e3` is 4000.0, not the string YAML 1.1 reads): the options
        # travel on as plain values, and the server built its audio options from the string.
        result[name] = {
            key: checked[key] if checked[key] != value else value for key, value in options.items()
        }  # (0 stays 0, not 0.0: the dataset cache's key reads them)
    return result


def check_modality_keys(cfg: RunConfig, source: str) -> None:
    """The per-modality settings name modalities that exist: a misspelt one (`teacher.level.adio`)
    would otherwise be ignored in silence, as a setting for a modality the run does not use is (so
    that one config serves runs on fewer modalities)."""
    known = modality_options().names()
    per_modality = {
        "data.modalities": cfg.data.modalities,  # (refused when the dataset was built, naming no file)
        "teacher.level": cfg.teacher.level,
        "teacher.depth": cfg.teacher.depth,
        "runtime.priorities": cfg.runtime.priorities,
        "runtime.critical": cfg.runtime.critical,
    }
    if isinstance(cfg.teacher.width, dict):
        per_modality["teacher.width"] = cfg.teacher.width
    # A student's modalities too: a misspelt one (`[adio]`) left no design, and the run stopped after
    # the teachers trained; one in a modality set skipped the set in silence.
    for i, tier in enumerate(cfg.students.tiers):
        per_modality[f"students.tiers.{i}.modalities"] = tier.modalities
    for i, modality_set in enumerate(cfg.students.selection.modality_sets or ()):
        per_modality[f"students.selection.modality_sets.{i}"] = modality_set
    for where, values in per_modality.items():
        for name in values:
            if name not in known:
                hint = did_you_mean(name, known, otherwise=f" Modalities: {', '.join(known)}.")
                raise ConfigError(f"{source}: {where}.{name}: no modality {name!r}.{hint}")


def _merge(base: dict[str, Any], update: dict[str, Any], cls: type, source: str) -> None:
    """Overlay `update` onto `base`: nested config sections merge, every other value is replaced whole
    (so a file that lists `align_losses: {feature: 1.0}` gets exactly that loss, not that one added)."""
    hints = typing.get_type_hints(cls)
    for key, value in update.items():
        section = hints.get(key)
        if isinstance(value, dict) and dataclasses.is_dataclass(section) and isinstance(base.get(key), dict):
            _merge(base[key], value, section, source)  # type: ignore[arg-type]
        else:
            base[key] = value  # unknown keys are reported by from_dict with the file's name


def config_text(cfg: RunConfig) -> str:
    """The config as YAML that `load_config` reads back to an equal object."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the config as YAML that `load_config` reads back to an equal object."""
    from racmkd.utils import atomic_write_text

    atomic_write_text(Path(path), config_text(cfg))


def config_differences(made_with: RunConfig, wanted: RunConfig, ignore: tuple[str, ...] = ("name", "runs_dir")) -> list[str]:
    """The settings (dotted keys) in which two configs differ, `ignore`d keys aside: what a caller
    that resumes a run checks before taking its models as the ones its settings would make (a
    benchmark resumed with `--set students.train.epochs=8` kept the old students and printed the
    new setting)."""

    def walk(a: Any, b: Any, where: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in sorted(set(a) | set(b), key=str) if f"{where}{k}" not in ignore for d in walk(a.get(k), b.get(k), f"{where}{k}.")]
        return [] if a == b else [where.rstrip(".")]

    return walk(to_dict(made_with), to_dict(wanted), "")
