"""Greedy and beam search (app.core.decoding) on hand-built numpy "models": Markov transition tables."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.core.decoding import BeamResult, beam_search, greedy_decode, log_softmax, strip_eos

PAD, BOS, EOS, A, B = 0, 1, 2, 3, 4
ROOT = Path(__file__).resolve().parents[2]


class MarkovModel:
    """The next-token distribution depends only on the last token and on which table the source
    picks (``src[:, 0]``): ``tables[table, last_token]`` are log-probabilities over the vocabulary."""

    def __init__(self, tables: np.ndarray) -> None:
        self.tables = tables  # (num_tables, V, V)
        self.decode_batches: list[int] = []

    def encode(self, src: np.ndarray) -> np.ndarray:
        return src[:, :1].astype(np.float32)  # (B, 1): the memory is the table index

    def decode(self, tgt: np.ndarray, memory: np.ndarray, src: np.ndarray) -> np.ndarray:
        assert tgt.dtype == np.int64 and tgt.shape[0] == memory.shape[0] == src.shape[0]
        self.decode_batches.append(tgt.shape[0])
        table = memory[:, 0].astype(np.int64)  # (B,)
        return self.tables[table[:, None], tgt]  # (B, T, V): logits at every position, as a decoder


def _table(rows: dict[int, dict[int, float]], vocab: int = 5) -> np.ndarray:
    """Log-probabilities from {last token: {next token: probability}}; unlisted mass is ~0."""
    table = np.full((vocab, vocab), np.log(1e-9))
    for last, probs in rows.items():
        for token, p in probs.items():
            table[last, token] = np.log(p)
    return table


# Table 0: greedy and beam agree (A then eos, clearly). Table 1: greedy takes A (0.6) and then has only
# weak continuations (eos 0.4): 0.24 in all; beam finds B (0.4) then eos (0.99): 0.396.
TABLES = np.stack(
    [
        _table({BOS: {A: 0.9, B: 0.1}, A: {EOS: 0.9, A: 0.1}, B: {EOS: 0.9, B: 0.1}}),
        _table({BOS: {A: 0.6, B: 0.4}, A: {EOS: 0.4, A: 0.3, B: 0.3}, B: {EOS: 0.99, A: 0.01}}),
    ]
)
IDS = {"bos_id": BOS, "eos_id": EOS, "pad_id": PAD}


def test_best_beam_differs_from_greedy() -> None:
    model = MarkovModel(TABLES)
    src = np.array([[0, 7, 7], [1, 7, 7]], dtype=np.int64)
    greedy = greedy_decode(model.encode, model.decode, src, max_len=5, **IDS)
    np.testing.assert_array_equal(greedy, [[A, EOS], [A, EOS]])
    result = beam_search(model.encode, model.decode, src, max_len=5, beam_size=2, **IDS)
    assert isinstance(result, BeamResult) and result.sequences.shape[:2] == (2, 2)
    np.testing.assert_array_equal(result.sequences[0, 0, :2], [A, EOS])
    np.testing.assert_array_equal(result.sequences[1, :, :2], [[B, EOS], [A, EOS]])  # greedy misses B
    assert np.all(result.sequences[1, :, 2:] == PAD)
    # Length-normalised scores (length 2, eos included), best first.
    np.testing.assert_allclose(result.scores[1], [np.log(0.4 * 0.99) / 2, np.log(0.6 * 0.4) / 2], rtol=1e-6)
    assert np.all(np.diff(result.scores, axis=1) <= 0)


def test_greedy_pads_finished_rows_and_stops_calling_them() -> None:
    # Table 0 stops after one token; table 2 never emits eos, so it runs to max_len.
    loop = _table({BOS: {A: 1.0}, A: {B: 1.0}, B: {A: 1.0}})
    model = MarkovModel(np.stack([TABLES[0], TABLES[1], loop]))
    src = np.array([[0], [2]], dtype=np.int64)
    out = greedy_decode(model.encode, model.decode, src, max_len=4, **IDS)
    np.testing.assert_array_equal(out, [[A, EOS, PAD, PAD], [A, B, A, B]])
    assert model.decode_batches == [2, 2, 1, 1]  # the finished row is no longer decoded
    assert strip_eos(out[0], EOS) == [A] and strip_eos(out[1], EOS) == [A, B, A, B]
    beams = beam_search(model.encode, model.decode, src, max_len=4, beam_size=3, **IDS)
    np.testing.assert_array_equal(beams.sequences[1, 0], [A, B, A, B])  # unfinished at max_len
    assert beams.scores[1, 0] == pytest.approx(0.0, abs=1e-6)


def _random_tables(seed: int, num_tables: int, vocab: int, scale: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return log_softmax(rng.normal(scale=scale, size=(num_tables, vocab, vocab)))


@pytest.mark.parametrize("seed", range(5))
def test_beam_of_one_equals_greedy_on_random_models(seed: int) -> None:
    model = MarkovModel(_random_tables(seed, num_tables=6, vocab=7))
    src = np.arange(6, dtype=np.int64)[:, None].repeat(3, axis=1)  # (6, 3): one row per table
    greedy = greedy_decode(model.encode, model.decode, src, max_len=6, **IDS)
    beams = beam_search(model.encode, model.decode, src, max_len=6, beam_size=1, **IDS)
    assert beams.sequences.shape[1] == 1
    np.testing.assert_array_equal(beams.sequences[:, 0], greedy)


@pytest.mark.parametrize(("seed", "length_penalty"), [(0, 1.0), (1, 0.0), (2, 0.6), (3, 1.0)])
def test_a_beam_wide_enough_finds_the_exhaustive_optimum(seed: int, length_penalty: float) -> None:
    vocab, max_len = 5, 3
    tables = _random_tables(seed, num_tables=3, vocab=vocab, scale=1.0)
    model = MarkovModel(tables)
    src = np.arange(3, dtype=np.int64)[:, None]
    wide = vocab**max_len  # more beams than hypotheses: the search is exhaustive
    result = beam_search(
        model.encode, model.decode, src, max_len=max_len, beam_size=wide, length_penalty=length_penalty, **IDS
    )
    for table in range(3):
        best_score, best_seq = -np.inf, None
        for length in range(1, max_len + 1):
            for seq in itertools.product(range(vocab), repeat=length):
                complete = seq[-1] == EOS and EOS not in seq[:-1]
                if not complete and (length < max_len or EOS in seq):
                    continue
                prev = (BOS, *seq[:-1])
                logp = sum(tables[table, p, t] for p, t in zip(prev, seq, strict=True))
                score = logp / length**length_penalty
                if score > best_score:
                    best_score, best_seq = score, seq
        got = strip_eos(result.sequences[table, 0], EOS) + (
            [EOS] if EOS in result.sequences[table, 0] else []
        )
        assert tuple(got) == best_seq
        assert result.scores[table, 0] == pytest.approx(best_score)


def test_batched_search_equals_one_source_at_a_time() -> None:
    model = MarkovModel(_random_tables(7, num_tables=4, vocab=6))
    src = np.array([[3], [0], [2], [1]], dtype=np.int64)
    batched = beam_search(model.encode, model.decode, src, max_len=5, beam_size=3, **IDS)
    for row in range(4):
        alone = beam_search(model.encode, model.decode, src[row : row + 1], max_len=5, beam_size=3, **IDS)
        width = alone.sequences.shape[2]
        np.testing.assert_array_equal(batched.sequences[row, :, :width], alone.sequences[0])
        assert np.all(batched.sequences[row, :, width:] == PAD)
        np.testing.assert_allclose(batched.scores[row], alone.scores[0])


def test_beam_wider_than_the_vocabulary_leaves_empty_slots() -> None:
    model = MarkovModel(TABLES)
    result = beam_search(model.encode, model.decode, np.array([[1]]), max_len=1, beam_size=8, **IDS)
    # One step from bos: five one-token hypotheses exist (eos finished, the other four cut at max_len).
    assert np.isfinite(result.scores[0]).sum() == 5 and np.all(np.isneginf(result.scores[0, 5:]))
    assert np.all(result.sequences[0, 5:] == PAD)


def test_invalid_arguments() -> None:
    model = MarkovModel(TABLES)
    with pytest.raises(ValueError, match="src_ids"):
        greedy_decode(model.encode, model.decode, np.zeros(3, dtype=np.int64), max_len=2, **IDS)
    with pytest.raises(ValueError, match="max_len"):
        greedy_decode(model.encode, model.decode, np.zeros((1, 3), dtype=np.int64), max_len=0, **IDS)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(
            model.encode, model.decode, np.zeros((1, 3), dtype=np.int64), max_len=2, beam_size=0, **IDS
        )


def test_decoding_module_imports_no_torch() -> None:
    code = "import sys, app.core.decoding; sys.exit('torch' in sys.modules or 'onnxruntime' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
