"""The benchmark's comparison models, trained on a run's data beside its tiers.

Every baseline is trained by the same trainer, on the same split, with the same augmentation and
mixup as the racmkd students, and as many epochs as the tier whose design or budget it copies (the
critical tier's 8 for TinyML), so a table row differs from its neighbour only in what its name says:

    standard_kd       Hinton KD into the high tier's student: task + KD terms, no feature alignment,
                      no resource penalty, fixed weights (also the ablation's "Base KD")
    emd_kd            the high tier's student with feature distillation by earth mover's distance
                      between the batch's student and teacher feature distributions (POT)
    mobilenetv3       a MobileNetV3-Small-style network on the high tier's inputs, width scaled to
                      the high tier's budget, trained on labels
    tinyml            the smallest plain CNN (conv-BN-ReLU, max pooling) on the critical tier's
                      inputs within the critical budget, trained on labels; deployed int8 (PTQ)
    tinyml_<tier>     the same recipe cost-matched to a compressed tier: the narrowest plain CNN on
                      the tier's inputs whose int8 artifact is at least as many bytes as the tier's
                      deployed one, trained as long as the tier. Without them a tier of 83 KB had
                      as its closest baseline the 12-KB TinyML row (the others are fp32 and near
                      1 MB), and "dominates the baseline closest in cost" asked the wrong question.
                      Sized on the first seed's tiers; the other seeds train the same widths.

and, for the ablation (Table 6.8) only, not a baseline a tier is judged against:

    kd_align          the high tier's student with the racmkd objective but its resource term
                      (task + KD + feature alignment, delta 0): Base KD plus alignment alone

and, for the cross-modal transfer study, one single-modality student per modality (the high
tier's resolution and depth, widest within its budget) trained three ways:

    transfer_<m>_crossmodal   KD from the fused (image + audio) teacher: cross-modal
    transfer_<m>_unimodal     KD from the teacher of the same modality
    transfer_<m>_labels       labels only
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from racmkd.compress.artifacts import read_compression_record
from racmkd.config import DistillConfig, RunConfig
from racmkd.data.dataset import PairedDataset
from racmkd.data.modalities import Modality
from racmkd.distill.adaptive import ObjectiveWeights, objective_weights
from racmkd.distill.trainer import Job, attach_projection, train_jobs
from racmkd.models.checkpoint import load_model, save_model
from racmkd.models.multimodal import MultimodalNet, count_params, linear_fusion, widest_student
from racmkd.pipeline import (
    TEACHER,
    Design,
    RunError,
    build_student,
    checkpoint,
    compressed_dir,
    load_teachers,
    model_inputs,
    record_timing,
    tier_training,
    training_meta,
)
from racmkd.utils import seed_everything, torch_threads

BASELINES = ("standard_kd", "emd_kd", "mobilenetv3", "tinyml")
ABLATION = ("kd_align", "kd_align_resource")  # the ablation's steps between plain KD and the racmkd objective
MATCHED_PREFIX = "tinyml_"  # + a tier's name: the TinyML recipe at that tier's deployed bytes
PLAIN_CNN_WIDTHS = list(range(1, 65))
SIZE_SLACK = 0.01  # sized to reach the tier's bytes + 1% + 64 B: the file's size moves a little with
# the trained weights (quantization constants stored as varints: 9 bytes of 7,151 in a test)


def matched_name(tier: str) -> str:
    return MATCHED_PREFIX + tier


def matched_tier(name: str) -> str | None:
    """The tier a cost-matched baseline copies the bytes of (None for any other name)."""
    return name.removeprefix(MATCHED_PREFIX) if name.startswith(MATCHED_PREFIX) else None


def tier_design(run_dir: Path, tier: str) -> Design:
    """The design a run chose for `tier` (its checkpoint's metadata)."""
    path = checkpoint(run_dir, tier)
    if not path.exists():
        raise RunError(f"{path}: no {tier} student; the baselines copy its design. Run `racmkd distill --run {run_dir}` first.")
    _, _, _, meta = load_model(path)
    d = meta["design"]
    return Design(tier, tuple(d["modalities"]), d["level"], d["depth"], d["width"], d["params"], d["budget_bytes"], d.get("channel_multiple", 1))


def widest_within(make: Callable[[float], MultimodalNet], budget_bytes: int, widths: list[float]) -> MultimodalNet:
    """The model of the largest width in `widths` (ascending) whose fp32 parameters fit the budget;
    the narrowest when none does (the caller's row then reports its real size)."""
    best = make(widths[0])
    for width in widths[1:]:
        model = make(width)
        if 4 * count_params(model) > budget_bytes:
            break
        best = model
    return best


def plain_cnn(inputs: dict[str, dict[str, Any]], width: int) -> MultimodalNet:
    """The TinyML recipe's network: a plain CNN per input (conv-BN-ReLU, max pooling), a linear classifier."""
    return linear_fusion(inputs, {"width": int(width), "embed_dim": 4 * int(width)})


def deployed_bytes(run_dir: Path, tier: str) -> int:
    """The bytes of a tier's compressed artifact: what Table 6.6 deploys for it."""
    folder = compressed_dir(run_dir, tier)
    if not (folder / "compression.json").is_file():
        raise RunError(
            f"{folder}: the {tier} tier is not compressed; its cost-matched baseline copies the compressed artifact's bytes (run the suite with a recipe)"
        )
    return (folder / read_compression_record(folder)["artifact"]).stat().st_size


def int8_bytes(model: MultimodalNet, specs: dict[str, Any], modalities: dict[str, Modality], calibration: dict[str, Any], name: str) -> int:
    """The bytes `model` deploys as, made as racmkd.pipeline.export_model makes the TinyML rows'
    artifacts: exported (its contract names it `name`), static int8 QDQ, names compacted. Its
    tensors are first filled with distinct random values, as a trained model's are: the exporter
    shares equal constants, and a fresh model's (BatchNorm's ones and zeros) made a tiny one's file
    629 bytes smaller than after training."""
    from racmkd.compress.export import compact_file, export_onnx
    from racmkd.compress.quantize import quantize_int8

    model = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5)  # (positive: a running variance among them)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, specs, modalities, Path(tmp) / "fp32.onnx", name=name, extra_meta={"precision": "fp32", "role": "baseline"})
        int8 = quantize_int8(fp32, Path(tmp) / "int8.onnx", calibration)
        compact_file(int8)
        return int8.stat().st_size


