"""Low-rank factorisation of Linear and 1x1 convolution layers by truncated SVD.

W (out x in) = U S V^T; keeping the r largest singular values gives the best rank-r approximation
(Eckart-Young), stored as V' = sqrt(S_r) V_r^T (r x in) followed by U' = U_r sqrt(S_r) (out x r).
A layer is factorised only where that is smaller: r (in + out) < in * out.

A second factorisation (a recipe may hold two lowrank steps) takes a pair the first made as one
layer, the product of its two factors, and cuts it to a lower rank in its place: the model keeps one
level of pairs, the structure BatchNorm folding, quantization-aware training, pruning and the
export look into. Factorising each factor again would nest pairs there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from racmkd.models.lowrank import factorized, is_pointwise, replace_module
from racmkd.models.multimodal import MultimodalNet


@dataclass(frozen=True)
class Factorisation:
    """What happened to one layer."""

    layer: str
    shape: tuple[int, int]  # (out, in)
    rank: int  # 0: left as it is
    energy: float  # share of sum(s^2) the kept singular values hold
    params_before: int
    params_after: int


def matrix_of(layer: nn.Module) -> torch.Tensor:
    """The (out, in) matrix of a Linear or 1x1 convolution."""
    return layer.weight.detach().reshape(layer.weight.shape[0], -1)


def merged(pair: nn.Sequential) -> nn.Conv2d:
    """The 1x1 convolution a factorised pair computes (the product of its factors, the second's
    bias): what a second factorisation cuts, in the pair's place."""
    first, second = pair
    layer = nn.Conv2d(first.in_channels, second.out_channels, 1, bias=second.bias is not None)
    with torch.no_grad():
        layer.weight.copy_((matrix_of(second).double() @ matrix_of(first).double()).float().reshape(layer.weight.shape))
        if second.bias is not None:
            layer.bias.copy_(second.bias)
    return layer


def weight_count(module: nn.Module) -> int:
    """The weights (not biases) a layer holds now: in * out, or r * (in + out) for a factorised pair."""
    return sum(p.numel() for name, p in module.named_parameters() if name.rpartition(".")[2] == "weight")


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values hold `energy` of sum(s^2)."""
    share = torch.cumsum(singular_values**2, 0) / (singular_values**2).sum().clamp_min(1e-30)
    return int(torch.searchsorted(share, torch.tensor(energy, dtype=share.dtype)).item()) + 1


def factorise(layer: nn.Module, rank: int) -> nn.Sequential:
    """The rank-`rank` truncated-SVD stand-in of a Linear or 1x1 convolution."""
    w = matrix_of(layer).double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    first, second = (vh[:rank] * root[:, None]).float(), (u[:, :rank] * root[None, :]).float()
    pair = factorized(layer, rank)
    with torch.no_grad():
        pair[0].weight.copy_(first.reshape(pair[0].weight.shape))
        pair[1].weight.copy_(second.reshape(pair[1].weight.shape))
        if layer.bias is not None:
            pair[1].bias.copy_(layer.bias)
    return pair


def candidate_layers(model: MultimodalNet) -> dict[str, nn.Module]:
    """The student's pointwise convolutions. A student's only Linear layers are its classifier and
    its presence map, and neither is a candidate (`factorise` itself takes Linear layers). Not the
    classifier: with ten classes its rank is at most ten, so factorising it saves next to nothing,
    and two layers in its place would break what the export relies on (one linear map over the
    concatenated embeddings: the edge runtime adds up per-modality shares of it, and its bias).
    Not the presence map: one input per modality (rank two at most), a few hundred parameters.
    A pair factorised before (named in the model's `arch`) is one candidate, its product
    (`merged`), and its two factors are none: see the module's docstring."""
    pairs = set(getattr(model, "arch", {}).get("lowrank", {}))
    layers: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if name in pairs and isinstance(m, nn.Sequential):
            layers[name] = merged(m)
        elif is_pointwise(m) and name.rpartition(".")[0] not in pairs:
            layers[name] = m
    return layers


def plan_ranks(model: MultimodalNet, energy: float = 0.95, budget_bytes: int = 0) -> tuple[dict[str, nn.Module], dict[str, torch.Tensor], dict[str, int]]:
    """The pointwise layers, their singular values and the rank each is cut to (layers whose
    factorisation would not save parameters are left out): each keeps `energy` of its spectrum, or,
    with `budget_bytes`, the energy is lowered step by step until the fp32 parameters fit (a
    ValueError when they never do). Reads the model, changes nothing: a recipe's check calls it."""
    if not 0 < energy <= 1:
        raise ValueError(f"lowrank energy must be in (0, 1], got {energy}")
    layers = candidate_layers(model)
    spectra = {name: torch.linalg.svdvals(matrix_of(layer).double()) for name, layer in layers.items()}
    now = {name: weight_count(model.get_submodule(name)) for name in layers}  # a pair: its factors' weights

    def plan(e: float) -> dict[str, int]:
        ranks = {}
        for name, layer in layers.items():
            out_dim, in_dim = matrix_of(layer).shape
            r = rank_for_energy(spectra[name], e)
            if r * (in_dim + out_dim) < now[name]:
                ranks[name] = r
        return ranks

    def size(ranks: dict[str, int]) -> int:
        saved = sum(now[n] - r * sum(matrix_of(layers[n]).shape) for n, r in ranks.items())
        return 4 * (sum(p.numel() for p in model.parameters()) - saved)

    ranks = plan(energy)
    if budget_bytes:
        e = energy
        while size(ranks) > budget_bytes and e > 0.05:
            e -= 0.01
            ranks = plan(e)
        if size(ranks) > budget_bytes:
            raise ValueError(f"low-rank factorisation cannot bring this model to {budget_bytes} bytes (smallest: {size(ranks)})")
    return layers, spectra, ranks


def lowrank_model(model: MultimodalNet, energy: float = 0.95, budget_bytes: int = 0) -> tuple[MultimodalNet, list[Factorisation]]:
    """Factorise the model's pointwise layers (in place) to the ranks `plan_ranks` chooses; a pair
    factorised before is cut to a lower rank in its place, keeping `energy` of its current spectrum.
    Ranks are recorded in the model's `arch` (checkpoints rebuild it)."""
    layers, spectra, ranks = plan_ranks(model, energy, budget_bytes)
    report = []
    for name, layer in layers.items():
        out_dim, in_dim = matrix_of(layer).shape
        rank = ranks.get(name, 0)
        s2 = spectra[name] ** 2
        kept = float(s2[:rank].sum() / s2.sum().clamp_min(1e-30)) if rank else 1.0
        before = weight_count(model.get_submodule(name))
        report.append(Factorisation(name, (out_dim, in_dim), rank, kept, before, rank * (in_dim + out_dim) if rank else before))
        if rank:
            replace_module(model, name, factorise(layer, rank))
    model.arch = {**model.arch, "lowrank": {**model.arch.get("lowrank", {}), **ranks}}
    return model, report
