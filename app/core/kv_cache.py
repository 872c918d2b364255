"""Text generation over an exported GPT ``decoder_step`` graph with its KV cache (no torch).

One prompt is prefilled in a single step call, then every new token is one step call over the cache.
The continuous-batching loop of the server (``app/decode_loop.py``) batches these same calls over many
sequences with the same cache. A step graph comes with one of two cache contracts, told apart by its
output names (:func:`step_cache` picks the cache):

- ``new_*`` outputs (what ``training`` exports from PyTorch): the graph returns only the new positions'
  keys and values, and :class:`KVCache` stores them at each row's next slots;
- ``present_*`` outputs (the fused graph of ``training/step_graph.py``): the graph writes the new
  positions into the cache buffers itself, and :class:`InPlaceKVCache` binds each buffer as both the
  input and the output of a step (onnxruntime's GroupQueryAttention then writes in place), so a step
  copies nothing but its tokens and logits.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from app.core.repository_format import AttentionWindow, GraphSpec
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


# A step's feeds -> its outputs, in the graph's output order (logits first).
StepRun = Callable[[dict[str, np.ndarray]], list[np.ndarray]]
CACHE_INPUTS = "past_"  # prefix of the cache inputs: past_key_<i>, past_value_<i>
IN_PLACE_OUTPUTS = "present_"  # prefix of an in-place graph's cache outputs (else "new_")


def cache_input_names(graph: GraphSpec) -> list[str]:
    """The cache inputs of a step graph (past_key_0, past_value_0, ...), in the graph's order."""
    return [s.name for s in graph.inputs if s.name.startswith(CACHE_INPUTS) and s.name != "past_lengths"]


def writes_in_place(graph: GraphSpec) -> bool:
    """Whether a step graph writes its cache in place (``present_*`` outputs) rather than returning
    the new positions' entries (``new_*``)."""
    return any(s.name.startswith(IN_PLACE_OUTPUTS) for s in graph.outputs)