def narrowest_reaching(size_of: Callable[[int], int], target: int, widths: list[int]) -> tuple[int, int]:
    """(width, its size): the narrowest of `widths` (ascending; sizes grow with width) whose size is
    at least `target`: a dominance test must not hand the baseline fewer bytes than the tier has.
    The widest when none reaches it (the row then reports its real size). Each size is an export
    (seconds), so the search gallops up from the narrowest (1, 2, 4, 8, ... widths in), never
    exporting a network far wider than the answer, then bisects the last step."""
    sizes: dict[int, int] = {}

    def size(i: int) -> int:
        if i not in sizes:
            sizes[i] = size_of(widths[i])
        return sizes[i]

    lo, hi = -1, 0  # size(lo) < target (lo = -1: nothing below), hi: the index being tried
    while size(hi) < target:
        if hi == len(widths) - 1:
            return widths[hi], size(hi)
        lo, hi = hi, min(2 * hi + 1, len(widths) - 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if size(mid) >= target:
            hi = mid
        else:
            lo = mid
    return widths[hi], size(hi)


def matched_job(cfg: RunConfig, dataset: PairedDataset, run_dir: Path, name: str, width: int | None = None) -> tuple[Job, dict[str, Any]]:
    """The cost-matched TinyML baseline `name` (tinyml_<tier>) on the tier's inputs, `width` wide
    (None: the narrowest whose int8 artifact reaches the tier's deployed bytes), and what it was
    matched to (for its checkpoint)."""
    from racmkd.compress.quantize import calibration_inputs

    tier = matched_tier(name)
    if tier is None:
        raise ValueError(f"{name!r} is not a cost-matched baseline (tinyml_<tier>)")
    design = tier_design(run_dir, tier)
    target = deployed_bytes(run_dir, tier)
    specs = _specs(dataset, design.modalities, design.level)
    inputs = {m: {**spec, "encoder": "cnn2d"} for m, spec in model_inputs(dataset.modalities, specs, "student").items()}
    info: dict[str, Any] = {"tier": tier, "target_bytes": target}
    if width is None:
        calibration = calibration_inputs(dataset, specs, 16)
        width, info["bytes_sized"] = narrowest_reaching(
            lambda w: int8_bytes(plain_cnn(inputs, w), specs, dataset.modalities, calibration, name),
            math.ceil(target * (1 + SIZE_SLACK)) + 64,
            PLAIN_CNN_WIDTHS,
        )
    info["width"] = width
    seed_everything(cfg.seed + 7)  # as every baseline (the search above drew from the generator)
    model = plain_cnn(inputs, width)
    train = tier_training(cfg, tier)
    return Job(name, model, specs, train, epochs=train.epochs), info  # as long as the tier it is set against


def matched_widths(run_dir: Path) -> dict[str, int]:
    """The widths of a run's cost-matched baselines (the suite's other seeds train the same)."""
    widths = {}
    for path in (run_dir / "checkpoints").glob(f"{MATCHED_PREFIX}*.pt"):
        matched = load_model(path)[3].get("matched")
        if matched:
            widths[path.stem] = matched["width"]
    return widths


def _matched_current(run_dir: Path, name: str, widths: dict[str, int]) -> bool:
    """A cost-matched baseline's checkpoint is still the one wanted: the width the first seed
    chose, or (in the first seed) matched to its tier's artifact as it is now."""
    matched = load_model(checkpoint(run_dir, name))[3].get("matched") or {}
    if name in widths:
        return matched.get("width") == widths[name]
    try:
        return matched.get("target_bytes") == deployed_bytes(run_dir, matched_tier(name) or "")
    except RunError:
        return False


def _specs(dataset: PairedDataset, modalities: tuple[str, ...], level: int) -> dict[str, Any]:
    return {m: dataset.modalities[m].spec(level) for m in modalities}


def kd_objective(cfg: RunConfig, budget_bytes: int) -> tuple[ObjectiveWeights, DistillConfig]:
    """Plain Hinton KD at a tier's budget: the racmkd task and KD weights, no alignment, no resource term."""
    budgets = [t.budget_bytes for t in cfg.students.tiers]
    weights = replace(objective_weights(cfg.distill, budget_bytes, budgets), gamma=0.0, delta=0.0)
    return weights, replace(cfg.distill, distill_losses={"kd": 1.0}, align_losses={})


def ablation_objective(cfg: RunConfig, budget_bytes: int, resource: bool) -> ObjectiveWeights:
    """An ablation step at a tier's budget: KD plus feature alignment at the largest weight the
    config's schedule gives it, and with `resource` the group-sparsity term at its largest too. The
    racmkd objective's own weights at the high tier's budget may be 0 (the schedule fades out what
    did not pay there), so the steps fix theirs: each row shows what its component does."""
    kd_weights, _ = kd_objective(cfg, budget_bytes)
    gamma = max(cfg.distill.gamma.low, cfg.distill.gamma.high)
    delta = max(cfg.distill.delta.low, cfg.distill.delta.high) if resource else 0.0
    return replace(kd_weights, gamma=gamma, delta=delta)


def baseline_jobs(cfg: RunConfig, dataset: PairedDataset, run_dir: Path, teacher: MultimodalNet, names: tuple[str, ...] = BASELINES) -> list[Job]:
    """Fresh jobs for the named baselines (seeded from the run's seed)."""
    high, critical = tier_design(run_dir, "high"), tier_design(run_dir, "critical")
    high_train, critical_train = tier_training(cfg, "high"), tier_training(cfg, "critical")  # each baseline trains as long as the tier it copies
    kd_weights, kd_only = kd_objective(cfg, high.budget_bytes)
    seed = cfg.seed + 7
    jobs = []
    for name in names:
        seed_everything(seed)
        if name in ("standard_kd", "emd_kd", *ABLATION):
            specs = high.specs(dataset.modalities)
            model = build_student(high, dataset.modalities, seed)
            if name == "standard_kd":
                job = Job(name, model, specs, high_train, kd_weights, kd_only, epochs=high_train.epochs)
            elif name in ABLATION:
                weights = ablation_objective(cfg, high.budget_bytes, resource=name == "kd_align_resource")
                job = Job(name, model, specs, high_train, weights, cfg.distill, epochs=high_train.epochs)
            else:
                emd = replace(kd_weights, beta=0.0, gamma=1.0)
                job = Job(name, model, specs, high_train, emd, replace(cfg.distill, distill_losses={}, align_losses={"emd": 1.0}), epochs=high_train.epochs)
            attach_projection(job, teacher)
        elif name == "mobilenetv3":
            specs = _specs(dataset, high.modalities, high.level)
            inputs = {m: {**spec, "encoder": "mbv3"} for m, spec in model_inputs(dataset.modalities, specs, "student").items()}
            model = widest_within(lambda w, inputs=inputs: linear_fusion(inputs, {"width": w}), high.budget_bytes, [0.1 + 0.05 * i for i in range(40)])
            job = Job(name, model, specs, high_train, epochs=high_train.epochs)
        elif name == "tinyml":
            specs = _specs(dataset, critical.modalities, critical.level)
            inputs = {m: {**spec, "encoder": "cnn2d"} for m, spec in model_inputs(dataset.modalities, specs, "student").items()}
            model = widest_within(lambda w, inputs=inputs: plain_cnn(inputs, int(w)), critical.budget_bytes, [float(w) for w in range(1, 33)])
            job = Job(name, model, specs, critical_train, epochs=critical_train.epochs)  # as long as the critical tier it is set against
        else:
            raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES + ABLATION)} (and {MATCHED_PREFIX}<tier>: train_extras sizes those)")
        jobs.append(job)
    return jobs


