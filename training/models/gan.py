"""DCGAN (Radford et al., 2015) sized for 28x28 images, and its class-conditional version.

The generator follows the paper (project, then fractionally-strided convs with batch norm, tanh out).
The discriminator follows the small-data recipe that trains stably on MNIST-sized sets: strided convs
with LeakyReLU(0.2) and dropout, no batch norm (which couples the real and fake batches), and raw
logits for ``BCEWithLogitsLoss``.

The conditional GAN (Mirza & Osindero, 2014) asks for a class: the generator reads a learned embedding
of the class beside the latent, and the discriminator is a projection discriminator (Miyato & Koyama,
2018): its logit gains the inner product of the class's embedding with the image's features, so it
judges "a real image of *this* class" rather than "a real image".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from training.graphs import GraphExport
from training.layers import (
    check_activation,
    check_choice,
    check_positive_int,
    check_probability,
    make_activation,
)
from training.registry import register_model


@dataclass
class DCGANConfig:
    latent_dim: int = 32  # plenty for digits; the paper's 100 is for faces and bedrooms
    out_channels: int = 1
    image_size: int = 28  # two 2x upsamplings from image_size / 4 (7 -> 14 -> 28)
    generator_width: int = 64  # channels before the last upsampling; the projection has twice that
    discriminator_width: int = 64  # channels of the first conv; the second has twice that
    activation: str = "relu"  # generator only; the discriminator uses LeakyReLU(0.2) as in the paper
    # "transposed": the paper's fractionally-strided convs. "nearest": nearest-neighbour upsampling
    # then a 3x3 conv, which cannot produce the checkerboard artifacts of overlapping transposed
    # kernels (Odena et al., 2016, "Deconvolution and checkerboard artifacts").
    upsample: str = "transposed"
    discriminator_dropout: float = 0.3  # stops D from memorising a small training set

    def __post_init__(self) -> None:
        for name in ("latent_dim", "out_channels", "image_size", "generator_width", "discriminator_width"):
            check_positive_int(name, getattr(self, name))
        if self.image_size % 4 != 0:
            raise ValueError(
                f"image_size must be a multiple of 4 (two 2x upsamplings); got {self.image_size}"
            )
        check_activation("activation", self.activation)
        check_choice("upsample", self.upsample, ("transposed", "nearest"))
        check_probability("discriminator_dropout", self.discriminator_dropout)


def _upsample(in_channels: int, out_channels: int, mode: str, bias: bool) -> nn.Module:
    """Double H and W exactly."""
    if mode == "transposed":  # kernel 4, stride 2, padding 1: an exact 2x without ragged borders
        return nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=bias)
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
    )


class Generator(nn.Module):
    """(B, latent_dim) -> (B, C, H, W) in [-1, 1]."""

    def __init__(self, config: DCGANConfig, extra_inputs: int = 0) -> None:
        super().__init__()
        w, s = config.generator_width, config.image_size // 4
        # Biases before batch norm are dead weight: BN subtracts them again.
        self.project = nn.Linear(config.latent_dim + extra_inputs, 2 * w * s * s, bias=False)
        self.unflatten = nn.Unflatten(1, (2 * w, s, s))
        self.bn0 = nn.BatchNorm2d(2 * w)
        self.up1 = _upsample(2 * w, w, config.upsample, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.up2 = _upsample(w, config.out_channels, config.upsample, bias=True)
        self.act = make_activation(config.activation)

    def forward(self, z: Tensor) -> Tensor:
        x = self.act(self.bn0(self.unflatten(self.project(z))))  # (B, 2w, 7, 7)
        x = self.act(self.bn1(self.up1(x)))  # (B, w, 14, 14)
        return torch.tanh(self.up2(x))  # (B, C, 28, 28) in [-1, 1], matching images scaled to [-1, 1]


class Discriminator(nn.Module):
    """(B, C, H, W) -> logits (B,): real vs generated. Not exported; only the generator is served."""

    def __init__(self, config: DCGANConfig) -> None:
        super().__init__()
        w, s = config.discriminator_width, config.image_size // 4
        self.conv1 = nn.Conv2d(config.out_channels, w, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(w, 2 * w, 4, stride=2, padding=1)
        self.act = nn.LeakyReLU(0.2)  # keeps gradients flowing to the generator where ReLU would be 0
        self.dropout = nn.Dropout(config.discriminator_dropout)
        self.head = nn.Linear(2 * w * s * s, 1)

    def features(self, x: Tensor) -> Tensor:
        x = self.dropout(self.act(self.conv1(x)))  # (B, w, 14, 14)
        return self.dropout(self.act(self.conv2(x))).flatten(1)  # (B, 2w * 7 * 7)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)).squeeze(1)  # (B,) logits, no sigmoid: BCEWithLogits is stabler


def _dcgan_init(module: nn.Module) -> None:
    # The paper's init: N(0, 0.02) weights, BN scale N(1, 0.02), zero biases.
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGAN(nn.Module):
    conditional = False  # the adversarial loop (trainer.fit_gan) feeds classes to conditional GANs only

    def __init__(self, config: DCGANConfig) -> None:
        super().__init__()
        self.config = config
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)
        self.apply(_dcgan_init)

    def forward(self, z: Tensor) -> Tensor:
        return self.generator(z)  # (B, C, H, W)

    def graphs(self) -> list[GraphExport]:
        latent = torch.randn(4, self.config.latent_dim)  # (B, latent_dim)
        return [
            GraphExport("generator", self.generator, {"latent": latent}, ["image"], {"latent": {0: "batch"}})
        ]


@register_model("dcgan", config=DCGANConfig, family="gan")
def dcgan(**overrides) -> DCGAN:
    return DCGAN(DCGANConfig(**overrides))


# --------------------------------------------------------------------------------------------------
# Class-conditional DCGAN


@dataclass
class ConditionalDCGANConfig(DCGANConfig):
    num_classes: int = 10
    class_embedding_dim: int = 16  # the class's learned code, concatenated to the latent

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("num_classes", self.num_classes)
        check_positive_int("class_embedding_dim", self.class_embedding_dim)


class ConditionalGenerator(Generator):
    """(B, latent_dim) latents and (B,) class ids -> (B, C, H, W) in [-1, 1]."""

    def __init__(self, config: ConditionalDCGANConfig) -> None:
        super().__init__(config, extra_inputs=config.class_embedding_dim)
        self.embed = nn.Embedding(config.num_classes, config.class_embedding_dim)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        return super().forward(torch.cat([z, self.embed(labels)], dim=1))


class ProjectionDiscriminator(Discriminator):
    """(B, C, H, W) images and (B,) class ids -> logits (B,): a real image of that class, or not."""

    def __init__(self, config: ConditionalDCGANConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.num_classes, self.head.in_features)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        h = self.features(x)  # (B, F)
        return self.head(h).squeeze(1) + (self.embed(labels) * h).sum(1)  # (B,) logits


class ConditionalDCGAN(nn.Module):
    conditional = True

    def __init__(self, config: ConditionalDCGANConfig) -> None:
        super().__init__()
        self.config = config
        self.generator = ConditionalGenerator(config)
        self.discriminator = ProjectionDiscriminator(config)
        self.apply(_dcgan_init)
        # The class code enters the generator beside z ~ N(0, I): at the init's 0.02 it would be a
        # whisper the projection learns to hear only slowly, so it starts at the latent's scale.
        nn.init.normal_(self.generator.embed.weight, 0.0, 1.0)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        return self.generator(z, labels)  # (B, C, H, W)

    def graphs(self) -> list[GraphExport]:
        latent = torch.randn(4, self.config.latent_dim)  # (B, latent_dim)
        # Ids up to the last class: parity then draws ids from every class (training.export._random_like).
        labels = torch.linspace(0, self.config.num_classes - 1, 4).round().long()  # (B,) int64
        return [
            GraphExport(
                "generator", self.generator, {"latent": latent, "class": labels}, ["image"], {"latent": {0: "batch"}}
            )
        ]


@register_model("conditional-dcgan", config=ConditionalDCGANConfig, family="gan")
def conditional_dcgan(**overrides) -> ConditionalDCGAN:
    return ConditionalDCGAN(ConditionalDCGANConfig(**overrides))
