"""Input-side, modality-specific compression: the same student fed a cheaper input.

Each modality names its own knobs (`Modality.reductions`): image resolution and centre region of
interest; audio mel bands, frames (temporal pooling) and band selection; the pen (a sensor) its
windows (downsampling), and another sensor might add PCA the same way. The student's layer plan is pinned first, so its
weights still fit the smaller input (convolutions and global pooling do not care about the size);
a distillation fine-tune then adapts them. Band selection ranks the bands by how much the model's
validation loss grows when each band alone is replaced by its mean (occlusion).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from racmkd.data.dataset import PairedDataset
from racmkd.data.modalities import Modality
from racmkd.models.inference import BatchFeatures
from racmkd.models.multimodal import MultimodalNet, pin_structure


def input_values(modalities: dict[str, Modality], specs: dict[str, Any]) -> dict[str, int]:
    """How many values each input of a model holds (what input reduction shrinks)."""
    return {m: math.prod(modalities[m].feature_shape(s)) for m, s in specs.items()}


def reduce_inputs(
    model: MultimodalNet, specs: dict[str, Any], modalities: dict[str, Modality], knobs: dict[str, dict[str, Any]]
) -> tuple[MultimodalNet, dict[str, Any]]:
    """The model (structure pinned, input shapes updated in its arch) and its new specs, with each
    modality in `knobs` reduced by its own `Modality.reduce`."""
    unknown = set(knobs) - set(specs)
    if unknown:
        raise ValueError(f"input reduction for {sorted(unknown)}, which this model does not use (it uses {list(specs)})")
    new_specs = dict(specs)
    for m, values in knobs.items():
        new_specs[m] = modalities[m].reduce(specs[m], **values)
    model.arch = pin_structure(model)
    inputs = {m: {**spec, "shape": list(modalities[m].feature_shape(new_specs[m]))} for m, spec in model.arch["kwargs"]["inputs"].items()}
    model.arch["kwargs"]["inputs"] = inputs
    return model, new_specs


@torch.no_grad()
def band_importance(
    model: MultimodalNet, specs: dict[str, Any], dataset: PairedDataset, modality: str = "audio", samples: int = 2000, split: str = "val"
) -> list[float]:
    """For each band (row) of a 2-D input: the growth of the model's mean cross-entropy when that
    band alone is replaced by its mean over the samples."""
    model.eval()
    rows = torch.arange(min(samples, len(dataset.splits[split])))
    features = BatchFeatures(dataset.modalities, dataset.raw_batch(split, rows)).get(specs)
    labels = dataset.splits[split].labels[rows]
    x = features[modality]  # (N, 1, bands, frames)
    base = F.cross_entropy(model(features), labels).item()
    means = x.mean(dim=(0, 3), keepdim=True)  # (1, 1, bands, 1)
    scores = []
    for band in range(x.shape[2]):
        occluded = x.clone()
        occluded[:, :, band, :] = means[:, :, band, :]
        scores.append(F.cross_entropy(model({**features, modality: occluded}), labels).item() - base)
    return scores


def most_informative(scores: list[float], keep: int) -> tuple[int, ...]:
    """The `keep` highest-scoring bands, in frequency order (neighbouring bands stay neighbours for the convolutions)."""
    if not 1 <= keep <= len(scores):
        raise ValueError(f"cannot keep {keep} of {len(scores)} bands")
    return tuple(sorted(sorted(range(len(scores)), key=lambda b: -scores[b])[:keep]))
