"""Per-modality encoders. Each maps a (B, C, H, W) input to a feature map (`forward_features`)
and the feature map to an embedding (`forward_head`), so hooks, attention transfer and heads
attach the same way to every encoder."""

from __future__ import annotations

import torch
from torch import nn

from racmkd.registry import MODELS


def conv_bn_relu(c_in: int, c_out: int, kernel: int | tuple[int, int] = 3, stride: int | tuple[int, int] = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias, 'same' padding) -> BatchNorm -> ReLU."""
    padding = tuple(k // 2 for k in kernel) if isinstance(kernel, tuple) else kernel // 2
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


SMALLEST_SIDE = 4  # encoders halve a map (or a sequence's length) until it is this small


def is_sequence(h: int, w: int, stop: int = SMALLEST_SIDE) -> bool:
    """Whether a (h, w) input is a sequence laid out along its width (a sensor's time series: 1 x steps,
    or a few statistics x windows) rather than a map: its height is already `stop` or below, so the
    encoders halve its width alone, as long as it is longer than `stop`. Judged by the shorter side,
    a 1 x 32 trajectory got no stage at all (a lone 3x3 convolution, two thirds of it on padding)."""
    return h <= stop < w


def sequence_layout(h: int, w: int) -> tuple[int, tuple[int, int], tuple[int, int]]:
    """The side whose halvings set an encoder's stages, its kernel and a stride of 2: for a sequence
    its length and strides along it, for a map its shorter side and 2 x 2; kernels 3 wide, but 1
    along a side of 1 (a 3x3 kernel on a single row spends two thirds of its weights on padding).
    An input too small to halve at all (a pen's 4 windows) gets a stride of 1: its student's stage
    keeps its size (`default_plan` gives such an input one stage)."""
    kernel = (1 if h == 1 else 3, 1 if w == 1 else 3)
    if is_sequence(h, w):
        return w, kernel, (1, 2)
    return min(h, w), kernel, (2, 2) if downsamplings(min(h, w)) else (1, 1)


def downsamplings(size: int, stop: int = SMALLEST_SIDE) -> int:
    """How many halvings take a side of `size` to `stop` or below (3 for 24 -> 3, 3 for 32 -> 4)."""
    count = 0
    while size > stop:
        size //= 2
        count += 1
    return count


def _out_channels(block: nn.Sequential) -> int:
    """Output channels of a conv-BN-ReLU block, whose convolution may be factorised (a Sequential)."""
    conv = block[0][-1] if isinstance(block[0], nn.Sequential) else block[0]
    return conv.out_channels


@MODELS.register("cnn2d")
class CNN2dEncoder(nn.Module):
    """Teacher encoder: input BatchNorm without affine terms (standardisation from running statistics; a learned scale would be cancelled by the next BatchNorm), then stages of `depth` conv-BN-ReLU
    layers separated by max pooling (along its length alone for a sequence, `is_sequence`), channels
    doubling up to 4x `width`, global average pooling and a linear embedding."""

    def __init__(self, in_shape: tuple[int, int, int], width: int = 32, embed_dim: int = 128, depth: int = 1) -> None:
        super().__init__()
        c, h, w = in_shape
        size, kernel, halve = sequence_layout(h, w)
        layers: list[nn.Module] = [nn.BatchNorm2d(c, affine=False), conv_bn_relu(c, width, kernel)] + [
            conv_bn_relu(width, width, kernel) for _ in range(depth - 1)
        ]
        channels = width
        for _ in range(downsamplings(size)):
            nxt = min(channels * 2, width * 4)
            layers += [nn.MaxPool2d(halve), conv_bn_relu(channels, nxt, kernel)] + [conv_bn_relu(nxt, nxt, kernel) for _ in range(depth - 1)]
            channels = nxt
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, embed_dim), nn.ReLU(inplace=True))

    @property
    def embed_dim(self) -> int:
        """Width of the embedding."""
        return self.head[2].out_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, C', H', W')

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.head(fmap)  # (B, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class PooledEncoder(nn.Module):
    """An encoder whose embedding is its last feature map, globally pooled: `body` then `pool`."""

    body: nn.Sequential
    pool: nn.Sequential

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.pool(fmap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@MODELS.register("dscnn2d")
class DSCNN2dEncoder(PooledEncoder):
    """Student encoder: input standardisation (BatchNorm without affine terms), a 3x3 stem (stride 2 on inputs 16 wide or more, as in
    MobileNet: full-resolution maps dominate time and memory), then stages of depthwise-separable
    blocks (3x3 depthwise + 1x1 pointwise; the first of a stage has stride 2, the `depth - 1`
    others stride 1, as in DS-CNN keyword spotters) until the map is 4 wide or less (a sequence,
    `is_sequence`: its length alone is halved, by 1x3 kernels on a single row); channels
    `base * width` doubling up to 8x, each rounded to a multiple of `multiple` when it is above 1
    (MobileNet's make_divisible, layer by layer: CPU convolution kernels are vectorised over channel
    blocks; ONNX Runtime ran a high-tier student, fp32, batch 1, one thread, in 0.32 ms with 64/128/248
    channels and 0.88-0.91 ms with 63/126/252, for 0.5% fewer parameters; its training step at batch
    128 was about 5% faster on 2 threads and alike on one; measured on an AMD EPYC). The embedding is
    the pooled last map: no projection to pay for.

    `channels` (the output channels of the stem and of every pointwise convolution, in order) and
    `stem_stride`, `kernel` and `halve` (the stride of a halving) pin the layer plan instead of deriving it from `in_shape` and `width`: pruning
    changes channels, and an input reduced after training keeps the plan it was trained with."""

    base_channels = 8

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        width: float = 1.0,
        depth: int = 1,
        channels: list[int] | tuple[int, ...] | None = None,
        stem_stride: int = 0,
        multiple: int = 1,
        kernel: list[int] | tuple[int, ...] = (),
        halve: list[int] | tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        c, h, w = in_shape
        size, derived_kernel, derived_halve = sequence_layout(h, w)
        if channels and not kernel:  # a plan pinned before kernels and strides were: square ones, as then
            derived_kernel, derived_halve = (3, 3), (2, 2)
        # Pinned, an input reduced after training keeps the kernels and strides it was trained with
        # (a 1x3 kernel striding 2 rows of a reduced input would skip its second row).
        kernel, halve = tuple(kernel) or derived_kernel, tuple(halve) or derived_halve
        stride = stem_stride or (2 if size >= 16 else 1)
        plan = list(channels) if channels else self.default_plan(size // stride, width, depth, multiple)
        if (len(plan) - 1) % depth:
            raise ValueError(f"dscnn2d: a plan of {len(plan)} channel counts does not split into a stem and stages of {depth} blocks")
        layers: list[nn.Module] = [nn.BatchNorm2d(c, affine=False), conv_bn_relu(c, plan[0], kernel, stride=halve if stride == 2 else 1)]
        channels_in = plan[0]
        for i, out in enumerate(plan[1:]):
            first_of_stage = i % depth == 0
            layers += [
                conv_bn_relu(channels_in, channels_in, kernel, stride=halve if first_of_stage else 1, groups=channels_in),
                conv_bn_relu(channels_in, out, kernel=1),
            ]
            channels_in = out
        self.body = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.depth, self.stem_stride, self.kernel, self.halve = depth, stride, kernel, halve

    @property
    def embed_dim(self) -> int:
        """Width of the embedding: the last layer's channels (read off it, so pruning keeps it right)."""
        return _out_channels(self.body[-1])

    @classmethod
    def default_plan(cls, size: int, width: float, depth: int, multiple: int = 1) -> list[int]:
        """Stem channels, then `depth` pointwise outputs per stage until a side of `size` is 4 or less,
        and one stage at least (an input already that small, a pen's 4 windows, kept its stem alone:
        2,570 parameters at any depth and width of a 64 KB tier); with `multiple` > 1 every layer's
        channel count is rounded to a multiple of it on its own."""
        stages = max(1, downsamplings(size))
        if multiple > 1:
            raw = cls.base_channels * width
            return [make_divisible(raw, multiple)] + [make_divisible(raw * 2 ** min(k, 3), multiple) for k in range(1, stages + 1) for _ in range(depth)]
        stem = max(2, round(cls.base_channels * width))
        plan, channels = [stem], stem
        for _ in range(stages):
            channels = min(channels * 2, stem * 8)
            plan += [channels] * depth
        return plan

    def _dense_blocks(self) -> list[nn.Sequential]:
        """The stem and pointwise conv-BN-ReLU blocks, in order: the layers whose output channels make
        the plan (each depthwise convolution follows the channels of the layer before it)."""
        blocks = [b for b in self.body if isinstance(b, nn.Sequential)]  # conv-BN-ReLU: stem, then (depthwise, pointwise) pairs
        return [blocks[0], *blocks[2::2]]

    def dense_convs(self) -> list[nn.Module]:
        """The stem and pointwise convolutions (a Sequential where lowrank factorised one), in order."""
        return [b[0] for b in self._dense_blocks()]

    def structure(self) -> dict[str, object]:
        """The layer plan of this encoder as it is now (after pruning, say): rebuilds it exactly."""
        return {
            "channels": [_out_channels(b) for b in self._dense_blocks()],
            "stem_stride": self.stem_stride,
            "kernel": list(self.kernel),
            "halve": list(self.halve),
        }


def make_divisible(value: float, divisor: int = 4) -> int:
    """`value` rounded to a multiple of `divisor` (at least `divisor`), never more than 10% below it (MobileNet's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al. 2018) as in MobileNetV3: pool, squeeze to a quarter, ReLU, expand, hard-sigmoid gate."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeezed = make_divisible(channels / 4)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, squeezed, 1), nn.ReLU(inplace=True), nn.Conv2d(squeezed, channels, 1), nn.Hardsigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 block: 1x1 expansion, depthwise k x k (with stride), optional squeeze-excite,
    1x1 linear projection; a residual connection when shape allows."""

    def __init__(self, c_in: int, expanded: int, c_out: int, kernel: int, stride: int, squeeze: bool, hard_swish: bool) -> None:
        super().__init__()
        act = nn.Hardswish if hard_swish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers += [nn.Conv2d(c_in, expanded, 1, bias=False), nn.BatchNorm2d(expanded), act()]
        layers += [nn.Conv2d(expanded, expanded, kernel, stride, kernel // 2, groups=expanded, bias=False), nn.BatchNorm2d(expanded), act()]
        if squeeze:
            layers.append(SqueezeExcite(expanded))
        layers += [nn.Conv2d(expanded, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


@MODELS.register("mbv3")
class MobileNetV3SmallEncoder(PooledEncoder):
    """A MobileNetV3-Small-style encoder (Howard et al. 2019), the benchmark's architecture baseline:
    a stride-2 3x3 hard-swish stem, the paper's eleven inverted-residual blocks (kernel, expansion,
    output, squeeze-excite, activation, stride), a 1x1 hard-swish head convolution and global
    pooling. Channels scale with `width`; a stride-2 block keeps stride 1 once the map is 4 wide or
    less, so 8x8 to 64x64 inputs all work."""

    # (kernel, expanded, out, squeeze-excite, hard-swish, stride): Table 2 of the MobileNetV3 paper.
    blocks = (
        (3, 16, 16, True, False, 2),
        (3, 72, 24, False, False, 2),
        (3, 88, 24, False, False, 1),
        (5, 96, 40, True, True, 2),
        (5, 240, 40, True, True, 1),
        (5, 240, 40, True, True, 1),
        (5, 120, 48, True, True, 1),
        (5, 144, 48, True, True, 1),
        (5, 288, 96, True, True, 2),
        (5, 576, 96, True, True, 1),
        (5, 576, 96, True, True, 1),
    )

    def __init__(self, in_shape: tuple[int, int, int], width: float = 1.0) -> None:
        super().__init__()
        c, h, w = in_shape
        size = min(h, w)
        stem = make_divisible(16 * width)
        layers: list[nn.Module] = [
            nn.BatchNorm2d(c, affine=False),
            nn.Conv2d(c, stem, 3, 2 if size > 4 else 1, 1, bias=False),
            nn.BatchNorm2d(stem),
            nn.Hardswish(),
        ]
        size = -(-size // 2) if size > 4 else size
        channels = stem
        for kernel, expanded, out, squeeze, hard_swish, stride in self.blocks:
            stride = stride if size > 4 else 1
            size = -(-size // stride)
            out_c = make_divisible(out * width)
            layers.append(InvertedResidual(channels, make_divisible(expanded * width), out_c, kernel, stride, squeeze, hard_swish))
            channels = out_c
        head = make_divisible(576 * width)
        layers += [nn.Conv2d(channels, head, 1, bias=False), nn.BatchNorm2d(head), nn.Hardswish()]
        self.body = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self._embed_dim = head

    @property
    def embed_dim(self) -> int:
        """Width of the embedding: the head convolution's channels."""
        return self._embed_dim
