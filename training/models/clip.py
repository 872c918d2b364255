"""CLIP (Radford et al., 2021): an image encoder and a text encoder trained so that an image and the
captions that describe it land close together in one embedding space, sized for 32x32 images,
character captions and a CPU.

Image side: a small convnet ending in CLIP's attention pooling (its ResNets' last layer: the mean of
the 4x4 feature map queries the map's positions, which carry learned position embeddings, so the
pooled vector says what is there and where; average pooling would forget where, and the captions
say it), or the zoo's Vision Transformer (training/models/vit.py, conv stem) whose head projects
into the shared space. Text side: a pre-norm Transformer over characters with BERT's padding mask
and distance bias (training/models/bert.py; the bos row unbiased), pooled at the leading bos token.
Both outputs are L2-normalised inside the graphs, so a dot product is a cosine similarity. The
temperature is learned as CLIP learns it: ``logit_scale`` = log(1 / temperature), initialised at
log(1 / 0.07) and clamped to at most log(100).

Exported as two graphs: ``image_encoder`` (images -> image_embeds and the logit scale, one copy per
row: a trained weight travels with the version's graphs, not with the shared config.json) and
``text_encoder`` (input_ids, attention_mask -> text_embeds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.graphs import GraphExport
from training.layers import (
    ConvNormAct,
    MultiHeadCrossAttention,
    TransformerBlock,
    check_bool,
    check_choice,
    check_positive_int,
    check_probability,
)
from training.models.bert import BERT, distance_penalty, padding_mask
from training.models.vit import ViT, ViTConfig
from training.registry import register_model


@dataclass
class CLIPConfig:
    image_size: int = 32
    in_channels: int = 3
    # "cnn" or "vit". Measured on clip-shapes (16 epochs): the ViT tower learned shape (0.92 zero-shot),
    # colour and size but never the position (a linear probe of its embeddings at chance, 0.35).
    # A convnet whose flattened 4x4 map fed an MLP learned position, colour and size in 5 epochs but
    # not shape (0.34: a linear layer on the map must learn each shape at each place); attention
    # pooling keeps both.
    image_tower: str = "cnn"
    cnn_width: int = 32  # channels of the first stage; doubled at each of the three downsamplings
    patch_size: int = 4  # vit: 8x8 patches through its conv stem (the shapes ViT's setting)
    image_dim: int = 64  # vit: token width
    image_depth: int = 3  # vit: blocks
    # 5 specials + a space, a comma and the 26 lower-case letters (training.captions); recipes set it
    # from the tokenizer.
    vocab_size: int = 33
    max_len: int = 80  # characters per text, bos included: the longest caption with filler is 67
    text_dim: int = 64
    text_depth: int = 2
    heads: int = 4  # both encoders; head_dim = 16
    mlp_ratio: float = 2.0
    embed_dim: int = 64  # the shared space
    dropout: float = 0.0  # 14,400 images re-captioned every step underfit before they overfit
    # BERT's distance bias (ALiBi-style) on the text side: characters must find their words first.
    distance_bias: bool = True
    init_temperature: float = 0.07  # CLIP's initial softmax temperature
    max_logit_scale: float = 100.0  # CLIP's clamp: the scale may not exceed 100 (temperature 0.01)

    def __post_init__(self) -> None:
        check_choice("image_tower", self.image_tower, ("cnn", "vit"))
        for name in ("image_size", "in_channels", "cnn_width", "patch_size", "image_dim", "image_depth"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("vocab_size", self.vocab_size)
        if self.image_tower == "cnn" and self.image_size % 8 != 0:
            raise ValueError(f"image_tower 'cnn' halves the image three times; image_size {self.image_size}")
        for name in ("max_len", "text_dim", "text_depth", "heads", "embed_dim"):
            check_positive_int(name, getattr(self, name))
        if self.max_len < 2:
            raise ValueError(f"max_len must be at least 2; got {self.max_len}")
        if self.text_dim % self.heads != 0:
            raise ValueError(f"text_dim ({self.text_dim}) must be divisible by heads ({self.heads})")
        check_probability("dropout", self.dropout)
        check_bool("distance_bias", self.distance_bias)
        if not 0 < self.init_temperature < 1 or self.max_logit_scale <= 1:
            raise ValueError("init_temperature must be in (0, 1) and max_logit_scale above 1")
        if 1 / self.init_temperature > self.max_logit_scale:
            raise ValueError("1 / init_temperature must not exceed max_logit_scale")
        self.image_tower_config()  # the ViT checks its own fields (patch size, widths, mlp_ratio)

    @property
    def context_length(self) -> int:
        """The longest text the text encoder reads (the pipeline's one name for it)."""
        return self.max_len

    def image_tower_config(self) -> ViTConfig:
        return ViTConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            in_channels=self.in_channels,
            num_classes=self.embed_dim,  # the classifier head becomes the projection
            dim=self.image_dim,
            depth=self.image_depth,
            heads=self.heads,
            mlp_ratio=self.mlp_ratio,
            dropout=self.dropout,
            stem="conv",
        )


