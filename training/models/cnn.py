"""Classic convnets: LeNet-5 (LeCun et al., 1998) and a small-image AlexNet (Krizhevsky et al., 2012)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from training.graphs import GraphExport
from training.layers import (
    ConvNormAct,
    check_activation,
    check_bool,
    check_choice,
    check_positive_int,
    check_probability,
    conv_output_size,
    int_tuple,
    make_activation,
)
from training.registry import register_model


def _classifier_graphs(model: nn.Module, in_channels: int, image_size: int) -> list[GraphExport]:
    example = torch.randn(4, in_channels, image_size, image_size)  # (B, C, H, W)
    return [GraphExport("model", model, {"input": example}, ["logits"], {"input": {0: "batch"}})]


# --------------------------------------------------------------------------------------------------
# LeNet-5


@dataclass
class LeNet5Config:
    in_channels: int = 1
    image_size: int = 28  # MNIST-sized; the paper padded 28x28 digits to 32x32
    num_classes: int = 10
    activation: str = "tanh"  # the paper's squashing function (a scaled tanh)
    pooling: str = "avg"  # "avg" ~ the paper's subsampling layers; "max" is the modern choice
    # Padding of C1 only: "same" on 28x28 gives C1 28x28 maps, exactly what the paper's 32x32 input
    # gave, so C3/S4 keep the paper's 10x10/5x5 geometry and F5 sees 16*5*5 = 400 inputs.
    padding: str = "same"
    conv_stride: int = 1  # stride of both convolutions; > 1 shrinks maps faster (and can make them vanish)
    dropout: float = 0.0  # the 1998 net had none; available for the FC layers

    def __post_init__(self) -> None:
        check_positive_int("in_channels", self.in_channels)
        check_positive_int("image_size", self.image_size)
        check_positive_int("num_classes", self.num_classes)
        check_activation("activation", self.activation)
        check_choice("pooling", self.pooling, ("avg", "max"))
        check_choice("padding", self.padding, ("valid", "same"))
        check_positive_int("conv_stride", self.conv_stride)
        check_probability("dropout", self.dropout)
        if self.feature_size() < 1:
            raise ValueError(
                f"image_size={self.image_size} with padding={self.padding!r} and "
                f"conv_stride={self.conv_stride} leaves no spatial extent after S4; "
                "use a larger image_size, padding='same' or conv_stride=1"
            )

    def feature_size(self) -> int:
        """Side of the S4 feature maps (16 of them), by the conv/pool arithmetic."""
        c1 = conv_output_size(self.image_size, 5, self.conv_stride, 2 if self.padding == "same" else 0)
        s2 = conv_output_size(c1, 2, 2) if c1 >= 2 else 0
        c3 = conv_output_size(s2, 5, self.conv_stride) if s2 >= 5 else 0
        return conv_output_size(c3, 2, 2) if c3 >= 2 else 0


class LeNet5(nn.Module):
    """C1 conv 5x5 -> 6, S2 pool, C3 conv 5x5 -> 16, S4 pool, F5 120, F6 84, head.

    The paper's sparse C3 connection table and RBF output layer are replaced by a full conv and a
    linear head, as in every modern reproduction.
    """

    def __init__(self, config: LeNet5Config) -> None:
        super().__init__()
        self.config = config
        pool = nn.AvgPool2d if config.pooling == "avg" else nn.MaxPool2d
        c1_padding = 2 if config.padding == "same" else 0
        self.c1 = nn.Conv2d(config.in_channels, 6, 5, stride=config.conv_stride, padding=c1_padding)
        self.s2 = pool(2, 2)
        self.c3 = nn.Conv2d(6, 16, 5, stride=config.conv_stride)
        self.s4 = pool(2, 2)
        side = config.feature_size()
        self.feature_shape = (16, side, side)  # (C, H, W) after S4
        self.f5 = nn.Linear(16 * side * side, 120)
        self.f6 = nn.Linear(120, 84)
        self.head = nn.Linear(84, config.num_classes)
        self.act = make_activation(config.activation)  # stateless, shared by every layer
        self.dropout = nn.Dropout(config.dropout)

    def features(self, x: Tensor) -> Tensor:
        x = self.s2(self.act(self.c1(x)))  # (B, 6, 14, 14) for 28x28 "same"
        return self.s4(self.act(self.c3(x)))  # (B, 16, 5, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x).flatten(1)  # (B, 16 * 5 * 5)
        x = self.dropout(self.act(self.f5(x)))  # (B, 120)
        x = self.dropout(self.act(self.f6(x)))  # (B, 84)
        return self.head(x)  # (B, num_classes)

    def graphs(self) -> list[GraphExport]:
        return _classifier_graphs(self, self.config.in_channels, self.config.image_size)


@register_model("lenet5", config=LeNet5Config, family="cnn")
def lenet5(**overrides) -> LeNet5:
    return LeNet5(LeNet5Config(**overrides))


@register_model("lenet5-relu", config=LeNet5Config, family="cnn")
def lenet5_relu(**overrides) -> LeNet5:
    return LeNet5(LeNet5Config(**{"activation": "relu", "pooling": "max", **overrides}))


# --------------------------------------------------------------------------------------------------
# AlexNet, scaled to 32x32


@dataclass
class AlexNetConfig:
    in_channels: int = 3
    image_size: int = 32  # CIFAR-sized; the original took 224x224
    num_classes: int = 6
    # Channels of the five convs (original: 96, 256, 384, 384, 256); small enough that an epoch of
    # ~6000 32x32 images takes seconds on a 2-core CPU.
    widths: tuple[int, ...] = (32, 64, 96, 96, 64)
    fc_hidden: int = 256  # the original's 4096, scaled with the widths
    dropout: float = 0.5  # as in the paper: dropout before each hidden FC layer
    activation: str = "relu"  # AlexNet's headline: ReLU trains several times faster than tanh
    # Batch norm after each conv stands in for the paper's local response normalisation. Without it
    # this stack sat at chance (loss ln 6) for 7 epochs on the shapes task at lr 2e-3 (measured).
    batch_norm: bool = True

    def __post_init__(self) -> None:
        check_positive_int("in_channels", self.in_channels)
        check_positive_int("image_size", self.image_size)
        check_positive_int("num_classes", self.num_classes)
        check_bool("batch_norm", self.batch_norm)
        self.widths = int_tuple("widths", self.widths)
        if len(self.widths) != 5:
            raise ValueError(f"widths must have 5 entries (one per conv layer); got {self.widths!r}")
        check_positive_int("fc_hidden", self.fc_hidden)
        check_probability("dropout", self.dropout)
        check_activation("activation", self.activation)
        if self.feature_size() < 1:
            raise ValueError(
                f"image_size must be at least 15 for AlexNet's three pools; got {self.image_size}"
            )

    def feature_size(self) -> int:
        """Side of the last feature maps: the convs keep the size; each 3/2 max-pool roughly halves it."""
        side = self.image_size
        for _ in range(3):
            side = conv_output_size(side, 3, 2) if side >= 3 else 0
        return side


class AlexNet(nn.Module):
    """conv5x5 -> pool -> conv5x5 -> pool -> conv3x3 x3 -> pool -> (dropout, FC) x2 -> head.

    Kept from the paper: ReLU, overlapping max-pooling (kernel 3, stride 2), dropout in the
    classifier. Replaced: local response normalisation by batch norm (switchable). Dropped: the
    two-GPU split, and the 11x11 stride-4 first conv (meant for 224x224 inputs).
    """

    def __init__(self, config: AlexNetConfig) -> None:
        super().__init__()
        self.config = config
        w1, w2, w3, w4, w5 = config.widths
        act = config.activation
        self.conv1 = ConvNormAct(config.in_channels, w1, 5, norm=config.batch_norm, activation=act)
        self.conv2 = ConvNormAct(w1, w2, 5, norm=config.batch_norm, activation=act)
        self.conv3 = ConvNormAct(w2, w3, 3, norm=config.batch_norm, activation=act)
        self.conv4 = ConvNormAct(w3, w4, 3, norm=config.batch_norm, activation=act)
        self.conv5 = ConvNormAct(w4, w5, 3, norm=config.batch_norm, activation=act)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2)  # overlapping: kernel > stride
        side = config.feature_size()
        self.feature_shape = (w5, side, side)  # (C, H, W) after the last pool
        self.dropout = nn.Dropout(config.dropout)
        self.fc1 = nn.Linear(w5 * side * side, config.fc_hidden)
        self.fc2 = nn.Linear(config.fc_hidden, config.fc_hidden)
        self.act = make_activation(act)
        self.head = nn.Linear(config.fc_hidden, config.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.conv1(x))  # (B, w1, 15, 15) for 32x32
        x = self.pool(self.conv2(x))  # (B, w2, 7, 7)
        x = self.conv5(self.conv4(self.conv3(x)))  # (B, w5, 7, 7)
        x = self.pool(x).flatten(1)  # (B, w5 * 3 * 3)
        x = self.act(self.fc1(self.dropout(x)))  # (B, fc_hidden)
        x = self.act(self.fc2(self.dropout(x)))  # (B, fc_hidden)
        return self.head(x)  # (B, num_classes)

    def graphs(self) -> list[GraphExport]:
        return _classifier_graphs(self, self.config.in_channels, self.config.image_size)


@register_model("alexnet", config=AlexNetConfig, family="cnn")
def alexnet(**overrides) -> AlexNet:
    return AlexNet(AlexNetConfig(**overrides))
