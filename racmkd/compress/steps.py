"""The compression steps a recipe chains, registered by name in COMPRESSORS.

Each step has a frozen options dataclass (what the recipe YAML may set under its name) and an
`apply` that changes the `Subject` (the student being compressed) and returns what it did. The
recipe runner measures the subject before and after every step (params, bytes, FLOPs, validation
accuracy), so a step only reports what is particular to it.

    prune    structured channel pruning (torch-pruning), iterative, each round followed by distillation
    align    channel counts cut to multiples of 4 (what ONNX Runtime's CPU kernels run fastest), then distillation
    lowrank  truncated-SVD factorisation of pointwise (1x1) convolutions
    inputs   modality-specific input reduction (resolution, region of interest, mel bands, frames)
    bands    band selection: keep the most informative mel bands
    distill  distillation fine-tuning from the run's teachers
    qat      quantization-aware distillation fine-tuning (int8 or 4-bit-weight fake quantization)
    equalize cross-layer equalization: channel ranges balanced, the same function (for one scale per layer)
    export   ONNX fp32, int8 (static or mixed precision), int8 and 4-bit weights, parity checks, the artifact chosen
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from racmkd.compress.equalize import equalizable_chains, equalize_model
from racmkd.compress.export import compact_file, export_onnx, fp32_parity, onnx_logits, parity, session, torch_logits
from racmkd.compress.inputs import band_importance, most_informative, reduce_inputs
from racmkd.compress.lowrank import lowrank_model, plan_ranks
from racmkd.compress.prune import MAX_RATIO, align_channels, layer_targets, prune_encoders, ratio_for_bytes
from racmkd.compress.quantize import (
    calibration_inputs,
    choose_int4_weights,
    choose_mixed_precision,
    export_modules,
    fake_quantized,
    fewest_float_layers,
    fewest_per_channel_layers,
    layer_sensitivity,
    quantize_int8,
    scale_sensitivity,
    weights_only_model,
)
from racmkd.config import RunConfig, TrainConfig
from racmkd.data.dataset import FeatureCache, PairedDataset
from racmkd.distill.adaptive import ObjectiveWeights
from racmkd.distill.trainer import Job, Teacher, attach_projection, train_jobs
from racmkd.measure.cost import LATENCY_TIE, ROUNDS_WON, clearly_faster, latency_round_robin, rounds_for
from racmkd.models.multimodal import MultimodalNet
from racmkd.registry import COMPRESSORS, MODALITIES, did_you_mean
from racmkd.utils import torch_threads


@dataclass
class Subject:
    """The student being compressed, as it moves through a recipe."""

    name: str  # the tier
    model: MultimodalNet
    specs: dict[str, Any]
    weights: ObjectiveWeights  # the tier's distillation objective (eq. 28), reused by every fine-tune
    workdir: Path  # where artifacts are written (renamed into place when the recipe succeeds)
    manifest: dict[str, Any] = field(default_factory=dict)  # what the export step chose
    start_accuracy: float | None = None  # validation accuracy where its recipe began (set by run_recipe)


@dataclass
class Context:
    """What every step may use: the run's config, data and teachers."""

    cfg: RunConfig
    dataset: PairedDataset
    teachers: list[Teacher]
    val_samples: int = 5000
    finetunes_done: int = 0  # the n-th fine-tune of every tier draws the same batches (its seed)
    teacher_cache: FeatureCache | None = None  # the teachers' answers on those batches, shared by the tiers
    shared_inputs: InputSharing | None = None  # the students' inputs on them, for tiers that read the same ones


@dataclass(frozen=True)
class InputSharing:
    """The fine-tunes' batches as featurised for the inputs (modality, spec) several tiers' students read."""

    cache: FeatureCache
    inputs: frozenset

    def cache_for(self, specs: dict[str, Any]) -> FeatureCache | None:
        """The cache for a student of these inputs, if another tier reads them all too."""
        return self.cache if specs and set(specs.items()) <= self.inputs else None


@dataclass(frozen=True)
class Finetune:
    """A distillation fine-tune from the run's teachers (the tier's own objective)."""

    epochs: int = 1
    samples: int = 0  # training samples per epoch; 0 = the whole training split
    lr: float = 0.003

    def __post_init__(self) -> None:
        require(self.epochs >= 0 and self.samples >= 0, f"finetune: epochs and samples must be >= 0, got {self.epochs} and {self.samples}")
        require(0 < self.lr < math.inf, f"finetune: lr must be a positive number, got {self.lr}")


def finetune(subject: Subject, ctx: Context, options: Finetune, desc: str) -> float:
    """Distil the subject from the teachers; keeps its best validation epoch. Returns that accuracy."""
    if options.epochs <= 0:
        return float("nan")
    base = ctx.cfg.students.train
    train = TrainConfig(
        epochs=options.epochs,
        batch_size=base.batch_size,
        lr=options.lr,
        weight_decay=base.weight_decay,
        modality_dropout=base.modality_dropout,
        precision="fp32",
        mixup=base.mixup,
    )
    job = Job(
        subject.name,
        subject.model,
        subject.specs,
        train,
        subject.weights,
        ctx.cfg.distill,
        lr_setting=f"the compression recipe's lr for the {desc.split(': ', 1)[-1]}",
    )
    ctx.finetunes_done += 1
    seed = ctx.cfg.seed + 1000 + ctx.finetunes_done
    attach_projection(job, ctx.teachers[0].model, seed)  # the same start whatever ran before in the process
    with torch_threads(ctx.cfg.threads):
        train_jobs(
            ctx.dataset,
            [job],
            options.epochs,
            train.batch_size,
            seed,
            ctx.teachers,
            samples_per_epoch=options.samples,
            val_limit=ctx.val_samples,
            augment=ctx.cfg.data.augment,
            teacher_precision=ctx.cfg.teacher.fused.precision,
            desc=desc,
            teacher_cache=ctx.teacher_cache,
            input_cache=ctx.shared_inputs.cache_for(subject.specs) if ctx.shared_inputs else None,
        )
    return job.best_accuracy


def val_accuracy(subject: Subject, ctx: Context) -> float:
    """The subject's accuracy on (the first `ctx.val_samples` of) the validation split."""
    logits = torch_logits(subject.model, subject.specs, ctx.dataset, "val", limit=ctx.val_samples)
    labels = ctx.dataset.splits["val"].labels[: len(logits)].numpy()
    return float((logits.argmax(1) == labels).mean())


