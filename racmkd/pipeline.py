"""The pipeline's stages, each a library function that the CLI wraps:

    data -> train_teachers -> select_designs + distill_students -> compress_students -> evaluate_run
         -> build_bank (the edge runtime's variants)

A run lives in runs/<name>/: config.yaml, checkpoints/*.pt, selection.json, compressed/<tier>/,
report.json, report.md, plots and edge/; runs/latest points at the newest run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from racmkd.config import ConfigError, RunConfig, TierConfig, TrainConfig
from racmkd.data.dataset import FeatureCache, PairedDataset, build_dataset
from racmkd.data.modalities import Modality
from racmkd.distill.adaptive import objective_weights
from racmkd.distill.trainer import Job, Teacher, attach_projection, check_loss_names, learns_from_teachers, train_jobs
from racmkd.measure.cost import count_flops
from racmkd.models.checkpoint import load_model, save_model, save_models_together
from racmkd.models.multimodal import MultimodalNet, count_params, teacher, widest_student
from racmkd.runs import (  # noqa: F401 - run directories (racmkd.runs, no torch)
    TEACHER,
    RunError,
    checkpoint,
    create_run,
    new_run,
    link_latest,
    missing_teachers,
    open_run,
    read_selection,
    record_timing,
    teacher_names,
)
from racmkd.utils import atomic_write_json, building_folder, fsync_folder, seed_everything, sha256, torch_threads, work_folder

if TYPE_CHECKING:
    from racmkd.compress.recipe import Recipe

log = logging.getLogger(__name__)


# Model inputs ------------------------------------------------------------------------------------


def model_inputs(modalities: dict[str, Modality], specs: dict[str, Any], role: str) -> dict[str, dict[str, Any]]:
    """The `inputs` record of a teacher or student: encoder name and input shape per modality."""
    return {m: {"encoder": getattr(modalities[m], f"{role}_encoder"), "shape": list(modalities[m].feature_shape(s))} for m, s in specs.items()}


def teacher_specs(modalities: dict[str, Modality], names: list[str] | tuple[str, ...], levels: dict[str, int] | None = None) -> dict[str, Any]:
    """The teachers' input specs: full resolution (level 0) unless `levels` (teacher.level) names a
    cheaper level for a modality. A level for a modality the run does not use is ignored, so one
    config serves runs on fewer modalities."""
    levels = levels or {}
    for m, level in levels.items():
        if m in modalities and not 0 <= level < modalities[m].n_levels:
            raise ConfigError(f"teacher.level.{m} {level}: {m} has levels 0-{modalities[m].n_levels - 1} (data.options.{m}.levels)")
    return {m: modalities[m].spec(levels.get(m, 0)) for m in names}


def check_teacher_inputs(cfg: RunConfig, dataset: PairedDataset) -> None:
    """The teachers' inputs as the config sets them (teacher.level), checked against the data's
    modalities before a run folder is made: out of range, it failed after `create_run` had made the
    folder and pointed runs/latest at it, empty, and taken the run's name."""
    teacher_specs(dataset.modalities, list(dataset.modalities), cfg.teacher.level)


def check_student_designs(cfg: RunConfig, dataset: PairedDataset) -> None:
    """Every tier has at least one student design (the search's candidates, before any teacher
    says which modality sets are out of reach), before a run folder is made: a resolution level
    out of range (`students.tiers.3.scale=9`) or a budget no student fits stopped the run after the
    teachers had trained."""
    for tier in cfg.students.tiers:
        designs, skipped = candidates(cfg, dataset.modalities, tier)
        if not designs:
            raise RunError(f"tier {tier.name!r}: no student design fits {tier.budget_bytes} bytes ({'; '.join(skipped)})")


# Teachers ----------------------------------------------------------------------------------------


def check_teachers_trainable(cfg: RunConfig, run_dir: Path) -> None:
    """An existing run takes teachers (`train-teacher --run`) only while nothing else was made from
    them: an interrupted `racmkd run` leaves a run with its config and no teachers, or with the
    unimodal teachers and no fused one (Ctrl-C during the fused teacher), and that partial set is
    trained again whole. Teachers trained under existing students, compressed tiers or an edge bank
    would no longer be those these were made from; a whole teacher set is kept (distillation goes on)."""
    names = teacher_names(cfg.data.modalities)
    made = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt") if p.stem not in names)
    made += [f"{folder}/" for folder in ("compressed", "edge", "experiments", "onnx") if (run_dir / folder).exists()]
    if made:
        raise RunError(
            f"{run_dir}: made from the run's teachers already ({', '.join(made)}); teachers trained again would not be theirs. Start a new run to train teachers (`racmkd run --name NAME` or `racmkd train-teacher --name NAME`)."
        )
    missing = missing_teachers(run_dir, cfg.data.modalities)
    if not missing:
        raise RunError(
            f"{run_dir}/checkpoints: the run's teachers exist already ({', '.join(f'{n}.pt' for n in names)}). Go on with `racmkd distill --run {run_dir}`; to train them again, delete those files first, or start a new run (`racmkd train-teacher --name NAME`)."
        )
    partial = [f"{n}.pt" for n in names if n not in missing]
    if partial:
        log.warning(
            "%s/checkpoints: a partial teacher set (%s; no %s): the whole set is trained again",
            run_dir,
            ", ".join(partial),
            ", ".join(f"{n}.pt" for n in missing),
        )


def lr_setting(run_dir: Path, section: str) -> str:
    """Where a job's learning rate is set, for the message when its training diverges."""
    return f"{section}.lr in {run_dir}/config.yaml"


