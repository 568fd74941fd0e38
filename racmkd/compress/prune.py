"""Structured channel pruning of a student with torch-pruning.

torch-pruning traces the network into a dependency graph, so removing an output channel of one
convolution also removes what depends on it: the following BatchNorm, the depthwise convolution
that reads it (groups shrink with it), the matching slice of the fusion concat, the presence map
and the classifier's input column. The classifier's outputs (the classes) are protected. After
pruning, the encoders' layer plans are written into the model's `arch`, so checkpoints rebuild it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from racmkd.models.multimodal import MultimodalNet, pin_structure


def example_inputs(model: MultimodalNet) -> dict[str, torch.Tensor]:
    """Random inputs of batch 2 in the model's input shapes (for tracing)."""
    return {m: torch.randn(2, *spec["shape"]) for m, spec in model.arch["kwargs"]["inputs"].items()}


def _forward(model: nn.Module, inputs: Any) -> torch.Tensor:
    return model(inputs[0] if isinstance(inputs, (tuple, list)) else inputs)


def prunable_channels(model: MultimodalNet) -> int:
    """Output channels of the encoders' dense convolutions (stem and pointwise): what pruning removes."""
    return sum(sum(e.structure()["channels"]) for e in model.encoders.values())


MAX_RATIO = 0.95  # the most a layer's channels are cut

IMPORTANCES = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "bn": lambda: tp.importance.BNScaleImportance(),
}


def prune_encoders(
    model: MultimodalNet, ratios: dict[str, float] | float, importance: str = "l2", multiple: int = 1, reference: dict[str, list[int]] | None = None
) -> MultimodalNet:
    """Remove a share of the output channels of every layer of each encoder (in place): `ratios`
    per modality (or one for all), least important channels first. Each layer keeps the multiple of
    `multiple` nearest to its share (`layer_targets`), at least `multiple` (or the layer's size).
    `reference`: per modality, the layers' channel counts the ratios are shares of (default: as
    they are now); iterative pruning passes the counts it started from, so that rounding in one
    round is not compounded by the next. Returns the model with its structure pinned."""
    if not isinstance(ratios, dict):
        ratios = {m: float(ratios) for m in model.encoders}
    unknown = set(ratios) - set(model.encoders)
    if unknown:
        raise ValueError(f"pruning ratios for {sorted(unknown)}, which this model has no encoder for ({list(model.encoders)})")
    for m, r in ratios.items():
        if not 0.0 <= r <= MAX_RATIO:
            raise ValueError(f"prune ratio for {m} must be in [0, {MAX_RATIO}], got {r}")
    if importance not in IMPORTANCES:
        raise ValueError(f"unknown pruning importance {importance!r}; choose {', '.join(IMPORTANCES)}")
    targets = {conv: keep for m, r in ratios.items() if r > 0 for conv, keep in layer_targets(model.encoders[m], r, multiple, (reference or {}).get(m)).items()}
    if not targets:
        return model
    was_training = model.training
    model.eval()
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs=(example_inputs(model),),
        importance=IMPORTANCES[importance](),
        pruning_ratio=0.0,
        # torch-pruning keeps int(channels x (1 - ratio)): half a channel above the target lands on it exactly.
        pruning_ratio_dict={conv: 1 - (keep + 0.5) / conv.out_channels for conv, keep in targets.items()},
        ignored_layers=[model.classifier],
        root_module_types=[nn.Conv2d],  # groups start at encoder layers; the fusion and classifier follow them
        forward_fn=_forward,
    )
    pruner.step()
    model.arch = pin_structure(model)
    return model.train(was_training)


