"""Running a model on dataset samples: feature extraction per model spec, batched prediction."""

from __future__ import annotations

import copy
from concurrent.futures import Executor, Future
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_eval

from racmkd.data.dataset import PairedDataset
from racmkd.data.modalities import Modality
from racmkd.models.multimodal import MultimodalNet


class BatchFeatures:
    """Features of one raw batch, computed once per (modality, spec) and shared by every model
    that asks for the same input (teachers and students in a shared training pass)."""

    def __init__(
        self,
        modalities: dict[str, Modality],
        raw: dict[str, torch.Tensor],
        augment_seed: int | None = None,
        channels_last: bool = False,
        known: dict[tuple[str, Any], torch.Tensor] | None = None,
    ) -> None:
        """`known`: inputs already computed, per (modality, spec), from a pass that drew the same batch."""
        self.modalities, self.raw, self.augment_seed, self.channels_last = modalities, raw, augment_seed, channels_last
        self._memo: dict[tuple[str, Any], torch.Tensor] = dict(known or {})
        self._scratch: dict[str, dict] = {name: {} for name in modalities}  # intermediate results per modality

    def get(self, specs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Inputs for a model with these per-modality specs."""
        out = {}
        for name, spec in specs.items():
            key = (name, spec)
            if key not in self._memo:
                self.modalities[name].check_bank_spec(spec)
                x = self.modalities[name].features(self.raw[name], spec, self.augment_seed, self._scratch[name])
                self._memo[key] = x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x
            out[name] = self._memo[key]
        return out

    def prepare(self, specs: list[dict[str, Any]], executor: Executor) -> list[Future]:
        """Start computing every input these models need, one task per modality (a modality's specs
        share its intermediate results, so they are computed one after another, in one task). `get`
        reads them once the returned futures are done."""
        wanted: dict[str, dict[Any, None]] = {}
        for model_specs in specs:
            for name, spec in model_specs.items():
                wanted.setdefault(name, {})[spec] = None
        return [executor.submit(lambda name=name, group=group: [self.get({name: spec}) for spec in group]) for name, group in wanted.items()]


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` (in whatever mode it is) with every Conv -> BatchNorm pair of a conv-BN-ReLU block fused
    into one convolution with a bias (into the second convolution of a low-rank factorised pair): what an edge runtime executes anyway, and how a frozen teacher
    runs in training (the same function up to rounding, about 30% faster on a CPU: BatchNorm is a
    pass over every activation)."""
    folded = copy.deepcopy(model).eval()
    for block in folded.modules():
        if not (isinstance(block, nn.Sequential) and len(block) >= 2 and isinstance(block[1], nn.BatchNorm2d) and block[1].affine):
            continue
        # A low-rank factorised layer is a Sequential of two convolutions: the BatchNorm folds into the second.
        owner, index = (block[0], len(block[0]) - 1) if isinstance(block[0], nn.Sequential) and len(block[0]) > 0 else (block, 0)
        conv = owner[index]
        if isinstance(conv, nn.Conv2d) and not parametrize.is_parametrized(conv):  # parametrized weights (quantization-aware training) stay as they are
            owner[index] = fuse_conv_bn_eval(conv, block[1])
            block[1] = nn.Identity()
    return folded


def evaluation_inputs(dataset: PairedDataset, split: str, rows: torch.Tensor, specs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Channels-last inputs of some evaluation rows (fixed corruption draws, no augmentation) for a
    model with these specs, through the dataset's feature cache: computed once per (split, rows,
    modality, spec), whichever models ask."""
    batch: BatchFeatures | None = None  # the raw batch, read on the first miss only

    def compute(name: str, spec: Any) -> torch.Tensor:
        nonlocal batch
        # fp32 whatever autocast the caller runs in: the cache serves every model, and an fp32 model
        # fed the bfloat16 features of a bf16 teacher's evaluation fails.
        with torch.autocast("cpu", enabled=False):
            if batch is None:
                batch = BatchFeatures(dataset.modalities, dataset.raw_batch(split, rows), channels_last=True)
            return batch.get({name: spec})[name]

    rows_key = rows.numpy().tobytes()
    return {name: dataset.feature_cache.get((split, rows_key, name, spec), lambda name=name, spec=spec: compute(name, spec)) for name, spec in specs.items()}


@torch.no_grad()
def predict_split(
    model: MultimodalNet,
    specs: dict[str, Any],
    dataset: PairedDataset,
    split: str,
    batch_size: int = 500,
    limit: int = 0,
    withheld: tuple[tuple[str, ...], ...] = ((),),
    precision: str = "fp32",
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Logits (N, K) of `model` on a split (fixed corruption draws), once for each set of withheld
    modalities in `withheld` (the default: nothing withheld), and the labels (N,). The encoders run
    once per batch whatever the number of sets. `precision` "bf16" autocasts (validation only:
    reported figures are fp32). Runs a BatchNorm-folded copy: `model` is left as it was."""
    model = fold_batchnorm(model).to(memory_format=torch.channels_last)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    logits: list[list[torch.Tensor]] = [[] for _ in withheld]
    labels = []
    for rows in dataset.batches(split, batch_size, limit=limit):
        with autocast:
            _, embeddings = model.encode(evaluation_inputs(dataset, split, rows, specs))
            for out, drop in zip(logits, withheld):
                kept = {m: e for m, e in embeddings.items() if m not in drop}
                if not kept:
                    raise ValueError(f"withholding {list(drop)} leaves this model ({model.modalities}) no input")
                out.append(model.forward_head(model.fuse(kept)).float())
        labels.append(dataset.splits[split].labels[rows])
    return [torch.cat(out) for out in logits], torch.cat(labels)
