"""Recurrent sequence classifiers: vanilla RNN, LSTM and GRU, one- or two-directional.

tokens (B, T) + lengths (B,) -> embedding -> packed RNN -> final state of each direction -> logits.

Padding-correct by construction: a right-padded row gives the same logits as the same sequence run
alone. The forward direction's final state is its output at position ``length - 1`` (not at ``T - 1``,
which would have run over padding), and the backward direction's is its output at position 0 (it
must *start* at ``length - 1``, which only packing gives it). Packing is also what exports (see
docs/ARCHITECTURE.md): ``pack_padded_sequence`` -> ``h_n`` fails with both ONNX exporters, while pack -> RNN ->
``pad_packed_sequence`` -> gather exports with the TorchScript exporter (dynamo unrolls the RNN to
the example length), where the RNN becomes one ONNX LSTM/GRU/RNN node fed ``sequence_lens``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from training.graphs import GraphExport
from training.layers import check_bool, check_choice, check_positive_int, check_probability
from training.registry import register_model

CELLS = ("rnn", "lstm", "gru")
_RNN_MODULES: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@dataclass
class RNNClassifierConfig:
    vocab_size: int = 15  # the order task: 5 special tokens + 10 symbols
    num_classes: int = 4  # the order task: (A before B?) x (C before D?)
    embed_dim: int = 32  # a small alphabet needs few dimensions
    hidden_size: int = 64  # per direction; the order task needs only two bits of memory, so 64 is ample
    num_layers: int = 1  # one layer solves the order task; stacking mostly slows a CPU down
    # "lstm"/"gru" gate their state and carry it across long gaps; "rnn" (tanh) is the classic cell
    # whose gradient vanishes or explodes over long sequences, kept to show exactly that.
    cell: str = "lstm"
    bidirectional: bool = False  # a second pass right-to-left; the head sees both final states
    # Between stacked layers (PyTorch applies it only when num_layers > 1) and before the head.
    dropout: float = 0.0
    pad_id: int = 0  # training.text's <pad>; its embedding row stays zero and never trains

    def __post_init__(self) -> None:
        check_positive_int("vocab_size", self.vocab_size)
        check_positive_int("num_classes", self.num_classes)
        check_positive_int("embed_dim", self.embed_dim)
        check_positive_int("hidden_size", self.hidden_size)
        check_positive_int("num_layers", self.num_layers)
        check_choice("cell", self.cell, CELLS)
        check_bool("bidirectional", self.bidirectional)
        check_probability("dropout", self.dropout)
        pad_ok = isinstance(self.pad_id, int) and not isinstance(self.pad_id, bool)
        if not pad_ok or not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id must be an integer in [0, vocab_size); got {self.pad_id!r}")

    @property
    def context_length(self) -> None:
        """None: a recurrent cell has no position table and reads a sequence of any length."""
        return None


class RNNClassifier(nn.Module):
    def __init__(self, config: RNNClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=config.pad_id)
        self.rnn = _RNN_MODULES[config.cell](
            config.embed_dim,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            # PyTorch warns about (and ignores) inter-layer dropout on a single layer.
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            bidirectional=config.bidirectional,
        )
        self.dropout = nn.Dropout(config.dropout)
        directions = 2 if config.bidirectional else 1
        self.head = nn.Linear(directions * config.hidden_size, config.num_classes)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """``tokens``: (B, T) int64, right-padded; ``lengths``: (B,) int64 true lengths -> (B, C) logits."""
        B = tokens.shape[0]
        H = self.config.hidden_size
        # Clamp lengths to [1, T]: ONNX callers (and the exporter's random parity inputs) may send a
        # length of 0 or one past the padded width, which packing rejects in PyTorch and which would
        # index outside the output in ONNX. The tracer records tokens.shape[1] as a Shape op, so the
        # exported Clip follows the input's T rather than the example's 12 (checked at T = 5 and 20).
        lengths = lengths.clamp(1, tokens.shape[1])  # (B,)
        x = self.embedding(tokens)  # (B, T, embed_dim)
        # enforce_sorted=False: callers batch requests in arrival order, not by length. Packing wants
        # lengths on the CPU whatever the model's device.
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)  # h_n of a packed RNN does not export (docs/ARCHITECTURE.md); use the outputs
        # total_length keeps the width at T even when every row is shorter; zeros beyond each length.
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])  # (B, T, D*H)
        # Forward direction: its output at the last real step, gathered per row.
        last = (lengths - 1).view(B, 1, 1).expand(B, 1, H)  # (B, 1, H)
        features = out[:, :, :H].gather(1, last).squeeze(1)  # (B, H)
        if self.config.bidirectional:  # fixed at construction: export sees one path
            # Backward direction: it started at length - 1 and ends at position 0.
            features = torch.cat([features, out[:, 0, H:]], dim=1)  # (B, 2H)
        return self.head(self.dropout(features))  # (B, num_classes)

    def graphs(self) -> list[GraphExport]:
        generator = torch.Generator().manual_seed(0)
        # Ids from 1: an example made of padding would be a poor trace input.
        tokens = torch.randint(1, self.config.vocab_size, (4, 12), generator=generator)  # (B, T)
        # Different lengths in shuffled order (packing must sort and unsort), one of them the full T.
        lengths = torch.tensor([5, 12, 3, 9])  # (B,)
        return [
            GraphExport(
                "model",
                self,
                {"tokens": tokens, "lengths": lengths},
                ["logits"],
                dynamic_axes={"tokens": {0: "batch", 1: "sequence"}, "lengths": {0: "batch"}},
                # Shorter and longer than the example, so a baked-in T would show.
                parity_sizes={"sequence": [5, 20]},
                exporter="torchscript",
            )
        ]


def _build(defaults: dict, overrides: dict) -> RNNClassifier:
    # Overrides win, so build_model("lstm", bidirectional=True) is allowed and means what it says.
    return RNNClassifier(RNNClassifierConfig(**{**defaults, **overrides}))


@register_model("rnn", config=RNNClassifierConfig, family="rnn")
def rnn(**overrides) -> RNNClassifier:
    return _build({"cell": "rnn"}, overrides)


@register_model("lstm", config=RNNClassifierConfig, family="rnn")
def lstm(**overrides) -> RNNClassifier:
    return _build({"cell": "lstm"}, overrides)


@register_model("gru", config=RNNClassifierConfig, family="rnn")
def gru(**overrides) -> RNNClassifier:
    return _build({"cell": "gru"}, overrides)


@register_model("bilstm", config=RNNClassifierConfig, family="rnn")
def bilstm(**overrides) -> RNNClassifier:
    return _build({"cell": "lstm", "bidirectional": True}, overrides)


@register_model("bigru", config=RNNClassifierConfig, family="rnn")
def bigru(**overrides) -> RNNClassifier:
    return _build({"cell": "gru", "bidirectional": True}, overrides)
