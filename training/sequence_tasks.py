"""Generated sequence-classification tasks whose label depends on token ORDER (no downloads).

The order task: every sequence holds the four markers ``A``, ``B``, ``C`` and ``D`` the same number of
times (1 to ``max_repeats``), at random positions among filler symbols ``e``..``j``. The label is the
pair of answers "does the first A come before the first B?" and "does the first C come before the
first D?", four balanced classes. Every marker occurs equally often and the filler is drawn
independently of the label, so token counts carry no information about it: a bag-of-tokens model
stays at chance (25%) by construction. Repeats also rule out the flip-flop shortcut "which marker of
the pair came last" (~62% here), the one a vanilla RNN finds; the model must latch the first marker
of each pair and ignore the later ones across up to ``max_len`` steps, which gated cells (LSTM/GRU)
learn in a few epochs. A backward pass sees the first occurrence last, so bidirectional models have
it easy.

Token ids follow :mod:`training.text`'s layout (ids 0..4 are the special tokens, pad = 0, symbols from
5), so the same :class:`~training.text.CharTokenizer` turns a string such as ``"eAgBhDCf"`` into the
ids the model was trained on.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from training.text import SPECIAL_TOKENS, CharTokenizer

MARKERS = ("A", "B", "C", "D")  # (A, B) and (C, D) are the two ordered pairs the label asks about
FILLER = ("e", "f", "g", "h", "i", "j")  # lower case so that markers stand out when printed
SYMBOLS = MARKERS + FILLER  # 10 symbols -> ids 5..14
ORDER_LABELS = ["A<B,C<D", "A<B,D<C", "B<A,C<D", "B<A,D<C"]  # bit 1: B first, bit 0: D first


class SequenceTask(NamedTuple):
    """A generated data set; unpacks as ``tokens, lengths, labels, vocab, label_names``."""

    tokens: Tensor  # (N, max_len) int64, right-padded with 0
    lengths: Tensor  # (N,) int64, true lengths in [min_len, max_len]
    labels: Tensor  # (N,) int64
    vocab: list[str]  # vocab[i] is the token of id i (specials first)
    label_names: list[str]


def order_task_tokenizer() -> CharTokenizer:
    """The tokenizer whose ids match :func:`make_order_task` (what an exported model's config carries)."""
    return CharTokenizer(chars=list(SYMBOLS))


def make_order_task(
    n: int, seed: int, min_len: int = 8, max_len: int = 40, max_repeats: int = 3
) -> SequenceTask:
    """``n`` sequences of the order task, deterministic in ``seed``; classes balanced to within one."""
    if n <= 0:
        raise ValueError(f"n must be positive; got {n}")
    if not len(MARKERS) <= min_len <= max_len:
        raise ValueError(f"need {len(MARKERS)} <= min_len <= max_len; got {min_len=}, {max_len=}")
    if max_repeats < 1:
        raise ValueError(f"max_repeats must be >= 1; got {max_repeats}")
    rng = np.random.default_rng(seed)
    tokenizer = order_task_tokenizer()
    marker_ids = [tokenizer.token_id(m) for m in MARKERS]
    filler_ids = np.array([tokenizer.token_id(f) for f in FILLER])

    # Exact balance: labels cycle through the classes, then get shuffled.
    labels = rng.permutation(np.arange(n) % len(ORDER_LABELS))
    lengths = rng.integers(min_len, max_len + 1, size=n)
    tokens = np.zeros((n, max_len), dtype=np.int64)  # 0 = <pad>
    for i in range(n):
        length = int(lengths[i])
        row = rng.choice(filler_ids, size=length)
        # Each marker occurs `repeats` times (the same for all four, so counts say nothing). With
        # repeats > 1 "which came first" is no longer "which came last": a set/reset flip-flop that
        # tracks the latest marker fails, and the model must latch the first one and ignore the rest.
        repeats = int(rng.integers(1, min(max_repeats, length // len(MARKERS)) + 1))
        pos = rng.permutation(length)[: len(MARKERS) * repeats]
        ab, cd = pos[: 2 * repeats], pos[2 * repeats :]
        b_first, d_first = divmod(int(labels[i]), 2)
        a_id, b_id, c_id, d_id = marker_ids
        for pair, (x_id, y_id), y_first in ((ab, (a_id, b_id), b_first), (cd, (c_id, d_id), d_first)):
            # The earliest slot goes to the marker the label puts first; the rest are shuffled.
            first, rest = pair.min(), rng.permutation(np.setdiff1d(pair, pair.min()))
            leader, other = (y_id, x_id) if y_first else (x_id, y_id)
            row[first] = leader
            row[rest[: repeats - 1]] = leader
            row[rest[repeats - 1 :]] = other
        tokens[i, :length] = row
    return SequenceTask(
        tokens=torch.from_numpy(tokens),
        lengths=torch.from_numpy(lengths.astype(np.int64)),
        labels=torch.from_numpy(labels.astype(np.int64)),
        vocab=[*SPECIAL_TOKENS, *SYMBOLS],
        label_names=list(ORDER_LABELS),
    )


def token_counts(tokens: Tensor, vocab_size: int) -> np.ndarray:
    """(N, T) padded ids -> (N, vocab_size) counts, padding column zeroed: the bag-of-tokens view."""
    counts = torch.zeros(tokens.shape[0], vocab_size, dtype=torch.float64)
    counts.scatter_add_(1, tokens, torch.ones_like(tokens, dtype=torch.float64))
    counts[:, 0] = 0.0  # pad id 0: how much padding a row has is its length, already in the counts
    return counts.numpy()


def bag_of_tokens_baseline(train: SequenceTask | tuple, test: SequenceTask | tuple) -> float:
    """Test accuracy of logistic regression on token counts: what ignoring order can reach."""
    from sklearn.linear_model import LogisticRegression

    vocab_size = int(max(train[0].max(), test[0].max())) + 1
    x_train, x_test = token_counts(train[0], vocab_size), token_counts(test[0], vocab_size)
    classifier = LogisticRegression(max_iter=1000)
    classifier.fit(x_train, train[2].numpy())
    return float((classifier.predict(x_test) == test[2].numpy()).mean())
