"""CycleGAN (Zhu et al., 2017) sized for 28x28 images: unpaired translation between two domains.

Two generators (A -> B and B -> A) and two discriminators (one per domain). No image is ever seen in
both domains: the generators learn from the discriminators (LSGAN: least-squares targets 1 for real,
0 for generated, the paper's choice) and from cycle consistency (A -> B -> A gives back the input),
which is what keeps the content (here, the digit) while the style (the stroke) changes.

The generator is the paper's ResNet generator, shrunk: a 7x7 conv, one stride-2 conv, residual blocks
at half resolution, nearest-neighbour upsampling + conv (no checkerboard artifacts, Odena et al. 2016),
a 7x7 conv, all with instance norm. The discriminator is a PatchGAN: a map of real/fake scores, each
over a patch of the image. The generators take and give images in [0, 1], as the server feeds
and reads autoencoders; internally they work in [-1, 1] (tanh out).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from training.graphs import GraphExport
from training.layers import check_activation, check_positive_int, make_activation
from training.registry import register_model


@dataclass
class CycleGANConfig:
    in_channels: int = 1
    image_size: int = 28  # even: one stride-2 conv and one 2x upsampling
    # Names of the two domains: the exported graphs are "<a>_to_<b>" and "<b>_to_<a>".
    domain_a: str = "thin"
    domain_b: str = "thick"
    # Channels at full resolution; twice that at half resolution. Measured on thin <-> thick digits
    # (40 epochs): width 8 keeps the digit for 97% / 95% of held-out images (thin -> thick / thick ->
    # thin) at 3.5M multiply-adds per image; width 16 costs 13M and trained ~5x slower on 2 cores.
    generator_width: int = 8
    residual_blocks: int = 2
    discriminator_width: int = 32
    activation: str = "relu"  # generators only; the discriminators use LeakyReLU(0.2) as in the paper
    # Loss weights (the paper's: cycle 10, identity 0.5 x cycle). The identity term asks G_AB(b) = b:
    # an image already in the target domain should pass unchanged, which stops a generator from
    # altering what it need not.
    cycle_weight: float = 10.0
    identity_weight: float = 5.0

    def __post_init__(self) -> None:
        for name in ("in_channels", "image_size", "generator_width", "residual_blocks", "discriminator_width"):
            check_positive_int(name, getattr(self, name))
        if self.image_size % 4 != 0:
            raise ValueError(f"image_size must be a multiple of 4 (the discriminator halves it twice); got {self.image_size}")
        for name in ("domain_a", "domain_b"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.isidentifier() or not value.islower():
                raise ValueError(f"{name} must be a lower-case identifier (it names graphs); got {value!r}")
        if self.domain_a == self.domain_b:
            raise ValueError(f"domain_a and domain_b must differ; both are {self.domain_a!r}")
        check_activation("activation", self.activation)
        for name in ("cycle_weight", "identity_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0; got {value!r}")

    @property
    def directions(self) -> tuple[str, str]:
        """The graphs' roles: A -> B, then B -> A."""
        return f"{self.domain_a}_to_{self.domain_b}", f"{self.domain_b}_to_{self.domain_a}"


def _conv_norm_act(in_channels: int, out_channels: int, kernel: int, stride: int, activation: nn.Module) -> nn.Sequential:
    # Instance norm (per image and channel, no running statistics: eval == train) is the paper's choice
    # for generators: a batch's other images say nothing about how to restyle this one.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2),
        nn.InstanceNorm2d(out_channels),
        activation,
    )


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, activation: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_norm_act(channels, channels, 3, 1, make_activation(activation)),
            nn.Conv2d(channels, channels, 3, 1, 1),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class TranslationGenerator(nn.Module):
    """(B, C, H, W) in [0, 1] -> (B, C, H, W) in [0, 1]."""

    def __init__(self, config: CycleGANConfig) -> None:
        super().__init__()
        w, c, act = config.generator_width, config.in_channels, config.activation
        self.net = nn.Sequential(
            _conv_norm_act(c, w, 7, 1, make_activation(act)),  # (B, w, H, W)
            _conv_norm_act(w, 2 * w, 3, 2, make_activation(act)),  # (B, 2w, H/2, W/2)
            *(ResidualBlock(2 * w, act) for _ in range(config.residual_blocks)),
            nn.Upsample(scale_factor=2, mode="nearest"),
            _conv_norm_act(2 * w, w, 3, 1, make_activation(act)),  # (B, w, H, W)
            nn.Conv2d(w, c, 7, 1, 3),
            nn.Tanh(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return (self.net(x * 2 - 1) + 1) / 2  # [0, 1] in and out; [-1, 1] inside, as the tanh gives


class PatchDiscriminator(nn.Module):
    """(B, C, H, W) in [0, 1] -> (B, H/4, W/4) scores, each judging one patch (least-squares targets)."""

    def __init__(self, config: CycleGANConfig) -> None:
        super().__init__()
        w = config.discriminator_width
        self.net = nn.Sequential(
            nn.Conv2d(config.in_channels, w, 4, 2, 1),  # no norm on the first layer, as in the paper
            nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1),
            nn.InstanceNorm2d(2 * w),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 1, 3, 1, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x * 2 - 1).squeeze(1)  # (B, H/4, W/4)


def _init_weights(module: nn.Module) -> None:
    # The paper's init: N(0, 0.02) conv weights, zero biases.
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        nn.init.zeros_(module.bias)


class CycleGAN(nn.Module):
    def __init__(self, config: CycleGANConfig) -> None:
        super().__init__()
        self.config = config
        self.a_to_b = TranslationGenerator(config)
        self.b_to_a = TranslationGenerator(config)
        self.discriminator_a = PatchDiscriminator(config)  # real A vs B -> A
        self.discriminator_b = PatchDiscriminator(config)  # real B vs A -> B
        self.apply(_init_weights)

    @property
    def generators(self) -> nn.ModuleDict:
        """Both generators by graph role (what one optimiser trains, and what the gradient plot names)."""
        return nn.ModuleDict(dict(zip(self.config.directions, (self.a_to_b, self.b_to_a), strict=True)))

    @property
    def discriminators(self) -> nn.ModuleDict:
        return nn.ModuleDict({self.config.domain_a: self.discriminator_a, self.config.domain_b: self.discriminator_b})

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Both translations of ``x`` (as if it were of either domain); training uses the parts."""
        return self.a_to_b(x), self.b_to_a(x)

    def graphs(self) -> list[GraphExport]:
        size = self.config.image_size
        example = torch.rand(4, self.config.in_channels, size, size)  # (B, C, H, W) in [0, 1]
        return [
            GraphExport(role, generator, {"input": example}, ["image"], {"input": {0: "batch"}})
            for role, generator in zip(self.config.directions, (self.a_to_b, self.b_to_a), strict=True)
        ]


@register_model("cyclegan", config=CycleGANConfig, family="gan")
def cyclegan(**overrides) -> CycleGAN:
    return CycleGAN(CycleGANConfig(**overrides))
