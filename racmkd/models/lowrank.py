"""Low-rank factorised layers: a linear map W (out x in) replaced by two thinner ones, U (out x r)
after V (r x in), which costs r * (in + out) weights instead of in * out.

Only the structure lives here, so that a checkpoint of a factorised model rebuilds (`build` in
racmkd.models.multimodal applies the recorded ranks); choosing the rank and filling U and V from a
truncated SVD is compression's job (racmkd.compress.lowrank).
"""

from __future__ import annotations

from torch import nn


def factorized(layer: nn.Module, rank: int) -> nn.Sequential:
    """A freshly initialised two-layer stand-in of the same shape for a Linear or a 1x1 Conv2d:
    the first maps to `rank` features without bias, the second back, with the original's bias."""
    if isinstance(layer, nn.Linear):
        return nn.Sequential(nn.Linear(layer.in_features, rank, bias=False), nn.Linear(rank, layer.out_features, bias=layer.bias is not None))
    if is_pointwise(layer):
        return nn.Sequential(nn.Conv2d(layer.in_channels, rank, 1, bias=False), nn.Conv2d(rank, layer.out_channels, 1, bias=layer.bias is not None))
    raise TypeError(f"only Linear and 1x1 Conv2d layers (groups 1, stride 1) can be factorised, not {layer}")


def is_pointwise(layer: nn.Module) -> bool:
    """A 1x1 convolution that mixes channels only: a matrix product at every pixel."""
    return isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) and layer.groups == 1 and layer.stride == (1, 1) and layer.padding in ((0, 0), "valid")


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put `new` where the submodule at dotted `path` is."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


def factorize_layers(model: nn.Module, ranks: dict[str, int]) -> nn.Module:
    """Replace each layer named in `ranks` by its factorised stand-in of that rank (in place)."""
    for path, rank in ranks.items():
        try:
            layer = model.get_submodule(path)
        except AttributeError:
            raise ValueError(f"low-rank structure names {path!r}, which this model does not have") from None
        replace_module(model, path, factorized(layer, int(rank)))
    return model
