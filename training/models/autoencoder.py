"""Convolutional autoencoders for 1x28x28 digits: plain, denoising, and variational (Kingma & Welling, 2013).

All three share one encoder conv stack and one decoder conv stack; they differ only in what sits
between them (a latent vector, or the mean and log-variance of a Gaussian over it).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor, nn

from training.graphs import GraphExport
from training.layers import (
    ConvNormAct,
    check_activation,
    check_positive_int,
    conv_output_size,
    int_tuple,
    make_activation,
)
from training.registry import register_model


@dataclass
class AutoencoderConfig:
    in_channels: int = 1
    image_size: int = 28
    latent_dim: int = 16  # small enough to force a summary, large enough for sharp digits
    widths: tuple[int, ...] = (32, 64)  # one stride-2 conv per entry: 28 -> 14 -> 7
    activation: str = "relu"

    def __post_init__(self) -> None:
        check_positive_int("in_channels", self.in_channels)
        check_positive_int("image_size", self.image_size)
        check_positive_int("latent_dim", self.latent_dim)
        self.widths = int_tuple("widths", self.widths)
        check_activation("activation", self.activation)


@dataclass
class VAEConfig(AutoencoderConfig):
    """Same fields as the autoencoder; a class of its own so checkpoints name the family."""


class ConvEncoder(nn.Module):
    """Stride-2 3x3 convs (each halves H and W, rounding up), flattened: (B, C, H, W) -> (B, features)."""

    def __init__(self, in_channels: int, image_size: int, widths: tuple[int, ...], activation: str) -> None:
        super().__init__()
        channels = (in_channels, *widths)
        self.convs = nn.Sequential(
            *(
                ConvNormAct(c_in, c_out, 3, stride=2, padding=1, norm=False, activation=activation)
                for c_in, c_out in pairwise(channels)
            )
        )
        # Spatial size before each conv and after the last one, e.g. [28, 14, 7]; the decoder mirrors it.
        self.sizes = [image_size]
        for _ in widths:
            self.sizes.append(conv_output_size(self.sizes[-1], 3, 2, 1))
        self.out_features = widths[-1] * self.sizes[-1] ** 2

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(x).flatten(1)  # (B, C, H, W) -> (B, w_last, 7, 7) -> (B, out_features)


class ConvDecoder(nn.Module):
    """The encoder's mirror: linear -> (w_last, 7, 7) -> stride-2 transposed convs -> sigmoid in [0, 1]."""

    def __init__(
        self, latent_dim: int, out_channels: int, sizes: list[int], widths: tuple[int, ...], activation: str
    ) -> None:
        super().__init__()
        self.fc = nn.Linear(latent_dim, widths[-1] * sizes[-1] ** 2)
        self.unflatten = nn.Unflatten(1, (widths[-1], sizes[-1], sizes[-1]))
        self.act = make_activation(activation)
        channels = (out_channels, *widths)
        layers: list[nn.Module] = []
        for i in reversed(range(len(widths))):
            # A 3/2/1 transposed conv maps n -> 2n - 1; output_padding adds the row the encoder's
            # rounding-up took away, so that the sizes come back exactly (7 -> 14 -> 28).
            output_padding = sizes[i] - (2 * sizes[i + 1] - 1)
            layers.append(
                nn.ConvTranspose2d(
                    channels[i + 1], channels[i], 3, stride=2, padding=1, output_padding=output_padding
                )
            )
            layers.append(make_activation(activation) if i > 0 else nn.Sigmoid())  # pixels in [0, 1]
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        x = self.unflatten(self.act(self.fc(z)))  # (B, latent_dim) -> (B, w_last, 7, 7)
        return self.deconvs(x)  # (B, C, H, W)


class Autoencoder(nn.Module):
    """Also the denoising autoencoder: same net, the trainer corrupts the input and targets the clean one."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ConvEncoder(config.in_channels, config.image_size, config.widths, config.activation)
        self.to_latent = nn.Linear(self.encoder.out_features, config.latent_dim)
        self.decoder = ConvDecoder(
            config.latent_dim, config.in_channels, self.encoder.sizes, config.widths, config.activation
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        latent = self.to_latent(self.encoder(x))  # (B, latent_dim)
        reconstruction = self.decoder(latent)  # (B, C, H, W) in [0, 1]
        return reconstruction, latent

    def graphs(self) -> list[GraphExport]:
        c, size = self.config.in_channels, self.config.image_size
        example = torch.randn(4, c, size, size).sigmoid()  # (B, C, H, W), pixel-like values
        return [
            GraphExport(
                "model", self, {"input": example}, ["reconstruction", "latent"], {"input": {0: "batch"}}
            )
        ]


class VAEEncoder(nn.Module):
    """(B, C, H, W) -> mu, logvar, each (B, latent_dim): the parameters of q(z | x)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.features = ConvEncoder(config.in_channels, config.image_size, config.widths, config.activation)
        self.mu = nn.Linear(self.features.out_features, config.latent_dim)
        # Log-variance rather than std: unconstrained, so the head needs no positivity trick.
        self.logvar = nn.Linear(self.features.out_features, config.latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.features(x)  # (B, out_features)
        return self.mu(h), self.logvar(h)  # (B, latent_dim) each


class VAE(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = VAEEncoder(config)
        self.decoder = ConvDecoder(
            config.latent_dim,
            config.in_channels,
            self.encoder.features.sizes,
            config.widths,
            config.activation,
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Training pass: (reconstruction, mu, logvar). Samples, so it is never exported as a whole."""
        mu, logvar = self.encoder(x)  # (B, latent_dim) each
        std = torch.exp(0.5 * logvar)
        z = mu + std * torch.randn_like(std)  # reparameterisation: the noise carries no gradient
        return self.decoder(z), mu, logvar  # (B, C, H, W), (B, latent_dim), (B, latent_dim)

    def graphs(self) -> list[GraphExport]:
        c, size = self.config.in_channels, self.config.image_size
        image = torch.randn(4, c, size, size).sigmoid()  # (B, C, H, W)
        latent = torch.randn(4, self.config.latent_dim)  # (B, latent_dim), a draw from the prior
        return [
            GraphExport("encoder", self.encoder, {"input": image}, ["mu", "logvar"], {"input": {0: "batch"}}),
            GraphExport(
                "decoder", self.decoder, {"latent": latent}, ["reconstruction"], {"latent": {0: "batch"}}
            ),
        ]


@register_model("autoencoder", config=AutoencoderConfig, family="autoencoder")
def autoencoder(**overrides) -> Autoencoder:
    return Autoencoder(AutoencoderConfig(**overrides))


@register_model("denoising-autoencoder", config=AutoencoderConfig, family="autoencoder")
def denoising_autoencoder(**overrides) -> Autoencoder:
    # Same architecture; what makes it denoising is the training recipe (noisy input, clean target).
    return Autoencoder(AutoencoderConfig(**overrides))


@register_model("vae", config=VAEConfig, family="autoencoder")
def vae(**overrides) -> VAE:
    return VAE(VAEConfig(**overrides))
