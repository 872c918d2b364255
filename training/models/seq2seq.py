"""Transformer encoder-decoder of "Attention Is All You Need" (Vaswani et al., 2017), sized for a CPU.

The paper's architecture: token embedding * sqrt(dim) + sinusoidal positions, post-norm layers
(residual, then LayerNorm), an encoder of self-attention + feed-forward layers that ignores source
padding, and a decoder of masked (causal) self-attention + cross-attention over the encoder output +
feed-forward layers, with the embedding shared by encoder, decoder and the output projection.

Attention is hand-written (:mod:`training.layers`) with ADDITIVE masks computed from tensors
(``src == pad_id``, ``arange``), so there is no data-dependent Python branching and both graphs
export with dynamic batch, source and target lengths. The model is exported as two graphs, the
``encoder`` (``src -> memory``) and the ``decoder`` (``tgt, memory, src -> logits``, recomputed over
the prefix at each step); :mod:`app.core.decoding` runs greedy and beam search over either the PyTorch
module (:func:`torch_callables`) or the ONNX graphs (:func:`onnx_callables`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from training.graphs import GraphExport
from training.layers import (
    FeedForward,
    MultiHeadCrossAttention,
    MultiHeadSelfAttention,
    SinusoidalPositionalEncoding,
    check_activation,
    check_bool,
    check_positive_int,
    check_probability,
)
from training.registry import register_model

# Additive mask value for hidden positions. Finite rather than -inf so that a row with every key
# hidden (an all-padding source) gives a uniform softmax instead of NaN; exp(-1e9) is exactly 0.
NEG_INF = -1e9


@dataclass
class Seq2SeqConfig:
    vocab_size: int = 73  # the date task's fixed character vocabulary (training.dates.date_tokenizer)
    dim: int = 128  # the paper's base model uses 512; 128 learns the date task in a few CPU minutes
    heads: int = 4  # head_dim = 32
    encoder_layers: int = 2  # 6 in the paper; short, regular strings need far less depth
    decoder_layers: int = 2
    ffn_dim: int = 256  # the paper's 4x dim; 2x halves the FFN cost at no loss on this task
    dropout: float = 0.1  # the paper's rate, on sub-layer outputs, attention weights and embeddings
    max_len: int = 64  # longest source or target sequence (positional table size); dates need 30
    pad_id: int = 0  # CharTokenizer's pad id; source padding is masked out of every attention
    activation: str = "relu"  # the paper's choice
    # Section 3.4 of the paper: one embedding matrix for source, target and the pre-softmax
    # projection; possible because source and target share one vocabulary. Fewer parameters.
    share_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "heads", "encoder_layers", "decoder_layers", "ffn_dim", "max_len"):
            check_positive_int(name, getattr(self, name))
        if self.dim % self.heads != 0:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        check_probability("dropout", self.dropout)
        if (
            isinstance(self.pad_id, bool)
            or not isinstance(self.pad_id, int)
            or not 0 <= self.pad_id < self.vocab_size
        ):
            raise ValueError(f"pad_id must be an id in [0, vocab_size); got {self.pad_id!r}")
        check_activation("activation", self.activation)
        check_bool("share_embeddings", self.share_embeddings)

    @property
    def context_length(self) -> int:
        """The longest source or target the model reads (the pipeline's one name for block_size / max_len)."""
        return self.max_len


def padding_mask(ids: Tensor, pad_id: int) -> Tensor:
    """(B, S) ids -> (B, 1, 1, S) additive mask: 0 for real tokens, NEG_INF for padding keys."""
    return (ids == pad_id).to(torch.float32)[:, None, None, :] * NEG_INF


def causal_mask(ids: Tensor) -> Tensor:
    """(B, T) ids -> (1, 1, T, T) additive mask hiding every later position (built from T, not data)."""
    pos = torch.arange(ids.shape[1], device=ids.device)  # (T,)
    return (pos[None, :] > pos[:, None]).to(torch.float32)[None, None] * NEG_INF  # (1, 1, T, T)


class EncoderLayer(nn.Module):
    """Post-norm: x = LN(x + SelfAttn(x)); x = LN(x + FFN(x))."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadSelfAttention(config.dim, config.heads, config.dropout)
        self.ln1 = nn.LayerNorm(config.dim)
        self.ffn = FeedForward(config.dim, config.ffn_dim, config.activation, config.dropout)
        self.ln2 = nn.LayerNorm(config.dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self.ln1(x + self.self_attn(x, mask))  # (B, S, dim)
        return self.ln2(x + self.ffn(x))  # (B, S, dim)


class DecoderLayer(nn.Module):
    """Post-norm: masked self-attention, cross-attention over the memory, feed-forward."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadSelfAttention(config.dim, config.heads, config.dropout)
        self.ln1 = nn.LayerNorm(config.dim)
        self.cross_attn = MultiHeadCrossAttention(config.dim, config.heads, config.dropout)
        self.ln2 = nn.LayerNorm(config.dim)
        self.ffn = FeedForward(config.dim, config.ffn_dim, config.activation, config.dropout)
        self.ln3 = nn.LayerNorm(config.dim)

    def forward(self, x: Tensor, memory: Tensor, self_mask: Tensor, memory_mask: Tensor) -> Tensor:
        x = self.ln1(x + self.self_attn(x, self_mask))  # (B, T, dim)
        x = self.ln2(x + self.cross_attn(x, memory, memory_mask))  # (B, T, dim)
        return self.ln3(x + self.ffn(x))  # (B, T, dim)


class Seq2Seq(nn.Module):
    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.dim)
        self.embed_scale = math.sqrt(config.dim)
        self.positions = SinusoidalPositionalEncoding(config.dim, config.max_len)
        self.dropout = nn.Dropout(config.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        self.head = nn.Linear(config.dim, config.vocab_size)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                # Glorot init as in the paper's reference code (tensor2tensor) and the Annotated
                # Transformer; PyTorch's default is tuned for relu stacks, not attention projections.
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # std dim^-0.5, so that embedding * sqrt(dim) has unit scale, like the positional encoding.
        nn.init.normal_(self.embedding.weight, std=config.dim**-0.5)
        if config.share_embeddings:
            self.head.weight = self.embedding.weight

    def _embed(self, ids: Tensor) -> Tensor:
        x = self.embedding(ids) * self.embed_scale  # (B, L, dim)
        # Positions as an index tensor: a gather exports with a dynamic length, where slicing the
        # table by a symbolic length would make the exporter demand a bound on it.
        positions = torch.arange(ids.shape[1], device=ids.device)  # (L,)
        return self.dropout(self.positions(x, positions))  # (B, L, dim)

    def encode(self, src: Tensor) -> Tensor:
        """``src``: (B, S) int64, right-padded with pad_id -> memory (B, S, dim)."""
        mask = padding_mask(src, self.config.pad_id)  # (B, 1, 1, S)
        x = self._embed(src)  # (B, S, dim)
        for layer in self.encoder:
            x = layer(x, mask)  # (B, S, dim)
        return x

    def decode(self, tgt: Tensor, memory: Tensor, src: Tensor) -> Tensor:
        """``tgt``: (B, T) int64 (bos + prefix), ``memory``: (B, S, dim), ``src``: (B, S) int64, used
        only for its padding mask -> logits (B, T, vocab_size); position t sees tgt[:, : t + 1]."""
        self_mask = causal_mask(tgt)  # (1, 1, T, T)
        memory_mask = padding_mask(src, self.config.pad_id)  # (B, 1, 1, S)
        x = self._embed(tgt)  # (B, T, dim)
        for layer in self.decoder:
            x = layer(x, memory, self_mask, memory_mask)  # (B, T, dim)
        return self.head(x)  # (B, T, vocab_size)

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        """Teacher forcing: (B, S) source and (B, T) decoder input -> logits (B, T, vocab_size)."""
        return self.decode(tgt, self.encode(src), src)

    def graphs(self) -> list[GraphExport]:
        """The ``encoder`` and ``decoder`` graphs (the examples need ``max_len >= 7``)."""
        cfg = self.config
        generator = torch.Generator().manual_seed(0)
        # Examples of 4 rows, source length 7, target length 5: every dynamic size >= 2 and the two
        # lengths different, so that dynamo cannot unify them. One row is padded; the top id occurs so
        # that the parity check (ids drawn below the example's maximum) covers the whole vocabulary.
        src = torch.randint(0, cfg.vocab_size, (4, 7), generator=generator)  # (B, S)
        src[:, 0] = cfg.vocab_size - 1
        src[1, 4:] = cfg.pad_id
        tgt = torch.randint(0, cfg.vocab_size, (4, 5), generator=generator)  # (B, T)
        tgt[:, 0] = cfg.vocab_size - 1
        was_training = self.training
        self.eval()
        with torch.no_grad():
            memory = self.encode(src)  # (B, S, dim)
        self.train(was_training)
        # Parity at lengths other than the examples': target length 1 (the first decoding step), a
        # source of 2 (one character + eos), and longer sequences of both.
        src_sizes = sorted({2, min(12, cfg.max_len)})
        tgt_sizes = sorted({1, min(9, cfg.max_len)})
        sizes = {"src_len": src_sizes, "tgt_len": tgt_sizes}
        return [
            GraphExport(
                "encoder",
                _EncoderGraph(self),
                {"src": src},
                ["memory"],
                {"src": {0: "batch", 1: "src_len"}},
                parity_sizes=sizes,
            ),
            GraphExport(
                "decoder",
                _DecoderGraph(self),
                {"tgt": tgt, "memory": memory, "src": src},
                ["logits"],
                {
                    "tgt": {0: "batch", 1: "tgt_len"},
                    "memory": {0: "batch", 1: "src_len"},
                    "src": {0: "batch", 1: "src_len"},
                },
                parity_sizes=sizes,
            ),
        ]


class _EncoderGraph(nn.Module):
    """The ``encoder`` graph: src (B, S) -> memory (B, S, dim)."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: Tensor) -> Tensor:
        return self.model.encode(src)


class _DecoderGraph(nn.Module):
    """The ``decoder`` graph: tgt (B, T), memory (B, S, dim), src (B, S) -> logits (B, T, V)."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(self, tgt: Tensor, memory: Tensor, src: Tensor) -> Tensor:
        return self.model.decode(tgt, memory, src)


@register_model("seq2seq", config=Seq2SeqConfig, family="seq2seq")
def seq2seq(**overrides) -> Seq2Seq:
    return Seq2Seq(Seq2SeqConfig(**overrides))


# --------------------------------------------------------------------------------------------------
# The callables app.core.decoding searches over: numpy in, numpy out.

EncodeFn = Callable[[np.ndarray], np.ndarray]
DecodeFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def torch_callables(model: Seq2Seq) -> tuple[EncodeFn, DecodeFn]:
    """(encode, decode) over the PyTorch model in eval mode (call it after training)."""
    model.eval()

    @torch.no_grad()
    def encode(src: np.ndarray) -> np.ndarray:
        return model.encode(torch.from_numpy(np.asarray(src, dtype=np.int64))).numpy()  # (B, S, dim)

    @torch.no_grad()
    def decode(tgt: np.ndarray, memory: np.ndarray, src: np.ndarray) -> np.ndarray:
        logits = model.decode(
            torch.from_numpy(np.asarray(tgt, dtype=np.int64)),
            torch.from_numpy(np.asarray(memory, dtype=np.float32)),
            torch.from_numpy(np.asarray(src, dtype=np.int64)),
        )
        return logits.numpy()  # (B, T, V)

    return encode, decode


def onnx_callables(version_dir: str | Path, threads: int = 1) -> tuple[EncodeFn, DecodeFn]:
    """(encode, decode) over ``encoder.onnx`` and ``decoder.onnx`` of an exported version folder,
    in onnxruntime on the CPU (``threads`` intra-op threads per session)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    version_dir = Path(version_dir)
    sessions = {
        role: ort.InferenceSession(
            str(version_dir / f"{role}.onnx"), options, providers=["CPUExecutionProvider"]
        )
        for role in ("encoder", "decoder")
    }

    def encode(src: np.ndarray) -> np.ndarray:
        (memory,) = sessions["encoder"].run(["memory"], {"src": np.asarray(src, dtype=np.int64)})
        return memory  # (B, S, dim)

    def decode(tgt: np.ndarray, memory: np.ndarray, src: np.ndarray) -> np.ndarray:
        feeds = {
            "tgt": np.asarray(tgt, dtype=np.int64),
            "memory": np.asarray(memory, dtype=np.float32),
            "src": np.asarray(src, dtype=np.int64),
        }
        (logits,) = sessions["decoder"].run(["logits"], feeds)
        return logits  # (B, T, V)

    return encode, decode