def train_teachers(cfg: RunConfig, dataset: PairedDataset, run_dir: Path) -> list[Teacher]:
    """Train one unimodal teacher per modality, then the fused teacher initialised from their
    encoders (with modality dropout); save all of them. Returns [fused, unimodal...]."""
    tc = cfg.teacher
    names = list(dataset.modalities)
    started = time.perf_counter()
    with torch_threads(cfg.threads):
        unimodal = []
        for offset, m in enumerate(names):
            seed_everything(cfg.seed + 100 + offset)
            specs = teacher_specs(dataset.modalities, [m], tc.level)
            model = teacher(model_inputs(dataset.modalities, specs, "teacher"), tc.width, tc.embed_dim, tc.fusion_hidden, tc.dropout, depth=tc.depth)
            unimodal.append(Job(f"{TEACHER}_{m}", model, specs, tc.unimodal, lr_setting=lr_setting(run_dir, "teacher.unimodal")))
        train_jobs(
            dataset,
            unimodal,
            tc.unimodal.epochs,
            tc.unimodal.batch_size,
            cfg.seed,
            samples_per_epoch=tc.unimodal.samples_per_epoch,
            augment=cfg.data.augment,
            desc="unimodal teachers",
        )
        for job in unimodal:
            save_model(checkpoint(run_dir, job.name), job.model, job.specs, training_meta(job, role="teacher"))
        fused_jobs = []
        if len(names) > 1:
            seed_everything(cfg.seed + 99)
            specs = teacher_specs(dataset.modalities, names, tc.level)
            model = teacher(model_inputs(dataset.modalities, specs, "teacher"), tc.width, tc.embed_dim, tc.fusion_hidden, tc.dropout, depth=tc.depth)
            for job in unimodal:  # start from what each unimodal teacher learned
                (m,) = job.specs
                model.encoders[m].load_state_dict(job.model.encoders[m].state_dict())
                model.encoders[m].requires_grad_(not tc.freeze_encoders)
            fused_jobs = [Job(TEACHER, model, specs, tc.fused, lr_setting=lr_setting(run_dir, "teacher.fused"))]
            train_jobs(
                dataset,
                fused_jobs,
                tc.fused.epochs,
                tc.fused.batch_size,
                cfg.seed + 1,
                samples_per_epoch=tc.fused.samples_per_epoch,
                augment=cfg.data.augment,
                desc="fused teacher",
            )
            model.requires_grad_(True)
            save_model(checkpoint(run_dir, TEACHER), model, specs, training_meta(fused_jobs[0], role="teacher"))
    record_timing(run_dir, "train_teachers", time.perf_counter() - started)
    return [Teacher(j.name, j.model, j.specs) for j in fused_jobs + unimodal]


def load_teachers(run_dir: Path, names: list[str], unimodal: bool = True) -> list[Teacher]:
    """The run's teachers, fused first (the primary teacher for feature losses), then the unimodal
    ones when `unimodal` (multi-teacher distillation needs them; the other losses do not)."""
    wanted = teacher_names(names) if unimodal or len(names) == 1 else [TEACHER]
    teachers = []
    for name in wanted:
        path = checkpoint(run_dir, name)
        if not path.exists():
            raise RunError(f"{path}: teacher missing. Run `racmkd train-teacher --run {run_dir}` first.")
        model, specs, _, _ = load_model(path)
        teachers.append(Teacher(name, model, specs))
    return teachers


# Students ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Design:
    """A student's design: the tier it serves, its inputs and its width."""

    tier: str
    modalities: tuple[str, ...]
    level: int  # input-resolution level of every modality
    depth: int  # depthwise-separable blocks per encoder stage
    width: float
    params: int
    budget_bytes: int
    channel_multiple: int = 1  # every layer's channels rounded to a multiple of this (1: none)

    @property
    def name(self) -> str:
        return f"{self.tier}:{'+'.join(self.modalities)}@L{self.level}/d{self.depth}"

    @property
    def key(self) -> tuple:
        """What makes two designs the same network, whatever tier lists them."""
        return (self.modalities, self.level, self.depth, self.width, self.channel_multiple)

    def specs(self, modalities: dict[str, Modality]) -> dict[str, Any]:
        return {m: modalities[m].spec(self.level) for m in self.modalities}


def candidates(
    cfg: RunConfig, modalities: dict[str, Modality], tier: TierConfig, out_of_reach: dict[tuple[str, ...], str] | None = None
) -> tuple[list[Design], list[str]]:
    """The designs a tier may use: every configured modality set (but those `out_of_reach` names,
    with the reason), resolution level and depth, each at the widest width that fits the budget.
    Also the reasons for any candidate left out."""
    sel = cfg.students.selection
    sets = [tier.modalities] if tier.modalities else list(sel.modality_sets)
    levels = [tier.scale] if tier.scale >= 0 else list(sel.scales)
    depths = [tier.depth] if tier.depth > 0 else list(sel.depths)
    designs, skipped = [], []
    for mods in sets:
        if not set(mods) <= set(modalities):
            skipped.append(f"{'+'.join(mods)}: not all of these modalities are in data.modalities")
            continue
        if not tier.modalities and tuple(mods) in (out_of_reach or {}):
            skipped.append(f"{'+'.join(mods)}: {out_of_reach[tuple(mods)]}")
            continue
        for level in levels:
            if any(level >= modalities[m].n_levels for m in mods):
                skipped.append(f"{'+'.join(mods)}@L{level}: no such resolution level")
                continue
            specs = {m: modalities[m].spec(level) for m in mods}
            for depth in depths:
                model = widest_student(model_inputs(modalities, specs, "student"), tier.budget_bytes, depth, cfg.students.max_width, tier.channel_multiple)
                if model is None:
                    skipped.append(f"{'+'.join(mods)}@L{level}/d{depth}: even the narrowest student exceeds {tier.budget_bytes} bytes")
                    continue
                designs.append(
                    Design(tier.name, tuple(mods), level, depth, model.arch["kwargs"]["width"], count_params(model), tier.budget_bytes, tier.channel_multiple)
                )
    return designs, skipped