def transfer_jobs(cfg: RunConfig, dataset: PairedDataset, run_dir: Path, teacher: MultimodalNet) -> list[Job]:
    """For each modality: a single-modality student trained with cross-modal KD, unimodal KD and labels only."""
    high = tier_design(run_dir, "high")
    kd_weights, kd_only = kd_objective(cfg, high.budget_bytes)
    jobs = []
    for m in dataset.modalities:
        specs = _specs(dataset, (m,), high.level)
        seed_everything(cfg.seed + 7)
        initial = widest_student(
            model_inputs(dataset.modalities, specs, "student"), high.budget_bytes, high.depth, cfg.students.max_width, high.channel_multiple
        )
        if initial is None:
            raise RunError(f"no {m}-only student of depth {high.depth} fits the high budget ({high.budget_bytes} bytes)")
        for how in ("crossmodal", "unimodal", "labels"):
            model = copy.deepcopy(initial)  # the three ways start from the same weights
            if how == "labels":
                jobs.append(Job(f"transfer_{m}_labels", model, specs, cfg.students.train))
            else:
                job = Job(
                    f"transfer_{m}_{how}", model, specs, cfg.students.train, kd_weights, kd_only, teacher=TEACHER if how == "crossmodal" else f"{TEACHER}_{m}"
                )
                attach_projection(job, teacher)
                jobs.append(job)
    return jobs


