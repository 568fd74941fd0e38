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
import itertools
import math
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from racmkd.config import ConfigError, DistillConfig, TrainConfig
from racmkd.data.dataset import FeatureCache, PairedDataset
from racmkd.distill.adaptive import ObjectiveWeights
from racmkd.distill.losses import reliability_weights
from racmkd.models.inference import BatchFeatures, fold_batchnorm, predict_split
from racmkd.models.multimodal import MultimodalNet
from racmkd.registry import LOSSES, did_you_mean
from racmkd.utils import progress, torch_threads


@dataclass
class Teacher:
    """A frozen model that students learn from; the first teacher of a pass is the fused one."""

    name: str
    model: MultimodalNet
    specs: dict[str, Any]


def divergence_fix(job: Job) -> str:
    """What to lower when `job` diverged: its own learning rate's setting (it said "train.lr", a
    setting of no teacher and of no compression recipe), and the loss weights where a teacher
    teaches it."""
    weights = " or check the loss weights (distill.*)" if job.weights is not None else ""
    return f"lr {job.config.lr}: lower {job.lr_setting}{weights}"


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
    lr_setting: str = "students.train.lr"  # where its learning rate is set, for the message when it diverges
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
    mix: Mix | None = None  # the batch's mixup, if any: each sample is two samples, weighted


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


@dataclass(frozen=True)
class Drawn:
    """One training batch as drawn: its labels, its features (computing until `computing` is done),
    its mixup, where the teachers' answers on it are cached (`key`) and those answers if they were,
    and, when its inputs are to be kept, the pass's generator as drawing them left it."""

    labels: torch.Tensor
    features: BatchFeatures
    mix: Mix | None
    computing: list[Future]
    key: tuple
    taught: tuple[list, list] | None
    generator_state: torch.Tensor | None = None