def build_student(design: Design, modalities: dict[str, Modality], seed: int) -> MultimodalNet:
    """A freshly initialised student of a design (same seed, same initial weights)."""
    from racmkd.models.multimodal import student

    seed_everything(seed)
    return student(
        model_inputs(modalities, design.specs(modalities), "student"), width=design.width, depth=design.depth, channel_multiple=design.channel_multiple
    )


def batch_one_inputs(model: MultimodalNet) -> dict[str, torch.Tensor]:
    """Zero inputs of batch 1 in the model's input shapes (for FLOP counts)."""
    return {m: torch.zeros(1, *spec["shape"]) for m, spec in model.arch["kwargs"]["inputs"].items()}


def deepest_per_input(designs: list[Design]) -> list[Design]:
    """For each (modalities, resolution) pair, its deepest design that fits the budget."""
    deepest: dict[tuple, Design] = {}
    for d in designs:
        key = (d.modalities, d.level)
        if key not in deepest or d.depth > deepest[key].depth:
            deepest[key] = d
    return list(deepest.values())


def break_ties(entries: list[dict[str, Any]], tolerance: float, ties: str) -> tuple[dict[str, Any], str]:
    """The candidate a tier takes, and why: among those within `tolerance` of the best validation
    accuracy, the cheapest in FLOPs (`ties="flops"`) or the one with the most parameters ("capacity")."""
    top = max(entries, key=lambda e: e["val_accuracy"])
    near = [e for e in entries if e["val_accuracy"] >= top["val_accuracy"] - tolerance]
    if ties == "flops":
        pick = min(near, key=lambda e: (e["flops"], -e["val_accuracy"]))
        why = f"at {top['flops'] / max(pick['flops'], 1):.1f}x fewer FLOPs"
    else:
        pick = max(near, key=lambda e: (e["params"], e["val_accuracy"]))
        why = f"with {pick['params'] / max(top['params'], 1):.1f}x the parameters (ties go to capacity)"
    return (
        pick,
        "highest validation accuracy" if pick is top else f"within {tolerance * 100:.1f} points of the best ({top['name']}, {top['val_accuracy']:.4f}) {why}",
    )


def out_of_reach(cfg: RunConfig, run_dir: Path, names: list[str]) -> dict[tuple[str, ...], str]:
    """The one-modality sets not worth a candidate, with why: those whose unimodal teacher ended
    more than `selection.teacher_gap` below the fused teacher on validation (both figures from
    their checkpoints). A student that sees only those inputs learns about what their teacher
    could: on avmnist the image teacher reads 0.65 of the validation digits, the fused one 0.98,
    and the image-only candidates ranked last in every tier (0.54-0.60 after 100 steps, beside
    0.80-0.92 with the audio; run avmnist-20261202-064431)."""
    gap = cfg.students.selection.teacher_gap
    fused = checkpoint(run_dir, TEACHER)
    if len(names) < 2 or gap >= 1.0 or not fused.exists():
        return {}
    fused_accuracy = load_model(fused)[3]["val_accuracy"]
    reasons = {}
    for m in names:
        path = checkpoint(run_dir, f"{TEACHER}_{m}")
        accuracy = load_model(path)[3]["val_accuracy"] if path.exists() else None
        if accuracy is not None and accuracy < fused_accuracy - gap:
            reasons[(m,)] = (
                f"its teacher reached {accuracy:.4f} on validation, {(fused_accuracy - accuracy) * 100:.1f} points below the fused teacher's {fused_accuracy:.4f} (more than selection.teacher_gap {gap})"
            )
    return reasons