def check_modules(subject: Subject, option: str, names: tuple[str, ...]) -> None:
    """Refuse module names that the model's export lacks (see `export_modules`)."""
    modules = export_modules(subject.model)
    unknown = [m for m in names if m not in modules]
    if unknown:
        encoders = sorted(n for n in modules if n.count(".") == 1)
        raise ValueError(f"{option} {unknown} are no modules of this model's export; name its encoders ({', '.join(encoders)}) or head")


def require(condition: bool, message: str) -> None:
    """An option's own check, when its recipe is read (before any model is loaded)."""
    if not condition:
        raise ValueError(message)


class Step(ABC):
    """One compression step; `options_type` is the dataclass its recipe entry fills."""

    options_type: ClassVar[type]
    changes_structure: ClassVar[bool] = False  # prunes or factorises layers
    # Its check reads the model's layers (a byte budget): after a step that changes them, the check
    # would judge a model the step never sees, so the recipe check leaves it to the step itself.
    # (A step whose options decide it overrides this with a property.)
    checks_structure: ClassVar[bool] = False
    # It trains float weights (prune's recovery, a fine-tune, a factorisation): a recipe puts none
    # after qat or equalize, whose work it would undo. A plugin's step says so the same way.
    refines_weights: ClassVar[bool] = False

    def __init__(self, options: Any) -> None:
        self.options = options

    @abstractmethod
    def apply(self, subject: Subject, ctx: Context) -> dict[str, Any]:
        """Change `subject`; return what was done (for the step log)."""

    def check(self, subject: Subject, ctx: Context) -> None:
        """Raise ValueError before anything runs when this step cannot succeed on `subject`."""

    def specs_after(self, subject: Subject, ctx: Context) -> dict[str, Any]:
        """The input specs this step leaves `subject` with, worked out without running it: the
        recipe check hands them to the next step's check, which would otherwise judge inputs an
        earlier step shrinks before it runs. Most steps leave the inputs as they are."""
        return subject.specs

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"


# Pruning ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneOptions:
    """Remove `ratio` of the output channels of every encoder layer (a float, or one per modality),
    or as many as bring the fp32 parameters to `target_bytes`, in `steps` rounds, each followed by a
    distillation fine-tune; stop early when validation accuracy falls more than `max_drop` below
    where it started (the last round within the bound is kept). A round past the bound may first
    take up to `recover` more fine-tunes to come back within it: a small encoder's round can land
    just outside after one (the critical tier's image encoder: 0.9406 against a bound of 0.9418, then
    0.9452 after a second fine-tune). The bound is then judged up to 1 + `recover` times on the same
    validation samples (with `backoff`, (1 + `recover`) x (1 + `backoff`) times a round), and a round
    kept after a recovery is the first of those tries to pass: optimistic by up to the split's noise
    (the artifact's test accuracy is measured apart).
    `drop_from: recipe` measures `max_drop` from where the whole recipe began instead, so that the
    steps before (an input reduction) count against the same allowance.
    A round that stays past the bound may be tried again `backoff` times with a smaller cut, each
    halfway between the last share kept and the one that failed (halved again while the layers
    would round to the cut that failed: the same cut again would only re-roll its fine-tune on the
    same validation samples); the first within the bound is kept and pruning stops there (the next
    round's cut would be deeper than the one that failed). Without it a fixed schedule's round is
    all or nothing: the low tier's audio encoder ([23, 46, 46, 46]) lost its third round (to
    [8, 20, 20, 20]) and stayed at [12, 28, 28, 28], where [12, 24, 24, 24] lies between.
    Every pruned layer keeps a multiple of `multiple` channels, the one nearest to its share (see
    `align_channels` for why)."""

    ratio: float | dict[str, float] | None = None  # 0.5 when neither it nor target_bytes is given
    target_bytes: int = 0
    steps: int = 2
    importance: str = "l2"  # l1 | l2 (group weight magnitude) | bn (BatchNorm scale)
    max_drop: float = 0.02
    multiple: int = 4
    recover: int = 0
    backoff: int = 0
    drop_from: str = "step"  # step | recipe
    finetune: Finetune = Finetune()

    def __post_init__(self) -> None:
        require(self.importance in ("l1", "l2", "bn"), f"prune: importance must be l1, l2 or bn, got {self.importance!r}")
        require(
            0 <= self.max_drop <= 1 and self.target_bytes >= 0,
            f"prune: max_drop must be in [0, 1] and target_bytes >= 0, got {self.max_drop} and {self.target_bytes}",
        )
        require(
            self.ratio is None or not self.target_bytes,
            f"prune: give ratio or target_bytes, not both (got ratio {self.ratio} and target_bytes {self.target_bytes}); one of them would be ignored",
        )
        require(self.multiple >= 1, f"prune: multiple must be >= 1, got {self.multiple}")
        require(self.steps >= 1, f"prune: steps must be at least 1, got {self.steps}")
        require(self.ratio != {}, "prune: ratio is an empty mapping, which prunes nothing; give a ratio per modality ({image: 0.5}) or one number")
        require(self.recover >= 0, f"prune: recover must be >= 0 fine-tunes, got {self.recover}")
        require(self.backoff >= 0, f"prune: backoff must be >= 0 smaller cuts, got {self.backoff}")
        require(self.drop_from in ("step", "recipe"), f"prune: drop_from must be step or recipe, got {self.drop_from!r}")
        # Checked when the recipe is read: at the step, a ratio of 1.5 or for "imag" was refused after
        # the teachers and students of a `racmkd run` had trained.
        given = self.ratio if isinstance(self.ratio, dict) else {} if self.ratio is None else {"": self.ratio}
        for modality, ratio in given.items():
            require(0.0 <= ratio <= MAX_RATIO, f"prune: the ratio{f' for {modality}' if modality else ''} must be in [0, {MAX_RATIO}], got {ratio}")
        unknown = [m for m in given if m and m not in MODALITIES]
        if unknown:
            hint = did_you_mean(unknown[0], MODALITIES.names())
            raise ValueError(f"prune: ratio names {unknown}, no modality.{hint} Known: {', '.join(MODALITIES.names())}")