# Which outputs feed each registered loss: the one place that wires models to losses.
LOSS_INPUTS: dict[str, Callable[[LossInputs], tuple]] = {
    "kd": lambda c: (c.student_logits, c.teacher_logits[0], c.temperature),
    "multi_teacher": lambda c: (c.student_logits, c.teacher_logits, teacher_reliability(c), c.temperature),
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
READS_TEACHER_MAPS = {"attention"}  # the teachers' feature maps: most of the bytes of their answers


def check_loss_names(cfg: DistillConfig, source: str) -> None:
    """Every loss the objective names is registered and wired: a typo is an error before anything
    trains, not at the first distillation step after the teachers' minutes. `source`: the file to fix."""
    named = [("distill.distill_losses", n, LOSS_INPUTS) for n in cfg.distill_losses] + [("distill.align_losses", n, LOSS_INPUTS) for n in cfg.align_losses]
    of_weights = {n: None for n in LOSSES if n not in LOSS_INPUTS and n != "task"}  # the resource term is a loss of the weights; task is the labels'
    for key, name, known in [*named, ("distill.resource_loss", cfg.resource_loss, of_weights)]:
        if name not in known:
            hint = did_you_mean(name, known)
            raise ConfigError(f"{source}: {key}: unknown loss {name!r}.{hint} Known: {', '.join(sorted(known))}. Fix it in {source}.")


def teacher_reliability(c: LossInputs) -> torch.Tensor:
    """Eq. 3's per-sample teacher weights. A mixed sample is both its samples: a teacher is scored
    on each sample's label in the mixture's proportions (on the first's alone, a teacher that sees
    the mixture's dominant second sample rightly would score near zero)."""
    prior = torch.ones(len(c.teacher_logits))
    weights = reliability_weights(c.teacher_logits, c.labels, prior, c.config.reliability_temperature)
    if c.mix is None:
        return weights
    other = reliability_weights(c.teacher_logits, c.labels[c.mix.permutation], prior, c.config.reliability_temperature)
    return c.mix.weight * weights + (1.0 - c.mix.weight) * other


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


def objective(
    job: Job,
    student: dict[str, Any],
    logits: torch.Tensor,
    labels: torch.Tensor,
    teachers: list[dict[str, Any]],
    teacher_logits: list[torch.Tensor],
    mix: Mix | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The job's loss on one batch and its terms (for logging). With `mix`, the batch's inputs were
    mixed and the task term is the same mixture of the two samples' cross-entropies."""
    task = LOSSES.get("task")(logits, labels, job.config.label_smoothing) if mix is None else mix.task(logits, labels, job.config.label_smoothing)
    w, cfg = job.weights, job.distill
    if w is None or cfg is None:
        return task, {"task": float(task.detach())}
    # Teachers answer in their own precision (bf16 where the CPU has it), students may train in fp32:
    # the losses see one dtype (a matmul and torch.cdist refuse to mix them).
    teachers, teacher_logits = _cast(teachers, logits.dtype), _cast(teacher_logits, logits.dtype)
    if job.teacher is not None:  # its own teacher first: the losses read the primary teacher at index 0
        first = job.teacher_index
        teachers = [teachers[first]] + teachers[:first] + teachers[first + 1 :]
        teacher_logits = [teacher_logits[first]] + teacher_logits[:first] + teacher_logits[first + 1 :]
    projected = job.projection(student["fused"]) if job.projection is not None else None
    projection_weights = [p for n, p in job.projection.named_parameters() if n.endswith("weight")] if job.projection is not None else []
    inputs = LossInputs(labels, student, logits, teachers, teacher_logits, projected, projection_weights, w.temperature, cfg, mix)
    distill = weighted_sum(cfg.distill_losses, inputs)
    align = weighted_sum(cfg.align_losses, inputs)
    resource = LOSSES.get(cfg.resource_loss)(conv_weights(job.model))
    total = w.alpha * task + w.beta * distill + w.gamma * align + w.delta * resource
    terms = {"task": task, "distill": distill, "align": align, "resource": resource}
    return total, {k: float(v.detach()) for k, v in terms.items()}


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """Floating tensors in `value` (nested lists and dicts) as `dtype`; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, list):
        return [_cast(v, dtype) for v in value]
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value


def presence_masks(modalities: list[str], batch: int, p_drop: float, generator: torch.Generator) -> dict[str, torch.Tensor] | None:
    """Modality dropout: hide each modality of each sample with probability p_drop, never all of a sample's."""
    if p_drop <= 0 or len(modalities) < 2:
        return None
    keep = torch.rand(batch, len(modalities), generator=generator) >= p_drop
    none_left = ~keep.any(dim=1)
    rescue = torch.randint(len(modalities), (batch,), generator=generator)
    keep[none_left, rescue[none_left]] = True
    return {m: keep[:, i].float() for i, m in enumerate(modalities)}


def attach_projection(job: Job, teacher: MultimodalNet, seed: int | None = None) -> None:
    """Give a distilled job the learned projection T of eq. 27 when its losses need one. Its initial
    weights come from torch's global generator, or, with `seed`, from that seed whatever ran before
    in the process (the global generator left as it was)."""
    cfg = job.distill
    if job.weights is not None and cfg is not None and (set(cfg.align_losses) | set(cfg.distill_losses)) & NEEDS_PROJECTION:
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            job.projection = nn.Linear(job.model.fused_dim, teacher.fused_dim)


def resolve_precision(precision: str) -> str:
    """ "auto" -> "bf16" where oneDNN runs bfloat16 on this CPU, else "fp32"."""
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


class InlineExecutor(Executor):
    """Runs each submitted call at once, in the caller's thread: `train_jobs` with one worker."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - handed to the caller through the future, as a pool would
            future.set_exception(err)
        return future


def job_workers(workers: int) -> Executor:
    """Where a pass's per-batch work runs: inline for one worker, else a pool of `workers` threads."""
    return InlineExecutor() if workers <= 1 else ThreadPoolExecutor(workers, thread_name_prefix="racmkd-job")


def learns_from_teachers(job: Job) -> bool:
    return job.weights is not None and job.distill is not None


def teacher_outputs(
    frozen: list[MultimodalNet], inputs: list[dict[str, torch.Tensor]], autocast: torch.autocast
) -> tuple[list[dict[str, Any]], list[torch.Tensor]]:
    """The frozen teachers' features and logits on (a slice of) one batch."""
    outputs, logits = [], []
    with torch.no_grad(), autocast:
        for model, x in zip(frozen, inputs):
            out = model.forward_features(x)
            outputs.append(out)
            logits.append(model.forward_head(out["fused"]))
    return outputs, logits


def joined(parts: list[Any]) -> Any:
    """Slices of a batch's outputs (tensors, in dicts and lists alike) put back together along the batch."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts) if len(parts) > 1 else first
    if isinstance(first, dict):
        return {key: joined([part[key] for part in parts]) for key in first}
    return [joined(list(items)) for items in zip(*parts)]


class TrainingDiverged(ValueError):
    """A job's loss or validation logits became NaN or infinite: its settings (learning rate, loss
    weights) make training diverge. Nothing of the pass is saved: NaN logits still have an argmax,
    scored about chance, which beat the "no best yet" start and was saved as the best model."""


def train_step(
    job: Job,
    optimizer: tuple[torch.optim.Optimizer, Any],
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    mix: Mix | None,
    masker: torch.Generator,
    autocast: torch.autocast,
    taught: tuple[list, list],
) -> float:
    """One optimisation step of one job on one batch; returns its loss. Touches nothing but the job's
    own model, optimizer and generator, so jobs may step side by side in threads."""
    present = presence_masks(job.model.modalities, len(labels), job.config.modality_dropout, masker)
    inputs = mix.inputs(inputs) if mix is not None else inputs
    with autocast:
        out = job.model.forward_features(inputs, present)
        logits = job.model.forward_head(out["fused"])
        loss, _ = objective(job, out, logits, labels, *taught, mix)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainingDiverged(f"training {job.name} diverged: its loss is {value} ({divergence_fix(job)})")
    opt, sched = optimizer
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return value


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
    workers: int = 1,
    teacher_cache: FeatureCache | None = None,
    replay_after: int = 0,
    input_cache: FeatureCache | None = None,
) -> list[Job]:
    """Train every job for `epochs` passes (or its own `Job.epochs`) over (at most `samples_per_epoch`
    of) the training split, keep each job's weights from its best validation epoch, and return the
    jobs. Each job's forward passes run in its config's precision, the teachers' in
    `teacher_precision`. Jobs of different lengths share one pass: an epoch draws the same batches
    whichever jobs are still training, so a job sees what a pass of its own length would have shown
    it, and the epochs the jobs have in common share the teachers' forward passes.

    With `workers` > 1 the batch's work (each modality's features, the teachers' forward pass, each
    job's step) runs on that many threads side by side, each op on threads/workers intra-op threads,
    and the next batch is drawn while the jobs step: the small students' ops leave a second core
    idle, two of them at once do not (make run's eight students: 0.83x the time of one worker on
    two cores, AMD EPYC). A job's result depends on `workers` (through the ops' thread count), never
    on its companions or the threads' timing. Jobs that draw from torch's global generator (dropout)
    need `workers=1` to stay reproducible.

    `teacher_cache` keeps the frozen teachers' answers on every batch, for passes that draw the same
    batches again with the same teachers (same seed, samples, batch size, augmentation, mixup and
    workers): the compression fine-tunes of every tier (a recipe's n-th fine-tune has the same
    seed in every tier) and the selection's rounds. A cached answer is the one a forward pass would
    give (computed the same way, once), so what a job learns does not depend on the cache.

    With `replay_after` > 0, an epoch from that one on draws again the batches of epoch
    `epoch % replay_after` (the same rows, corruption, augmentation and mixup: the pass's generator
    goes back to where that epoch started), so a job that trains longer than the others sees their
    epochs again, and with `teacher_cache` the teachers' answers on them are read back, not computed.

    `input_cache` keeps the jobs' inputs on every batch (those of the jobs that train past
    `replay_after`, with replay), with the generator as drawing them left it, for batches drawn
    again by jobs of the same inputs: the replayed epochs, and the compression fine-tunes of tiers
    whose students read the same inputs. Where the teachers' answers are cached too, such a batch
    is not corrupted, augmented and featurised again: the generator jumps to where that would have
    left it, so every later draw is the one it would have been."""
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
        # fused: one kernel over all parameters instead of a dozen ops per tensor (4-7 ms -> ~1 ms a
        # step for a student's 45-63 tensors on two cores: a tenth of a critical student's step).
        opt = torch.optim.AdamW([p for p in job.parameters() if p.requires_grad], lr=job.config.lr, weight_decay=job.config.weight_decay, fused=True)
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
    # Everything that decides the teachers' answers on a pass's n-th batch of an epoch. The cache keeps
    # their feature maps only for passes whose losses read them (12.8 KB of the 14.9 KB a sample of make run's fused teacher).
    keeps_maps = any((set(job.distill.distill_losses) | set(job.distill.align_losses)) & READS_TEACHER_MAPS for job in jobs if learns_from_teachers(job))
    pass_key = (tuple(id(t.model) for t in teachers), seed, per_epoch, batch_size, augment, mixup, channels_last, teacher_precision, workers, keeps_maps)

    def inputs_of(some: list[Job]) -> set[tuple[str, Any]]:
        """The (modality, spec) inputs these jobs read."""
        return {(m, spec) for job in some for m, spec in job.specs.items()}

    # The inputs kept for later passes (or the replayed epochs).
    keeps_inputs = inputs_of([job for job in jobs if not replay_after or length[job.name] > replay_after]) if input_cache is not None else set()

    def cached(taught: tuple[list, list]) -> tuple[list, list]:
        outputs, logits = taught
        return (outputs if keeps_maps else [{**out, "maps": {}} for out in outputs]), logits

    def draw(rows: torch.Tensor, key: tuple, active: list[Job], taught_jobs: list[Job], pool: Executor) -> Drawn:
        """A batch's random draws (corruption, augmentation seed, mixup: in this thread, batch after
        batch), then its features start computing on the pool (the teachers' only if their answers
        are not cached)."""
        labels = dataset.splits["train"].labels[rows]
        taught = teacher_cache.lookup(key) if taught_jobs and teacher_cache is not None else None
        kept = input_cache.lookup(("inputs", key)) if input_cache is not None and (taught is not None or not taught_jobs) else None
        if kept is not None and inputs_of(active) <= kept[0].keys():
            generator.set_state(kept[1])  # where corrupting and augmenting this batch left it
            mix = Mix.draw(len(rows), mixup, generator) if mixup > 0 else None
            return Drawn(labels, BatchFeatures(dataset.modalities, {}, None, channels_last, known=kept[0]), mix, [], key, taught)
        raw = dataset.raw_batch("train", rows, generator)
        seed_for_augment = int(torch.randint(2**31 - 1, (1,), generator=generator)) if augment else None
        state = generator.get_state() if keeps_inputs else None
        features = BatchFeatures(dataset.modalities, raw, seed_for_augment, channels_last)
        mix = Mix.draw(len(rows), mixup, generator) if mixup > 0 else None
        computing = features.prepare(([t.specs for t in teachers] if taught_jobs and taught is None else []) + [job.specs for job in active], pool)
        return Drawn(labels, features, mix, computing, key, taught, state)

    def learn(
        batch: Drawn, upcoming: tuple[torch.Tensor, tuple] | None, active: list[Job], taught_jobs: list[Job], pool: Executor
    ) -> tuple[dict[str, float], Drawn | None]:
        """Every active job's step on `batch`; returns their losses and the next batch, drawn while
        the jobs step (its features computed by whichever worker is free first)."""
        for future in batch.computing:
            future.result()
        features, labels, mix = batch.features, batch.labels, batch.mix
        if batch.generator_state is not None:
            wanted = keeps_inputs & inputs_of(active)
            if wanted:
                input_cache.put(("inputs", batch.key), ({(m, spec): features.get({m: spec})[m] for m, spec in wanted}, batch.generator_state))

        def step(job: Job, taught: tuple[list, list]) -> Future:
            return pool.submit(train_step, job, optimizers[job.name], features.get(job.specs), labels, mix, maskers[job.name], autocast[job.name], taught)

        # The frozen teachers (eval mode: each sample's answer its own) run on a slice of the batch per
        # worker; jobs on labels alone start beside them, the others wait for their answers.
        teaching = []
        if taught_jobs and batch.taught is None:
            inputs = [features.get(t.specs) for t in teachers]
            inputs = [mix.inputs(x) for x in inputs] if mix is not None else inputs
            slices = min(workers, len(labels))
            pieces = [{m: x.tensor_split(slices) for m, x in xs.items()} for xs in inputs]  # views, not copies
            for part in range(slices):
                teaching.append(pool.submit(teacher_outputs, frozen, [{m: split[part] for m, split in xs.items()} for xs in pieces], teacher_autocast))
        steps = {job.name: step(job, ([], [])) for job in active if job not in taught_jobs}
        drawn = draw(*upcoming, active, taught_jobs, pool) if upcoming is not None else None
        if taught_jobs:
            taught = batch.taught
            if taught is None:
                taught = joined([future.result() for future in teaching])
                if teacher_cache is not None:
                    teacher_cache.put(batch.key, cached(taught))
            steps.update({job.name: step(job, taught) for job in taught_jobs})
        return {name: future.result() for name, future in steps.items()}, drawn

    total = max(length.values(), default=0)
    per_op_threads = max(1, torch.get_num_threads() // workers) if workers > 1 else torch.get_num_threads()
    epoch_starts = []  # the pass's generator as each epoch began, for the epochs replayed later
    with job_workers(workers) as pool:
        for epoch in range(total):
            active = [job for job in jobs if epoch < length[job.name]]  # the jobs still training
            taught_jobs = [job for job in active if learns_from_teachers(job)] if teachers else []
            started = time.perf_counter()
            sums = {job.name: 0.0 for job in active}
            count = 0
            drawn_as = epoch % replay_after if replay_after and epoch >= replay_after else epoch
            if drawn_as != epoch:
                generator.set_state(epoch_starts[drawn_as])
            elif epoch < replay_after:
                epoch_starts.append(generator.get_state())
            batches = ((rows, (pass_key, drawn_as, number)) for number, rows in enumerate(dataset.batches("train", batch_size, generator, limit=per_epoch)))
            bar = progress(
                itertools.pairwise(itertools.chain(batches, [None])),
                desc=f"{desc} epoch {epoch + 1}/{total}" + (f" (epoch {drawn_as + 1}'s batches)" if drawn_as != epoch else ""),
                total=-(-per_epoch // batch_size),
            )
            with torch_threads(per_op_threads):  # validation, below, runs on all of them
                batch = None  # each batch after the first comes drawn by the step before it
                for (rows, key), upcoming in bar:
                    if batch is None:
                        batch = draw(rows, key, active, taught_jobs, pool)
                    losses, batch = learn(batch, upcoming, active, taught_jobs, pool)
                    for name, loss in losses.items():
                        sums[name] += loss * len(rows)
                    count += len(rows)
                    if hasattr(bar, "set_postfix"):
                        bar.set_postfix({j.name: f"{sums[j.name] / count:.3f}" for j in active[:4]}, refresh=False)
            seconds = time.perf_counter() - started
            for job in active:
                (logits,), labels = predict_split(job.model, job.specs, dataset, "val", limit=val_limit, precision=resolve_precision(job.config.precision))
                if not torch.isfinite(logits).all():
                    raise TrainingDiverged(
                        f"training {job.name} diverged: its validation logits are not finite after epoch {epoch + 1} ({divergence_fix(job)})"
                    )
                accuracy = float((logits.argmax(1) == labels).float().mean())
                job.history.append(
                    {
                        "epoch": epoch + 1,
                        "batches_of_epoch": drawn_as + 1,
                        "train_loss": sums[job.name] / max(count, 1),
                        "val_accuracy": accuracy,
                        "seconds": seconds,
                    }
                )
                if accuracy > job.best_accuracy:
                    job.best_accuracy, job.best_state = accuracy, copy.deepcopy(job.model.state_dict())
    for job in jobs:
        if job.best_state is not None:
            job.model.load_state_dict(job.best_state)
        job.model.to(memory_format=torch.contiguous_format).eval()
    return jobs