def select_designs(cfg: RunConfig, dataset: PairedDataset, teachers: list[Teacher], run_dir: Path, tiers: list[TierConfig]) -> dict[str, Design]:
    """Choose each tier's modalities, resolution and depth by measurement. Every candidate is trained
    briefly with its tier's distillation objective and ranked on validation accuracy; of those within
    `selection.tolerance` of the best, the tier's `ties` picks the cheapest (fewest FLOPs) or the
    one with the most parameters. The search is coordinate-wise:
    modality sets x resolution levels, each at its deepest depth within the budget, then the other depths of each tier's
    leader. Inputs are compared deep because a shallow student under-uses a large input (on avmnist the
    64x32 log-mel trailed 32x32 by 13 points at depth 1 and by 3.5 at depth 3). A design two tiers can
    afford is trained once per tier, with that tier's objective: trained once for both, as the first
    tier's, a tier's choice depended on which other tiers were distilled with it (`racmkd distill --tier
    low` chose another low student than `racmkd run`). Modality sets whose own teacher trails the fused one by more than
    `selection.teacher_gap` are not tried (`out_of_reach`). Writes selection.json."""
    sel = cfg.students.selection
    budgets = [t.budget_bytes for t in cfg.students.tiers]
    table: dict[str, Any] = {}
    listed: dict[str, list[Design]] = {}
    trained: dict[tuple[str, tuple], Job] = {}  # (tier, design key) -> its job
    answers = FeatureCache(evict=False)  # the teachers' answers: both rounds draw the same batches
    chosen = {}
    earlier = read_selection(run_dir).get("tiers", {})  # the other tiers' records, kept (said now if unreadable, not after the training)
    unpromising = out_of_reach(cfg, run_dir, list(dataset.modalities))
    for tier in tiers:
        designs, skipped = candidates(cfg, dataset.modalities, tier, unpromising)
        if not designs:
            raise RunError(f"tier {tier.name!r}: no student design fits {tier.budget_bytes} bytes ({'; '.join(skipped)})")
        table[tier.name] = {"budget_bytes": tier.budget_bytes, "skipped": skipped, "candidates": []}
        if len(designs) == 1:
            chosen[tier.name] = designs[0]
            table[tier.name].update(chosen=designs[0].name, reason="the only candidate")
        else:
            listed[tier.name] = designs

    def train(round_designs: dict[str, list[Design]], label: str) -> None:
        jobs = {}
        for tier_name, designs in round_designs.items():
            tier = next(t for t in tiers if t.name == tier_name)
            for d in designs:
                key = (tier_name, d.key)
                if key not in trained and key not in jobs:
                    jobs[key] = Job(
                        d.name,
                        build_student(d, dataset.modalities, cfg.seed),
                        d.specs(dataset.modalities),
                        cfg.students.train,
                        objective_weights(cfg.distill, tier.budget_bytes, budgets),
                        cfg.distill,
                        lr_setting=lr_setting(run_dir, "students.train"),
                    )
                    attach_projection(jobs[key], teachers[0].model)
        if jobs:
            with torch_threads(cfg.threads):
                train_jobs(
                    dataset,
                    list(jobs.values()),
                    1,
                    cfg.students.train.batch_size,
                    cfg.seed + 2,
                    teachers,
                    samples_per_epoch=sel.samples,
                    val_limit=sel.val_samples,
                    augment=cfg.data.augment,
                    teacher_precision=cfg.teacher.fused.precision,
                    desc=label,
                    workers=cfg.workers,
                    teacher_cache=answers,
                )
            trained.update(jobs)

    def leader(tier_name: str, designs: list[Design]) -> Design:
        return max((d for d in designs if (tier_name, d.key) in trained), key=lambda d: trained[(tier_name, d.key)].best_accuracy)

    started = time.perf_counter()
    train({name: deepest_per_input(designs) for name, designs in listed.items()}, "selection: inputs")
    leaders = {name: leader(name, designs) for name, designs in listed.items()}
    train(
        {name: [d for d in designs if (d.modalities, d.level) == (leaders[name].modalities, leaders[name].level)] for name, designs in listed.items()},
        "selection: depth",
    )
    seconds = time.perf_counter() - started
    for tier_name, designs in listed.items():
        entries = []
        for d in designs:
            if (tier_name, d.key) not in trained:
                continue  # a depth variant of a design that did not lead its tier
            job = trained[(tier_name, d.key)]
            entries.append(
                {
                    **asdict(d),
                    "name": d.name,
                    "flops": count_flops(job.model, batch_one_inputs(job.model)),
                    "val_accuracy": job.best_accuracy,
                    "trained_as": job.name,
                }
            )
        pick, reason = break_ties(entries, sel.tolerance, next(t for t in tiers if t.name == tier_name).ties)
        table[tier_name].update(candidates=entries, chosen=pick["name"], reason=reason)
        chosen[tier_name] = next(d for d in designs if d.name == pick["name"])
    # Distilling some tiers again (`racmkd distill --tiers ...`) keeps the other tiers' records.
    atomic_write_json(run_dir / "selection.json", {"samples_per_candidate": sel.samples, "val_samples": sel.val_samples, "tiers": {**earlier, **table}})
    if listed:
        record_timing(run_dir, "select_designs", seconds)  # after the choices are written
    return chosen


def tier_training(cfg: RunConfig, tier_name: str) -> TrainConfig:
    """How a tier's students train: students.train, with the tier's own epochs where it sets them
    (the benchmark's baselines that copy a tier's design train as long)."""
    tier = next(t for t in cfg.students.tiers if t.name == tier_name)
    return replace(cfg.students.train, epochs=tier.epochs or cfg.students.train.epochs)


