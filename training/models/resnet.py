"""CIFAR-style ResNet (He et al., 2015, section 4.2): depth 6n + 2 with three stages of BasicBlocks.

``residual=False`` builds the same network with the skip connections removed (the paper's "plain"
baseline), to show what they buy as depth grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from training.graphs import GraphExport
from training.layers import (
    ConvNormAct,
    check_activation,
    check_bool,
    check_positive_int,
    int_tuple,
    make_activation,
)
from training.registry import register_model


@dataclass
class ResNetConfig:
    in_channels: int = 3
    # The net itself is size-agnostic (global average pool); this is the size it is trained, exported
    # and served at, so the repository entry can state it.
    image_size: int = 32
    num_classes: int = 6
    stage_widths: tuple[int, ...] = (
        16,
        32,
        64,
    )  # the paper's CIFAR widths; each stage after the first halves H, W
    blocks_per_stage: tuple[int, ...] = (2, 2, 2)  # n = 2 -> ResNet-14 (depth 6n + 2)
    residual: bool = True  # False drops every skip connection: the "plain" net of the paper
    activation: str = "relu"

    def __post_init__(self) -> None:
        check_positive_int("in_channels", self.in_channels)
        check_positive_int("image_size", self.image_size)
        check_positive_int("num_classes", self.num_classes)
        self.stage_widths = int_tuple("stage_widths", self.stage_widths)
        self.blocks_per_stage = int_tuple("blocks_per_stage", self.blocks_per_stage)
        if len(self.stage_widths) != len(self.blocks_per_stage):
            raise ValueError(
                f"stage_widths {self.stage_widths} and blocks_per_stage {self.blocks_per_stage} "
                "must have the same length (one entry per stage)"
            )
        check_bool("residual", self.residual)
        check_activation("activation", self.activation)


class BasicBlock(nn.Module):
    """conv3x3-BN-act -> conv3x3-BN, plus the shortcut, then act.

    The shortcut is the identity, or a 1x1 conv + BN projection where the block changes width or
    stride (the paper's option B). With ``residual=False`` there is no shortcut at all.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, residual: bool, activation: str
    ) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels, 3, stride, activation=activation)
        self.conv2 = ConvNormAct(out_channels, out_channels, 3, activation=None)  # act comes after the add
        self.shortcut: nn.Module | None = None
        if residual and (stride != 1 or in_channels != out_channels):
            self.shortcut = ConvNormAct(in_channels, out_channels, 1, stride, padding=0, activation=None)
        elif residual:
            self.shortcut = nn.Identity()
        self.act = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.conv1(x))  # (B, out_channels, H / stride, W / stride)
        if self.shortcut is not None:  # fixed at construction: one static path in the export
            out = out + self.shortcut(x)
        return self.act(out)


class ResNet(nn.Module):
    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.stage_widths
        # CIFAR stem: a single 3x3 conv; small images cannot afford ImageNet's 7x7/2 + max-pool.
        self.stem = ConvNormAct(config.in_channels, widths[0], 3, activation=config.activation)
        blocks: list[nn.Module] = []
        in_channels = widths[0]
        for stage, (width, n_blocks) in enumerate(zip(widths, config.blocks_per_stage, strict=True)):
            for i in range(n_blocks):
                stride = 2 if stage > 0 and i == 0 else 1  # downsample on entering stages 2, 3, ...
                blocks.append(BasicBlock(in_channels, width, stride, config.residual, config.activation))
                in_channels = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)  # global average pool: any input size works
        self.head = nn.Linear(widths[-1], config.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)  # (B, w0, H, W)
        x = self.blocks(x)  # (B, w_last, H / 2^(stages-1), W / 2^(stages-1))
        x = self.pool(x).flatten(1)  # (B, w_last)
        return self.head(x)  # (B, num_classes)

    def graphs(self) -> list[GraphExport]:
        size = self.config.image_size
        example = torch.randn(4, self.config.in_channels, size, size)  # (B, C, H, W)
        return [GraphExport("model", self, {"input": example}, ["logits"], {"input": {0: "batch"}})]


@register_model("resnet", config=ResNetConfig, family="resnet")
def resnet(**overrides) -> ResNet:
    return ResNet(ResNetConfig(**overrides))


@register_model("resnet8", config=ResNetConfig, family="resnet")
def resnet8(**overrides) -> ResNet:
    return ResNet(ResNetConfig(**{"blocks_per_stage": (1, 1, 1), **overrides}))


@register_model("resnet14", config=ResNetConfig, family="resnet")
def resnet14(**overrides) -> ResNet:
    return ResNet(ResNetConfig(**{"blocks_per_stage": (2, 2, 2), **overrides}))


@register_model("resnet20", config=ResNetConfig, family="resnet")
def resnet20(**overrides) -> ResNet:
    return ResNet(ResNetConfig(**{"blocks_per_stage": (3, 3, 3), **overrides}))
