"""Training: several models learn in one shared pass over the data.

Every model in a pass (a `Job`) sees the same augmented, corrupted batch; features are computed
once per input spec and the frozen teachers run once per batch, however many students learn from
them. A job without objective weights learns from labels alone (the teachers themselves, and the
label-only baselines); a job with weights minimises the adaptive objective of eq. 28:

    L = alpha L_task + beta L_distill + gamma L_align + delta L_resource

Which model outputs feed which registered loss is declared once, in LOSS_INPUTS.
"""

from __future__ import annotations

import copy
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from racmkd.config import DistillConfig, TrainConfig
from racmkd.data.dataset import PairedDataset
from racmkd.distill.adaptive import ObjectiveWeights
from racmkd.distill.losses import reliability_weights
from racmkd.models.inference import BatchFeatures, fold_batchnorm, predict_split
from racmkd.models.multimodal import MultimodalNet
from racmkd.registry import LOSSES
from racmkd.utils import progress


@dataclass
class Teacher:
    """A frozen model that students learn from; the first teacher of a pass is the fused one."""

    name: str
    model: MultimodalNet
    specs: dict[str, Any]


@dataclass
class Job:
    """One model being trained, with what it needs to learn and what it learned."""

    name: str
    model: MultimodalNet
    specs: dict[str, Any]  # modality -> feature spec of the model's inputs
    config: TrainConfig
    weights: ObjectiveWeights | None = None  # None: labels only
    distill: DistillConfig | None = None  # which losses make up L_distill and L_align (with `weights`)
    projection: nn.Module | None = None  # student fused -> teacher fused (feature and contrastive losses)
    teacher: str | None = None  # the teacher this job distils from; None: the pass's first (fused) teacher
    teacher_index: int = field(default=0, init=False)  # where `teacher` is in the pass (set by train_jobs)
    epochs: int | None = None  # None: the pass's; a job of other length trains beside the pass's others (sharing the teachers' forward passes) for its own
    history: list[dict[str, float]] = field(default_factory=list)
    best_accuracy: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None

    def parameters(self) -> list[nn.Parameter]:
        params = list(self.model.parameters())
        return params + (list(self.projection.parameters()) if self.projection is not None else [])


@dataclass
class LossInputs:
    """Everything a distillation loss may read for one student on one batch."""

    labels: torch.Tensor
    student: dict[str, Any]  # forward_features output of the student
    student_logits: torch.Tensor
    teachers: list[dict[str, Any]]  # forward_features output of each teacher
    teacher_logits: list[torch.Tensor]
    projected: torch.Tensor | None
    projection_weights: list[torch.Tensor]
    temperature: float
    config: DistillConfig