def distill_students(cfg: RunConfig, dataset: PairedDataset, run_dir: Path, tier_names: list[str] | None = None) -> list[str]:
    """Select each tier's design, then distil the tiers' students from the run's teachers in one
    shared pass (a tier with its own `epochs` trains that many, beside the others), alongside the
    same students trained on labels only. Returns the checkpoint names."""
    check_loss_names(cfg.distill, f"{run_dir}/config.yaml")
    check_tiers(cfg, f"{run_dir}/config.yaml")
    tiers = [t for t in cfg.students.tiers if tier_names is None or t.name in tier_names]
    if tier_names:
        unknown = set(tier_names) - {t.name for t in cfg.students.tiers}
        if unknown:
            raise RunError(f"unknown tier(s) {sorted(unknown)}; the config defines {[t.name for t in cfg.students.tiers]}")
    teachers = load_teachers(run_dir, list(dataset.modalities), unimodal="multi_teacher" in {**cfg.distill.distill_losses, **cfg.distill.align_losses})
    designs = select_designs(cfg, dataset, teachers, run_dir, tiers)
    budgets = [t.budget_bytes for t in cfg.students.tiers]
    jobs: list[Job] = []  # trained together: they share the teachers' forward passes
    students_lr = lr_setting(run_dir, "students.train")
    for tier in tiers:
        design = designs[tier.name]
        specs = design.specs(dataset.modalities)
        train = tier_training(cfg, tier.name)
        job = Job(
            tier.name,
            build_student(design, dataset.modalities, cfg.seed + 7),
            specs,
            train,
            objective_weights(cfg.distill, tier.budget_bytes, budgets),
            cfg.distill,
            epochs=train.epochs,
            lr_setting=students_lr,
        )
        attach_projection(job, teachers[0].model)
        jobs.append(job)
        if cfg.students.labels_only:
            baseline = build_student(design, dataset.modalities, cfg.seed + 7)
            jobs.append(Job(f"{tier.name}_labels_only", baseline, specs, train, epochs=train.epochs, lr_setting=students_lr))
    # A tier that trains longer than the others replays their epochs, the teachers' answers kept from them.
    shared_epochs = cfg.students.train.epochs
    replay_after = shared_epochs if cfg.students.replay and any(learns_from_teachers(j) and j.epochs > shared_epochs for j in jobs) else 0
    answers = FeatureCache(max_bytes=cfg.students.replay_cache_bytes, evict=False) if replay_after and cfg.students.replay_cache_bytes else None
    # and the replaying students' inputs (1.3 KB a sample for make run's critical tier: 256 MB for four epochs)
    inputs = FeatureCache(max_bytes=cfg.students.replay_cache_bytes, evict=False) if answers is not None else None
    started = time.perf_counter()
    with torch_threads(cfg.threads):
        train_jobs(
            dataset,
            jobs,
            shared_epochs,
            cfg.students.train.batch_size,
            cfg.seed + 3,
            teachers,
            samples_per_epoch=cfg.students.train.samples_per_epoch,
            augment=cfg.data.augment,
            teacher_precision=cfg.teacher.fused.precision,
            desc="students",
            workers=cfg.workers,
            teacher_cache=answers,
            replay_after=replay_after,
            input_cache=inputs,
        )
    seconds = time.perf_counter() - started
    saved = []
    for job in jobs:
        tier = job.name.removesuffix("_labels_only")
        design = designs[tier]
        meta = training_meta(job, role="student" if job.weights is not None else "baseline")
        meta.update(tier=tier, budget_bytes=design.budget_bytes, design={**asdict(design), "name": design.name})
        saved.append((checkpoint(run_dir, job.name), job.model, job.specs, meta))
    # What the old students made goes once the new ones are written, before they move in
    save_models_together(saved, before_moving_in=lambda: remove_derived(run_dir, [t.name for t in tiers], [j.name for j in jobs]))
    record_timing(run_dir, "distill_students", seconds)  # last: the students are saved whatever their bookkeeping meets
    return [j.name for j in jobs]


def remove_derived(run_dir: Path, tiers: list[str], models: list[str] | None = None) -> None:
    """Remove what was made from these tiers' students before they are replaced: their compressed
    artifacts (the compression benchmark's too), the edge bank, and the run's `racmkd export` files
    of these `models` (default: the tiers' students) in <run>/onnx/ (`<model>.*`, `<model>-<inputs>.*`,
    their export.json and profiles included), and the run's report, which measured the students
    replaced. Left, they would be measured against students they were not made from, and served
    (a fog's /models advertised the old students' accuracy to the edges that offload to it)."""
    folders = [compressed_dir(run_dir, t) for t in tiers] + [p for t in tiers for p in (run_dir / "experiments").glob(f"*/{t}")]
    for folder in folders:
        if folder.exists():
            shutil.rmtree(folder)
            log.warning("%s was made from a student now retrained: removed (make it again: `racmkd compress`)", folder)
    exported = [
        f for m in (models if models is not None else tiers) for pattern in (f"{m}.*", f"{m}-*") for f in (run_dir / "onnx").glob(pattern) if f.is_file()
    ]
    for file in exported:
        file.unlink()
    if exported:
        log.warning(
            "%s: %d exported file(s) of models now retrained removed (%s; make them again: `racmkd export`)",
            run_dir / "onnx",
            len(exported),
            ", ".join(sorted(f.name for f in exported)),
        )
    remove_bank(run_dir, "made from students now retrained")
    measured = [run_dir / name for name in REPORT_FILES if (run_dir / name).exists()]
    for file in measured:  # (served, report.json's accuracies were the fog's and cloud's advertised ones)
        file.unlink()
    if measured:
        log.warning("%s: the run's report measured the students now retrained: removed (measure the run again: `racmkd evaluate --run %s`)", run_dir, run_dir)


# What `racmkd evaluate` writes: the report and its plots, all of the run's models measured together.
REPORT_FILES = ("report.json", "report.md", "accuracy_vs_memory.png", "accuracy_vs_latency.png", "training_curves.png")


def remove_bank(run_dir: Path, why: str) -> None:
    """Remove a run's edge bank whose variants came from students since replaced (served, they would
    answer with the old models), keeping what a rebuild carries over: the live log of `edge run`."""
    from racmkd.runtime.variants import carried_over

    bank = run_dir / "edge"
    if not bank.is_dir() or not any(not carried_over(entry) for entry in bank.iterdir()):
        return
    (bank / "bank.json").unlink(missing_ok=True)  # first: a removal cut short leaves no bank that names files gone
    for entry in bank.iterdir():
        if not carried_over(entry):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    log.warning("%s was %s: its variants removed (make it again: `racmkd edge build --run %s`)", bank, why, run_dir)


# Compression ---------------------------------------------------------------------------------------


def compressed_dir(run_dir: Path, tier: str, into: str = "compressed") -> Path:
    """Where a tier's compressed artifacts live: model.pt, fp32.onnx, int8.onnx, compression.json.
    The report reads runs/<name>/compressed/; experiments write elsewhere (`into`)."""
    return run_dir / into / tier