@COMPRESSORS.register("prune")
class Prune(Step):
    options_type = PruneOptions
    refines_weights = True
    changes_structure = True

    @property
    def checks_structure(self) -> bool:  # type: ignore[override]
        """A byte budget is turned into a ratio on the model's layers (after an earlier prune, a
        budget the whole model cannot reach may be in reach); a ratio is checked on its own."""
        return bool(self.options.target_bytes)

    def ratios(self, subject: Subject) -> dict[str, float]:
        o = self.options
        if o.target_bytes:
            r = ratio_for_bytes(subject.model, o.target_bytes, multiple=o.multiple)
            return {m: r for m in subject.specs}
        if isinstance(o.ratio, dict):
            unknown = set(o.ratio) - set(subject.specs)
            if unknown:
                raise ValueError(f"prune: ratio for {sorted(unknown)}, which {subject.name} does not use (it uses {list(subject.specs)})")
            return {m: float(o.ratio.get(m, 0.0)) for m in subject.specs}
        return {m: float(0.5 if o.ratio is None else o.ratio) for m in subject.specs}

    def check(self, subject: Subject, ctx: Context) -> None:
        for m, r in self.ratios(subject).items():
            if not 0.0 <= r <= MAX_RATIO:
                raise ValueError(f"prune: the ratio for {m} must be in [0, {MAX_RATIO}], got {r}")

    def apply(self, subject: Subject, ctx: Context) -> dict[str, Any]:
        o = self.options
        final = self.ratios(subject)
        start = subject.start_accuracy if o.drop_from == "recipe" and subject.start_accuracy is not None else val_accuracy(subject, ctx)

        def widths_now() -> dict[str, list[int]]:
            """Each encoder's layer widths as they are."""
            return {m: subject.model.encoders[m].structure()["channels"] for m in final}

        reference = widths_now()

        def removed() -> dict[str, float]:
            """The share of each encoder's channels gone so far (rounding to `multiple` makes it
            differ a little from the round's goal)."""
            now = widths_now()
            return {m: 1 - sum(now[m]) / sum(reference[m]) for m in final}

        def tune(what: str) -> float:
            """Fine-tune once; the validation accuracy the model is left with."""
            accuracy = finetune(subject, ctx, o.finetune, f"{subject.name}: prune {what}")
            return val_accuracy(subject, ctx) if np.isnan(accuracy) else accuracy

        def channels(goal: dict[str, float]) -> dict[str, list[int]]:
            """Each encoder's layer widths once pruned to `goal` from the model as it is now."""
            widths = {}
            for m, r in goal.items():
                encoder = subject.model.encoders[m]
                targets = layer_targets(encoder, r, o.multiple, reference[m]) if r > 0 else {}
                widths[m] = [targets.get(conv, width) for conv, width in zip(encoder.dense_convs(), encoder.structure()["channels"])]
            return widths

        def attempt(k: int, goal: dict[str, float], what: str) -> bool:
            """Round k: prune to `goal`, fine-tune (and recover); keep it when within the bound, else
            put the model back."""
            backup = copy.deepcopy(subject.model)
            prune_encoders(subject.model, goal, o.importance, o.multiple, reference)
            accuracy, recoveries = tune(what), 0
            while start - accuracy > o.max_drop and recoveries < o.recover:
                recoveries += 1
                accuracy = tune(f"{what}, recovery {recoveries}/{o.recover}")
            kept = start - accuracy <= o.max_drop
            params = sum(p.numel() for p in subject.model.parameters())
            rounds.append({"round": k, "goal": goal, "ratio": removed(), "params": params, "val_accuracy": accuracy, "recoveries": recoveries, "kept": kept})
            if not kept:
                subject.model = backup
            return kept

        def smaller_cut(kept_goal: dict[str, float], failed_goal: dict[str, float]) -> dict[str, float] | None:
            """Halfway from the share kept to the one that failed, halved again while any encoder the
            failed round pruned would round (to `multiple`) to its widths then (trying that again
            would only re-roll the fine-tune); None when every such cut rounds to the model as it is."""
            failed, now = channels(failed_goal), widths_now()
            cut = [m for m in failed if failed[m] != now[m]]  # the encoders the failed round pruned
            goal = failed_goal
            while True:
                goal = {m: (kept_goal[m] + goal[m]) / 2 for m in goal}
                widths = channels(goal)
                if widths == now:
                    return None
                if all(widths[m] != failed[m] for m in cut):  # smaller in every encoder it pruned
                    return goal

        rounds: list[dict[str, Any]] = []
        kept_goal = dict.fromkeys(final, 0.0)
        kept_ratio = dict.fromkeys(final, 0.0)
        stopped_early = True
        for k in range(1, o.steps + 1):
            # Round k brings every layer to k/steps of the final ratio of the channels it started with.
            goal = {m: r * k / o.steps for m, r in final.items()}
            if channels(goal) == widths_now():  # rounded to multiples, this round removes nothing more
                continue
            kept = attempt(k, goal, f"round {k}/{o.steps}")
            smaller_cuts = 0
            while not kept and smaller_cuts < o.backoff:
                smaller = smaller_cut(kept_goal, goal)
                if smaller is None:
                    break
                goal, smaller_cuts = smaller, smaller_cuts + 1
                kept = attempt(k, goal, f"round {k}/{o.steps}, smaller cut {smaller_cuts}/{o.backoff}")
            if not kept:
                break
            kept_goal, kept_ratio = goal, removed()
            if smaller_cuts:
                break
        else:
            stopped_early = False
        return {
            "ratio": kept_ratio,
            "rounds": rounds,
            "stopped_early": stopped_early,
            "lowest_val_accuracy": start - o.max_drop,  # the bound, from the step's start or the recipe's
        }


# Channel alignment --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlignOptions:
    """Cut every encoder layer down to a multiple of `multiple` channels (the fewest channels, least
    important first), then fine-tune; undone when validation accuracy falls more than `max_drop`.
    For a student the prune step left whole (its rounds cost too much accuracy) or one that was
    never pruned: its channel counts come from a byte budget, not from what the CPU's kernels like.
    A model already aligned is left alone, without a fine-tune."""

    multiple: int = 4
    importance: str = "l2"
    max_drop: float = 0.01
    latency_iters: int = 300
    finetune: Finetune = Finetune(epochs=1, samples=12800)

    def __post_init__(self) -> None:
        require(self.importance in ("l1", "l2", "bn"), f"align: importance must be l1, l2 or bn, got {self.importance!r}")
        require(
            self.multiple >= 2 and 0 <= self.max_drop <= 1 and self.latency_iters >= 1,
            f"align: multiple must be >= 2, max_drop in [0, 1] and latency_iters >= 1, got {self.multiple}, {self.max_drop} and {self.latency_iters}",
        )