class AttentionPool(nn.Module):
    """CLIP's AttentionPool2d: a feature map (B, C, H, W) -> (B, out_dim). The map's positions, plus
    their mean, get learned position embeddings; the mean queries them all (multi-head attention), and
    the answer is projected. What is attended is chosen by content (translation-robust), and the
    position embeddings it carries say where it was."""

    def __init__(self, dim: int, positions: int, heads: int, out_dim: int) -> None:
        super().__init__()
        # "embedding" in the name keeps it out of weight decay (training.trainer.make_optimizer).
        self.position_embedding = nn.Parameter(torch.randn(positions + 1, dim) / dim**0.5)
        self.attention = MultiHeadCrossAttention(dim, heads)
        self.projection = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        x = torch.cat([x.mean(1, keepdim=True), x], dim=1) + self.position_embedding  # (B, 1 + HW, C)
        pooled = self.attention(x[:, :1], x)  # (B, 1, C): the mean's query over every position
        return self.projection(pooled[:, 0])  # (B, out_dim)


class ConvTower(nn.Module):
    """Three stages of two 3x3 conv-BN-ReLU (the second halving the size: 32 -> 16 -> 8 -> 4), then
    attention pooling into the shared space."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        w = config.cnn_width
        widths = [config.in_channels, w, 2 * w, 4 * w]
        layers: list[nn.Module] = []
        for w_in, w_out in pairwise(widths):
            layers += [ConvNormAct(w_in, w_out, 3), ConvNormAct(w_out, w_out, 3, stride=2)]
        self.features = nn.Sequential(*layers)
        side = config.image_size // 8
        self.pool = AttentionPool(4 * w, side * side, config.heads, config.embed_dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.pool(self.features(images))  # (B, embed_dim)


class ImageEncoder(nn.Module):
    """Images (B, C, H, W), normalised as in training -> unit vectors (B, embed_dim)."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.tower = ConvTower(config) if config.image_tower == "cnn" else ViT(config.image_tower_config())

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.tower(images), dim=-1)  # (B, embed_dim)


class TextEncoder(nn.Module):
    """Right-padded ids (B, T) with a leading bos, and their attention mask -> unit vectors (B, embed_dim).
    Padding keys are hidden from every query and real positions keep their position ids, so a padded
    row's embedding equals the same text's alone."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        # "embedding" in the names keeps them out of weight decay (training.trainer.make_optimizer).
        self.token_embedding = nn.Embedding(config.vocab_size, config.text_dim)
        self.position_embedding = nn.Embedding(config.max_len, config.text_dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(config.text_dim, config.heads, config.mlp_ratio, config.dropout)
            for _ in range(config.text_depth)
        )
        self.norm = nn.LayerNorm(config.text_dim)
        self.projection = nn.Linear(config.text_dim, config.embed_dim)
        slopes = torch.tensor([2.0 ** -(h + 1) for h in range(config.heads)])  # BERT's, per head
        self.register_buffer("slopes", slopes, persistent=False)
        self.apply(BERT._init_weights)  # N(0, 0.02), as BERT's text encoder

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        x = self.token_embedding(input_ids) + self.position_embedding(positions)  # (B, T, dim)
        mask = padding_mask(attention_mask)  # (B, 1, 1, T)
        if self.config.distance_bias:  # fixed by the config: export sees one path
            # Every query but bos: the pooled position's own row stays unbiased, so that it reads the
            # whole text. With it biased too, bos saw little beyond its first dozen characters
            # (slopes 1/2 .. 1/16), and the words late in a caption (colour, position) went unlearned.
            not_bos = (positions != 0).float()[:, None]  # (T, 1)
            mask = mask + distance_penalty(positions, self.slopes) * not_bos  # (B, H, T, T)
        for block in self.blocks:
            x = block(x, mask)
        pooled = self.norm(x[:, 0])  # (B, dim): the bos position attends to the whole text
        return F.normalize(self.projection(pooled), dim=-1)  # (B, embed_dim)


class _ImageGraph(nn.Module):
    """The exported image side: embeddings, and the learned logit scale repeated per row."""

    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        embeds = self.model.image_encoder(images)  # (B, embed_dim)
        return embeds, self.model.scale().expand(images.shape[0])  # (B,)


class CLIP(nn.Module):
    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder(config)
        self.text_encoder = TextEncoder(config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))

    def scale(self) -> Tensor:
        """exp(logit_scale), clamped as CLIP clamps it: a scalar."""
        return self.logit_scale.clamp(0.0, math.log(self.config.max_logit_scale)).exp()

    def forward(
        self, images: Tensor, input_ids: Tensor, attention_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """A batch of images and a batch of texts -> their embeddings (B_i, D), (B_t, D) and the scale."""
        return self.image_encoder(images), self.text_encoder(input_ids, attention_mask), self.scale()

    def graphs(self) -> list[GraphExport]:
        cfg = self.config
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(4, cfg.in_channels, cfg.image_size, cfg.image_size, generator=generator)
        # B = 4, T = 8 (sizes >= 2 keep both axes symbolic); rows right-padded by 0..3.
        batch, length = 4, min(8, cfg.max_len)
        input_ids = torch.randint(5, cfg.vocab_size, (batch, length), generator=generator)
        input_ids[:, 0] = 1  # bos
        lengths = torch.tensor([length - i for i in range(batch)]).clamp(min=1)
        attention_mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        text = GraphExport(
            "text_encoder",
            self.text_encoder,
            {"input_ids": input_ids * attention_mask, "attention_mask": attention_mask},
            ["text_embeds"],
            {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}},
            # A short text and the whole position table, both unlike the example's 8.
            parity_sizes={"sequence": sorted({min(3, cfg.max_len), cfg.max_len})},
        )
        image = GraphExport(
            "image_encoder", _ImageGraph(self), {"images": images}, ["image_embeds", "logit_scale"]
        )
        return [image, text]


@register_model("clip", config=CLIPConfig, family="clip")
def clip(**overrides) -> CLIP:
    return CLIP(CLIPConfig(**overrides))
