"""Multi-layer perceptron: the baseline classifier, and the lab for vanishing gradients.

A deep stack such as ``hidden_sizes=(64,) * 20`` shows the classic picture: with sigmoid the gradient
norms of the first layers collapse; relu helps; relu + batch norm + residual trains end to end.
PyTorch's default init is kept on purpose so that the picture is the textbook one.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor, nn

from training.graphs import GraphExport
from training.layers import (
    check_activation,
    check_bool,
    check_choice,
    check_positive_int,
    check_probability,
    int_tuple,
    make_activation,
)
from training.registry import register_model


INITS = ("default", "he", "xavier")


@dataclass
class MLPConfig:
    in_features: int = 64  # scikit-learn's bundled digits are 8x8 = 64 pixels
    num_classes: int = 10
    hidden_sizes: tuple[int, ...] = (256, 128)  # () gives multinomial logistic regression
    activation: str = "relu"
    dropout: float = 0.1  # light regularisation; 64-d digits overfit quickly
    batch_norm: bool = False  # off by default so the plain deep-MLP behaviour can be observed
    residual: bool = False  # adds each block's input to its output where the widths match
    # "default" keeps PyTorch's nn.Linear init (weight variance 1/(3 fan_in)), under which even a deep
    # relu stack loses gradient; "he" (variance 2/fan_in) is the init relu needs; "xavier" suits tanh.
    init: str = "default"

    def __post_init__(self) -> None:
        check_positive_int("in_features", self.in_features)
        check_positive_int("num_classes", self.num_classes)
        self.hidden_sizes = int_tuple("hidden_sizes", self.hidden_sizes, allow_empty=True)
        check_activation("activation", self.activation)
        check_probability("dropout", self.dropout)
        check_bool("batch_norm", self.batch_norm)
        check_bool("residual", self.residual)
        check_choice("init", self.init, INITS)


class MLPBlock(nn.Module):
    """linear -> [batch norm] -> activation -> dropout, plus the input when ``residual``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str,
        dropout: float,
        batch_norm: bool,
        residual: bool,
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.norm = nn.BatchNorm1d(out_features) if batch_norm else nn.Identity()
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(dropout)
        # A skip needs equal widths; blocks that change width stay plain.
        self.residual = residual and in_features == out_features

    def forward(self, x: Tensor) -> Tensor:
        out = self.dropout(self.act(self.norm(self.linear(x))))  # (B, out_features)
        return x + out if self.residual else out


class MLP(nn.Module):
    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        widths = (config.in_features, *config.hidden_sizes)
        self.blocks = nn.ModuleList(
            MLPBlock(w_in, w_out, config.activation, config.dropout, config.batch_norm, config.residual)
            for w_in, w_out in pairwise(widths)
        )
        self.head = nn.Linear(widths[-1], config.num_classes)
        if config.init != "default":
            for block in self.blocks:
                if config.init == "he":
                    nn.init.kaiming_normal_(block.linear.weight, nonlinearity="relu")
                else:
                    nn.init.xavier_normal_(block.linear.weight)
                nn.init.zeros_(block.linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)  # (B, ...) -> (B, in_features): images go in as they are
        for block in self.blocks:
            x = block(x)  # (B, hidden)
        return self.head(x)  # (B, num_classes)

    def graphs(self) -> list[GraphExport]:
        example = torch.randn(4, self.config.in_features)  # (B, in_features)
        return [GraphExport("model", self, {"input": example}, ["logits"], {"input": {0: "batch"}})]


@register_model("mlp", config=MLPConfig, family="mlp")
def mlp(**overrides) -> MLP:
    return MLP(MLPConfig(**overrides))
