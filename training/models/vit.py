"""Vision Transformer (Dosovitskiy et al., 2020), sized for 32x32 images and a CPU."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor, nn

from training.graphs import GraphExport
from training.layers import (
    ConvNormAct,
    TransformerBlock,
    check_activation,
    check_choice,
    check_positive_int,
    check_probability,
)
from training.registry import register_model


@dataclass
class ViTConfig:
    image_size: int = 32
    patch_size: int = 4  # 32 / 4 = 8 -> 64 patches: the sequence stays short enough for a CPU
    in_channels: int = 3
    num_classes: int = 6
    dim: int = 64  # ViT-Base uses 768; small data cannot feed more than this
    depth: int = 4
    heads: int = 4  # head_dim = 16
    mlp_ratio: float = 2.0  # 4 in the paper; 2 halves the FFN cost at little loss on small data
    dropout: float = 0.1  # ViTs overfit small datasets without it
    activation: str = "gelu"  # the paper's choice
    # "patch": the paper's linear patch embedding. "conv": stride-2 3x3 conv-BN-ReLU layers down to
    # the patch grid, then a 1x1 projection (Xiao et al., 2021, "Early convolutions help transformers
    # see better"): same tokens, but built from local edges, which small data cannot teach a linear
    # patchifier quickly.
    stem: str = "patch"

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "in_channels", "num_classes", "dim", "depth", "heads"):
            check_positive_int(name, getattr(self, name))
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size})"
            )
        if self.dim % self.heads != 0:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if (
            isinstance(self.mlp_ratio, bool)
            or not isinstance(self.mlp_ratio, int | float)
            or self.mlp_ratio <= 0
        ):
            raise ValueError(f"mlp_ratio must be a positive number; got {self.mlp_ratio!r}")
        self.mlp_ratio = float(self.mlp_ratio)
        check_probability("dropout", self.dropout)
        check_activation("activation", self.activation)
        check_choice("stem", self.stem, ("patch", "conv"))
        if self.stem == "conv" and (self.patch_size & (self.patch_size - 1) or self.patch_size < 2):
            raise ValueError(f"stem 'conv' needs a power-of-two patch_size >= 2; got {self.patch_size}")

    @property
    def num_downsamples(self) -> int:
        return self.patch_size.bit_length() - 1

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class ViT(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        if config.stem == "conv":
            # log2(P) stride-2 3x3 conv-BN-ReLU layers reach the patch grid, then a 1x1 projection.
            # A stride-1 conv first, so that edges are found at full resolution, then log2(P)
            # stride-2 convs down to the patch grid; widths double up to dim.
            n = config.num_downsamples
            widths = [config.dim >> n] + [config.dim >> (n - i) for i in range(1, n + 1)]  # dim/4 .. dim
            self.stem = nn.Sequential(
                ConvNormAct(config.in_channels, widths[0], 3),
                *(ConvNormAct(w_in, w_out, 3, stride=2) for w_in, w_out in pairwise(widths)),
            )
            self.patch_embed = nn.Conv2d(widths[-1], config.dim, 1)
        else:
            self.stem = nn.Identity()
            # A conv with kernel = stride = patch is "split into patches + shared linear projection".
            self.patch_embed = nn.Conv2d(
                config.in_channels, config.dim, config.patch_size, stride=config.patch_size
            )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.dim))
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(config.dim, config.heads, config.mlp_ratio, config.dropout, config.activation)
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.dim)  # pre-norm blocks leave the residual stream unnormalised
        self.head = nn.Linear(config.dim, config.num_classes)
        # Small random init as in the reference implementation; zeros would make every position alike.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(self.stem(x))  # (B, dim, H / P, W / P)
        x = x.flatten(2).transpose(1, 2)  # (B, N, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, dim)
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # (B, N + 1, dim)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x)  # (B, N + 1, dim)
        x = self.norm(x[:, 0])  # (B, dim): the class token summarises the image
        return self.head(x)  # (B, num_classes)

    def graphs(self) -> list[GraphExport]:
        size = self.config.image_size
        example = torch.randn(4, self.config.in_channels, size, size)  # (B, C, H, W)
        return [GraphExport("model", self, {"input": example}, ["logits"], {"input": {0: "batch"}})]


@register_model("vit", config=ViTConfig, family="vit")
def vit(**overrides) -> ViT:
    return ViT(ViTConfig(**overrides))