def recipe_for(cfg: RunConfig, tier: str, recipe: str | Path | None = None) -> Path:
    """The recipe a tier is compressed with: the one given, else the config's for this tier, else the
    config's default. A relative path is read from the working directory, else from the checkout (a
    config's `configs/recipes/...`, as device profiles are found from anywhere; installed, there is
    none: see `checkout`)."""
    from racmkd.data.paths import checkout

    path, root = Path(recipe or cfg.compress.tier_recipes.get(tier) or cfg.compress.recipe), checkout()
    if root and not path.is_absolute() and not path.exists() and (root / path).is_file():
        return root / path
    return path


def compression_recipes(cfg: RunConfig, tier_names: list[str], recipe: str | Path | None = None) -> dict[str, Recipe]:
    """Each tier's recipe, read and checked, for tiers the config defines: what compression needs
    before any model is loaded, so that `run_pipeline` checks it before the teachers train (a
    misspelt recipe file was reported after the teachers and students had trained)."""
    from racmkd.compress.recipe import RecipeError, load_recipe

    known = [t.name for t in cfg.students.tiers]
    unknown = set(tier_names) - set(known)
    if unknown:
        raise RunError(f"unknown tier(s) {sorted(unknown)}; the config defines {known}")
    recipes = {}
    for tier in tier_names:
        try:
            recipes[tier] = load_recipe(recipe_for(cfg, tier, recipe))
        except RecipeError as err:  # say which setting named the file
            key = "--recipe" if recipe else f"compress.tier_recipes.{tier}" if cfg.compress.tier_recipes.get(tier) else "compress.recipe"
            raise RecipeError(f"{key} (tier {tier!r}): {err}") from None
    return recipes


def compress_students(
    cfg: RunConfig, dataset: PairedDataset, run_dir: Path, tier_names: list[str], recipe: str | Path | None = None, into: str = "compressed"
) -> list[Path]:
    """Compress each tier's distilled student with its recipe (prune, factorise, reduce inputs,
    fine-tune, quantize, export), writing runs/<name>/compressed/<tier>/. A tier's folder is built
    beside its final place and renamed into it, so a failed recipe leaves the previous result whole."""
    from racmkd.compress.recipe import check_recipe, run_recipe
    from racmkd.compress.steps import Context, InputSharing, Subject

    # A tier named twice (`--tier critical --tier critical`, or twice in compress.tiers) is compressed
    # once: a second pass compressed the first one's result again, recorded as from the checkpoint.
    tier_names = list(dict.fromkeys(tier_names))
    recipes = compression_recipes(cfg, tier_names, recipe)  # every recipe checked before any work
    budgets = [t.budget_bytes for t in cfg.students.tiers]
    teachers = load_teachers(run_dir, list(dataset.modalities), unimodal="multi_teacher" in {**cfg.distill.distill_losses, **cfg.distill.align_losses})
    tiers = {t.name: t for t in cfg.students.tiers}
    students, sources = {}, {}
    for tier_name in tier_names:  # and every recipe checked against its student, before any tier's work
        path = checkpoint(run_dir, tier_name)
        if not path.exists():
            raise RunError(f"{path}: no {tier_name} student to compress. Run `racmkd distill --run {run_dir}` first.")
        sources[tier_name] = sha256(path.read_bytes())  # what its artifacts are made from (`same_source`)
        model, specs, _, _ = students[tier_name] = load_model(path)
        with torch_threads(cfg.threads):  # (a target_bytes prune bisects over trial prunes, on copies, here)
            check_recipe(
                recipes[tier_name],
                Subject(tier_name, model, specs, objective_weights(cfg.distill, tiers[tier_name].budget_bytes, budgets), run_dir),
                Context(cfg, dataset, teachers),
            )
    written = []
    started = time.perf_counter()
    # The n-th fine-tune of every tier's recipe draws the same batches: the teachers answer each once
    # (2.1 KB a sample without the feature maps: 134 MB for the default recipe's 64,000; once the cache
    # is full, later answers are recomputed). Measured: compression 541 -> 355 s in make run.
    teacher_cache = FeatureCache(max_bytes=cfg.compress.teacher_cache_bytes, evict=False)
    # Tiers whose students read the same inputs share them too, so those batches are corrupted,
    # augmented and featurised once (run avmnist-20261202-085522: high and medium read level 1, low
    # and critical level 3; its four tiers' compression took 168 s instead of 199, back to back).
    uses = Counter(pair for tier_name in tier_names for pair in students[tier_name][1].items())
    shared = InputSharing(FeatureCache(max_bytes=cfg.compress.teacher_cache_bytes, evict=False), frozenset(pair for pair, n in uses.items() if n > 1))
    for tier_name in tier_names:
        path = checkpoint(run_dir, tier_name)
        model, specs, _, meta = students[tier_name]
        tier = tiers[tier_name]
        with building_folder(compressed_dir(run_dir, tier_name, into)) as work:  # an interrupted compression leaves the tier's earlier artifacts whole
            subject = Subject(tier_name, model, specs, objective_weights(cfg.distill, tier.budget_bytes, budgets), work)
            ctx = Context(cfg, dataset, teachers, val_samples=cfg.compress.val_samples, teacher_cache=teacher_cache, shared_inputs=shared)
            with torch_threads(cfg.threads):
                steps_log = run_recipe(recipes[tier_name], subject, ctx)
            save_model(work / "model.pt", subject.model, subject.specs, {**meta, "role": "compressed", "compressed_from": str(path.name)})
            atomic_write_json(
                work / "compression.json",
                {
                    "tier": tier_name,
                    "source": path.name,
                    "source_sha256": sources[tier_name],
                    "recipe": recipes[tier_name].source,
                    "recipe_steps": recipes[tier_name].describe(),
                    **subject.manifest,
                    "steps": steps_log,
                },
            )
            if into == "compressed":  # (before the new tier moves in: a kill between the two left a bank of the old one)
                remove_bank(run_dir, f"built before {tier_name}'s compressed student was made (its accuracy table is of every tier's variants together)")
        written.append(compressed_dir(run_dir, tier_name, into))
    if into == "compressed":  # (an experiment's time, written there, replaced the run's own and outgrew its total)
        record_timing(run_dir, "compress_students", time.perf_counter() - started)
    return written


