"""Greedy and beam-search decoding for encoder-decoder models, in numpy only (no torch, no onnxruntime).

The model is two callables, which the server backs with onnxruntime sessions and training with either
the PyTorch module or the same ONNX graphs:

* ``encode(src_ids)``: ``src_ids`` (B, S) int64, right-padded -> ``memory`` (B, ...), any array
  whose first axis is the batch;
* ``decode(tgt_ids, memory, src_ids)``: ``tgt_ids`` (B, T) int64 = bos + the prefix so far ->
  ``logits`` (B, T, V). Only the last position is used: the decoder is recomputed over the whole
  prefix at every step, which keeps the graph a plain full-sequence decoder (no KV cache).

Both searches are batched over the B source sequences and stop calling the model for sequences that
have finished. Outputs hold the generated ids without bos, eos included where one was produced,
right-padded with ``pad_id``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

EncodeFn = Callable[[np.ndarray], np.ndarray]
DecodeFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _check(src_ids: np.ndarray, max_len: int) -> np.ndarray:
    src = np.asarray(src_ids)
    if src.ndim != 2 or not np.issubdtype(src.dtype, np.integer):
        raise ValueError(f"src_ids must be a (batch, length) integer array; got {src.dtype} {src.shape}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1; got {max_len}")
    return src.astype(np.int64, copy=False)


def greedy_decode(
    encode: EncodeFn,
    decode: DecodeFn,
    src_ids: np.ndarray,
    *,
    bos_id: int,
    eos_id: int,
    max_len: int,
    pad_id: int = 0,
) -> np.ndarray:
    """The most likely next token at every step, for at most ``max_len`` generated tokens.

    Returns (B, L) int64 with L <= max_len: each row's tokens up to and including its eos, then pad.
    """
    src = _check(src_ids, max_len)
    batch = src.shape[0]
    memory = encode(src)  # (B, ...)
    tokens = np.full((batch, 1), bos_id, dtype=np.int64)  # (B, 1 + steps)
    done = np.zeros(batch, dtype=bool)
    for _ in range(max_len):
        active = np.flatnonzero(~done)
        logits = decode(tokens[active], memory[active], src[active])[:, -1]  # (A, V)
        step = np.full(batch, pad_id, dtype=np.int64)
        step[active] = np.argmax(logits, axis=-1)
        tokens = np.concatenate([tokens, step[:, None]], axis=1)
        done[active] |= step[active] == eos_id
        if done.all():
            break
    return tokens[:, 1:]


@dataclass
class BeamResult:
    # (B, K, L) int64, best first per source: generated ids (no bos), eos included, right-padded.
    sequences: np.ndarray
    # (B, K) float64: sum of token log-probabilities / length ** length_penalty; -inf marks an
    # empty slot (only when fewer than K hypotheses exist, e.g. a vocabulary smaller than the beam).
    scores: np.ndarray


def beam_search(
    encode: EncodeFn,
    decode: DecodeFn,
    src_ids: np.ndarray,
    *,
    bos_id: int,
    eos_id: int,
    max_len: int,
    beam_size: int = 4,
    length_penalty: float = 1.0,
    pad_id: int = 0,
) -> BeamResult:
    """Beam search with length normalisation, batched over the B sources.

    Each step extends the K live hypotheses of a source by every token and keeps the 2K best
    extensions: those ending in eos among the K best are finished, the best K others stay live
    (the scheme of fairseq and Hugging Face). A source is done once it has K finished hypotheses;
    at ``max_len`` its live ones count as finished. Finished hypotheses are ranked by
    ``sum log p / length ** length_penalty`` (length = generated tokens, eos included; 0 ranks by
    the raw sum, which favours short outputs; 1 by the mean per-token log-probability).

    With ``beam_size=1`` this is exactly :func:`greedy_decode`.
    """
    src = _check(src_ids, max_len)
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1; got {beam_size}")
    batch, k = src.shape[0], beam_size
    memory = encode(src)  # (B, ...)
    tokens = np.full((batch, k, 1), bos_id, dtype=np.int64)  # (B, K, 1 + steps) live hypotheses
    # Only the first live hypothesis is real at the start; the others would duplicate it.
    scores = np.full((batch, k), -np.inf)  # (B, K) summed log-probabilities
    scores[:, 0] = 0.0
    finished: list[list[tuple[float, np.ndarray]]] = [[] for _ in range(batch)]
    done = np.zeros(batch, dtype=bool)

    for step in range(1, max_len + 1):
        active = np.flatnonzero(~done)
        n = len(active)
        width = tokens.shape[2]
        flat = tokens[active].reshape(n * k, width)  # (A * K, t)
        logits = decode(flat, np.repeat(memory[active], k, axis=0), np.repeat(src[active], k, axis=0))
        logp = log_softmax(logits[:, -1])  # (A * K, V)
        vocab = logp.shape[-1]
        candidates = (scores[active][:, :, None] + logp.reshape(n, k, vocab)).reshape(n, k * vocab)
        top = np.argsort(-candidates, axis=1, kind="stable")[:, : min(2 * k, k * vocab)]  # (A, <=2K)

        new_tokens = np.full((batch, k, width + 1), pad_id, dtype=np.int64)
        new_scores = np.full((batch, k), -np.inf)
        for row, b in enumerate(active):
            kept = 0
            for rank, flat_index in enumerate(top[row]):
                score = float(candidates[row, flat_index])
                if score == -np.inf:
                    break  # extensions of empty slots; nothing real follows in sorted order
                beam, token = divmod(int(flat_index), vocab)
                if token == eos_id:
                    # An eos outside the K best would let a weak hypothesis finish early.
                    if rank < k:
                        sequence = np.append(tokens[b, beam, 1:], eos_id)
                        finished[b].append((score / step**length_penalty, sequence))
                    continue
                new_tokens[b, kept, :width] = tokens[b, beam]
                new_tokens[b, kept, width] = token
                new_scores[b, kept] = score
                kept += 1
                if kept == k:
                    break
            if len(finished[b]) >= k:
                done[b] = True
            elif step == max_len:
                for slot in range(k):
                    if new_scores[b, slot] > -np.inf:
                        finished[b].append(
                            (new_scores[b, slot] / max_len**length_penalty, new_tokens[b, slot, 1:])
                        )
        tokens, scores = new_tokens, new_scores
        if done.all():
            break

    best = [sorted(hyps, key=lambda h: -h[0])[:k] for hyps in finished]  # stable: earlier first on ties
    length = max((len(seq) for hyps in best for _, seq in hyps), default=0)
    sequences = np.full((batch, k, length), pad_id, dtype=np.int64)
    out_scores = np.full((batch, k), -np.inf)
    for b, hyps in enumerate(best):
        for slot, (score, seq) in enumerate(hyps):
            sequences[b, slot, : len(seq)] = seq
            out_scores[b, slot] = score
    return BeamResult(sequences=sequences, scores=out_scores)


def strip_eos(ids: np.ndarray, eos_id: int) -> list[int]:
    """One row of generated ids -> the tokens before the first eos (padding after it dropped)."""
    out = []
    for i in np.asarray(ids).tolist():
        if i == eos_id:
            break
        out.append(i)
    return out
