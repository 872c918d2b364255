"""Text generation over an exported GPT ``decoder_step`` graph with its KV cache (no torch).

One prompt is prefilled in a single step call, then every new token is one step call over the cache,
which :class:`KVCache` keeps in place. The continuous-batching loop of the server (``app/decode_loop.py``)
batches these same calls over many sequences with the same cache.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from app.core.repository_format import GraphSpec
from app.core.sampling import SamplingParams, select_next_tokens


class FinishReason(enum.StrEnum):
    """Why a generation ended (a response's ``finish_reason``; its value is the metric label)."""

    LENGTH = "length"  # max_new_tokens generated
    STOP = "stop"  # a stop string appeared (it is cut from the text)
    EOS = "eos"  # the model produced its end-of-sequence token
    CONTEXT = "context"  # the context is full and the text does not slide on (one-sequence decoding)
    CANCELLED = "cancelled"  # the client went away
    ERROR = "error"  # the step failed (the server log has why)
    SHUTDOWN = "shutdown"  # the server stopped


@dataclass
class GeneratedText:
    token_ids: list[int]  # the new tokens only
    finish_reason: FinishReason  # LENGTH, EOS or CONTEXT


class KVCache:
    """The key/value cache of a batch of sequences, kept in place for a ``decoder_step`` graph.

    One preallocated buffer per cache input, rows first: row ``r`` holds ``lengths[r]`` positions
    from slot 0, and a step's feeds are views of the first ``rows`` rows (contiguous, so onnxruntime
    reads them without a copy). The graph returns only the new positions' entries, which
    :meth:`append` writes at each row's next slot: a decode step costs O(B) writes, not a copy of the
    cache. The slot axis (keys (B, H, D, T), values (B, H, T, D)) is read from the graph's spec and
    grows in chunks as the longest row does; rows are added and removed between steps.
    """

    # Slots are added this many at a time: the graph attends over the whole width, so a width that
    # tracks the longest row keeps steps cheap, and a reallocation every CHUNK tokens costs little.
    CHUNK = 32

    def __init__(self, graph: GraphSpec) -> None:
        # Every input but the step's tokens and the rows' lengths is a cache tensor (past_key_0, ...).
        self.shapes = {s.name: s.shape for s in graph.inputs if s.name not in ("tokens", "past_lengths")}
        # The one dynamic axis after the batch axis is the slot axis.
        self.axes = {name: shape.index(-1, 1) for name, shape in self.shapes.items()}
        self.output_names = ["logits", *(name.replace("past_", "new_", 1) for name in self.shapes)]
        self.lengths = np.zeros(0, np.int64)  # (B,) positions held per row
        self.capacity = self.width = 0  # rows and slots allocated
        self.buffers: dict[str, np.ndarray] = {}
        self._views: dict[str, np.ndarray] = {}  # each buffer seen as (B, T, ...): slot axis second
        self._reallocate(1, 0)

    def _empty(self, name: str, rows: int, width: int) -> np.ndarray:
        shape = [rows, *self.shapes[name][1:]]
        shape[self.axes[name]] = width
        return np.zeros(shape, np.float32)

    @property
    def rows(self) -> int:
        return len(self.lengths)

    def feeds(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        """One step's inputs: ``tokens`` (B, S) follow each row's cached positions."""
        rows = self.rows
        return {
            "tokens": tokens,
            "past_lengths": self.lengths,
            **{name: buffer[:rows] for name, buffer in self.buffers.items()},
        }

    def empty_feeds(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        """Inputs of a prefill of new sequences on empty caches: ``tokens`` (B, S), right-padded."""
        rows = tokens.shape[0]
        return {
            "tokens": tokens,
            "past_lengths": np.zeros(rows, np.int64),
            **{name: self._empty(name, rows, 0) for name in self.shapes},
        }

    def append(self, new: list[np.ndarray]) -> None:
        """Store one new position per row (a decode step's outputs after the logits)."""
        longest = int(self.lengths.max()) + 1
        if longest > self.width:  # lengths only grow here: the one resize a step can need
            self._fit(longest)
        rows, lengths = np.arange(self.rows), self.lengths
        for view, entries in zip(self._views.values(), new, strict=True):
            # One new slot per row: dropping its size-1 slot axis is a reshape, whatever the layout.
            view[rows, lengths] = entries.reshape(len(rows), *view.shape[2:])  # (B, ...)
        self.lengths = lengths + 1

    def add(self, new: list[np.ndarray], lengths: list[int]) -> None:
        """Add rows from a prefill's outputs: row i keeps its first ``lengths[i]`` positions."""
        first = self.rows
        self.lengths = np.concatenate([self.lengths, np.asarray(lengths, np.int64)])
        self._fit(int(self.lengths.max()))
        for (name, view), entries in zip(self._views.items(), new, strict=True):
            fresh = np.moveaxis(entries, self.axes[name], 1)  # (B, S, ...)
            for i, n in enumerate(lengths):
                view[first + i, :n] = fresh[i, :n]

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in this order) as rows 0, 1, ...; the others' slots are freed."""
        index = np.asarray(rows, np.int64)
        for buffer in self.buffers.values():
            buffer[: len(index)] = buffer[index]
        self.lengths = self.lengths[index]
        self._fit(int(self.lengths.max()) if len(index) else 0)

    def _fit(self, needed: int) -> None:
        """Size the buffers for the rows and ``needed`` positions. Each axis grows when too small and
        shrinks when mostly unused (rows: three quarters, slots: half): a step reads only what is in
        use, but a reallocation zeroes what is allocated, and it happens whenever the width changes
        (measured: one row decoded 25% slower in buffers sized for 32 rows)."""
        width = -(-needed // self.CHUNK) * self.CHUNK
        capacity = self.capacity
        if self.rows > capacity or self.rows <= capacity // 4:
            capacity = max(2 * self.rows, 1)
        if capacity != self.capacity or width > self.width or width <= self.width // 2:
            self._reallocate(capacity, width)

    def _reallocate(self, capacity: int, width: int) -> None:
        rows, kept = min(self.rows, self.capacity, capacity), min(width, self.width)
        for name in self.shapes:
            self.buffers[name] = self._empty(name, capacity, width)
            view = np.moveaxis(self.buffers[name], self.axes[name], 1)
            if name in self._views:
                view[:rows, :kept] = self._views[name][:rows, :kept]
            self._views[name] = view
        self.capacity, self.width = capacity, width


def generate(
    session: ort.InferenceSession,
    graph: GraphSpec,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    params: SamplingParams,
    seed: int,
    block_size: int,
    eos_id: int | None = None,
    slide: bool = False,
) -> GeneratedText:
    """Sample up to ``max_new_tokens`` after ``prompt_ids`` (greedy when temperature is 0).

    At ``block_size`` positions generation stops (CONTEXT), or with ``slide`` goes on from the
    last half of the text, prefilled again, as the server does."""
    if not prompt_ids:
        raise ValueError("the prompt must hold at least one token")
    if len(prompt_ids) >= block_size:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the model's context is {block_size}")
    rng = np.random.default_rng(seed)
    cache = KVCache(graph)
    seen = list(prompt_ids)
    new: list[int] = []
    pending = seen  # tokens to prefill on an empty cache
    while True:
        if pending:
            cache.keep([])
            logits, *entries = session.run(cache.output_names, cache.empty_feeds(np.array([pending])))
            cache.add(entries, [len(pending)])
            pending = []
        else:
            logits, *entries = session.run(cache.output_names, cache.feeds(np.array([[seen[-1]]])))
            cache.append(entries)
        token = int(select_next_tokens(logits[:, -1], params, rng, [seen], [new])[0])
        new.append(token)
        seen.append(token)
        if eos_id is not None and token == eos_id:
            return GeneratedText(new, FinishReason.EOS)
        if len(new) >= max_new_tokens:
            return GeneratedText(new, FinishReason.LENGTH)
        if cache.lengths[0] >= block_size:  # no position left for the token just picked
            if not slide:
                return GeneratedText(new, FinishReason.CONTEXT)
            pending = seen[-(block_size // 2) :]