class KVCache:
    """The key/value cache of a batch of sequences, kept in place for a ``decoder_step`` graph that
    returns the new positions' entries (``new_*`` outputs).

    One preallocated buffer per cache input, rows first: row ``r`` holds ``lengths[r]`` positions
    from slot 0, and a step's feeds are views of the first ``rows`` rows (contiguous, so onnxruntime
    reads them without a copy). The graph returns only the new positions' entries, which
    :meth:`append` writes at each row's next slot: a decode step costs O(B) writes, not a copy of the
    cache. The slot axis (keys (B, H, D, T), values (B, H, T, D)) is read from the graph's spec and
    grows in chunks as the longest row does; rows are added and removed between steps.

    With a ``window`` (a model with local attention) a row keeps only the slots its window needs: the
    global positions, then a ring in which each new position takes the slot of the one that has just
    left the window (``AttentionWindow.slot_of``), so the width stops at ``window.slots``.
    """

    # Slots are added this many at a time: the graph attends over the whole width, so a width that
    # tracks the longest row keeps steps cheap, and a reallocation every CHUNK tokens costs little.
    CHUNK = 32

    def __init__(
        self, graph: GraphSpec, run: StepRun | None = None, window: AttentionWindow | None = None
    ) -> None:
        """``run``: how a step is run (needed by :meth:`decode` and :meth:`prefill` only); ``window``:
        the model's local attention (config.json's ``attention``), None for full attention."""
        self._run = run
        self.window = window
        names = cache_input_names(graph)
        self.shapes = {s.name: s.shape for s in graph.inputs if s.name in names}
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

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """One step of every row: ``tokens`` (B, 1) -> the next logits (B, V); the entries are stored."""
        logits, *entries = self._run(self.feeds(tokens))
        self.append(entries)
        return logits[:, -1]

    def prefill(self, tokens: np.ndarray, lengths: list[int], every_position: bool = False) -> np.ndarray:
        """New rows from prompts, ``tokens`` (n, S) right-padded to ``lengths``, in one step on empty
        caches; returns the logits at each prompt's last position (n, V), or at every position
        (n, S, V) with ``every_position``."""
        logits, *entries = self._run(self.empty_feeds(tokens))
        self.add(entries, lengths)
        return logits if every_position else logits[np.arange(len(lengths)), np.asarray(lengths) - 1]

    def append(self, new: list[np.ndarray]) -> None:
        """Store one new position per row (a decode step's outputs after the logits)."""
        longest = self._slots_for(int(self.lengths.max()) + 1)
        if longest > self.width:  # lengths only grow here: the one resize a step can need
            self._fit(longest)
        rows, lengths = np.arange(self.rows), self.lengths
        slots = lengths if self.window is None else self.window.slot_of(lengths)
        for view, entries in zip(self._views.values(), new, strict=True):
            # One new slot per row: dropping its size-1 slot axis is a reshape, whatever the layout.
            view[rows, slots] = entries.reshape(len(rows), *view.shape[2:])  # (B, ...)
        self.lengths = lengths + 1

    def add(self, new: list[np.ndarray], lengths: list[int]) -> None:
        """Add rows from a prefill's outputs: row i keeps its first ``lengths[i]`` positions."""
        first = self.rows
        self.lengths = np.concatenate([self.lengths, np.asarray(lengths, np.int64)])
        self._fit(self._slots_for(int(self.lengths.max())))
        # Per row, which positions it keeps and the slots they go to: all of them in order, or with a
        # window the global positions and the last `window` others, each in its ring slot.
        placed = [(slice(0, n), slice(0, n)) for n in lengths]
        if self.window is not None:
            g, w = self.window.global_tokens, self.window.window
            kept = [np.r_[0 : min(g, n), max(g, n - w) : n] for n in lengths]
            placed = [(positions, self.window.slot_of(positions)) for positions in kept]
        for (name, view), entries in zip(self._views.items(), new, strict=True):
            fresh = np.moveaxis(entries, self.axes[name], 1)  # (B, S, ...)
            for i, (positions, slots) in enumerate(placed):
                view[first + i, slots] = fresh[i, positions]

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in this order) as rows 0, 1, ...; the others' slots are freed."""
        index = np.asarray(rows, np.int64)
        for buffer in self.buffers.values():
            buffer[: len(index)] = buffer[index]
        self.lengths = self.lengths[index]
        self._fit(self._slots_for(int(self.lengths.max())) if len(index) else 0)

    def _slots_for(self, length: int) -> int:
        """Slots a row of ``length`` positions occupies."""
        return length if self.window is None else min(length, self.window.slots)

    def _fit(self, needed: int) -> None:
        """Size the buffers for the rows and ``needed`` positions. Each axis grows when too small and
        shrinks when mostly unused (rows: three quarters, slots: half): a step reads only what is in
        use, but a reallocation zeroes what is allocated, and it happens whenever the width changes
        (measured: one row decoded 25% slower in buffers sized for 32 rows)."""
        width = -(-needed // self.CHUNK) * self.CHUNK
        if self.window is not None:  # a ring is never wider than its slots: unused ones cost every step
            width = min(width, self.window.slots)
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


class InPlaceKVCache:
    """The key/value cache of a batch of sequences for a step graph that writes the new positions
    itself (``present_*`` outputs, training/step_graph.py).

    One buffer per cache input, (capacity, H, slots, D) with ``slots`` the model's context: row ``r``
    holds ``lengths[r]`` positions from slot 0. A step binds the buffers' first rows (a contiguous
    block) as both the graph's cache inputs and its cache outputs; the graph reads each row's first
    ``lengths[r]`` slots and writes the new positions after them, so nothing is copied per step and
    the width never grows: attention reads each row's own length, not the buffer's. A prefill binds
    the next free rows the same way and fills them from slot 0 (the padding of a shorter prompt lands
    in slots its length does not cover). Rows are added by prefills and removed between steps.
    """

    def __init__(self, graph: GraphSpec, session: ort.InferenceSession, slots: int) -> None:
        self.names = cache_input_names(graph)
        self.output_names = ["logits", *(n.replace(CACHE_INPUTS, IN_PLACE_OUTPUTS, 1) for n in self.names)]
        missing = set(self.output_names) - {s.name for s in graph.outputs}
        if missing:
            raise ValueError(f"an in-place step graph needs the outputs {sorted(missing)}")
        specs = {s.name: s.shape for s in graph.inputs}
        for name in self.names:
            if len(specs[name]) != 4 or specs[name][2] != -1:
                raise ValueError(
                    f"{name}: an in-place cache is (batch, heads, slots, head_dim); got {specs[name]}"
                )
        self.row_shape = {name: (specs[name][1], slots, specs[name][3]) for name in self.names}
        self.slots = slots
        self._vocab = next(s.shape[-1] for s in graph.outputs if s.name == "logits")
        self.lengths = np.zeros(0, np.int64)  # (B,) positions held per row
        self.capacity = 0
        self.buffers: dict[str, np.ndarray] = {}
        self._session = session
        self._binding = session.io_binding()
        self._bound: tuple[int, int] | None = None  # the rows (first, count) the cache is bound to
        self._decode_io: tuple[np.ndarray, np.ndarray] | None = None  # bound tokens and logits
        self._longest = 0  # max(lengths) while bound for decoding
        self._logits_bound: np.ndarray | None = None
        self._reallocate(1)

    @property
    def rows(self) -> int:
        return len(self.lengths)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """One step of every row: ``tokens`` (B, 1) -> the next logits (B, V); the graph stores the
        entries. A row must have a free slot (the caller slides its window at ``slots``)."""
        if self._decode_io is None:
            # Bound once until the rows change: a step then writes its tokens into the bound array,
            # runs, and counts the new positions in the bound lengths, with no binding calls.
            rows = self.rows
            self.lengths = np.array(self.lengths, np.int64)  # an array of its own, bound as past_lengths
            self._longest = int(self.lengths.max(initial=0))
            self._decode_io = np.empty((rows, 1), np.int64), np.empty((rows, 1, self._vocab), np.float32)
            self._bind(0, self._decode_io[0], self.lengths, self._decode_io[1])
        if self._longest >= self.slots:  # the graph would write past the buffer
            raise ValueError(f"a row holds all {self.slots} slots; it must leave before the next step")
        step_tokens, logits = self._decode_io
        np.copyto(step_tokens, tokens)
        self._session.run_with_iobinding(self._binding)
        self.lengths += 1
        self._longest += 1
        return logits[:, -1].copy()  # the bound array is overwritten by the next step

    def prefill(self, tokens: np.ndarray, lengths: list[int], every_position: bool = False) -> np.ndarray:
        """New rows from prompts, ``tokens`` (n, S) right-padded to ``lengths``, in one step; returns
        the logits at each prompt's last position (n, V), or at every position (n, S, V) with
        ``every_position``."""
        count, width = tokens.shape
        if width > self.slots:
            raise ValueError(f"a prompt of {width} tokens does not fit the cache's {self.slots} slots")
        first = self.rows
        self._fit(first + count)
        logits = np.empty((count, width, self._vocab), np.float32)
        self._bind(first, np.ascontiguousarray(tokens, np.int64), np.zeros(count, np.int64), logits)
        self._session.run_with_iobinding(self._binding)
        self.lengths = np.concatenate([self.lengths, np.asarray(lengths, np.int64)])
        self._decode_io = None
        return logits if every_position else logits[np.arange(count), np.asarray(lengths) - 1]

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in this order) as rows 0, 1, ...; only the rows that move are copied."""
        moved = [(to, row) for to, row in enumerate(rows) if to != row]
        if moved:
            to, source = (np.asarray(side, np.int64) for side in zip(*moved, strict=True))
            for buffer in self.buffers.values():
                buffer[to] = buffer[source]  # the right side is gathered first: any order is safe
        self.lengths = self.lengths[np.asarray(rows, np.int64)]
        self._decode_io = None
        self._fit(self.rows)

    def _bind(self, first: int, tokens: np.ndarray, past_lengths: np.ndarray, logits: np.ndarray) -> None:
        """Bind a step over rows [first, first + len(tokens)): the rows of every buffer as its cache
        input and output, and the arrays given (kept alive by the binding until rebound)."""
        count, binding = len(tokens), self._binding
        if self._bound != (first, count):
            for name, output in zip(self.names, self.output_names[1:], strict=True):
                buffer = self.buffers[name]
                address = buffer.ctypes.data + first * buffer.strides[0]
                shape = [count, *self.row_shape[name]]
                binding.bind_input(name, "cpu", 0, np.float32, shape, address)
                binding.bind_output(output, "cpu", 0, np.float32, shape, address)
            self._bound = (first, count)
        binding.bind_cpu_input("tokens", tokens)
        binding.bind_cpu_input("past_lengths", past_lengths)
        binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        self._logits_bound = logits  # the binding holds its address only

    def _fit(self, rows: int) -> None:
        """Grow to ``rows`` (doubling), or give memory back when three quarters are unused."""
        if rows > self.capacity or rows <= self.capacity // 4:
            self._reallocate(max(2 * rows, 1))

    def _reallocate(self, capacity: int) -> None:
        kept = min(self.rows, capacity)
        for name in self.names:
            buffer = np.zeros((capacity, *self.row_shape[name]), np.float32)
            if name in self.buffers:
                buffer[:kept] = self.buffers[name][:kept]
            self.buffers[name] = buffer
        self.capacity = capacity
        self._bound = self._decode_io = None


def step_cache(
    graph: GraphSpec,
    session: ort.InferenceSession,
    slots: int,
    run: StepRun | None = None,
    window: AttentionWindow | None = None,
) -> KVCache | InPlaceKVCache:
    """The cache that the step graph's contract asks for (see the module's docstring). ``slots``: the
    model's context; ``run``: how to run a step of a ``new_*`` graph (default: ``session.run``);
    ``window``: the model's local attention, if it has one."""
    if writes_in_place(graph):
        if window is not None:
            raise ValueError("an in-place step graph has no ring for local attention; serve its new_* graph")
        return InPlaceKVCache(graph, session, slots)
    output_names = ["logits", *(n.replace(CACHE_INPUTS, "new_", 1) for n in cache_input_names(graph))]
    return KVCache(graph, run or (lambda feeds: session.run(output_names, feeds)), window)


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
    window: AttentionWindow | None = None,
) -> GeneratedText:
    """Sample up to ``max_new_tokens`` after ``prompt_ids`` (greedy when temperature is 0).

    At ``block_size`` positions generation stops (CONTEXT), or with ``slide`` goes on from the
    last half of the text, prefilled again, as the server does."""
    if not prompt_ids:
        raise ValueError("the prompt must hold at least one token")
    if len(prompt_ids) >= block_size:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the model's context is {block_size}")
    rng = np.random.default_rng(seed)
    cache = step_cache(graph, session, block_size, window=window)
    seen = list(prompt_ids)
    new: list[int] = []
    pending = seen  # tokens to prefill on an empty cache
    while True:
        if pending:
            cache.keep([])
            logits = cache.prefill(np.array([pending]), [len(pending)])
            pending = []
        else:
            logits = cache.decode(np.array([[seen[-1]]]))
        token = int(select_next_tokens(logits, params, rng, [seen], [new])[0])
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