def exportable_checkpoint(run_dir: Path, name: str, present: list[str] | None = None) -> Path:
    """The checkpoint `racmkd export` writes for model `name` of a run (with the inputs `present`,
    when given, among the model's), checked before the data loads. A compressed tier
    (`<tier>_compressed`) has no checkpoint there: `racmkd compress` exported it already, and the
    error names its file."""
    from racmkd.compress.artifacts import read_compression_record

    path = checkpoint(run_dir, name)
    if path.exists():
        if present:
            from racmkd.compress.export import check_present

            check_present(path, present, load_model(path)[1])
        return path
    folder = compressed_dir(run_dir, name.removesuffix("_compressed"))
    if name.endswith("_compressed") and (folder / "compression.json").is_file():
        record = read_compression_record(folder)
        raise RunError(
            f"{name}: a compressed tier is exported already, by `racmkd compress`: {folder / record['artifact']} ({record['format']}, the file it deploys); "
            f"copy it from there, or export the uncompressed student with --model {name.removesuffix('_compressed')}"
        )
    available = sorted(p.stem for p in (run_dir / "checkpoints").glob("*.pt"))
    raise RunError(f"{path}: no model {name!r} in {run_dir}; available: {', '.join(available) or 'none'}")


def export_model(
    cfg: RunConfig,
    dataset: PairedDataset,
    run_dir: Path,
    name: str,
    out_dir: Path | None = None,
    int8: bool = True,
    present: list[str] | None = None,
    calibration_samples: int = 512,
    int8_weights: bool = False,
    int4_weights: bool = False,
) -> dict[str, Any]:
    """Export one model of a run (a teacher, a tier, a baseline) to ONNX, fp32 and optionally int8
    (static QDQ) and int8 or 4-bit weights with float arithmetic (4 bits in every layer but the
    fewest, most sensitive first, kept in 8 for the export step's agreement bound on the validation
    split, as a recipe's export step chooses them; none written, and the result says so, when every
    layer would stay in 8), each checked against its reference on the whole test split. Returns what was written and the parity figures, each file with `meets_bound`
    (fp32: every argmax as PyTorch's; int8: the recipe export step's default bound against fp32,
    which the command warns of when missed); also writes them to <out_dir>/<name>.export.json.
    The files are built in a work folder and moved in once all are written and checked: an export
    that fails or is stopped before then leaves the earlier export's files whole, its export.json
    included. The earlier export.json is removed before the first file moves in and the new one
    written after the last, so an export killed while moving files in leaves a mix of old and new
    files with no export.json: it cannot pass as a whole export, and the next one redoes it."""
    from racmkd.compress.export import compact_file, fp32_parity, onnx_logits, parity, remove_unwritten_variants, session, torch_logits
    from racmkd.compress.export import export_onnx as write_onnx
    from racmkd.compress.artifacts import WEIGHTS_ONLY_BITS
    from racmkd.compress.quantize import calibration_inputs, choose_int4_weights, quantize_int8, quantize_weights
    from racmkd.compress.steps import ExportOptions
    from racmkd.data.paths import git_commit

    source = exportable_checkpoint(run_dir, name)
    source_sha256 = sha256(source.read_bytes())  # what the files are made from (`same_source`)
    model, specs, _, meta = load_model(source)
    # The run's own modalities, not the checkpoint's rebuilt ones: those know no protocol or options,
    # and the contract said an avmnist model learnt from clean digits.
    modalities = {m: dataset.modalities[m] for m in specs}
    out_dir = Path(out_dir or run_dir / "onnx")
    stem = f"{name}{'' if present is None or set(present) == set(specs) else '-' + '+'.join(present)}"
    # Every file is built and checked in a work folder, then moved in: written in place, a failed or
    # killed export left new .onnx files beside the earlier export's others and its export.json.
    with work_folder(out_dir, stem) as work, _named_as_exported(work, out_dir):
        built = {
            "fp32": write_onnx(
                model, specs, modalities, work / f"{stem}.fp32.onnx", name=name, present=present, extra_meta={"precision": "fp32", "role": meta.get("role")}
            )
        }
        used = {m: specs[m] for m in (present or specs)}  # (after the export, which names inputs the model lacks)
        reference = torch_logits(model, specs, dataset, "test", present=present)
        fp32_logits, labels = onnx_logits(session(built["fp32"]), used, dataset, "test")
        result: dict[str, Any] = {
            "model": name,
            "fp32": {
                "path": str(out_dir / built["fp32"].name),
                "parity_vs_pytorch": fp32_parity(fp32_logits, reference, labels, built["fp32"]).as_dict(),
            },
        }
        if int8:
            built["int8"] = quantize_int8(built["fp32"], work / f"{stem}.int8.onnx", calibration_inputs(dataset, used, calibration_samples))
            q_logits, _ = onnx_logits(session(built["int8"]), used, dataset, "test")
            result["int8"] = {"path": str(out_dir / built["int8"].name), "parity_vs_fp32": parity(q_logits, fp32_logits, labels).as_dict()}
        bound = ExportOptions()  # a recipe's export step judges its candidates by the same bound
        for key in [k for k, wanted in (("int8-weights", int8_weights), ("int4-weights", int4_weights)) if wanted]:
            formats: dict[str, Any] = {"bits": WEIGHTS_ONLY_BITS[key]}
            if key == "int4-weights":  # every layer in 4 bits missed the bound in most tiers: the export step's search
                validation = calibration_inputs(dataset, used, len(dataset.splits["val"]), split="val")
                evaluation = {m: x[: bound.sensitivity_samples] for m, x in validation.items()}
                val_labels = dataset.splits["val"].labels[: bound.sensitivity_samples].numpy()
                choice = choose_int4_weights(built["fp32"], validation, evaluation, val_labels, bound.min_agreement)
                if not choice.has_int4:
                    result[key] = {
                        "written": False,
                        "why": f"every layer would stay in 8 bits for the agreement bound ({bound.min_agreement}): the file would be the int8-weights one",
                    }
                    continue
                formats.update(bits_by_weight=dict.fromkeys(choice.kept_int8, 8), clipped=choice.clipped)
            built[key] = quantize_weights(built["fp32"], work / f"{stem}.{key}.onnx", **formats)
            w_logits, _ = onnx_logits(session(built[key]), used, dataset, "test")
            result[key] = {"path": str(out_dir / built[key].name), "parity_vs_fp32": parity(w_logits, fp32_logits, labels).as_dict()}
            if key == "int4-weights":
                result[key].update(kept_int8=choice.kept_int8, clipped=choice.clipped)
        for key, file in built.items():
            result[key]["meets_bound"] = bound.meets_bound(key, result[key]["parity_vs_pytorch" if key == "fp32" else "parity_vs_fp32"])
            result[key]["weight_bytes_by_module"] = compact_file(file)
            result[key]["bytes"] = file.stat().st_size
        result["commit"] = git_commit()  # the code that wrote these files
        result["source_sha256"] = source_sha256
        record = out_dir / f"{stem}.export.json"
        record.unlink(missing_ok=True)  # until the new one is written, a mix of old and new files is no export
        fsync_folder(out_dir)  # (gone before any file moves in)
        for file in built.values():
            os.replace(file, out_dir / file.name)
        fsync_folder(out_dir)
    # an earlier export's, stale beside this record
    remove_unwritten_variants(out_dir, stem, [out_dir / file.name for file in built.values()])
    atomic_write_json(record, result)
    return result


