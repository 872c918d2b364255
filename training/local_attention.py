"""Local (sliding-window) attention, Longformer-style (Beltagy et al., 2020), for the GPT and the BERT.

Each query attends to the keys within ``window`` positions of it (causal: the ``window`` positions up
to and including itself; bidirectional: ``window - 1`` either side), plus a few *global* positions,
the first ``global_tokens`` of the sequence, that every query sees (and, bidirectional, that see
every position: BERT's first token, which the classifier reads). Full attention costs O(T^2) per
layer; this costs O(T * window).

A mask over the full T x T scores would give the same numbers at the full cost, so the sequence is
cut into chunks of ``window`` queries, and each chunk is scored against its own chunk and its
neighbours (2 chunks causal, 3 bidirectional): T/w chunks of w x 2w (or 3w) scores. Every operation
is a reshape, a pad or a batched matmul, so the graph exports with a symbolic sequence axis.

The decoder's KV-cache step keeps only the window: ``global_tokens + window`` slots, the global
positions in the first slots and the others in a ring (``AttentionWindow.slot_of`` of the repository
format says where a position goes, :func:`ring_positions` which position a slot holds).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from app.core.repository_format import AttentionWindow

# Added to hidden scores; finite for the reason given in training.models.gpt (an all-hidden row
# attends uniformly instead of giving NaN).
MASK_VALUE = -1e9


@dataclass(frozen=True)
class SlidingWindow:
    window: int  # positions a query sees on each side it looks at, itself included
    global_tokens: int = 0  # the first positions of a sequence, visible to (and, bidirectional, seeing) all
    causal: bool = True  # GPT: look back only; BERT: both ways

    def __post_init__(self) -> None:
        for name, least in (("attention_window", 1), ("global_tokens", 0)):
            value = self.window if name == "attention_window" else self.global_tokens
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}; got {value!r}")

    def example_length(self, context: int) -> int:
        """A sequence length for an export example: longer than the window, so that the chunks are at
        least two (with one, the exporter fixes the sequence axis to the example's length)."""
        return min(context, self.window + 3)

    def as_format(self) -> AttentionWindow:
        """What config.json tells the server (its cache's ring)."""
        return AttentionWindow(window=self.window, global_tokens=self.global_tokens)


def window_config(window: int | None, global_tokens: int, causal: bool, context: int) -> SlidingWindow | None:
    """A config's two fields as a :class:`SlidingWindow`, or None for full attention (checked against
    the model's ``context`` length)."""
    if window is not None and not isinstance(window, bool) and isinstance(window, int) and window >= context:
        raise ValueError(
            f"attention_window ({window}) must be smaller than the context ({context}): a window over "
            "the whole context is full attention"
        )
    if window is None:
        if global_tokens:
            raise ValueError(
                "global_tokens needs attention_window (global positions are part of local attention)"
            )
        return None
    return SlidingWindow(window, global_tokens, causal)


def visible(query_pos: Tensor, key_pos: Tensor, spec: SlidingWindow) -> Tensor:
    """Whether each query position sees each key position (broadcasting), by the window and the
    global positions alone; the caller adds what is out of range or padding."""
    offset = query_pos - key_pos
    if spec.causal:
        near = (offset >= 0) & (offset < spec.window)
        glob = (key_pos < spec.global_tokens) & (offset >= 0)
    else:
        near = offset.abs() < spec.window
        glob = (key_pos < spec.global_tokens) | (query_pos < spec.global_tokens)
    return near | glob


def _chunks(x: Tensor, pad: int | torch.SymInt, w: int) -> Tensor:
    """(B, H, T, D) -> (B, H, N, w, D), zero-padded at the end to N * w positions."""
    B, H, _, D = x.shape
    return F.pad(x, (0, 0, 0, pad)).reshape(B, H, -1, w, D)


def _neighbours(chunks: Tensor, causal: bool) -> Tensor:
    """(B, H, N, w, D) -> (B, H, N, K, D): each chunk with the one before it (and after it unless
    causal), K = 2w or 3w; the missing neighbours of the first and last chunk are zeros."""
    before = F.pad(chunks, (0, 0, 0, 0, 1, 0))[:, :, :-1]  # chunk n-1 at n
    if causal:
        return torch.cat([before, chunks], dim=3)
    after = F.pad(chunks, (0, 0, 0, 0, 0, 1))[:, :, 1:]  # chunk n+1 at n
    return torch.cat([before, chunks, after], dim=3)


def sliding_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    spec: SlidingWindow,
    scale: float,
    key_bias: Tensor | None = None,
    slopes: Tensor | None = None,
    dropout: torch.nn.Module | None = None,
) -> Tensor:
    """Attention of ``q``, ``k``, ``v`` (B, H, T, D) under ``spec``; returns (B, H, T, D).

    ``key_bias``: additive (B, T) per key (BERT's padding: 0 real, MASK_VALUE padding). ``slopes``:
    (H,) ALiBi slopes, adding -slope_h * |i - j| to the scores (BERT's distance bias).
    """
    B, H, T, D = q.shape
    w, g = spec.window, spec.global_tokens
    pad = (w - T % w) % w
    qc = _chunks(q, pad, w)  # (B, H, N, w, D)
    keys = _neighbours(_chunks(k, pad, w), spec.causal)  # (B, H, N, K, D)
    values = _neighbours(_chunks(v, pad, w), spec.causal)  # (B, H, N, K, D)
    N, K = qc.shape[2], keys.shape[3]

    chunk_start = torch.arange(N, device=q.device)[:, None, None] * w  # (N, 1, 1)
    query_pos = chunk_start + torch.arange(w, device=q.device)[None, :, None]  # (N, w, 1)
    key_pos = chunk_start - w + torch.arange(K, device=q.device)[None, None, :]  # (N, 1, K)
    # Global keys are scored apart (below), so the window leaves them out here: none counted twice.
    keep = visible(query_pos, key_pos, spec) & (key_pos >= g) & (key_pos < T)  # (N, w, K)
    bias = torch.where(keep, 0.0, MASK_VALUE)  # (N, w, K)
    if slopes is not None:
        bias = bias - slopes[:, None, None, None] * (query_pos - key_pos).abs()  # (H, N, w, K)
    if key_bias is not None:
        kb = F.pad(key_bias, (0, pad)).reshape(B, 1, -1, 1, w)  # (B, 1, N, 1, w)
        before = F.pad(kb, (0, 0, 0, 0, 1, 0))[:, :, :-1]
        parts = [before, kb] if spec.causal else [before, kb, F.pad(kb, (0, 0, 0, 0, 0, 1))[:, :, 1:]]
        bias = bias + torch.cat(parts, dim=-1)  # (B, H or 1, N, w, K)
    scores = (qc @ keys.transpose(-2, -1)) * scale + bias  # (B, H, N, w, K)

    if g:
        g_keys, g_values = k[:, :, None, :g], v[:, :, None, :g]  # (B, H, 1, G, D), G = min(g, T)
        gp = torch.arange(g_keys.shape[3], device=q.device)  # (G,)
        g_bias = torch.where(visible(query_pos, gp, spec), 0.0, MASK_VALUE)  # (N, w, g)
        if slopes is not None:
            g_bias = g_bias - slopes[:, None, None, None] * (query_pos - gp).abs()
        if key_bias is not None:
            g_bias = g_bias + key_bias[:, None, None, None, :g]
        g_scores = (qc @ g_keys.transpose(-2, -1)) * scale + g_bias  # (B, H, N, w, G)
        scores = torch.cat([g_scores, scores], dim=-1)  # (B, H, N, w, G + K)

    weights = torch.softmax(scores, dim=-1)
    if dropout is not None:
        weights = dropout(weights)
    if g:
        G = g_keys.shape[3]
        out = weights[..., G:] @ values + weights[..., :G] @ g_values  # (B, H, N, w, D)
    else:
        out = weights @ values  # (B, H, N, w, D)
    out = out.reshape(B, H, -1, D)[:, :, :T]  # (B, H, T, D)

    if g and not spec.causal:
        # Global queries see every position: g rows of full attention, O(g * T).
        pos = torch.arange(T, device=q.device)
        full = (q[:, :, :g] @ k.transpose(-2, -1)) * scale  # (B, H, g, T)
        if slopes is not None:
            full = full - slopes[:, None, None] * (pos[: full.shape[2], None] - pos[None, :]).abs()
        if key_bias is not None:
            full = full + key_bias[:, None, None, :]
        full_weights = torch.softmax(full, dim=-1)
        if dropout is not None:
            full_weights = dropout(full_weights)
        out = torch.cat([full_weights @ v, out[:, :, g:]], dim=2)  # (B, H, T, D)
    return out


def ring_positions(slots: Tensor, lengths: Tensor, spec: SlidingWindow) -> tuple[Tensor, Tensor]:
    """For cache ``slots`` (T,) and rows holding ``lengths`` (B, 1) positions stored by the
    repository format's ``AttentionWindow.slot_of``: the position each slot holds (B, T) and whether
    it holds one (B, T)."""
    g, w = spec.global_tokens, spec.window
    ring = slots - g  # (T,), the ring index of non-global slots
    behind = (lengths - 1 - g - ring).clamp(min=0)  # (B, T), how far the newest use lies past the first
    position = torch.where(ring < 0, slots, g + ring + w * torch.div(behind, w, rounding_mode="floor"))
    # Logical operators, not a where of booleans (onnxruntime has no boolean Where kernel).
    held = ((ring < 0) & (slots < lengths)) | ((ring >= 0) & (ring < w) & (lengths - 1 - g - ring >= 0))
    return position, held
