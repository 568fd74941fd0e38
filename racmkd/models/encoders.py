"""Per-modality encoders. Each maps a (B, C, H, W) input to a feature map (`forward_features`)
and the feature map to an embedding (`forward_head`), so hooks, attention transfer and heads
attach the same way to every encoder."""

from __future__ import annotations

import torch
from torch import nn

from racmkd.registry import MODELS


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def downsamplings(size: int, stop: int = 4) -> int:
    """How many halvings take a side of `size` to `stop` or below (3 for 24 -> 3, 3 for 32 -> 4)."""
    count = 0
    while size > stop:
        size //= 2
        count += 1
    return count


@MODELS.register("cnn2d")
class CNN2dEncoder(nn.Module):
    """Teacher encoder: input BatchNorm without affine terms (standardisation from running statistics; a learned scale would be cancelled by the next BatchNorm), then stages of `depth` conv-BN-ReLU
    layers separated by max pooling, channels doubling up to 4x `width`, global average pooling and
    a linear embedding."""

    def __init__(self, in_shape: tuple[int, int, int], width: int = 32, embed_dim: int = 128, depth: int = 1) -> None:
        super().__init__()
        c, h, w = in_shape
        layers: list[nn.Module] = [nn.BatchNorm2d(c, affine=False), conv_bn_relu(c, width)] + [conv_bn_relu(width, width) for _ in range(depth - 1)]
        channels = width
        for _ in range(downsamplings(min(h, w))):
            nxt = min(channels * 2, width * 4)
            layers += [nn.MaxPool2d(2), conv_bn_relu(channels, nxt)] + [conv_bn_relu(nxt, nxt) for _ in range(depth - 1)]
            channels = nxt
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, embed_dim), nn.ReLU(inplace=True))
        self.embed_dim = embed_dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, C', H', W')

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.head(fmap)  # (B, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@MODELS.register("dscnn2d")
class DSCNN2dEncoder(nn.Module):
    """Student encoder: input standardisation (BatchNorm without affine terms), a 3x3 stem (stride 2 on inputs 16 wide or more, as in
    MobileNet: full-resolution maps dominate time and memory), then stages of depthwise-separable
    blocks (3x3 depthwise + 1x1 pointwise; the first of a stage has stride 2, the `depth - 1`
    others stride 1, as in DS-CNN keyword spotters) until the map is 4 wide or less; channels
    `base * width` doubling up to 8x. The embedding is the pooled last map: no projection to pay for."""

    base_channels = 8

    def __init__(self, in_shape: tuple[int, int, int], width: float = 1.0, depth: int = 1) -> None:
        super().__init__()
        c, h, w = in_shape
        stem = max(2, round(self.base_channels * width))
        stride = 2 if min(h, w) >= 16 else 1
        layers: list[nn.Module] = [nn.BatchNorm2d(c, affine=False), conv_bn_relu(c, stem, stride=stride)]
        channels = stem
        for _ in range(downsamplings(min(h, w) // stride)):
            nxt = min(channels * 2, stem * 8)
            layers += [conv_bn_relu(channels, channels, stride=2, groups=channels), conv_bn_relu(channels, nxt, kernel=1)]
            for _ in range(depth - 1):
                layers += [conv_bn_relu(nxt, nxt, groups=nxt), conv_bn_relu(nxt, nxt, kernel=1)]
            channels = nxt
        self.body = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed_dim = channels

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.pool(fmap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