@COMPRESSORS.register("align")
class Align(Step):
    options_type = AlignOptions
    refines_weights = True
    changes_structure = True

    def apply(self, subject: Subject, ctx: Context) -> dict[str, Any]:
        o = self.options
        trial = copy.deepcopy(subject.model)
        layers = align_channels(trial, o.multiple, o.importance)
        if not layers:
            return {"layers": [], "kept": True, "why": f"every layer already has a multiple of {o.multiple} channels"}
        start = val_accuracy(subject, ctx)
        before = subject.model
        subject.model = trial
        accuracy = finetune(subject, ctx, o.finetune, f"{subject.name}: align channels to {o.multiple}")
        accuracy = val_accuracy(subject, ctx) if np.isnan(accuracy) else accuracy
        latency = self.latencies({"before": before, "after": subject.model}, subject, ctx)
        kept = start - accuracy <= o.max_drop
        if not kept:
            subject.model = before
        why = f"validation accuracy {start:.4f} -> {accuracy:.4f} ({'within' if kept else 'beyond'} max_drop {o.max_drop}); fp32 ONNX p50 {latency['before']:.4f} -> {latency['after']:.4f} ms"
        return {"layers": layers, "kept": kept, "val_accuracy": accuracy, "latency_p50_ms": latency, "why": why}

    def latencies(self, models: dict[str, MultimodalNet], subject: Subject, ctx: Context) -> dict[str, float]:
        """fp32 ONNX Runtime p50 of each model (batch 1, one thread, timed in turn): what the step is for."""
        sessions = {}
        for key, model in models.items():
            path = subject.workdir / f"align-{key}.onnx"
            try:
                sessions[key] = session(export_onnx(model, subject.specs, ctx.dataset.modalities, path))
            finally:
                path.unlink(missing_ok=True)
        return {k: t["p50"] for k, t in onnx_latencies(sessions, subject, ctx, self.options.latency_iters).items()}


def onnx_latencies(sessions: dict[str, Any], subject: Subject, ctx: Context, iters: int, keep_rounds: bool = False) -> dict[str, dict[str, Any]]:
    """Each ONNX Runtime session's latency on one test sample (batch 1), timed in turn round-robin
    (`latency_round_robin`: the host's load falls on all alike), with 20 warm-up runs each."""
    one = {m: x[:1] for m, x in calibration_inputs(ctx.dataset, subject.specs, 1, split="test").items()}
    return latency_round_robin(
        {k: (lambda s=s: s.run(["logits"], one)) for k, s in sessions.items()}, warmup=20, iters=iters, rounds=rounds_for(iters), keep_rounds=keep_rounds
    )


# Low-rank factorisation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LowRankOptions:
    """Factorise pointwise (1x1) convolutions, keeping `energy` of each spectrum, or lowering it
    until the fp32 parameters fit `budget_bytes`; then fine-tune."""

    energy: float = 0.95
    budget_bytes: int = 0

    def __post_init__(self) -> None:
        require(
            0 < self.energy <= 1 and self.budget_bytes >= 0,
            f"lowrank: energy must be in (0, 1] and budget_bytes >= 0, got {self.energy} and {self.budget_bytes}",
        )

    finetune: Finetune = Finetune(epochs=1, samples=12800)


@COMPRESSORS.register("lowrank")
class LowRank(Step):
    options_type = LowRankOptions
    refines_weights = True
    changes_structure = True
    checks_structure = True

    def check(self, subject: Subject, ctx: Context) -> None:
        if self.options.budget_bytes:  # an impossible budget fails here, not after the steps before it
            plan_ranks(subject.model, self.options.energy, self.options.budget_bytes)

    def apply(self, subject: Subject, ctx: Context) -> dict[str, Any]:
        o = self.options
        subject.model, report = lowrank_model(subject.model, o.energy, o.budget_bytes)
        finetune(subject, ctx, o.finetune, f"{subject.name}: low-rank fine-tune")
        return {"layers": [asdict(r) for r in report], "factorised": sum(1 for r in report if r.rank)}


# Input-side compression ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InputsOptions:
    """Per modality, the input knobs to lower (`Modality.reductions`), e.g.
    {image: {resolution: 12}, audio: {n_mels: 32, n_frames: 16}}; then fine-tune. A number is a cap:
    a knob already at or below it stays as it is, so one recipe serves tiers of different input sizes
    (a model whose inputs are all within the caps is left alone, without a fine-tune)."""

    reduce: dict[str, dict[str, Any]] = field(default_factory=dict)
    finetune: Finetune = Finetune()

    def __post_init__(self) -> None:
        require(
            bool(self.reduce) and all(self.reduce.values()),
            f"inputs: reduce names nothing to lower ({self.reduce!r}); give knobs per modality, e.g. {{audio: {{n_frames: 16}}}}",
        )


@COMPRESSORS.register("inputs")
class Inputs(Step):
    options_type = InputsOptions
    refines_weights = True

    def knobs(self, subject: Subject) -> dict[str, dict[str, Any]]:
        """The knobs that lower something for this subject (numbers are caps; see InputsOptions)."""
        out = {}
        for m, knobs in self.options.reduce.items():
            if m not in subject.specs:
                raise ValueError(f"inputs: {subject.name} does not use {m} (it uses {list(subject.specs)})")
            spec = subject.specs[m]
            lowering = {
                k: v
                for k, v in knobs.items()
                if not (isinstance(v, (int, float)) and isinstance(getattr(spec, k, None), (int, float)) and getattr(spec, k) <= v)
            }
            if lowering:
                out[m] = lowering
        return out

    def check(self, subject: Subject, ctx: Context) -> None:
        self.specs_after(subject, ctx)  # raises on a bad knob or an enlargement

    def specs_after(self, subject: Subject, ctx: Context) -> dict[str, Any]:
        return {**subject.specs, **{m: ctx.dataset.modalities[m].reduce(subject.specs[m], **knobs) for m, knobs in self.knobs(subject).items()}}

    def apply(self, subject: Subject, ctx: Context) -> dict[str, Any]:
        before = {m: asdict(s) for m, s in subject.specs.items()}
        knobs = self.knobs(subject)
        if not knobs:
            return {"before": before, "after": before, "skipped": f"inputs already within {self.options.reduce}"}
        subject.model, subject.specs = reduce_inputs(subject.model, subject.specs, ctx.dataset.modalities, knobs)
        finetune(subject, ctx, self.options.finetune, f"{subject.name}: input reduction fine-tune")
        return {"before": before, "after": {m: asdict(s) for m, s in subject.specs.items()}}


