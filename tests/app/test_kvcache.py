"""KVCache: the server's in-place cache, checked against a plain per-row record of what was stored.

The graph side (that a step over these feeds equals the full forward) is tested in
tests/training/test_gpt.py and, through the server, in test_generate.py; here the bookkeeping alone:
rows joining, decoding, leaving in any order, the slot axis growing and shrinking, zero-copy feeds.
"""

from __future__ import annotations

import numpy as np

from app.core.kv_cache import KVCache
from app.core.repository_format import GraphSpec, TensorSpec

H, D = 2, 3
# The GPT step graph's layout: keys (B, H, D, T), values (B, H, T, D).
SHAPES = {"past_key_0": [-1, H, D, -1], "past_value_0": [-1, H, -1, D]}
GRAPH = GraphSpec(
    file="decoder_step.onnx",
    inputs=[
        TensorSpec(name="tokens", dtype="int64", shape=[-1, -1]),
        TensorSpec(name="past_lengths", dtype="int64", shape=[-1]),
        *[TensorSpec(name=name, shape=shape) for name, shape in SHAPES.items()],
    ],
    outputs=[TensorSpec(name="logits", shape=[-1, -1, 5])]
    + [TensorSpec(name=name.replace("past_", "new_"), shape=shape) for name, shape in SHAPES.items()],
)
AXES = {"past_key_0": 3, "past_value_0": 2}


class Reference:
    """What each row should hold: a list of (H, D) entries per tensor, one per position."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.rows: list[dict[str, list[np.ndarray]]] = []

    def entries(self, count: int, positions: int) -> list[np.ndarray]:
        """Graph-like outputs for ``count`` rows and ``positions`` new positions, in SHAPES order."""
        out = []
        for name in SHAPES:
            shape = [count, H, D, positions] if AXES[name] == 3 else [count, H, positions, D]
            out.append(self.rng.standard_normal(shape).astype(np.float32))
        return out

    @staticmethod
    def slot(array: np.ndarray, name: str, row: int, position: int) -> np.ndarray:
        return np.take(array[row], position, axis=AXES[name] - 1)  # (H, D)

    def check(self, cache: KVCache) -> None:
        assert list(cache.lengths) == [len(r["past_key_0"]) for r in self.rows]
        assert cache.width % KVCache.CHUNK == 0 and cache.width >= max(cache.lengths, default=0)
        feeds = cache.feeds(np.zeros((cache.rows, 1), np.int64))
        for name in SHAPES:
            view = feeds[name]
            # The step reads the buffer itself: a contiguous view of the first rows, no copy.
            assert view.flags.c_contiguous and np.shares_memory(view, cache.buffers[name])
            assert view.shape[0] == cache.rows and view.shape[AXES[name]] == cache.width
            for row, stored in enumerate(self.rows):
                for position, entry in enumerate(stored[name]):
                    np.testing.assert_array_equal(self.slot(view, name, row, position), entry)


def test_rows_join_decode_and_leave_in_any_order() -> None:
    rng = np.random.default_rng(0)
    ref, cache = Reference(rng), KVCache(GRAPH)

    def join(lengths: list[int]) -> None:
        new = ref.entries(len(lengths), max(lengths))  # right-padded prefill outputs
        cache.add(new, lengths)
        for i, n in enumerate(lengths):
            ref.rows.append(
                {
                    name: [ref.slot(e, name, i, p) for p in range(n)]
                    for name, e in zip(SHAPES, new, strict=True)
                }
            )

    def step() -> None:
        new = ref.entries(cache.rows, 1)
        cache.append(new)
        for i, stored in enumerate(ref.rows):
            for name, e in zip(SHAPES, new, strict=True):
                stored[name].append(ref.slot(e, name, i, 0))

    def keep(rows: list[int]) -> None:
        cache.keep(rows)
        ref.rows = [ref.rows[i] for i in rows]

    join([3, 7])
    ref.check(cache)
    for _ in range(30):  # row 1 passes 32 positions: the slot axis grows by a chunk
        step()
    ref.check(cache)
    assert cache.width == 2 * KVCache.CHUNK
    join([1, 40, 2])  # joiners longer than the others; capacity doubles past 2 rows
    step()
    ref.check(cache)
    assert cache.capacity >= 5 and cache.width == 2 * KVCache.CHUNK
    keep([4, 0, 2])  # rows 1 and 3 leave; the rest are reordered
    step()
    ref.check(cache)
    keep([0])  # only a short row left: the unused part of both axes is given back
    ref.check(cache)
    assert cache.width == KVCache.CHUNK and cache.capacity == 2  # rows given back too
    keep([])
    assert cache.rows == 0 and cache.width == 0
    join([5])
    step()
    ref.check(cache)


def test_empty_feeds_are_a_prefill_on_empty_caches() -> None:
    cache = KVCache(GRAPH)
    tokens = np.array([[1, 2, 0], [3, 4, 5]], np.int64)
    feeds = cache.empty_feeds(tokens)
    assert feeds["tokens"] is tokens and list(feeds["past_lengths"]) == [0, 0]
    assert feeds["past_key_0"].shape == (2, H, D, 0) and feeds["past_value_0"].shape == (2, H, 0, D)
    assert cache.output_names == ["logits", "new_key_0", "new_value_0"]
    assert cache.rows == 0  # a prefill's feeds do not touch the batch's cache
