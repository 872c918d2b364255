"""GPT: a decoder-only transformer language model (Radford et al., 2018/2019), nanoGPT-sized for a CPU.

Two graphs leave this file. ``model`` is the training forward, tokens (B, T) -> logits (B, T, V).
``decoder_step`` is what a server decodes with: it takes the new tokens (B, S), each row's cache length
(B,) and each layer's key/value cache (keys (B, H, D, T), values (B, H, T, D)), and returns the next
logits plus only the new positions' keys and values, which the caller stores in place. The same graph
prefills a prompt (T = 0, S = prompt length) and decodes one token at a time (S = 1); rows of different
lengths share one batch because each row's length, not the tensor's width, says which slots are real.
Sampling lives in ``app/core/sampling.py``: ``forward`` never samples.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from training.graphs import GraphExport
from training.layers import (
    FeedForward,
    MultiHeadSelfAttention,
    check_activation,
    check_bool,
    check_positive_int,
    check_probability,
)
from training.local_attention import SlidingWindow, ring_positions, visible, window_config
from training.registry import register_model

# Added to the attention scores of hidden keys. Finite on purpose: a query whose keys are all hidden
# (a left-padding position) then attends uniformly instead of producing NaN (softmax of all -inf),
# and a NaN there would reach real positions through the next layer's keys and values (0 * NaN = NaN).
MASK_VALUE = -1e9


@dataclass
class GPTConfig:
    # The built-in corpus needs 108 ids (5 specials + 103 characters); recipes set this from the
    # tokenizer, so the default only has to be big enough for a character vocabulary.
    vocab_size: int = 128
    # Context window (learned position table). 128 characters span two or three lines of prose: enough
    # for words and syntax, short enough that attention (O(T^2)) stays cheap on a CPU.
    block_size: int = 128
    dim: int = 128  # GPT-2 small uses 768; ~0.8M parameters at 4 layers train in minutes on one core
    heads: int = 4  # head_dim = 32
    layers: int = 4
    # Guards long runs: ~0.4M training characters overfit 0.8M parameters after a few epochs. A
    # 5-minute CPU run underfits and is better off with 0 (measured: val 1.47 vs 1.76 nats/char).
    dropout: float = 0.1
    activation: str = "gelu"  # GPT-2's choice
    # Share the token embedding with the output projection (GPT-2, nanoGPT, Press & Wolf 2017): the
    # logit of token v is then the similarity of the final state to v's embedding, and the matrix is
    # trained from both ends. For a character vocabulary it saves only V * dim weights; the point is
    # the regularisation, and it keeps the checkpoint layout the same as nanoGPT's.
    tie_weights: bool = True
    # Local attention (training/local_attention.py): each position sees the last ``attention_window``
    # positions (itself included) instead of all of them, plus the first ``global_tokens``, which every
    # position sees (Longformer's global attention; StreamingLLM calls such positions attention sinks).
    # The full-sequence graph then costs O(T * w) instead of O(T^2), and the step graph's cache holds
    # global_tokens + attention_window slots however long the text. None: full attention.
    attention_window: int | None = None
    global_tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "dim", "heads", "layers"):
            check_positive_int(name, getattr(self, name))
        if self.block_size < 2:
            raise ValueError(f"block_size must be at least 2; got {self.block_size}")
        if self.dim % self.heads != 0:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        check_probability("dropout", self.dropout)
        check_activation("activation", self.activation)
        check_bool("tie_weights", self.tie_weights)
        window_config(self.attention_window, self.global_tokens, True, self.block_size)  # raises if invalid

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def context_length(self) -> int:
        """The longest sequence the model reads (the pipeline's one name for block_size / max_len)."""
        return self.block_size

    @property
    def window(self) -> SlidingWindow | None:
        return window_config(self.attention_window, self.global_tokens, True, self.block_size)


class CachedSelfAttention(MultiHeadSelfAttention):
    """The shared hand-written attention plus a key/value-cache path for decoding."""

    def forward_cached(
        self, x: Tensor, past_mask: Tensor, new_mask: Tensor, past_key: Tensor, past_value: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``x``: (B, S, dim) new positions; ``past_key``: (B, H, D, T) and ``past_value``: (B, H, T, D)
        cache slots; ``past_mask``: additive, (B, 1, 1 or S, T), hiding each row's unused slots (and,
        with local attention, the slots out of each query's window); ``new_mask``: additive, (B or 1,
        1, S, S), among the new positions. Returns the output (B, S, dim) and the new positions' keys
        (B, H, D, S) and values (B, H, S, D).

        Keys are kept transposed so that the score product reads them without a transpose (in
        onnxruntime's profile at batch 16 and T = 128 that matmul took ~100 instead of ~120 us).

        The cache is read, never copied: scores against the past and against the new positions are
        computed apart and share one softmax. A graph that concatenated past and new keys would copy
        the whole cache every step, which is most of a batched step's time at this model size.
        """
        B, S, C = x.shape
        T = past_key.shape[3]
        q = self._split_heads(self.q_proj(x))  # (B, H, S, D)
        k = self._split_heads(self.k_proj(x))  # (B, H, S, D)
        v = self._split_heads(self.v_proj(x))  # (B, H, S, D)
        k = k.transpose(-2, -1)  # (B, H, D, S)
        past_scores = (q @ past_key) * self.scale + past_mask  # (B, H, S, T)
        new_scores = (q @ k) * self.scale + new_mask  # (B, H, S, S)
        weights = torch.softmax(torch.cat([past_scores, new_scores], dim=-1), dim=-1)  # (B, H, S, T + S)
        weights = self.attn_dropout(weights)
        out = weights[..., :T] @ past_value + weights[..., T:] @ v  # (B, H, S, D)
        out = out.transpose(1, 2).reshape(B, S, C)  # (B, S, dim)
        return self.resid_dropout(self.out_proj(out)), k, v


class Block(nn.Module):
    """Pre-norm transformer block (GPT-2): x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.dim)
        self.attn = CachedSelfAttention(config.dim, config.heads, config.dropout, config.window)
        self.ln2 = nn.LayerNorm(config.dim)
        # 4 x dim hidden width, as in every GPT.
        self.ffn = FeedForward(config.dim, 4 * config.dim, config.activation, config.dropout)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = x + self.attn(self.ln1(x), mask)  # (B, T, dim)
        return x + self.ffn(self.ln2(x))  # (B, T, dim)

    def forward_cached(
        self, x: Tensor, past_mask: Tensor, new_mask: Tensor, past_key: Tensor, past_value: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        attended, key, value = self.attn.forward_cached(self.ln1(x), past_mask, new_mask, past_key, past_value)
        x = x + attended  # (B, S, dim)
        return x + self.ffn(self.ln2(x)), key, value


def causal_mask(length: int | torch.SymInt, device: torch.device | None = None) -> Tensor:
    """Additive (1, 1, T, T) mask: position t sees positions <= t."""
    pos = torch.arange(length, device=device)  # (T,)
    hidden = pos[None, :] > pos[:, None]  # (T, T), True above the diagonal
    return (hidden.float() * MASK_VALUE)[None, None]  # (1, 1, T, T)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        # "embedding" in the names keeps them out of weight decay (training.trainer.make_optimizer).
        self.token_embedding = nn.Embedding(config.vocab_size, config.dim)
        self.position_embedding = nn.Embedding(config.block_size, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(config.dim)  # pre-norm blocks leave the residual stream unnormalised
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_weights:
            self.head.weight = self.token_embedding.weight
        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 * layers), so
        # that the stream's variance does not grow with depth at init.
        residual_std = 0.02 / math.sqrt(2 * config.layers)
        for block in self.blocks:
            nn.init.normal_(block.attn.out_proj.weight, std=residual_std)
            nn.init.normal_(block.ffn.fc2.weight, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # GPT-2's N(0, 0.02) everywhere; PyTorch's fan-in default makes the tied logits too large.
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        """Training forward: ``tokens`` (B, T) int64 with T <= block_size -> logits (B, T, vocab_size)."""
        T = tokens.shape[1]
        positions = torch.arange(T, device=tokens.device)  # (T,)
        x = self.token_embedding(tokens) + self.position_embedding(positions)  # (B, T, dim)
        x = self.dropout(x)
        # Local attention applies its window itself, at O(T * w) rather than through a T x T mask.
        mask = causal_mask(T, tokens.device) if self.config.window is None else None  # (1, 1, T, T)
        for block in self.blocks:
            x = block(x, mask)  # (B, T, dim)
        return self.head(self.ln_f(x))  # (B, T, V)

    def forward_cached(
        self, tokens: Tensor, past_lengths: Tensor, past: list[Tensor]
    ) -> tuple[Tensor, list[Tensor]]:
        """One decoding step over S new tokens per row, each row with its own cache length.

        ``tokens``: (B, S) int64, at positions ``past_lengths[b] + s``. ``past_lengths``: (B,) int64,
        how many leading slots of row b's cache hold its sequence; later slots are ignored whatever
        finite values they hold (the mask is additive, and 0 * NaN is NaN), so a server can keep one
        preallocated cache for a batch of sequences of different lengths. ``past``: [key_0, value_0,
        key_1, ...], keys (B, H, D, T) and values (B, H, T, D), T = 0 allowed. A row may be
        right-padded in S: causal attention keeps the padding out of the real positions' outputs.
        Positions are clamped to [0, block_size - 1], so no input indexes outside the table; a caller
        must stop (or slide its window) at block_size positions, where the clamp repeats the last one.
        Returns logits (B, S, V) and the new positions' cache entries in ``past``'s order and layout
        (S slots each), for the caller to store at slots ``past_lengths[b] + s``; with local attention
        at ``slot_of(past_lengths[b] + s)`` (training/local_attention.py), the newest winning a slot.
        """
        S = tokens.shape[1]
        slots = torch.arange(past[1].shape[2], device=tokens.device)  # (T,), from a value cache
        lengths = past_lengths[:, None]  # (B, 1)
        positions = lengths + torch.arange(S, device=tokens.device)  # (B, S)
        window = self.config.window
        if window is None:
            unused = slots[None, :] >= lengths  # (B, T)
            past_mask = (unused.float() * MASK_VALUE)[:, None, None]  # (B, 1, 1, T)
            new_mask = causal_mask(S, tokens.device)  # (1, 1, S, S)
        else:
            # The cache is a ring (training/local_attention.py): which position each slot holds
            # depends on the row's length, and what a query sees on the query's position.
            slot_positions, held = ring_positions(slots, lengths, window)  # (B, T) each
            seen = held[:, None, :] & visible(positions[:, :, None], slot_positions[:, None, :], window)
            past_mask = torch.where(seen, 0.0, MASK_VALUE)[:, None]  # (B, 1, S, T)
            new_seen = visible(positions[:, :, None], positions[:, None, :], window)  # (B, S, S)
            new_mask = torch.where(new_seen, 0.0, MASK_VALUE)[:, None]  # (B, 1, S, S)
        positions = positions.clamp(0, self.config.block_size - 1)
        x = self.token_embedding(tokens) + self.position_embedding(positions)  # (B, S, dim)
        x = self.dropout(x)
        new = []
        for i, block in enumerate(self.blocks):
            x, key, value = block.forward_cached(x, past_mask, new_mask, past[2 * i], past[2 * i + 1])
            new += [key, value]  # (B, H, S, D) each
        return self.head(self.ln_f(x)), new  # (B, S, V)

    def empty_cache(self, batch_size: int) -> list[Tensor]:
        """[key_0, value_0, ...] with no slots, the cache before a prompt's prefill."""
        device = self.token_embedding.weight.device
        return [torch.zeros(self.cache_shape(name, batch_size, 0), device=device) for name in self.cache_names("past")]

    @staticmethod
    def cache_axis(name: str) -> int:
        """The length axis of a cache tensor: keys are stored (B, H, D, T), values (B, H, T, D)."""
        return 3 if "_key_" in name else 2

    def cache_shape(self, name: str, batch: int, length: int) -> tuple[int, int, int, int]:
        cfg = self.config
        if self.cache_axis(name) == 3:
            return (batch, cfg.heads, cfg.head_dim, length)
        return (batch, cfg.heads, length, cfg.head_dim)

    def cache_names(self, prefix: str) -> list[str]:
        """Graph names of the cache tensors: ``{prefix}_key_0``, ``{prefix}_value_0``, ..."""
        return [f"{prefix}_{kind}_{i}" for i in range(self.config.layers) for kind in ("key", "value")]

    def step_module(self) -> GPTDecoderStep:
        return GPTDecoderStep(self)

    def graphs(self) -> list[GraphExport]:
        cfg = self.config
        generator = torch.Generator().manual_seed(0)
        # Full sequence. Example sizes >= 2 keep batch and sequence symbolic; parity runs at the two
        # extremes, 1 and the whole context.
        length = min(8, cfg.block_size) if cfg.window is None else cfg.window.example_length(cfg.block_size)
        tokens = torch.randint(0, cfg.vocab_size, (4, length), generator=generator)  # (B, T)
        model = GraphExport(
            "model",
            self,
            {"tokens": tokens},
            ["logits"],
            {"tokens": {0: "batch", 1: "sequence"}},
            parity_sizes={"sequence": [1, cfg.block_size]},
        )

        # Decoder step: B = 4 rows holding 3, 2, 1 and 0 of T = 3 cache slots, S = 2 new tokens each.
        batch, past_len, step = 4, 3, 2
        inputs = {
            "tokens": torch.randint(0, cfg.vocab_size, (batch, step), generator=generator),
            "past_lengths": torch.arange(batch - 1, -1, -1),  # (B,)
        }
        for name in self.cache_names("past"):
            shape = self.cache_shape(name, batch, past_len)
            inputs[name] = torch.randn(shape, generator=generator)
        axes = {
            "tokens": {0: "batch", 1: "step"},
            **{name: {0: "batch", self.cache_axis(name): "past"} for name in self.cache_names("past")},
        }
        decoder_step = GraphExport(
            "decoder_step",
            self.step_module(),
            inputs,
            ["logits", *self.cache_names("new")],
            axes,
            # T = 0 is a prefill; lengths are drawn up to 3, so at T = 5 some slots are unused.
            parity_sizes={"past": [0, 5], "step": [1, 4]},
        )
        return [model, decoder_step]


class GPTDecoderStep(nn.Module):
    """Export wrapper: flat tensors in and out, names as in :meth:`GPT.graphs` ("decoder_step").

    Inputs: tokens, past_lengths, past_key_0, past_value_0, ...
    Outputs: logits, new_key_0, new_value_0, ...
    """

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        self.gpt = gpt
        # torch.export binds inputs to forward's signature and would see ``*past`` as one nested
        # input; give this instance's forward one named parameter per cache tensor instead.
        names = ["tokens", "past_lengths", *gpt.cache_names("past")]
        forward = functools.partial(GPTDecoderStep._step, self)
        forward.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names]
        )
        self.forward = forward

    def _step(
        self, tokens: Tensor, past_lengths: Tensor, *past: Tensor
    ) -> tuple[Tensor, ...]:
        logits, new = self.gpt.forward_cached(tokens, past_lengths, list(past))
        return (logits, *new)


@register_model("gpt", config=GPTConfig, family="gpt")
def gpt(**overrides) -> GPT:
    return GPT(GPTConfig(**overrides))
