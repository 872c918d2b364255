"""A small U-Net noise predictor for denoising diffusion (Ho et al. 2020), sized for 28x28 digits.

``(x_t, t, class) -> predicted noise``: the image at timestep ``t`` of the forward process, the
timestep (a sinusoidal embedding, as the Transformer's positions, through a small MLP) and a class
id (a learned embedding; id ``num_classes`` means "no class", which training feeds at random so that
one network is both the conditional and the unconditional model that classifier-free guidance
mixes). Both embeddings are added into every residual block. One level down and up per entry of
``channel_mults`` with skip connections, group norm and SiLU throughout: the DDPM paper's network,
shrunk, without its self-attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.graphs import GraphExport
from training.layers import check_choice, check_positive_int, check_probability, int_tuple
from training.registry import register_model


@dataclass
class UNetConfig:
    in_channels: int = 1
    image_size: int = 28  # halved once per level after the first: 28 -> 14 (-> 7)
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)  # channels per level: 32, 64
    blocks_per_level: int = 1  # residual blocks per level on the way down (one more on the way up)
    time_dim: int = 128  # width of the timestep (and class) embedding
    num_classes: int = 10  # 0: unconditional (the class input is ignored)
    groups: int = 8  # group norm groups; divides every level's channels
    dropout: float = 0.0
    # Training drops the class to "no class" this often: the unconditional half of classifier-free
    # guidance (Ho & Salimans use 0.1-0.2).
    label_dropout: float = 0.1
    # The noise schedule the network learns (app/core/diffusion.py); t in [0, timesteps).
    timesteps: int = 1000
    beta_schedule: str = "cosine"

    def __post_init__(self) -> None:
        self.channel_mults = int_tuple("channel_mults", self.channel_mults)
        for name in ("in_channels", "image_size", "base_channels", "blocks_per_level", "time_dim"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("groups", self.groups)
        check_positive_int("timesteps", self.timesteps)
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0; got {self.num_classes!r}")
        check_probability("dropout", self.dropout)
        check_probability("label_dropout", self.label_dropout)
        check_choice("beta_schedule", self.beta_schedule, ("linear", "cosine"))
        if self.image_size % 2 ** (len(self.channel_mults) - 1):
            raise ValueError(
                f"image_size {self.image_size} must halve exactly {len(self.channel_mults) - 1} time(s)"
            )
        for mult in self.channel_mults:
            if (self.base_channels * mult) % self.groups:
                raise ValueError(f"groups ({self.groups}) must divide every level's channels")
        if self.time_dim % 2:
            raise ValueError(f"time_dim must be even (sine and cosine halves); got {self.time_dim}")

    @property
    def null_class(self) -> int:
        """The class id that means "no class"."""
        return self.num_classes


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """(B,) timesteps -> (B, dim): sines and cosines at geometric frequencies from 1 to 1/10,000."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.to(torch.float32)[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, then GroupNorm scaled and shifted per channel by the embedding
    (Dhariwal & Nichol's adaptive group norm) -> SiLU -> conv; a 1x1 conv on the skip path where the
    channels change."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)  # a scale and a shift per channel
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: a stable start
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class UNet(nn.Module):
    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c, emb = config.base_channels, config.time_dim
        widths = [c * m for m in config.channel_mults]
        self.time_mlp = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        # One row per class plus the "no class" row; an unconditional model has only that row. N(0, 1)
        # (PyTorch's default): started at std 0.02 it stayed ~15x smaller than the timestep's
        # embedding over 600 steps and the class was all but ignored (measured).
        self.class_embedding = nn.Embedding(config.num_classes + 1, emb)
        block = lambda i, o: ResBlock(i, o, emb, config.groups, config.dropout)  # noqa: E731

        self.conv_in = nn.Conv2d(config.in_channels, c, 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips, ch = [c], c
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(config.blocks_per_level):
                blocks.append(block(ch, width))
                ch = width
                skips.append(ch)
            self.down.append(blocks)
            last = level == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1))
            if not last:
                skips.append(ch)
        self.middle = nn.ModuleList([block(ch, ch), block(ch, ch)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            blocks = nn.ModuleList()
            for _ in range(config.blocks_per_level + 1):
                blocks.append(block(ch + skips.pop(), width))
                ch = width
            self.up.append(blocks)
            # Nearest-neighbour then a conv: no checkerboard artifacts of transposed convs.
            self.upsample.append(
                nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1))
                if level > 0
                else nn.Identity()
            )
        self.norm_out = nn.GroupNorm(config.groups, ch)
        self.conv_out = nn.Conv2d(ch, config.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # predicts zero noise at first: the loss starts at 1
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, t: Tensor, label: Tensor) -> Tensor:
        """(B, C, H, W) noisy images, (B,) int64 timesteps, (B,) int64 class ids -> (B, C, H, W) noise."""
        emb = self.time_mlp(timestep_embedding(t, self.config.time_dim))
        if self.config.num_classes:
            emb = emb + self.class_embedding(label)
        h = self.conv_in(x)
        skips = [h]
        for blocks, down in zip(self.down, self.downsample, strict=True):
            for blk in blocks:
                h = blk(h, emb)
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        for blk in self.middle:
            h = blk(h, emb)
        for blocks, up in zip(self.up, self.upsample, strict=True):
            for blk in blocks:
                h = blk(torch.cat([h, skips.pop()], dim=1), emb)
            h = up(h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def graphs(self) -> list[GraphExport]:
        config = self.config
        size = config.image_size
        x = torch.randn(4, config.in_channels, size, size)  # (B, C, H, W)
        # The example's largest ids set the range parity draws from (training/export.py).
        t = torch.tensor([0, 1, config.timesteps // 2, config.timesteps - 1], dtype=torch.int64)  # (B,)
        label = torch.tensor([0, 1, 2, config.null_class], dtype=torch.int64).clamp(max=config.null_class)
        return [GraphExport("denoiser", self, {"x": x, "t": t, "class": label}, ["noise"])]


@register_model("unet", config=UNetConfig, family="diffusion")
def unet(**overrides) -> UNet:
    return UNet(UNetConfig(**overrides))
