"""Multimodal networks: one encoder per modality, a fusion module and a classifier.

The teacher (cloud tier) and every student (edge tiers) are the same kind of object, so the
trainer, the evaluator and the predictor treat them alike:

    inputs {modality: (B, C, H, W)} -> encoders -> embeddings (B, d_m), zeroed where a modality is
    missing -> concat (B, sum d_m), with the presence mask (B, M) -> fusion -> fused (B, D) -> classifier -> logits

Training hides modalities at random (modality dropout), so a model still answers when a sensor is
missing: the presence mask tells the fusion which embeddings are real.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from racmkd.models.encoders import DSCNN2dEncoder
from racmkd.models.lowrank import factorize_layers
from racmkd.registry import MODELS

Inputs = dict[str, torch.Tensor]


class MultimodalNet(nn.Module):
    """Encoders + fusion + classifier; see the module docstring for the data flow."""

    def __init__(self, encoders: dict[str, nn.Module], fusion: nn.Module, fused_dim: int, num_classes: int, arch: dict[str, Any]) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.classifier = nn.Linear(fused_dim, num_classes)
        self.arch = arch  # the registry name and arguments that rebuild this model (saved in checkpoints)

    @property
    def fused_dim(self) -> int:
        """Width of the fused vector (read off the classifier, so it stays right after pruning)."""
        return self.classifier.in_features

    @property
    def modalities(self) -> list[str]:
        """The modalities this model can use, in fusion order."""
        return list(self.encoders)

    def encode(self, inputs: Inputs) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Feature maps and embeddings of the modalities present in `inputs` (the costly part)."""
        if not any(m in inputs for m in self.modalities):
            raise ValueError(f"no input for any of this model's modalities {self.modalities}; got {sorted(inputs)}")
        maps, embeddings = {}, {}
        for name, encoder in self.encoders.items():
            if name in inputs:
                maps[name] = encoder.forward_features(inputs[name])
                embeddings[name] = encoder.forward_head(maps[name])
        return maps, embeddings

    def fuse(self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The fused vector from the embeddings: a modality missing from `embeddings`, or with
        `present` 0 for a sample, contributes a zero embedding and a 0 in the presence mask."""
        ref = next(iter(embeddings.values()))
        batch = ref.shape[0]
        parts, masks = [], []
        for name, encoder in self.encoders.items():
            if name in embeddings:
                mask = present[name].to(ref.dtype) if present is not None and name in present else torch.ones(batch, dtype=ref.dtype, device=ref.device)
                parts.append(embeddings[name] * mask[:, None])
            else:
                parts.append(torch.zeros(batch, encoder.embed_dim, dtype=ref.dtype, device=ref.device))
                mask = torch.zeros(batch, dtype=ref.dtype, device=ref.device)
            masks.append(mask)
        return self.fusion(torch.cat(parts, dim=1), torch.stack(masks, dim=1))  # (B, sum d_m), (B, M) -> (B, D)

    def forward_features(self, inputs: Inputs, present: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
        """Feature maps and embeddings per modality, and the fused vector (see `fuse`)."""
        maps, embeddings = self.encode(inputs)
        fused = self.fuse(embeddings, present)
        if present is not None:
            embeddings = {m: e * present[m].to(e.dtype)[:, None] if m in present else e for m, e in embeddings.items()}
        return {"maps": maps, "embeddings": embeddings, "fused": fused}

    def forward_head(self, fused: torch.Tensor) -> torch.Tensor:
        """Class logits (B, K) from the fused vector."""
        return self.classifier(fused)

    def forward(self, inputs: Inputs, present: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(inputs, present)["fused"])


class Fusion(nn.Module):
    """fused = post(project(joint) + presence(mask)) over the concatenated embeddings (B, sum d_m)
    and the presence mask (B, M); `hidden` 0 makes `project` the identity (students: the classifier
    reads the embeddings directly). The mask enters through its own linear map instead of being
    concatenated to the embeddings: the same function (a linear map of a concatenation is the sum of
    linear maps of its parts), and a concat of encoder outputs alone, so structured pruning
    (torch-pruning) can trace which fused channel comes from which encoder."""

    def __init__(self, joint_dim: int, n_modalities: int, hidden: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        self.project = nn.Linear(joint_dim, hidden) if hidden else nn.Identity()
        self.presence = nn.Linear(n_modalities, hidden or joint_dim, bias=False)
        self.post = nn.Sequential(nn.ReLU(inplace=True), nn.Dropout(dropout)) if hidden else nn.Identity()

    def forward(self, joint: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.post(self.project(joint) + self.presence(mask))  # (B, D)


def _encoders(inputs: dict[str, dict[str, Any]], per_modality: dict[str, dict[str, Any]] | None = None, **kwargs: Any) -> dict[str, nn.Module]:
    per_modality = per_modality or {}
    return {name: MODELS.create(spec["encoder"], tuple(spec["shape"]), **kwargs, **per_modality.get(name, {})) for name, spec in inputs.items()}


TEACHER_WIDTH = 32  # a teacher encoder's first-stage channels when none are given for its modality


@MODELS.register("teacher")
def teacher(
    inputs: dict[str, dict[str, Any]],
    width: int | dict[str, int] = TEACHER_WIDTH,
    embed_dim: int = 128,
    fusion_hidden: int = 256,
    dropout: float = 0.2,
    num_classes: int = 10,
    depth: dict[str, int] | None = None,
) -> MultimodalNet:
    """Cloud-tier teacher: CNN encoders (first-stage channels `width`, one number for every modality
    or per modality, TEACHER_WIDTH if absent; `depth[modality]` convolutions per stage, 1 if absent),
    fusion MLP over [embeddings, presence mask]. `inputs` maps each modality to {"encoder": MODELS name, "shape": (C, H, W)}."""
    depth = {m: d for m, d in (depth or {}).items() if m in inputs}
    if isinstance(width, dict):  # like depth, the arch record keeps only this model's modalities
        width = {m: w for m, w in width.items() if m in inputs}
    widths = width if isinstance(width, dict) else dict.fromkeys(inputs, width)
    per_modality = {m: {"width": widths.get(m, TEACHER_WIDTH), **({"depth": depth[m]} if m in depth else {})} for m in inputs}
    encoders = _encoders(inputs, per_modality, embed_dim=embed_dim)
    fusion = Fusion(embed_dim * len(encoders), len(encoders), fusion_hidden, dropout)
    arch = {
        "name": "teacher",
        "kwargs": {
            "inputs": inputs,
            "width": width,
            "embed_dim": embed_dim,
            "fusion_hidden": fusion_hidden,
            "dropout": dropout,
            "num_classes": num_classes,
            "depth": depth,
        },
    }
    # (hidden 0: the fusion passes the embeddings through)
    return MultimodalNet(encoders, fusion, fusion_hidden or embed_dim * len(encoders), num_classes, arch)


@MODELS.register("student")
def student(
    inputs: dict[str, dict[str, Any]],
    width: float = 1.0,
    depth: int = 1,
    num_classes: int = 10,
    structure: dict[str, dict[str, Any]] | None = None,
    channel_multiple: int = 1,
) -> MultimodalNet:
    """Edge-tier student: depthwise-separable encoders scaled by `width` (channels) and `depth`
    (blocks per stage), a linear classifier over [embeddings, presence mask]. Input resolution and
    active modalities are set through `inputs`; `channel_multiple` > 1 rounds every layer's channels
    to a multiple of it (faster kernels). `structure` pins an encoder's layer plan (channels
    per convolution, stem stride, kernels and halving stride) once compression has changed it: pruned channels, or an input
    reduced below the size the plan was derived from."""
    structure = {m: s for m, s in (structure or {}).items() if m in inputs}
    aligned = {"multiple": channel_multiple} if channel_multiple > 1 else {}
    encoders = _encoders(inputs, structure, width=width, depth=depth, **aligned)
    joint = sum(e.embed_dim for e in encoders.values())
    arch = {
        "name": "student",
        "kwargs": {
            "inputs": inputs,
            "width": width,
            "depth": depth,
            "num_classes": num_classes,
            **({"channel_multiple": channel_multiple} if aligned else {}),
            **({"structure": structure} if structure else {}),
        },
    }
    return MultimodalNet(encoders, Fusion(joint, len(encoders)), joint, num_classes, arch)


@MODELS.register("linear_fusion")
def linear_fusion(inputs: dict[str, dict[str, Any]], encoder: dict[str, Any] | None = None, num_classes: int = 10) -> MultimodalNet:
    """A benchmark baseline: any registered encoders (named in `inputs`, built with the `encoder`
    arguments) and a linear classifier over [embeddings, presence mask], like a student's. The
    MobileNetV3-style and plain-CNN (TinyML) baselines are built this way."""
    encoder = dict(encoder or {})
    encoders = _encoders(inputs, **encoder)
    joint = sum(e.embed_dim for e in encoders.values())
    arch = {"name": "linear_fusion", "kwargs": {"inputs": inputs, "encoder": encoder, "num_classes": num_classes}}
    return MultimodalNet(encoders, Fusion(joint, len(encoders)), joint, num_classes, arch)


def pin_structure(model: MultimodalNet) -> dict[str, Any]:
    """The `arch` record of a student with every encoder's current layer plan written in, so that
    `build` recreates exactly this network (after pruning, or with a reduced input)."""
    arch = {**model.arch, "kwargs": {**model.arch["kwargs"]}}
    arch["kwargs"]["structure"] = {m: e.structure() for m, e in model.encoders.items()}
    return arch


def build(arch: dict[str, Any]) -> MultimodalNet:
    """Rebuild a model from the `arch` record a checkpoint carries (low-rank factorised layers included)."""
    model = MODELS.create(arch["name"], **arch["kwargs"])
    if arch.get("lowrank"):
        factorize_layers(model, arch["lowrank"])
    model.arch = arch
    return model


def count_params(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def widest_student(
    inputs: dict[str, dict[str, Any]], budget_bytes: int, depth: int = 1, max_width: float = 8.0, channel_multiple: int = 1
) -> MultimodalNet | None:
    """The student of this depth with the largest width multiplier (in steps of one stem channel,
    at most `max_width`) whose fp32 parameters fit `budget_bytes`, freshly initialised; None when
    even the narrowest does not fit. With `channel_multiple` > 1 each layer rounds on its own, so
    later layers change between those steps: the last step that fits is searched again in eighths
    of it. Parameters never shrink as the width grows, so each search bisects its grid (a linear
    scan took 40 s for the default tiers' 144 designs). The probes draw their initial weights from a
    forked random state, so the answer's weights depend on the seed alone, not on the search (on the
    meta device, which would skip that work, torch's device mode made each build slower)."""
    step = 1.0 / DSCNN2dEncoder.base_channels

    def fits(width: float) -> bool:
        with torch.random.fork_rng(devices=[]):
            probe = student(inputs, width=width, depth=depth, channel_multiple=channel_multiple)
        return 4 * count_params(probe) <= budget_bytes

    def widest(start: float, stop: float, step: float) -> float | None:
        """The largest of start, start + step, ... (up to `stop`) that fits; None if `start` does not."""
        count = math.floor((stop - start) / step + 1e-9) + 1
        if count <= 0 or not fits(start):
            return None
        low, high = 0, count  # start + low * step fits; start + high * step does not (or lies past stop)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(start + middle * step) else (low, middle)
        return start + low * step

    width = widest(2 * step, max_width, step)  # from two stem channels: the narrowest useful encoder
    if width is None:
        return None
    if channel_multiple > 1:
        width = widest(width + step / 8, min(width + step, max_width), step / 8) or width
    return student(inputs, width=width, depth=depth, channel_multiple=channel_multiple)
