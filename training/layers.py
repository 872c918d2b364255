"""Building blocks shared by every model family, plus the small checks their configs use.

Everything here is export-pure: tensors in, tensors out, no data-dependent Python branching, so any
model assembled from these blocks exports to ONNX with a dynamic batch (and sequence) axis.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from training.local_attention import SlidingWindow, sliding_window_attention

# The activations a config may name. Kept to the classic five so that experiments (e.g. sigmoid vs
# relu on a deep MLP) compare like with like across families, plus MobileNet's ReLU6 (min(max(x, 0),
# 6): bounded activations keep low-precision inference accurate, the reason MobileNets use it).
ACTIVATIONS = ("relu", "sigmoid", "tanh", "silu", "gelu", "relu6")

_ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "relu6": nn.ReLU6,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for ``name`` (one of ``ACTIVATIONS``)."""
    if name not in _ACTIVATION_MODULES:
        raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}")
    return _ACTIVATION_MODULES[name]()


# --------------------------------------------------------------------------------------------------
# Config checks: each raises ValueError naming the field and what it accepts, so that a bad
# ``build_model(name, **overrides)`` call says exactly which override is wrong.


def check_choice(field: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{field} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def check_activation(field: str, value: Any) -> None:
    check_choice(field, value, ACTIVATIONS)


def check_positive_int(field: str, value: Any) -> None:
    # bool is an int subclass; True as a width is always a mistake.
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{field} must be a positive integer; got {value!r}")


def check_probability(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ValueError(f"{field} must be a number in [0, 1); got {value!r}")


def check_bool(field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{field} must be true or false; got {value!r}")


def int_tuple(field: str, value: Any, *, allow_empty: bool = False) -> tuple[int, ...]:
    """Validate a sequence of positive ints and return it as a tuple (JSON hands back lists)."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"{field} must be a sequence of positive integers; got {value!r}")
    items = tuple(value)
    if not items and not allow_empty:
        raise ValueError(f"{field} must not be empty")
    for item in items:
        check_positive_int(f"{field} entries", item)
    return items


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial size after a Conv2d/MaxPool2d/AvgPool2d (dilation 1, floor mode), as PyTorch computes it."""
    return (size + 2 * padding - kernel_size) // stride + 1


# --------------------------------------------------------------------------------------------------
# Blocks


class ConvNormAct(nn.Sequential):
    """Conv2d -> BatchNorm2d (optional) -> activation (optional): the unit every convnet repeats."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        norm: bool = True,
        activation: str | None = "relu",
        groups: int = 1,  # in_channels: a depthwise conv (one filter per channel, MobileNet)
    ) -> None:
        # Default padding keeps the size for odd kernels at stride 1 ("same") and halves it at stride 2.
        padding = kernel_size // 2 if padding is None else padding
        layers: list[nn.Module] = [
            # Batch norm has its own shift, so a conv bias before it is dead weight.
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=not norm)
        ]
        if norm:
            layers.append(nn.BatchNorm2d(out_channels))
        if activation is not None:
            layers.append(make_activation(activation))
        super().__init__(*layers)


class FeedForward(nn.Module):
    """Position-wise MLP of a transformer block: Linear -> activation -> dropout -> Linear -> dropout."""

    def __init__(self, dim: int, hidden_dim: int, activation: str = "gelu", dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = make_activation(activation)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(self.act(self.fc1(x)))  # (B, T, hidden_dim)
        return self.dropout(self.fc2(x))  # (B, T, dim)


class MultiHeadSelfAttention(nn.Module):
    """Hand-written multi-head self-attention.

    Written out rather than ``nn.MultiheadAttention`` because it exports to ONNX with dynamic batch
    and sequence axes under both exporters, and because a KV-cache variant needs to reach inside.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dropout: float = 0.0,
        window: SlidingWindow | None = None,
        slopes: Tensor | None = None,
    ) -> None:
        """``window``: local attention (training/local_attention.py) instead of full; ``slopes``: its
        ALiBi distance bias per head (H,), which full attention takes inside its mask instead."""
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.window = window
        self.register_buffer("slopes", slopes, persistent=False)  # a function of the config
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)

    def _split_heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x``: (B, T, dim). ``mask``: additive, broadcastable (B or 1, 1 or H, T, T); use 0 to keep
        a position and a large negative number (or -inf) to hide it. With a ``window`` the window
        decides which positions meet, and ``mask`` is an additive bias per key, (B, T) (padding)."""
        if self.window is None:  # fixed at construction: export sees one path
            return self.attend(x, x, mask)
        B, T, C = x.shape
        q = self._split_heads(self.q_proj(x))  # (B, H, T, D)
        k = self._split_heads(self.k_proj(x))  # (B, H, T, D)
        v = self._split_heads(self.v_proj(x))  # (B, H, T, D)
        out = sliding_window_attention(q, k, v, self.window, self.scale, mask, self.slopes, self.attn_dropout)
        return self.resid_dropout(self.out_proj(out.transpose(1, 2).reshape(B, T, C)))  # (B, T, dim)

    def attend(self, x: Tensor, memory: Tensor, mask: Tensor | None = None) -> Tensor:
        """Queries from ``x`` (B, T, dim), keys and values from ``memory`` (B, S, dim)."""
        B, T, C = x.shape
        q = self._split_heads(self.q_proj(x))  # (B, H, T, D)
        k = self._split_heads(self.k_proj(memory))  # (B, H, S, D)
        v = self._split_heads(self.v_proj(memory))  # (B, H, S, D)
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, T, S)
        if mask is not None:  # decided by the caller's signature, not by data: export-safe
            scores = scores + mask
        weights = self.attn_dropout(torch.softmax(scores, dim=-1))  # (B, H, T, S)
        out = (weights @ v).transpose(1, 2).reshape(B, T, C)  # (B, T, dim)
        return self.resid_dropout(self.out_proj(out))


class MultiHeadCrossAttention(MultiHeadSelfAttention):
    """Hand-written multi-head attention whose queries come from ``x`` and keys/values from ``memory``
    (an encoder-decoder's cross-attention). Same projections and export properties as the
    self-attention it extends; the source length may differ from the target length."""

    def forward(self, x: Tensor, memory: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """``x``: (B, T, dim) queries. ``memory``: (B, S, dim). ``mask``: additive, broadcastable to
        (B, H, T, S), e.g. (B, 1, 1, S) hiding source padding."""
        return self.attend(x, memory, mask)


class TransformerBlock(nn.Module):
    """Attention + feed-forward with residuals. Pre-norm (GPT-2/ViT) trains stably without warm-up
    tricks; post-norm (the 2017 original, BERT) is kept for faithful reproductions."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        activation: str = "gelu",
        pre_norm: bool = True,
        window: SlidingWindow | None = None,
        slopes: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.ln1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads, dropout, window, slopes)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, int(dim * mlp_ratio), activation, dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.pre_norm:  # fixed at construction, so export sees one path
            x = x + self.attn(self.ln1(x), mask)  # (B, T, dim)
            return x + self.ffn(self.ln2(x))
        x = self.ln1(x + self.attn(x, mask))
        return self.ln2(x + self.ffn(x))


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sin/cos position encoding of "Attention Is All You Need", added to (B, T, dim) inputs.

    ``positions`` (B, T) or (T,) lets a decoder step that starts at position ``past_length`` index the
    table directly, which keeps a KV-cache graph free of Python integers.
    """

    def __init__(self, dim: int, max_len: int = 512) -> None:
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)  # (max_len, 1)
        div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        pe = torch.zeros(max_len, dim)
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term[: dim // 2])  # odd dims have one fewer cos column
        # Not persistent: it is a pure function of (dim, max_len), so checkpoints need not carry it.
        self.register_buffer("pe", pe, persistent=False)  # (max_len, dim)

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        if positions is None:
            return x + self.pe[: x.shape[1]]  # (B, T, dim) + (T, dim)
        return x + self.pe[positions]  # (B, T, dim) + (B or 1, T, dim)