@dataclass(frozen=True)
class BandsOptions:
    """Keep the `keep` most informative bands of a spectrogram input, or that `fraction` of them
    (ranked by occlusion on `samples` validation samples); then fine-tune."""

    modality: str = "audio"
    keep: int = 0
    fraction: float = 0.0
    samples: int = 2000

    def __post_init__(self) -> None:
        require(self.keep >= 0 and self.samples >= 1, f"bands: keep must be >= 0 and samples >= 1, got {self.keep} and {self.samples}")
        require(
            bool(self.keep) != bool(self.fraction) and 0 <= self.fraction <= 1,  # (NaN fails)
            f"bands: set either keep (a count) or fraction (in (0, 1]), not both or neither; got keep={self.keep}, fraction={self.fraction}",
        )

    finetune: Finetune = Finetune()


@COMPRESSORS.register("bands")
class Bands(Step):
    options_type = BandsOptions
    refines_weights = True

    def bands_kept(self, height: int) -> int:
        o = self.options
        return o.keep if o.keep else max(1, round(o.fraction * height))

    def check(self, subject: Subject, ctx: Context) -> None:
        o = self.options
        if o.modality not in subject.specs:
            raise ValueError(f"bands: {subject.name} does not use {o.modality} (it uses {list(subject.specs)})")
        if "bands" not in ctx.dataset.modalities[o.modality].reductions:
            raise ValueError(f"bands: the {o.modality} modality has no band selection")
        height = ctx.dataset.modalities[o.modality].feature_shape(subject.specs[o.modality])[1]
        if not 1 <= self.bands_kept(height) <= height:
            raise ValueError(f"bands: cannot keep {self.bands_kept(height)} of the {height} bands of {subject.name}'s {o.modality} input")

    def specs_after(self, subject: Subject, ctx: Context) -> dict[str, Any]:
        """Which bands are kept is known only once they are scored; how many is known now, and the
        steps after read that (the first ones of the current input stand for them)."""
        spec = subject.specs[self.options.modality]
        current = list(spec.bands) or list(range(spec.n_mels))
        kept = current[: self.bands_kept(len(current))]
        return {**subject.specs, self.options.modality: ctx.dataset.modalities[self.options.modality].reduce(spec, bands=kept)}

    def apply(self, subject: Subject, ctx: Context) -> dict[str, Any]:
        o = self.options
        spec = subject.specs[o.modality]
        scores = band_importance(subject.model, subject.specs, ctx.dataset, o.modality, o.samples)
        chosen = most_informative(scores, self.bands_kept(len(scores)))
        current = list(spec.bands) or list(range(spec.n_mels))  # scores index the rows of the current input
        bands = tuple(current[i] for i in chosen)
        subject.model, subject.specs = reduce_inputs(subject.model, subject.specs, ctx.dataset.modalities, {o.modality: {"bands": bands}})
        finetune(subject, ctx, o.finetune, f"{subject.name}: band selection fine-tune")
        return {"scores": scores, "kept": list(bands)}


