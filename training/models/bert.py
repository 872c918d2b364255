"""BERT: a bidirectional transformer encoder (Devlin et al., 2018), sized for a CPU.

Pre-training predicts masked tokens (:meth:`BERT.mlm_logits`, tied to the token embedding); fine-tuning
classifies a sequence from its first token (``forward``, the only exported graph). Inputs are
right-padded token ids plus an ``attention_mask`` (1 real, 0 padding): padding keys are hidden from
every query, and real positions keep their position ids, so a padded row's logits equal the same
sequence's logits alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from training.graphs import GraphExport
from training.layers import (
    TransformerBlock,
    check_activation,
    check_bool,
    check_positive_int,
    check_probability,
    make_activation,
)
from training.local_attention import SlidingWindow, window_config
from training.registry import register_model

# Added to the attention scores of padding keys. Finite on purpose: a row whose mask is all zeros (the
# exporter's random masks produce some) then attends uniformly instead of giving NaN (softmax of all
# -inf), and exp(-1e9) underflows to exactly 0, so real rows are unaffected by how much padding follows.
MASK_VALUE = -1e9


@dataclass
class BERTConfig:
    # The built-in corpus needs 108 ids (5 specials + 103 characters); recipes set this from the
    # tokenizer, so the default only has to cover a character vocabulary.
    vocab_size: int = 128
    # Learned position table. 128 characters hold a sentence or two: enough context for spelling and
    # word order, and attention (O(T^2)) stays cheap on a CPU.
    max_len: int = 128
    dim: int = 128  # BERT-base uses 768; ~0.8M parameters at 4 layers pre-train in minutes on a core
    heads: int = 4  # head_dim = 32
    layers: int = 4
    mlp_ratio: float = 4.0  # feed-forward width = 4 x dim, as in every BERT
    # BERT's value. Pre-training on ~0.4M characters overfits a full-size model without it.
    dropout: float = 0.1
    # Segment (token type) embeddings: BERT's sentence A/B for pair tasks. ``forward`` uses segment 0;
    # 2 keeps the checkpoint layout of the original even though the built-in tasks use one segment.
    num_segments: int = 2
    num_classes: int = 2
    activation: str = "gelu"  # BERT's choice
    # A fixed distance penalty on attention scores, -slope_h * |i - j| with slopes 1/2, 1/4, ... per head
    # (ALiBi, Press et al. 2022), on top of the learned positions. Measured on the corpus (character MLM,
    # 4 epochs): without it validation loss sat at 2.9 nats (unigram-like) because attention has to
    # discover from absolute positions that neighbouring characters matter; with it, 2.0 nats. It
    # depends only on |i - j|, so a padded row still equals the same row alone.
    distance_bias: bool = True
    # Pre-norm (x + f(ln(x)), then a final LayerNorm) rather than BERT's post-norm: it trains stably
    # from scratch without long learning-rate warm-up, which matters for minutes-long CPU runs. Set
    # False for a faithful post-norm reproduction (the embedding LayerNorm is kept either way).
    pre_norm: bool = True
    # Local attention (training/local_attention.py), Longformer's encoder: each position sees the
    # positions within ``attention_window`` of it (window - 1 either side) instead of the whole row,
    # plus the first ``global_tokens`` positions, which see and are seen by every position (the first
    # is the [CLS]/bos token the classifier reads, Longformer's global attention for classification).
    # O(T * w) attention instead of O(T^2). None: full attention.
    attention_window: int | None = None
    global_tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "dim", "heads", "layers", "num_segments"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("num_classes", self.num_classes)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2; got {self.num_classes}")
        if self.max_len < 2:
            raise ValueError(f"max_len must be at least 2; got {self.max_len}")
        if self.dim % self.heads != 0:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        ratio = self.mlp_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or ratio <= 0:
            raise ValueError(f"mlp_ratio must be a positive number; got {self.mlp_ratio!r}")
        if int(self.dim * self.mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio ({self.mlp_ratio}) leaves no feed-forward width at dim {self.dim}")
        check_probability("dropout", self.dropout)
        check_activation("activation", self.activation)
        check_bool("pre_norm", self.pre_norm)
        check_bool("distance_bias", self.distance_bias)
        window_config(self.attention_window, self.global_tokens, False, self.max_len)  # raises if invalid

    @property
    def context_length(self) -> int:
        """The longest sequence the model reads (the pipeline's one name for block_size / max_len)."""
        return self.max_len

    @property
    def window(self) -> SlidingWindow | None:
        return window_config(self.attention_window, self.global_tokens, False, self.max_len)


def padding_mask(attention_mask: Tensor) -> Tensor:
    """(B, T) int, 1 real / 0 padding -> additive (B, 1, 1, T): 0 for real keys, MASK_VALUE for padding."""
    hidden = (attention_mask == 0).float()  # (B, T)
    return (hidden * MASK_VALUE)[:, None, None, :]  # (B, 1, 1, T), broadcast over heads and queries


def alibi_slopes(heads: int) -> Tensor:
    """ALiBi's geometric slopes 2^-1 ... 2^-H (H,): some heads stay local, others see the whole row."""
    return torch.tensor([2.0 ** -(h + 1) for h in range(heads)])


def distance_penalty(positions: Tensor, slopes: Tensor) -> Tensor:
    """Additive (1, H, T, T): -slope_h * |i - j| for ``positions`` (T,) and per-head ``slopes`` (H,)."""
    distance = (positions[None, :] - positions[:, None]).abs().float()  # (T, T)
    return -(slopes[:, None, None] * distance)[None]  # (1, H, T, T)


class MLMHead(nn.Module):
    """BERT's prediction head: dense -> activation -> LayerNorm -> tied decoder + per-token bias."""

    def __init__(self, config: BERTConfig, embedding: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(config.dim, config.dim)
        self.act = make_activation(config.activation)
        self.norm = nn.LayerNorm(config.dim)
        self.decoder = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.decoder.weight = embedding.weight  # tied: logit of v = similarity to v's embedding
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.norm(self.act(self.dense(x)))) + self.bias  # (B, T, V)


class BERT(nn.Module):
    def __init__(self, config: BERTConfig) -> None:
        super().__init__()
        self.config = config
        # "embedding" in the names keeps them out of weight decay (training.trainer.make_optimizer).
        self.token_embedding = nn.Embedding(config.vocab_size, config.dim)
        self.position_embedding = nn.Embedding(config.max_len, config.dim)
        self.segment_embedding = nn.Embedding(config.num_segments, config.dim)
        self.embedding_norm = nn.LayerNorm(config.dim)
        self.dropout = nn.Dropout(config.dropout)
        # Local attention adds the distance bias inside its window; full attention takes it in the mask.
        local_slopes = alibi_slopes(config.heads) if config.window and config.distance_bias else None
        self.blocks = nn.ModuleList(
            TransformerBlock(
                config.dim,
                config.heads,
                config.mlp_ratio,
                config.dropout,
                config.activation,
                config.pre_norm,
                config.window,
                local_slopes,
            )
            for _ in range(config.layers)
        )
        # Pre-norm blocks leave the residual stream unnormalised; post-norm blocks end normalised.
        self.final_norm = nn.LayerNorm(config.dim) if config.pre_norm else nn.Identity()
        self.mlm_head = MLMHead(config, self.token_embedding)
        self.register_buffer("slopes", alibi_slopes(config.heads), persistent=False)  # (H,), a function of the config
        # Pooler (dense + tanh on the first token) then the classifier, as in BERT.
        self.pooler = nn.Linear(config.dim, config.dim)
        self.classifier = nn.Linear(config.dim, config.num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # BERT's N(0, 0.02); PyTorch's fan-in default makes the tied MLM logits too large at init.
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def encode(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """``input_ids``, ``attention_mask`` (and ``token_type_ids``): (B, T) int64, T <= max_len ->
        hidden states (B, T, dim). Padding positions get states too; nothing real attends to them."""
        T = input_ids.shape[1]
        positions = torch.arange(T, device=input_ids.device)  # (T,)
        x = self.token_embedding(input_ids) + self.position_embedding(positions)  # (B, T, dim)
        if token_type_ids is None:  # decided by the call, not by data: export-safe
            x = x + self.segment_embedding.weight[0]  # segment 0 for every token
        else:
            x = x + self.segment_embedding(token_type_ids)  # (B, T, dim)
        x = self.dropout(self.embedding_norm(x))
        if self.config.window is not None:  # fixed by the config: export sees one path
            mask = padding_mask(attention_mask)[:, 0, 0]  # (B, T): local attention takes a bias per key
        else:
            mask = padding_mask(attention_mask)  # (B, 1, 1, T)
            if self.config.distance_bias:
                mask = mask + distance_penalty(positions, self.slopes)  # (B, H, T, T)
        for block in self.blocks:
            x = block(x, mask)  # (B, T, dim)
        return self.final_norm(x)  # (B, T, dim)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Classifier: (B, T) ids and mask -> logits (B, num_classes) from the first ([CLS]/bos) token."""
        first = self.encode(input_ids, attention_mask)[:, 0]  # (B, dim)
        pooled = torch.tanh(self.pooler(first))  # (B, dim)
        return self.classifier(self.dropout(pooled))  # (B, num_classes)

    def mlm_logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Masked-token prediction: (B, T) ids and mask -> logits (B, T, vocab_size)."""
        return self.mlm_head(self.encode(input_ids, attention_mask))  # (B, T, V)

    def graphs(self) -> list[GraphExport]:
        cfg = self.config
        generator = torch.Generator().manual_seed(0)
        # B = 4, T = 8 (sizes >= 2 keep both axes symbolic); rows right-padded by 0..3. The exporter's
        # parity check draws random 0/1 masks from this example, all-zero rows included.
        batch, length = 4, min(8, cfg.max_len) if cfg.window is None else cfg.window.example_length(cfg.max_len)
        input_ids = torch.randint(0, cfg.vocab_size, (batch, length), generator=generator)  # (B, T)
        lengths = torch.tensor([length - i for i in range(batch)]).clamp(min=1)  # (B,)
        attention_mask = (torch.arange(length)[None, :] < lengths[:, None]).long()  # (B, T)
        input_ids = input_ids * attention_mask  # padding is id 0
        model = GraphExport(
            "model",
            self,
            {"input_ids": input_ids, "attention_mask": attention_mask},
            ["logits"],
            {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}},
            # A short sequence and the whole position table, both unlike the example's 8.
            parity_sizes={"sequence": sorted({min(3, cfg.max_len), cfg.max_len})},
        )
        return [model]


@register_model("bert", config=BERTConfig, family="bert")
def bert(**overrides) -> BERT:
    return BERT(BERTConfig(**overrides))