@contextlib.contextmanager
def _named_as_exported(work: Path, out_dir: Path) -> Iterator[None]:
    """An exporter error names the file it was building, in the work folder, which is removed with
    the failure; named as out_dir's file, it blamed the earlier export's good one. So the message
    names it as the new <out_dir>/<file> (not written)."""
    from racmkd.compress.artifacts import ExportError

    try:
        yield
    except (ExportError, ValueError) as err:
        if type(err) not in (ExportError, ValueError) or str(work) not in str(err):
            raise
        message = re.sub(rf"{re.escape(str(work))}{re.escape(os.sep)}([^\s:,;)]+)", lambda m: f"the new {out_dir / m[1]} (not written)", str(err))
        raise type(err)(message) from None


def training_meta(job: Job, role: str) -> dict[str, Any]:
    """What a trained model's checkpoint records about its training."""
    return {
        "role": role,
        "trained_with": "labels" if job.weights is None else "distillation",
        "objective": asdict(job.weights) if job.weights is not None else None,
        "val_accuracy": job.best_accuracy,
        "history": job.history,
        "train_seconds": round(sum(h["seconds"] for h in job.history), 1),
    }


# The whole pipeline ------------------------------------------------------------------------------


def prepare_data(cfg: RunConfig) -> PairedDataset:
    """Build (or read back from the cache) the run's dataset."""
    return build_dataset(cfg.data)


def check_tiers(cfg: RunConfig, where: str) -> None:
    """Distillation needs a tier: without one the students' pass ran the teachers over the data for
    no student (`racmkd train-teacher` reads such a config: it trains the teachers alone)."""
    if not cfg.students.tiers:
        raise ConfigError(
            f"{where}: students.tiers is empty: name at least one tier (name and budget_bytes, as configs/default.yaml does); `racmkd train-teacher` trains the teachers alone"
        )


def run_pipeline(cfg: RunConfig) -> Path:
    """Data, teachers, students, report: everything `make run` does. Returns the run directory."""
    from racmkd.eval.report import evaluate_run

    check_loss_names(cfg.distill, "the run's config (--config file or --set overrides)")  # before the teachers' minutes
    check_tiers(cfg, "the run's config (--config file or --set overrides)")
    compression_recipes(cfg, list(cfg.compress.tiers))  # and the compression's tiers and recipe files
    started = time.perf_counter()
    dataset = prepare_data(cfg)  # first: a run folder (and runs/latest) only for data that loads
    data_seconds = time.perf_counter() - started
    check_teacher_inputs(cfg, dataset)  # and a teacher config that fits the data
    check_student_designs(cfg, dataset)  # and students that can be built (a few seconds)
    with new_run(cfg) as run_dir:  # (removed again if no teacher is saved)
        record_timing(run_dir, "data", data_seconds)
        train_teachers(cfg, dataset, run_dir)
    distill_students(cfg, dataset, run_dir)
    if cfg.compress.tiers:
        compress_students(cfg, dataset, run_dir, list(cfg.compress.tiers))
    evaluate_run(run_dir, dataset)
    if cfg.runtime.build_bank:
        from racmkd.runtime.variants import build_bank

        stage = time.perf_counter()
        build_bank(cfg, dataset, run_dir)
        record_timing(run_dir, "edge_bank", time.perf_counter() - stage)
    record_timing(run_dir, "total", time.perf_counter() - started)
    return run_dir