# Fine-tuning --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistillOptions(Finetune):
    """A fine-tune that is the step itself: at least one epoch (none did nothing and logged NaN)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.epochs >= 1, f"distill: epochs must be at least 1, got {self.epochs}")


@COMPRESSORS.register("distill")
class Distill(Step):
    """A distillation fine-tune on its own (after a step that asked for none)."""

    options_type = DistillOptions
    refines_weights = True

    def apply(self, subject: Subject, ctx: Context) -> dict[str, Any]:
        return {"best_val_accuracy": finetune(subject, ctx, self.options, f"{subject.name}: distill")}


@dataclass(frozen=True)
class QATOptions(Finetune):
    """Quantization-aware distillation: fine-tune while weights and layer inputs are rounded as the
    int8 model rounds them; `weight_bits: 4` rounds the weights to the 4-bit grid instead (for an
    export with `int4_weights`), `activations: false` leaves layer inputs float (as weights-only
    artifacts run)."""

    lr: float = 0.001
    weight_bits: int = 8
    activations: bool = True
    modules: tuple[str, ...] = ()
    per_tensor: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.epochs >= 1, f"qat: epochs must be at least 1, got {self.epochs} (none trained nothing, and the model was recorded as QAT-trained)")
        require(self.weight_bits in (8, 4), f"qat: weight_bits must be 8 or 4, got {self.weight_bits!r}")
        require(
            self.weight_bits == 8 or not self.activations,
            "qat: weight_bits 4 trains for the int4-weights file, which runs float activations; set activations: false (no artifact rounds both)",
        )
        require(
            not self.modules or (self.weight_bits == 4 and all(isinstance(m, str) and m for m in self.modules)),
            f"qat: modules names modules (such as encoders.image) for weight_bits 4; got {self.modules!r} with weight_bits {self.weight_bits}",
        )
        require(
            not (self.per_tensor and self.activations),
            "qat: per_tensor trains for the weights-only files' one scale per layer (per_tensor_scales); the int8 graph keeps its scales per channel: set activations: false",
        )


@COMPRESSORS.register("qat")
class QAT(Step):
    options_type = QATOptions

    def check(self, subject: Subject, ctx: Context) -> None:
        check_modules(subject, "qat: modules", self.options.modules)

    def apply(self, subject: Subject, ctx: Context) -> dict[str, Any]:
        o = self.options
        with fake_quantized(subject.model, o.weight_bits, o.activations, o.modules, o.per_tensor):
            accuracy = finetune(subject, ctx, self.options, f"{subject.name}: quantization-aware fine-tune")
        subject.manifest["qat"] = True
        return {"best_val_accuracy_fake_quantized": accuracy}


# Cross-layer equalization -------------------------------------------------------------------------


@dataclass(frozen=True)
class EqualizeOptions:
    """Balance the channel ranges of consecutive layers (see racmkd/compress/equalize.py) in the
    encoders named in `modules` (`encoders.image`; none named: every encoder), so that one scale per
    layer (the export's `per_tensor_scales`) rounds their small channels less coarsely. The model
    computes the same function: no fine-tune."""

    modules: tuple[str, ...] = ()
    max_sweeps: int = 100

    def __post_init__(self) -> None:
        require(
            all(isinstance(m, str) and m.startswith("encoders.") for m in self.modules),
            f"equalize: modules names encoders (such as encoders.image), got {self.modules!r}",
        )
        require(self.max_sweeps >= 1, f"equalize: max_sweeps must be at least 1, got {self.max_sweeps}")


@COMPRESSORS.register("equalize")
class Equalize(Step):
    options_type = EqualizeOptions
    checked_samples: ClassVar[int] = 512  # validation samples on which the logits are compared before and after
    max_logit_change: ClassVar[float] = 1e-3  # float rounding stays far below it (about 1e-5); the export's fp32 parity bound

    def check(self, subject: Subject, ctx: Context) -> None:
        encoders = {f"encoders.{name}": encoder for name, encoder in subject.model.encoders.items()}
        unknown = [m for m in self.options.modules if m not in encoders]
        if unknown:  # (a part of an encoder, encoders.image.body.1, would equalize nothing)
            raise ValueError(f"equalize: modules {unknown} are not encoders of this model; name whole encoders: {', '.join(sorted(encoders))}")
        chainless = [m for m in self.options.modules if not equalizable_chains(encoders[m])]
        if chainless:
            raise ValueError(f"equalize: {chainless} have no consecutive conv-BN-ReLU layers to balance; leave them out")

    def apply(self, subject: Subject, ctx: Context) -> dict[str, Any]:
        before = torch_logits(subject.model, subject.specs, ctx.dataset, "val", limit=self.checked_samples)
        report = equalize_model(subject.model, self.options.modules, self.options.max_sweeps)
        after = torch_logits(subject.model, subject.specs, ctx.dataset, "val", limit=self.checked_samples)
        change = float(np.abs(after - before).max())
        if change > self.max_logit_change:  # the export's parity compares with this model: it would ship unnoticed
            raise ValueError(
                f"equalize: the logits moved by {change:.2g} (at most {self.max_logit_change:g} expected); leave the step out and report this model"
            )
        return {"encoders": {name: asdict(result) for name, result in report.items()}, "max_logit_change": change}


# Export -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportOptions:
    """Export fp32 and int8 ONNX models and choose the tier's artifact.

    `int8`: "static" (every Conv/Gemm int8), "mixed" (the fewest of the most sensitive layers stay
    fp32 that bring the int8 model's agreement on the validation split to `min_agreement` plus two
    standard errors, within `mixed_budget` x the all-int8 weight bytes) or "none". `int8_weights`
    also exports int8 weights with float arithmetic (`onnx-int8-weights`: a quarter of the weight
    bytes at fp32 speed); `int4_weights` also exports 4-bit weights (`onnx-int4-weights`: an eighth
    of them), the fewest of the most sensitive layers kept in 8 bits that bring its agreement with
    the fp32 model on the validation split to `min_agreement` plus two standard errors (after a
    `qat` step with `weight_bits: 4`, usually none); `int4_modules` (module names such as
    `encoders.image`) limits the 4-bit weights to those modules' layers, the others kept in 8 bits
    (a recipe compressing one modality's path spends the agreement bound on that path only).
    `per_tensor_scales` then stores the weights of
    those files' layers on one scale each (a scalar instead of an fp32 scale per output channel),
    but for the fewest layers, most sensitive per byte first, that must keep their scales per
    channel for the agreement to hold the same way: in a tier of a few hundred weights the scales
    are a quarter of the 8-bit file's weight bytes. `bias_correction` corrects those files' encoder
    biases for the shift the rounding gives each layer's mean output, measured on
    `calibration_samples` training samples (`bias_shifts`; in the searches too, so that they judge
    the files as they ship): free in bytes. A quantized model is acceptable when its argmax agrees with its own fp32
    model on at least `min_agreement` of the test samples and its accuracy is at most
    `max_accuracy_drop` below on the validation split (it chooses what ships); of the acceptable artifacts, `prefer` picks the faster (measured
    here: ONNX Runtime, batch 1, one thread, in paired rounds; a candidate the fastest does not
    beat beyond noise (`racmkd.measure.cost.clearly_faster`) counts as equally fast, and the smallest
    of those wins) or the smaller."""

    int8: str = "static"
    int8_weights: bool = True
    int4_weights: bool = False
    int4_modules: tuple[str, ...] = ()
    per_tensor_scales: bool = False
    bias_correction: bool = False
    calibration_samples: int = 512
    sensitivity_samples: int = 1000
    mixed_budget: float = 1.5
    min_agreement: float = 0.99
    max_accuracy_drop: float = 0.01
    prefer: str = "faster"  # faster | smaller
    latency_iters: int = 300

    def __post_init__(self) -> None:
        require(self.int8 in ("static", "mixed", "none"), f"export: int8 must be static, mixed or none, got {self.int8!r}")
        require(self.prefer in ("faster", "smaller"), f"export: prefer must be faster or smaller, got {self.prefer!r}")
        require(
            0 <= self.min_agreement <= 1 and 0 <= self.max_accuracy_drop <= 1,
            f"export: min_agreement and max_accuracy_drop must be in [0, 1], got {self.min_agreement} and {self.max_accuracy_drop}",
        )
        require(
            self.latency_iters >= 1
            and (self.int8 == "none" or min(self.calibration_samples, self.sensitivity_samples) >= 1)
            and (not self.bias_correction or self.calibration_samples >= 1)
            and (not (self.int4_weights or self.per_tensor_scales) or self.sensitivity_samples >= 1),
            "export: latency_iters, for int8 calibration_samples and sensitivity_samples, for bias_correction calibration_samples, and for int4_weights and per_tensor_scales sensitivity_samples, must be >= 1",
        )
        require(
            not self.int4_modules or (self.int4_weights and all(isinstance(m, str) and m for m in self.int4_modules)),
            f"export: int4_modules names modules (such as encoders.image) for int4_weights' 4-bit layers; got {self.int4_modules!r} with int4_weights {self.int4_weights}",
        )
        require(
            not (self.per_tensor_scales or self.bias_correction) or self.int8_weights or self.int4_weights,
            "export: per_tensor_scales and bias_correction apply to the weights-only files; turn on int8_weights or int4_weights",
        )
        require(
            self.int8 != "mixed" or 1.0 <= self.mixed_budget < math.inf,
            f"export: mixed_budget {self.mixed_budget} must be a finite multiple of the all-int8 size, at least 1.0 (below, an impossible budget)",
        )

    def meets_bound(self, kind: str, parity: dict[str, Any], validation: dict[str, Any] | None = None) -> bool:
        """Whether an exported file of this `kind` is within the parity bound: fp32 must agree with
        PyTorch's argmax on every test sample, an int8 file with its fp32 model on `min_agreement`
        of them (no labels: the issue's parity check), losing at most `max_accuracy_drop` of
        accuracy: on the `validation` parity when given, as the export step gives it, since there
        the bound chooses what ships and a choice made on test labels would be reported on them."""
        if kind == "fp32":
            return parity["argmax_agreement"] == 1.0
        judged = validation if validation is not None else parity
        return parity["argmax_agreement"] >= self.min_agreement and judged["reference_accuracy"] - judged["accuracy"] <= self.max_accuracy_drop


@COMPRESSORS.register("export")
class Export(Step):
    options_type = ExportOptions

    def check(self, subject: Subject, ctx: Context) -> None:
        check_modules(subject, "export: int4_modules", self.options.int4_modules)

    def apply(self, subject: Subject, ctx: Context) -> dict[str, Any]:
        o = self.options
        ds = ctx.dataset
        fp32_path = export_onnx(
            subject.model,
            subject.specs,
            ds.modalities,
            subject.workdir / "fp32.onnx",
            name=f"{subject.name}_compressed",
            extra_meta={"precision": "fp32", "tier": subject.name},
        )
        reference = torch_logits(subject.model, subject.specs, ds, "test")
        fp32_logits, labels = onnx_logits(session(fp32_path), subject.specs, ds, "test")
        candidates = {"fp32": {"path": fp32_path, "format": "onnx-fp32", "parity": fp32_parity(fp32_logits, reference, labels, fp32_path).as_dict()}}
        details: dict[str, Any] = {}
        if o.int8 == "mixed" or o.int4_weights or o.per_tensor_scales:
            validation = calibration_inputs(ds, subject.specs, len(ds.splits["val"]), split="val")  # the split's features, once
            evaluation = {m: x[: o.sensitivity_samples] for m, x in validation.items()}
            val_labels = ds.splits["val"].labels[: o.sensitivity_samples].numpy()
        if o.int8 != "none" or o.bias_correction:
            calibration = calibration_inputs(ds, subject.specs, o.calibration_samples)
        if o.int8 != "none":
            keep_float: list[str] = []
            if o.int8 == "mixed":
                sensitivity = layer_sensitivity(fp32_path, calibration, evaluation, val_labels)
                budget = int(o.mixed_budget * sum(s.bytes_int8 for s in sensitivity))
                allowed, _ = choose_mixed_precision(sensitivity, budget)
                # Judged on the whole validation split, the ranking's samples among them (the margin covers
                # them): on the 9,000 it did not rank on alone, the critical tier's audio path (run
                # deploy-s0) reached the same choice, agreements within 0.0003 of these.
                keep_float, trials = fewest_float_layers(fp32_path, calibration, validation, allowed, o.min_agreement)
                details["mixed_precision"] = {
                    "budget_bytes": budget,
                    "allowed_fp32": allowed,
                    "kept_fp32": keep_float,
                    "trials": trials,
                    "layers": [asdict(s) for s in sensitivity],
                }
            int8_path = quantize_int8(fp32_path, subject.workdir / "int8.onnx", calibration, keep_float=keep_float)
            int8_logits, _ = onnx_logits(session(int8_path), subject.specs, ds, "test")
            candidates["int8"] = {
                "path": int8_path,
                "format": "onnx-mixed" if keep_float else "onnx-int8",
                "parity": parity(int8_logits, fp32_logits, labels).as_dict(),
            }

        corrected_on = calibration if o.bias_correction else None  # the weights-only files' biases corrected on these

        def one_scale_layers(candidate: str, bits: int, kept_int8: list[str], clipped: list[str]) -> list[str]:
            """The candidate's layers stored on one scale each (none unless `per_tensor_scales`)."""
            if not o.per_tensor_scales:
                return []
            widths = dict.fromkeys(kept_int8, 8)
            ranked = scale_sensitivity(fp32_path, evaluation, bits, widths, clipped)
            names = [r.weight for r in ranked]
            kept_per_channel, trials = fewest_per_channel_layers(fp32_path, validation, names, o.min_agreement, bits, widths, clipped, corrected_on)
            one_scale = [w for w in names if w not in kept_per_channel]
            details.setdefault("per_tensor_scales", {})[candidate] = {
                "per_tensor": one_scale,
                "kept_per_channel": kept_per_channel,
                "trials": trials,
                "layers": [asdict(r) for r in ranked],
            }
            return one_scale

        if o.int8_weights:
            per_tensor = one_scale_layers("int8-weights", 8, [], [])
            weights_path, shifts = weights_only_model(fp32_path, subject.workdir / "int8-weights.onnx", corrected_on, per_tensor=per_tensor)
            weights_logits, _ = onnx_logits(session(weights_path), subject.specs, ds, "test")
            candidates["int8-weights"] = {
                "path": weights_path,
                "format": "onnx-int8-weights",
                "parity": parity(weights_logits, fp32_logits, labels).as_dict(),
                "per_tensor": per_tensor,  # the variant bank stores its graphs' weights the same way
                "bias_shift": {name: shift.tolist() for name, shift in shifts.items()},
            }
        if o.int4_weights:
            choice = choose_int4_weights(fp32_path, validation, evaluation, val_labels, o.min_agreement, o.int4_modules, corrected_on)
            keep_int8, clipped = choice.kept_int8, choice.clipped
            details["int4_weights"] = {"modules": list(o.int4_modules), **asdict(choice)}
            if choice.has_int4:
                per_tensor = one_scale_layers("int4-weights", 4, keep_int8, clipped)
                int4_path, shifts = weights_only_model(
                    fp32_path,
                    subject.workdir / "int4-weights.onnx",
                    corrected_on,
                    bits=4,
                    bits_by_weight=dict.fromkeys(keep_int8, 8),
                    clipped=clipped,
                    per_tensor=per_tensor,
                )
                int4_logits, _ = onnx_logits(session(int4_path), subject.specs, ds, "test")
                candidates["int4-weights"] = {
                    "path": int4_path,
                    "format": "onnx-int4-weights",
                    "parity": parity(int4_logits, fp32_logits, labels).as_dict(),
                    "kept_int8": keep_int8,  # the variant bank stores its graphs' weights the same way
                    "clipped": clipped,
                    "per_tensor": per_tensor,
                    "bias_shift": {name: shift.tolist() for name, shift in shifts.items()},
                }
        for c in candidates.values():  # names were needed to pick layers; the deployed files do without
            c["weight_bytes_by_module"] = compact_file(c["path"])
        sessions = {k: session(c["path"]) for k, c in candidates.items()}  # (one each: the validation pass and the timing)
        if len(candidates) > 1:  # the accuracy bound is judged on validation (see ExportOptions.meets_bound)
            fp32_val, val_labels = onnx_logits(sessions["fp32"], subject.specs, ds, "val")
            for name, c in candidates.items():
                if name != "fp32":
                    c["validation_parity"] = parity(onnx_logits(sessions[name], subject.specs, ds, "val")[0], fp32_val, val_labels).as_dict()
        latency = onnx_latencies(sessions, subject, ctx, o.latency_iters, keep_rounds=True)
        for key, c in candidates.items():
            c["latency_ms"] = latency[key]
            c["bytes"] = c["path"].stat().st_size
        chosen, reason = choose_artifact(candidates, o)
        set_aside_rejected(candidates, chosen)
        subject.manifest.update(
            artifact=candidates[chosen]["path"].name, format=candidates[chosen]["format"], reason=reason, specs={m: asdict(s) for m, s in subject.specs.items()}
        )
        subject.manifest["candidates"] = {k: {kk: (vv.name if isinstance(vv, Path) else vv) for kk, vv in c.items()} for k, c in candidates.items()}
        return {"chosen": chosen, "reason": reason, "candidates": subject.manifest["candidates"], **details}


def choose_artifact(candidates: dict[str, dict[str, Any]], options: ExportOptions) -> tuple[str, str]:
    """The artifact a tier deploys, and why: of those within their bound, the faster (the smaller of
    those tied on speed) or the smaller. Marks each candidate's `meets_bound` (fp32: its argmax
    agrees with PyTorch's on every test sample; an int8 one: the options' bound against fp32, its
    accuracy drop on its `validation_parity` when it has one).

    When none is within its bound, fp32: the model the others were judged against, its logits within
    rounding of PyTorch's (`fp32_parity` refused the export otherwise), so its misses are argmaxes
    flipped on near ties. The reason then says that fp32 missed its bound and why it was kept."""
    notes = []
    fp32 = candidates["fp32"]["parity"]
    candidates["fp32"]["meets_bound"] = options.meets_bound("fp32", fp32)
    if not candidates["fp32"]["meets_bound"]:
        notes.append(
            f"fp32 misses its bound: it agrees with PyTorch on {fp32['argmax_agreement']:.4%} of the test samples, not all (max logit difference {fp32['max_abs_logit_diff']:.2g}: near ties)"
        )
    for name in ("int8", "int8-weights", "int4-weights"):
        if name not in candidates:
            continue
        p, judged = candidates[name]["parity"], candidates[name].get("validation_parity")
        candidates[name]["meets_bound"] = options.meets_bound(name, p, judged)
        if not candidates[name]["meets_bound"]:
            drop = (judged or p)["reference_accuracy"] - (judged or p)["accuracy"]
            missed = [
                *([f"test agreement {p['argmax_agreement']:.4f} < {options.min_agreement}"] if p["argmax_agreement"] < options.min_agreement else []),
                *(
                    [f"{'validation' if judged else 'test'} accuracy drop {drop:+.4f} > {options.max_accuracy_drop}"]
                    if drop > options.max_accuracy_drop
                    else []
                ),
            ]  # the conditions that failed, not both whichever did
            notes.append(
                f"{name} misses the bound ({' and '.join(missed)})"
                + ("; `int8: mixed` keeps its most sensitive layers in fp32" if name == "int8" and options.int8 == "static" else "")
            )
    acceptable = [k for k, c in candidates.items() if c["meets_bound"]]
    if not acceptable:
        notes.append("no candidate is within its bound: fp32 is deployed as the nearest to PyTorch")
        return "fp32", "; ".join(notes)
    p50 = {k: candidates[k]["latency_ms"]["p50"] for k in acceptable}
    size = {k: candidates[k]["bytes"] for k in acceptable}
    if options.prefer == "faster":
        fastest = min(acceptable, key=lambda k: p50[k])
        tied = [k for k in acceptable if not clearly_faster(candidates[fastest]["latency_ms"], candidates[k]["latency_ms"])]
        chosen = min(tied, key=lambda k: size[k])
        why = (
            "faster"
            if len(tied) == 1
            else f"the smallest of {', '.join(tied)} (as fast: p50s within {LATENCY_TIE:.0%}, or the faster won fewer than {ROUNDS_WON:.0%} of the paired timing rounds)"
        )
    else:
        chosen = min(acceptable, key=lambda k: size[k])
        why = "smaller"
    if len(acceptable) > 1:
        others = ", ".join(f"{k} {p50[k]:.3f} ms / {size[k]:,} bytes" for k in acceptable if k != chosen)
        notes.append(f"{chosen} is {why}: p50 {p50[chosen]:.3f} ms, {size[chosen]:,} bytes (vs {others})")
    return chosen, "; ".join(notes) or "the only candidate"


def set_aside_rejected(candidates: dict[str, dict[str, Any]], chosen: str) -> None:
    """Rename every file that missed its bound and was not chosen to `<stem>.rejected.onnx`: kept for
    inspection, named so that no one deploys it. The chosen file keeps its name even when it missed
    (fp32 when nothing met its bound; the manifest's reason says so): what is deployed is never
    called rejected."""
    for name, c in candidates.items():
        if not c["meets_bound"] and name != chosen:
            c["path"] = c["path"].replace(c["path"].with_name(f"{c['path'].stem}.rejected.onnx"))