@dataclass(frozen=True)
class Mix:
    """One batch's mixup: sample i becomes weight * x_i + (1 - weight) * x_permutation[i], in the
    features of every model (teachers and students alike, so they answer the same question)."""

    permutation: torch.Tensor
    weight: float

    @staticmethod
    def draw(batch: int, concentration: float, generator: torch.Generator) -> Mix:
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        weight = float(np.random.default_rng(seed).beta(concentration, concentration))
        return Mix(torch.randperm(batch, generator=generator), weight)

    def inputs(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: self.weight * x + (1 - self.weight) * x[self.permutation] for m, x in features.items()}

    def task(self, logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        task = LOSSES.get("task")
        return self.weight * task(logits, labels, label_smoothing) + (1 - self.weight) * task(logits, labels[self.permutation], label_smoothing)


# Which outputs feed each registered loss: the one place that wires models to losses.
LOSS_INPUTS: dict[str, Callable[[LossInputs], tuple]] = {
    "kd": lambda c: (c.student_logits, c.teacher_logits[0], c.temperature),
    "multi_teacher": lambda c: (
        c.student_logits,
        c.teacher_logits,
        reliability_weights(c.teacher_logits, c.labels, torch.ones(len(c.teacher_logits)), c.config.reliability_temperature),
        c.temperature,
    ),
    "feature": lambda c: (c.projected, c.teachers[0]["fused"], c.projection_weights, c.config.feature_cost),
    "contrastive": lambda c: (c.projected, c.teachers[0]["fused"]),
    "emd": lambda c: (c.projected, c.teachers[0]["fused"]),
    "rkd": lambda c: (c.student["fused"], c.teachers[0]["fused"]),
    "similarity": lambda c: (c.student["fused"], c.teachers[0]["fused"]),
    "attention": lambda c: (
        [c.student["maps"][m] for m in c.student["maps"] if m in c.teachers[0]["maps"]],
        [c.teachers[0]["maps"][m] for m in c.student["maps"] if m in c.teachers[0]["maps"]],
    ),
}
NEEDS_PROJECTION = {"feature", "contrastive", "emd"}


def weighted_sum(losses: dict[str, float], inputs: LossInputs) -> torch.Tensor:
    """sum_name weight * LOSSES[name](*LOSS_INPUTS[name](inputs))."""
    total = torch.zeros(())
    for name, weight in losses.items():
        if name not in LOSS_INPUTS:
            raise KeyError(f"loss {name!r} has no input wiring in racmkd.distill.trainer.LOSS_INPUTS; known: {sorted(LOSS_INPUTS)}")
        total = total + weight * LOSSES.get(name)(*LOSS_INPUTS[name](inputs))
    return total


def conv_weights(model: nn.Module) -> list[torch.Tensor]:
    """The convolution weights whose output channels the resource penalty acts on."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]


def objective(job: Job, student: dict[str, Any], logits: torch.Tensor, labels: torch.Tensor, teachers: list[dict[str, Any]], teacher_logits: list[torch.Tensor], mix: Mix | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The job's loss on one batch and its terms (for logging). With `mix`, the batch's inputs were
    mixed and the task term is the same mixture of the two samples' cross-entropies."""
    task = LOSSES.get("task")(logits, labels, job.config.label_smoothing) if mix is None else mix.task(logits, labels, job.config.label_smoothing)
    w, cfg = job.weights, job.distill
    if w is None or cfg is None:
        return task, {"task": float(task.detach())}
    if job.teacher is not None:  # its own teacher first: the losses read the primary teacher at index 0
        first = job.teacher_index
        teachers = [teachers[first]] + teachers[:first] + teachers[first + 1 :]
        teacher_logits = [teacher_logits[first]] + teacher_logits[:first] + teacher_logits[first + 1 :]
    projected = job.projection(student["fused"]) if job.projection is not None else None
    projection_weights = [p for n, p in job.projection.named_parameters() if n.endswith("weight")] if job.projection is not None else []
    inputs = LossInputs(labels, student, logits, teachers, teacher_logits, projected, projection_weights, w.temperature, cfg)
    distill = weighted_sum(cfg.distill_losses, inputs)
    align = weighted_sum(cfg.align_losses, inputs)
    resource = LOSSES.get(cfg.resource_loss)(conv_weights(job.model))
    total = w.alpha * task + w.beta * distill + w.gamma * align + w.delta * resource
    terms = {"task": task, "distill": distill, "align": align, "resource": resource}
    return total, {k: float(v.detach()) for k, v in terms.items()}


def presence_masks(modalities: list[str], batch: int, p_drop: float, generator: torch.Generator) -> dict[str, torch.Tensor] | None:
    """Modality dropout: hide each modality of each sample with probability p_drop, never all of a sample's."""
    if p_drop <= 0 or len(modalities) < 2:
        return None
    keep = torch.rand(batch, len(modalities), generator=generator) >= p_drop
    none_left = ~keep.any(dim=1)
    rescue = torch.randint(len(modalities), (batch,), generator=generator)
    keep[none_left, rescue[none_left]] = True
    return {m: keep[:, i].float() for i, m in enumerate(modalities)}


def attach_projection(job: Job, teacher: MultimodalNet) -> None:
    """Give a distilled job the learned projection T of eq. 27 when its losses need one."""
    cfg = job.distill
    if job.weights is not None and cfg is not None and (set(cfg.align_losses) | set(cfg.distill_losses)) & NEEDS_PROJECTION:
        job.projection = nn.Linear(job.model.fused_dim, teacher.fused_dim)


def resolve_precision(precision: str) -> str:
    """"auto" -> "bf16" where oneDNN runs bfloat16 on this CPU, else "fp32"."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision {precision!r}: choose auto, bf16 or fp32")
    if precision != "auto":
        return precision
    try:
        return "bf16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"


def lr_schedule(optimizer: torch.optim.Optimizer, lr: float, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """One-cycle (a quarter warm-up, then cosine down to ~0); a constant rate for runs too short
    for a warm-up (OneCycleLR needs a few steps in each phase)."""
    if steps < 8:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.25)


def bf16_autocast(precision: str) -> torch.autocast:
    """An autocast context that is active when `precision` resolves to bf16."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=resolve_precision(precision) == "bf16")


def train_mode(model: nn.Module) -> None:
    """Training mode, except for frozen submodules (no trainable parameter), which stay in eval mode
    so that their BatchNorm statistics do not drift."""
    model.train()
    for module in model.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()


def train_jobs(
    dataset: PairedDataset,
    jobs: list[Job],
    epochs: int,
    batch_size: int,
    seed: int,
    teachers: list[Teacher] = (),  # type: ignore[assignment]
    samples_per_epoch: int = 0,
    val_limit: int = 0,
    augment: bool = True,
    channels_last: bool = True,
    teacher_precision: str = "fp32",
    desc: str = "train",
) -> list[Job]:
    """Train every job for `epochs` passes (or its own `Job.epochs`) over (at most `samples_per_epoch`
    of) the training split, keep each job's weights from its best validation epoch, and return the
    jobs. Each job's forward passes run in its config's precision, the teachers' in
    `teacher_precision`. Jobs of different lengths share one pass: an epoch draws the same batches
    whichever jobs are still training, so a job sees what a pass of its own length would have shown
    it, and the epochs the jobs have in common share the teachers' forward passes."""
    autocast = {job.name: bf16_autocast(job.config.precision) for job in jobs}
    teacher_autocast = bf16_autocast(teacher_precision)
    generator = torch.Generator().manual_seed(seed)
    n_train = len(dataset.splits["train"])
    per_epoch = min(samples_per_epoch or n_train, n_train)
    length = {job.name: job.epochs or epochs for job in jobs}
    if len(length) < len(jobs) or min(length.values(), default=1) < 1:
        raise ValueError(f"jobs of one pass need distinct names and at least one epoch each; got {[(job.name, job.epochs or epochs) for job in jobs]}")
    optimizers = {}
    for job in jobs:
        steps = length[job.name] * -(-per_epoch // batch_size)
        if channels_last:
            job.model.to(memory_format=torch.channels_last)
        train_mode(job.model)
        opt = torch.optim.AdamW([p for p in job.parameters() if p.requires_grad], lr=job.config.lr, weight_decay=job.config.weight_decay)
        optimizers[job.name] = (opt, lr_schedule(opt, job.config.lr, steps))
    # The frozen teachers run as folded copies (BatchNorm inside the convolutions: the same function
    # up to rounding, about 30% less time, and the teachers' forward passes are much of a pass's).
    frozen = [fold_batchnorm(t.model).to(memory_format=torch.channels_last if channels_last else torch.contiguous_format) for t in teachers]
    names = [t.name for t in teachers]
    for job in jobs:
        if job.teacher is not None:
            if job.teacher not in names:
                raise ValueError(f"job {job.name!r} distils from teacher {job.teacher!r}, which is not in this pass ({names})")
            job.teacher_index = names.index(job.teacher)
    mixups = {job.config.mixup for job in jobs}
    if len(mixups) > 1:
        raise ValueError(f"jobs trained in one pass share their mixup (teachers see one mix per batch); got {sorted(mixups)}")
    mixup = mixups.pop() if mixups else 0.0
    # Each job hides modalities with its own generator: drawn from the pass's one, a job's masks and
    # the batch order after them would depend on which other jobs share the pass (the same seed and
    # design gave the high tier 0.9834 alone, 0.9769 beside the other tiers).
    maskers = {job.name: torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(job.name.encode())) for job in jobs}
    total = max(length.values(), default=0)
    for epoch in range(total):
        active = [job for job in jobs if epoch < length[job.name]]  # the jobs still training
        distilled = any(job.weights is not None and job.distill is not None for job in active)
        started = time.perf_counter()
        sums = {job.name: 0.0 for job in active}
        count = 0
        bar = progress(dataset.batches("train", batch_size, generator, limit=per_epoch), desc=f"{desc} epoch {epoch + 1}/{total}", total=-(-per_epoch // batch_size))
        for rows in bar:
            labels = dataset.splits["train"].labels[rows]
            raw = dataset.raw_batch("train", rows, generator)
            seed_for_augment = int(torch.randint(2**31 - 1, (1,), generator=generator)) if augment else None
            features = BatchFeatures(dataset.modalities, raw, seed_for_augment, channels_last)
            mix = Mix.draw(len(rows), mixup, generator) if mixup > 0 else None
            teacher_out, teacher_logits = [], []
            if distilled and teachers:
                teacher_inputs = [features.get(t.specs) for t in teachers]  # features in fp32, outside autocast
                teacher_inputs = [mix.inputs(x) for x in teacher_inputs] if mix is not None else teacher_inputs
                with torch.no_grad(), teacher_autocast:
                    for model, inputs in zip(frozen, teacher_inputs):
                        out = model.forward_features(inputs)
                        teacher_out.append(out)
                        teacher_logits.append(model.forward_head(out["fused"]))
            for job in active:
                present = presence_masks(job.model.modalities, len(rows), job.config.modality_dropout, maskers[job.name])
                inputs = features.get(job.specs)
                inputs = mix.inputs(inputs) if mix is not None else inputs
                with autocast[job.name]:
                    out = job.model.forward_features(inputs, present)
                    logits = job.model.forward_head(out["fused"])
                    loss, _ = objective(job, out, logits, labels, teacher_out, teacher_logits, mix)
                opt, sched = optimizers[job.name]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                sums[job.name] += float(loss.detach()) * len(rows)
            count += len(rows)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix({j.name: f"{sums[j.name] / count:.3f}" for j in active[:4]}, refresh=False)
        seconds = time.perf_counter() - started
        for job in active:
            (logits,), labels = predict_split(job.model, job.specs, dataset, "val", limit=val_limit, precision=resolve_precision(job.config.precision))
            accuracy = float((logits.argmax(1) == labels).float().mean())
            job.history.append({"epoch": epoch + 1, "train_loss": sums[job.name] / max(count, 1), "val_accuracy": accuracy, "seconds": seconds})
            if accuracy > job.best_accuracy:
                job.best_accuracy, job.best_state = accuracy, copy.deepcopy(job.model.state_dict())
    for job in jobs:
        if job.best_state is not None:
            job.model.load_state_dict(job.best_state)
        job.model.to(memory_format=torch.contiguous_format).eval()
    return jobs
