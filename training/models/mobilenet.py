"""MobileNetV2 (Sandler et al., 2018) sized for 32x32 images: a lightweight CNN.

The two ideas: a depthwise-separable convolution (a 3x3 depthwise conv, one filter per channel, then
a 1x1 pointwise conv) costs ~1/9 of a full 3x3 conv's multiply-adds; and the inverted residual block
widens a thin input by ``expansion`` with a 1x1 conv, filters it depthwise in that wide space, then
projects it back to a thin output with a *linear* 1x1 conv (no activation: ReLU on a thin bottleneck
destroys information, the paper's section 3.2), with the skip connection between the thin ends.
The width multiplier scales every layer's channels (rounded to multiples of 8, as in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from training.graphs import GraphExport
from training.layers import (
    ConvNormAct,
    check_activation,
    check_positive_int,
    check_probability,
)
from training.registry import register_model


def _int_rows(field: str, value: object) -> tuple[tuple[int, int, int, int], ...]:
    """``blocks`` as a tuple of (expansion, channels, repeats, stride) rows of positive ints."""
    try:
        rows = tuple(tuple(row) for row in value)  # JSON hands back lists of lists
    except TypeError:
        raise ValueError(f"{field} must be rows of (expansion, channels, repeats, stride); got {value!r}") from None
    if not rows or any(len(row) != 4 for row in rows):
        raise ValueError(f"{field} must be rows of (expansion, channels, repeats, stride); got {value!r}")
    for row in rows:
        for entry in row:
            check_positive_int(f"{field} entries", entry)
        if row[3] not in (1, 2):
            raise ValueError(f"{field}: a stride must be 1 or 2; got {row[3]} in {row}")
    return rows


def make_divisible(channels: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor``, never more than 10% below (the paper's rounding)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


@dataclass
class MobileNetV2Config:
    in_channels: int = 3
    image_size: int = 32  # the net is size-agnostic (global pool); this is the size it serves at
    num_classes: int = 6
    width_multiplier: float = 1.0  # the paper's alpha: scales every layer's channels
    stem_width: int = 16  # channels of the first (full) 3x3 conv
    # (expansion t, output channels c, repeats n, stride s of the first repeat): the paper's table 2
    # at half its widths, cut to four stages for 32x32 inputs (32 -> 16 -> 8 -> 4). Measured on the
    # shapes task: 0.985 test accuracy with 51k parameters and 4.2M multiply-adds per image, against
    # 0.98 for the default ResNet-8 (78k, 12.5M). The paper's widths for these stages (16, 24, 32,
    # 64; head 256) would cost 133k parameters and 9.2M multiply-adds.
    blocks: tuple[tuple[int, int, int, int], ...] = ((1, 8, 1, 1), (6, 16, 2, 2), (6, 24, 2, 2), (6, 32, 2, 2))
    head_width: int = 128  # the last 1x1 conv before the pool (the paper's 1280, for 224x224 ImageNet)
    dropout: float = 0.2  # before the classifier, as in the paper
    activation: str = "relu6"

    def __post_init__(self) -> None:
        for name in ("in_channels", "image_size", "num_classes", "stem_width", "head_width"):
            check_positive_int(name, getattr(self, name))
        wm = self.width_multiplier
        if isinstance(wm, bool) or not isinstance(wm, int | float) or not 0 < wm <= 4:
            raise ValueError(f"width_multiplier must be a number in (0, 4]; got {wm!r}")
        self.blocks = _int_rows("blocks", self.blocks)
        check_probability("dropout", self.dropout)
        check_activation("activation", self.activation)

    def width(self, channels: int) -> int:
        return make_divisible(channels * self.width_multiplier)


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise (stride) -> 1x1 linear projection, plus the identity where shapes allow."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, expansion: int, activation: str
    ) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:  # t = 1 (the first block) has nothing to expand
            layers.append(ConvNormAct(in_channels, hidden, 1, activation=activation))
        layers += [
            ConvNormAct(hidden, hidden, 3, stride, groups=hidden, activation=activation),  # depthwise
            ConvNormAct(hidden, out_channels, 1, activation=None),  # linear bottleneck
        ]
        self.block = nn.Sequential(*layers)
        # Fixed at construction: one static path in the export.
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)  # (B, out_channels, H / stride, W / stride)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    def __init__(self, config: MobileNetV2Config) -> None:
        super().__init__()
        self.config = config
        act = config.activation
        channels = config.width(config.stem_width)
        self.stem = ConvNormAct(config.in_channels, channels, 3, activation=act)  # stride 1 for 32x32
        blocks: list[nn.Module] = []
        for expansion, width, repeats, stride in config.blocks:
            out = config.width(width)
            for i in range(repeats):
                blocks.append(InvertedResidual(channels, out, stride if i == 0 else 1, expansion, act))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        # The paper does not shrink the last conv below its width for alpha < 1 (it carries the features).
        head = config.width(config.head_width) if config.width_multiplier > 1 else config.head_width
        self.head_conv = ConvNormAct(channels, head, 1, activation=act)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(head, config.num_classes)
        for module in self.modules():  # the paper's (torchvision's) initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)  # (B, w0, H, W)
        x = self.blocks(x)  # (B, w_last, H / 8, W / 8) with the default blocks
        x = self.pool(self.head_conv(x)).flatten(1)  # (B, head)
        return self.classifier(self.dropout(x))  # (B, num_classes)

    def graphs(self) -> list[GraphExport]:
        size = self.config.image_size
        example = torch.randn(4, self.config.in_channels, size, size)  # (B, C, H, W)
        return [GraphExport("model", self, {"input": example}, ["logits"], {"input": {0: "batch"}})]


@register_model("mobilenetv2", config=MobileNetV2Config, family="mobilenet")
def mobilenetv2(**overrides) -> MobileNetV2:
    return MobileNetV2(MobileNetV2Config(**overrides))