def train_extras(
    cfg: RunConfig, dataset: PairedDataset, run_dir: Path, baselines: tuple[str, ...] = BASELINES, transfer: bool = True, widths: dict[str, int] | None = None
) -> tuple[list[str], list[str]]:
    """Train the baselines (and the transfer students) that the run does not have yet, in one pass
    with the run's teachers, and save them as checkpoints/<name>.pt. Cost-matched baselines
    (tinyml_<tier>) are sized here (their tiers must be compressed) unless `widths` gives theirs, and
    trained again when their tier's artifact changed since. Returns the names trained and the names
    the run already had."""
    widths = widths or {}
    teachers = load_teachers(run_dir, list(dataset.modalities), unimodal=transfer)
    fused = teachers[0].model
    found = [b for b in baselines if checkpoint(run_dir, b).exists() and (matched_tier(b) is None or _matched_current(run_dir, b, widths))]
    todo = [b for b in baselines if b not in found]
    jobs = baseline_jobs(cfg, dataset, run_dir, fused, tuple(b for b in todo if matched_tier(b) is None))
    matched: dict[str, dict[str, Any]] = {}
    for name in (b for b in todo if matched_tier(b) is not None):
        job, matched[name] = matched_job(cfg, dataset, run_dir, name, widths.get(name))
        jobs.append(job)
    if transfer:
        for job in transfer_jobs(cfg, dataset, run_dir, fused):
            if checkpoint(run_dir, job.name).exists():
                found.append(job.name)
            else:
                jobs.append(job)
    if not jobs:
        return [], found
    started = time.perf_counter()
    train = cfg.students.train
    with torch_threads(cfg.threads):
        train_jobs(
            dataset,
            jobs,
            train.epochs,
            train.batch_size,
            cfg.seed + 5,
            teachers,
            samples_per_epoch=train.samples_per_epoch,
            augment=cfg.data.augment,
            teacher_precision=cfg.teacher.fused.precision,
            desc="baselines",
            workers=cfg.workers,
        )
    seconds = time.perf_counter() - started
    for job in jobs:
        meta = {
            **training_meta(job, role="baseline"),
            "teacher": None if job.weights is None else (job.teacher or TEACHER),
            "losses": None if job.distill is None else {"distill": dict(job.distill.distill_losses), "align": dict(job.distill.align_losses)},
            **({"matched": matched[job.name]} if job.name in matched else {}),
        }
        save_model(checkpoint(run_dir, job.name), job.model, job.specs, meta)
    record_timing(run_dir, "baselines", seconds)  # last: the baselines are saved whatever their bookkeeping meets
    return [j.name for j in jobs], found