def layer_targets(encoder: nn.Module, ratio: float, multiple: int = 1, reference: list[int] | None = None) -> dict[nn.Conv2d, int]:
    """The channels each dense layer of `encoder` keeps when it loses `ratio` of `reference` (default:
    its channels now): the nearest multiple of `multiple`, at least `multiple`, never more than the
    largest multiple the layer has now. Nearest, not the next one down: a 10-channel layer asked to
    lose 22% keeps 8; rounded down from 7.8 it kept 4, and the critical tier's encoder lost so much
    accuracy in its first round that pruning stopped there (its visual ratio fell from 4.8x to 3.2x).
    Layers left as they are get no entry."""
    convs = encoder.dense_convs()
    reference = reference or encoder.structure()["channels"]
    if len(reference) != len(convs):
        raise ValueError(f"pruning reference {reference} has {len(reference)} layers; this encoder has {len(convs)}")
    targets = {}
    for conv, start in zip(convs, reference):
        if not isinstance(conv, nn.Conv2d):  # factorised by lowrank: its rank, not its channels, was chosen
            continue
        channels = conv.out_channels
        keep = max(multiple, int(start * (1 - ratio) / multiple + 0.5) * multiple)
        keep = min(keep, channels - channels % multiple if channels > multiple else channels)
        if keep < channels:
            targets[conv] = keep
    return targets


def align_channels(model: MultimodalNet, multiple: int = 4, importance: str = "l2", modalities: list[str] | None = None) -> list[dict[str, Any]]:
    """Prune every dense layer (stem, pointwise) of the encoders of `modalities` (default all) down to
    a multiple of `multiple` channels, least important channels first (in place; layers with
    `multiple` channels or fewer stay). Why: ONNX Runtime's CPU convolutions are vectorised over
    channels in blocks of 4 and 8; measured here (x86, one thread), a DS-CNN encoder on 8x8 inputs with
    a 23-channel stem ran 3.1x slower than the same with 24 channels and 1.5x slower with 26, while 20,
    24 and 28 ran alike. Returns what changed: one record per layer cut."""
    if multiple <= 1:
        return []
    modalities = list(model.encoders) if modalities is None else modalities
    was_training = model.training
    model.eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=(example_inputs(model),), forward_fn=_forward)
    score = IMPORTANCES[importance]()
    changed = []
    for m in modalities:
        for i, conv in enumerate(model.encoders[m].dense_convs()):
            if not isinstance(conv, nn.Conv2d):  # factorised by lowrank: its rank, not its channels, was chosen
                continue
            channels = conv.out_channels
            excess = channels % multiple
            if channels <= multiple or excess == 0:
                continue
            whole = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(channels)))
            weakest = torch.argsort(score(whole))[:excess].tolist()
            group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=weakest)
            if not graph.check_pruning_group(group):
                raise RuntimeError(f"torch-pruning refused to cut layer {i} of the {m} encoder from {channels} to {channels - excess} channels")
            group.prune()
            changed.append({"modality": m, "layer": i, "before": channels, "after": conv.out_channels})
    model.arch = pin_structure(model)
    model.train(was_training)
    return changed


def ratio_for_bytes(model: MultimodalNet, target_bytes: int, tolerance: float = 0.01, multiple: int = 1) -> float:
    """The channel ratio that brings the model's fp32 parameter bytes to about `target_bytes`
    (found by bisection on copies, up to a ratio of 0.95, past which torch-pruning leaves layers
    whole rather than empty); raises when even that cannot."""
    import copy

    def size_after(ratio: float) -> int:
        trial = prune_encoders(copy.deepcopy(model), ratio, multiple=multiple)
        return 4 * sum(p.numel() for p in trial.parameters())

    current = 4 * sum(p.numel() for p in model.parameters())
    if current <= target_bytes:
        return 0.0
    smallest = size_after(MAX_RATIO)
    if smallest > target_bytes:
        raise ValueError(f"pruning cannot bring this model to {target_bytes} bytes: with {MAX_RATIO:.0%} of its channels removed it still takes {smallest}")
    low, high = 0.0, MAX_RATIO
    while high - low > tolerance:
        mid = (low + high) / 2
        if size_after(mid) > target_bytes:
            low = mid
        else:
            high = mid
    return high
