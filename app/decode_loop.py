"""Continuous (iteration-level) batching of text generation over a GPT ``decoder_step`` graph.

One loop per model advances every active sequence by one token per step, as text-generation-inference
and vLLM do. New requests join at step boundaries: their prompts are prefilled together in one call
(right-padded, on empty caches) and become new rows of the batch's cache (``app.core.kv_cache``: the
graph's contract picks :class:`~app.core.kv_cache.KVCache`, which stores the new positions the graph
returns, or :class:`~app.core.kv_cache.InPlaceKVCache`, whose graph writes them into the bound buffers
itself). Each row keeps its own length, so sequences of any lengths share a decode step without padding
or realignment, and a decode step writes only the new position of each row instead of copying the
cache. Rows that leave (finished, disconnected) are dropped between steps. A sequence that fills the
context window continues on a sliding window: it leaves and its last half is prefilled again.

The loop runs in its own thread and never waits for the event loop: a step (feeds, onnxruntime, cache
bookkeeping, sampling, stop strings, finishing) is followed at once by the next, and the event loop
only hears of a step's events (text for streams, the end), one call per step. Handing every step to
a worker and back cost a round trip through the event loop per token, which on one core was as much
as the step's own onnxruntime time for a single stream. For the same reason a step does no work that
does not change between steps: admission runs only when sequences wait or were cancelled, the rows'
grouping by sampling settings is kept while the batch is unchanged, the in-place cache stays bound
(bench/decode_bench.py measures what is left, against the step graph alone).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from app import metrics
from app.core.kv_cache import FinishReason, InPlaceKVCache, KVCache, step_cache
from app.core.repository_format import AttentionWindow
from app.core.sampling import SamplingParams, TokenLogprob, select_next_tokens, token_logprobs
from app.core.tokenizer import CharTokenizer
from app.errors import QueueFull
from app.session import Session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoppingCriteria:
    """When a sequence ends on its own: after ``max_new_tokens``, at ``eos_id``, or before the first
    of the ``stop`` strings."""

    max_new_tokens: int
    stop: tuple[str, ...] = ()
    eos_id: int | None = None

    def is_eos(self, token: int) -> bool:
        return self.eos_id is not None and token == self.eos_id

    def stop_at(self, text: str, new_from: int) -> int | None:
        """Where the earliest stop string starts in ``text``, when one ends in its new part
        (``text[new_from:]``); None if none does."""
        hits = [i for i in (text.find(s, max(0, new_from - len(s) + 1)) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def is_exhausted(self, generated: int) -> bool:
        return generated >= self.max_new_tokens

    def held_back(self, text: str) -> int:
        """How many characters at the end of ``text`` could begin a stop string: a stream holds them
        back until the next tokens show whether the stop string follows (it is never sent), so that a
        stream's text always equals the text the same request gets unstreamed."""
        held = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), held, -1):
                if text.endswith(s[:k]):
                    held = k
                    break
        return held


@dataclass(frozen=True)
class TokenText:
    """A stream's next piece of text, and the log-probabilities of the tokens it completes (when the
    sequence asked for them)."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Finished:
    """The sequence's last event; ``error`` is set when a step failed."""

    error: str | None = None


# How often the decode thread refreshes the cached-tokens gauge while rows decode (it is also set
# whenever sequences join or leave).
CACHED_GAUGE_REFRESH_S = 0.01


class GenerationFailed(Exception):
    """The decode step failed for this sequence; the message is onnxruntime's, for the log."""


@dataclass(frozen=True)
class GenerationLimits:
    max_active_sequences: int = 32  # sequences advanced together per step
    max_queued_sequences: int = 64  # waiting to join; beyond this, 429
    max_cached_tokens: int = 32 * 128  # sum of active caches' lengths (bounds memory)


class EventSink(Protocol):
    """Where a sequence's events go on the event loop: its own queue, or one shared by the sequences
    of a request with several choices (which tags each event with its choice)."""

    def put_nowait(self, event: TokenText | Finished) -> None: ...


@dataclass(eq=False)
class Sequence:
    """One generation request: the decode thread's record of it, and the caller's handle
    (:meth:`text_stream`, :meth:`wait`). Its events reach ``events`` on the event loop."""

    prompt: list[int]
    params: SamplingParams
    stopping: StoppingCriteria
    seed: int | None
    # Token events only for streams: waking a waiting request per token costs the loop a task switch.
    stream: bool = False
    # Log-probabilities: None = off; N = the chosen token's and the N most likely ones per token.
    logprobs: int | None = None
    events: EventSink = field(default_factory=asyncio.Queue)
    seen: list[int] = field(default_factory=list)  # prompt + generated ids
    new: list[int] = field(default_factory=list)
    text: str = ""  # decoded generated text (cut at a stop string)
    sent: int = 0  # characters of text handed out (a stream holds back a possible stop string's start)
    # One entry per token whose text is handed out (the same for streamed and unstreamed requests).
    token_logprobs: list[TokenLogprob] = field(default_factory=list)
    # Entries of tokens not yet handed out, with the text offset each one's piece ends at.
    pending_logprobs: list[tuple[int, TokenLogprob]] = field(default_factory=list)
    prefill: list[int] | None = None  # ids to prefill next step (None: the sequence is decoding)
    cached: int = 0  # tokens in this sequence's cache (= the position of the next token fed)
    cancelled: bool = False
    finish_reason: FinishReason | None = None
    created: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None

    def __post_init__(self) -> None:
        self.seen = list(self.prompt)
        self.prefill = list(self.prompt)
        self._rng: np.random.Generator | None = None

    @property
    def rng(self) -> np.random.Generator:
        """Made on first use, on the decode thread: greedy requests never need one, and an unseeded
        one draws entropy from the OS (a system call), which cost the event loop ~10% under load."""
        if self._rng is None:
            self._rng = np.random.default_rng(self.seed)
        return self._rng

    @property
    def decoding(self) -> bool:
        return self.prefill is None and self.finish_reason is None

    async def text_stream(self) -> AsyncIterator[str]:
        """The generated text piece by piece (a sequence submitted with ``stream=True``), until it
        ends; raises GenerationFailed if a step failed. Only for a sequence with its own queue."""
        while True:
            event = await self.events.get()
            if isinstance(event, Finished):
                if event.error is not None:
                    raise GenerationFailed(event.error)
                return
            yield event.text

    async def wait(self) -> None:
        """Until the sequence ends (``finish_reason`` says why); raises GenerationFailed if a step
        failed."""
        async for _ in self.text_stream():
            pass


class TextGenerator:
    """The decode loop of one text-generation model."""

    def __init__(
        self,
        name: str,
        session: Session,
        tokenizer: CharTokenizer,
        block_size: int,
        limits: GenerationLimits,
        window: AttentionWindow | None = None,
    ) -> None:
        """``window``: the model's local attention (config.json's ``attention``), which its cache follows."""
        self.name = name
        self.session = session
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.window = window
        self.limits = limits
        # Each id's text, looked up per token (special tokens decode to nothing).
        self._pieces = [tokenizer.decode([i], stop_at_eos=False) for i in range(tokenizer.vocab_size)]
        # The event loop submits and cancels; the decode thread owns everything else. The lock
        # guards the waiting list and the wake-up condition.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: list[Sequence] = []
        self._cancelling = False  # a sequence was cancelled since the last admission (lock held)
        self._active: list[Sequence] = []  # decode thread only
        self._outbox: list[tuple[Sequence, TokenText | Finished]] = []  # this step's events, for the loop
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._reset()
        if session.output_names != self._cache.output_names:
            raise ValueError(
                f"{name}: decoder_step outputs {session.output_names}; expected {self._cache.output_names}"
            )
        self._active_gauge = metrics.GEN_ACTIVE.labels(name)
        self._tokens_counter = metrics.GEN_TOKENS.labels(name)
        self._decode_time = metrics.GEN_STEP_TIME.labels(name, "decode")
        self._prefill_time = metrics.GEN_STEP_TIME.labels(name, "prefill")
        self._decode_batch = metrics.GEN_DECODE_BATCH.labels(name)
        # Created now, at 0: a series born with its first event loses that event to rate().
        self._ttft = metrics.GEN_TTFT.labels(name)
        self._time_per_token = metrics.GEN_TIME_PER_TOKEN.labels(name)
        self._rejected_full = metrics.REJECTED.labels(name, "generation_queue_full")
        # Every reason the server can end a sequence with (CONTEXT is one-sequence decoding's only).
        self._finished = {
            r: metrics.GEN_FINISHED.labels(name, r.value)
            for r in FinishReason
            if r is not FinishReason.CONTEXT
        }
        self._queued_gauge = metrics.GEN_QUEUED.labels(name)
        self._cached_gauge = metrics.GEN_CACHED_TOKENS.labels(name)
        self._cached_refresh = 0.0  # when the decode thread refreshes the gauge next (perf_counter)

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._event_loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"generate-{self.name}", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Ends the decode thread; sequences still waiting or running finish with "shutdown"."""
        with self._lock:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    # ------------------------------------------------------------------------------ requests

    def submit(
        self,
        prompt: list[int],
        params: SamplingParams,
        stopping: StoppingCriteria,
        seed: int | None = None,
        stream: bool = False,
    ) -> Sequence:
        seq = Sequence(prompt, params, stopping, seed, stream)
        self.submit_all([seq])
        return seq

    def submit_all(self, seqs: list[Sequence]) -> None:
        """Queue the sequences of one request together, or none of them (429 when the queue cannot
        take them all: a request's choices are generated side by side or not at all)."""
        with self._lock:
            if len(self._waiting) + len(seqs) > self.limits.max_queued_sequences:
                self._rejected_full.inc()
                raise QueueFull(
                    f"model {self.name!r} has {len(self._waiting)} generations queued; retry later"
                )
            self._waiting += seqs
            self._queued_gauge.set(len(self._waiting))
            self._wake.notify()

    def cancel(self, seq: Sequence) -> None:
        """The client went away: the decode thread drops the sequence before its next step."""
        seq.cancelled = True
        with self._lock:
            self._cancelling = True
            self._wake.notify()

    @property
    def pieces(self) -> list[str]:
        """Each token id's text (empty for special tokens)."""
        return self._pieces

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    # ------------------------------------------------------------------------------ the loop

    def _run(self) -> None:
        """The decode thread: admit, step, deliver, publish; it never waits for the event loop, which
        only hears of a step's events (one call per step, none for a step without events)."""
        while True:
            with self._lock:
                if not (self._stopping or self._active or self._waiting):
                    self._cached_gauge.set(0)  # idle: the rows left in the cache are finished ones
                while not (self._stopping or self._active or self._waiting):
                    self._wake.wait()
                if self._stopping:
                    for seq in self._waiting + self._active:
                        self._finish(seq, FinishReason.SHUTDOWN)
                    self._publish()
                    return
                if self._waiting or self._cancelling:  # nothing else changes the batch between steps
                    self._admit()
            if self._active:
                self._advance(list(self._active))
            self._publish()

    def _advance(self, batch: list[Sequence]) -> None:
        try:
            tokens = self._step(batch)
            self._tokens_counter.inc(len(tokens))
            now = time.perf_counter()
            if now >= self._cached_refresh:  # scrapes are seconds apart; a refresh per step cost ~3%
                self._cached_gauge.set(int(self._cache.lengths.sum()))
                self._cached_refresh = now + CACHED_GAUGE_REFRESH_S
            for seq, token, logprob in tokens:
                self._deliver(seq, token, logprob)
        except Exception as exc:  # a failed step ends its sequences, not the thread
            log.exception("model %s: generation step failed", self.name)
            self._reset()
            for seq in batch:
                self._finish(seq, FinishReason.ERROR, error=str(exc))

    def _publish(self) -> None:
        if self._outbox:
            self._event_loop.call_soon_threadsafe(_dispatch, self._outbox)
            self._outbox = []

    def _admit(self) -> None:
        """Drop cancelled sequences, then move waiting ones in while the limits allow (lock held)."""
        self._cancelling = False
        for seq in [s for s in self._active + self._waiting if s.cancelled]:
            self._finish(seq, FinishReason.CANCELLED)
        cached = int(self._cache.lengths.sum()) + sum(len(s.prefill or ()) for s in self._active)
        while self._waiting and len(self._active) < self.limits.max_active_sequences:
            need = len(self._waiting[0].prefill)
            if self._active and cached + need > self.limits.max_cached_tokens:
                break
            self._active.append(self._waiting.pop(0))
            cached += need
        self._active_gauge.set(len(self._active))
        self._queued_gauge.set(len(self._waiting))
        self._cached_gauge.set(cached)

    def _deliver(self, seq: Sequence, token: int, logprob: TokenLogprob | None = None) -> None:
        if seq.first_token_at is None:
            seq.first_token_at = now = time.perf_counter()
            self._ttft.observe(now - seq.created)
        seq.new.append(token)
        seq.seen.append(token)
        stopping = seq.stopping
        if stopping.is_eos(token):  # its text is empty and it is not reported: the text ends here
            self._hand_out(seq, len(seq.text))
            self._finish(seq, FinishReason.EOS)
            return
        before = len(seq.text)
        seq.text += self._pieces[token]
        if logprob is not None:
            seq.pending_logprobs.append((len(seq.text), logprob))
        cut = stopping.stop_at(seq.text, before) if stopping.stop else None
        if cut is not None:
            seq.text = seq.text[:cut]
            self._hand_out(seq, cut)
            seq.pending_logprobs.clear()  # tokens of the stop string: their text is not returned
            self._finish(seq, FinishReason.STOP)
            return
        exhausted = stopping.is_exhausted(len(seq.new))
        held = 0 if exhausted or not stopping.stop else stopping.held_back(seq.text)
        self._hand_out(seq, len(seq.text) - held)
        if exhausted:
            self._finish(seq, FinishReason.LENGTH)
        elif seq.cached >= self.block_size:  # no position left for the new token: slide the window
            seq.prefill = seq.seen[-(self.block_size // 2) :]

    def _hand_out(self, seq: Sequence, upto: int) -> None:
        """The text up to ``upto`` is final: record the log-probabilities of the tokens it completes
        and send a stream its new part (nothing when there is nothing new)."""
        pending = seq.pending_logprobs
        if not (seq.stream or pending):  # the common case: the caller reads the whole text at the end
            seq.sent = upto
            return
        entries: tuple[TokenLogprob, ...] = ()
        if pending and pending[0][0] <= upto:
            done = next((i for i, (end, _) in enumerate(pending) if end > upto), len(pending))
            entries = tuple(entry for _, entry in pending[:done])
            del pending[:done]
            seq.token_logprobs += entries
        if upto > seq.sent or entries:
            text, seq.sent = seq.text[seq.sent : upto], upto
            if seq.stream:
                self._outbox.append((seq, TokenText(text, entries)))

    def _finish(self, seq: Sequence, reason: FinishReason, error: str | None = None) -> None:
        if seq.finish_reason is not None:
            return
        seq.finish_reason = reason
        if seq in self._active:
            self._active.remove(seq)
        if seq in self._waiting:
            self._waiting.remove(seq)
        self._active_gauge.set(len(self._active))
        self._queued_gauge.set(len(self._waiting))
        self._finished[reason].inc()
        if seq.first_token_at is not None and len(seq.new) > 1:
            per_token = (time.perf_counter() - seq.first_token_at) / (len(seq.new) - 1)
            self._time_per_token.observe(per_token)
        self._outbox.append((seq, Finished(error)))

    # ------------------------------------------------------------------------------ one step (decode thread)

    def _reset(self) -> None:
        self._rows: list[Sequence] = []  # the sequence of each cache row
        self._cache = self._new_cache()
        # The last batch sampled and its rows grouped by sampling settings: a batch changes only when
        # rows join or leave, and hashing every row's settings every step cost more than the grouping.
        self._grouped: tuple[list[Sequence], list[SamplingGroup]] = ([], [])

    def _new_cache(self) -> KVCache | InPlaceKVCache:
        """The cache the step graph's contract asks for (app/core/kv_cache.py)."""
        session = self.session
        return step_cache(session.graph, session.session, self.block_size, session.run, self.window)

    def warmup(self) -> None:
        """A prefill of two rows and one decode step on a cache of its own: pays onnxruntime's lazy
        initialisation before the first request, whatever the graph's cache contract."""
        cache = self._new_cache()
        cache.prefill(np.ones((2, 2), np.int64), [2, 1])
        cache.decode(np.ones((2, 1), np.int64))

    def _step(self, batch: list[Sequence]) -> list[tuple[Sequence, int, TokenLogprob | None]]:
        """Decode one token for every row of the batch, prefill the newcomers; returns each
        sequence's next token."""
        self._drop_departed()
        seqs: list[Sequence] = []
        logits: list[np.ndarray] = []  # (B, V) blocks, in the order of seqs
        if self._rows:
            started = time.perf_counter()
            seqs += self._rows
            logits.append(self._decode())
            self._decode_time.observe(time.perf_counter() - started)
            self._decode_batch.observe(len(self._rows))
        joining = [s for s in batch if s.prefill is not None and s.finish_reason is None]
        if joining:
            started = time.perf_counter()
            logits.append(self._prefill(joining))
            seqs += joining
            self._prefill_time.observe(time.perf_counter() - started)
        return self._sample(seqs, logits[0] if len(logits) == 1 else np.concatenate(logits))

    def _drop_departed(self) -> None:
        """Rows that finished, were cancelled or slid out leave the cache."""
        keep = [i for i, seq in enumerate(self._rows) if seq.decoding and not seq.cancelled]
        if len(keep) < len(self._rows):
            self._cache.keep(keep)
            self._rows = [self._rows[i] for i in keep]

    def _decode(self) -> np.ndarray:
        tokens = np.array([seq.seen[-1] for seq in self._rows], np.int64)[:, None]  # (B, 1)
        logits = self._cache.decode(tokens)  # (B, V)
        for seq in self._rows:
            seq.cached += 1
        return logits

    def _prefill(self, seqs: list[Sequence]) -> np.ndarray:
        """The newcomers' prompts in one call, right-padded, on empty caches; then they join."""
        lengths = [len(s.prefill) for s in seqs]
        tokens = np.zeros((len(seqs), max(lengths)), np.int64)  # (B, S)
        for i, seq in enumerate(seqs):
            tokens[i, : lengths[i]] = seq.prefill
        logits = self._cache.prefill(tokens, lengths)  # (B, V): each prompt's last position
        self._rows += seqs
        for seq, n in zip(seqs, lengths, strict=True):
            seq.prefill, seq.cached = None, n
        return logits

    def _sample(
        self, seqs: list[Sequence], logits: np.ndarray
    ) -> list[tuple[Sequence, int, TokenLogprob | None]]:
        """One call per distinct sampling setting (each row keeps its own generator); then the
        log-probabilities of the rows that asked for them, in one call."""
        if seqs != self._grouped[0]:  # a new batch (rows joined or left): group it again
            self._grouped = (seqs, _group_by_sampling(seqs))
        groups = self._grouped[1]
        tokens = np.empty(len(seqs), np.int64)
        for group in groups:
            if len(groups) == 1:  # the whole batch: no gathering and scattering of rows
                tokens = select_next_tokens(logits, group.params, group.rngs, group.seen, group.generated)
            else:
                tokens[group.index] = select_next_tokens(
                    logits[group.index], group.params, group.rngs, group.seen, group.generated
                )
        chosen = tokens.tolist()
        logprobs: list[TokenLogprob | None] = [None] * len(seqs)
        wanted = [i for i, seq in enumerate(seqs) if seq.logprobs is not None]
        if wanted:
            entries = token_logprobs(
                logits[wanted], [chosen[i] for i in wanted], [seqs[i].logprobs for i in wanted]
            )
            for i, entry in zip(wanted, entries, strict=True):
                logprobs[i] = entry
        return list(zip(seqs, chosen, logprobs, strict=True))


@dataclass(frozen=True)
class SamplingGroup:
    """The rows of a batch that share sampling settings, and what selection reads of each (the
    lists are the sequences' own, which grow in place, so a group stays valid while its batch does)."""

    params: SamplingParams
    index: list[int]  # the rows' positions in the batch
    seen: list[list[int]] | None  # prompt and output ids, for the repetition penalty
    generated: list[list[int]] | None  # output ids, for the presence and frequency penalties
    rngs: list[np.random.Generator] | None  # one per row; greedy needs none


def _group_by_sampling(seqs: list[Sequence]) -> list[SamplingGroup]:
    rows: dict[SamplingParams, list[int]] = {}
    for i, seq in enumerate(seqs):
        rows.setdefault(seq.params, []).append(i)
    groups = []
    for params, index in rows.items():
        members = [seqs[i] for i in index]
        groups.append(
            SamplingGroup(
                params,
                index,
                [seq.seen for seq in members] if params.repetition_penalty != 1.0 else None,
                [seq.new for seq in members] if params.counts_generated else None,
                [seq.rng for seq in members] if params.temperature > 0 else None,
            )
        )
    return groups


def _dispatch(events: list[tuple[Sequence, TokenText | Finished]]) -> None:
    """On the event loop: hand one step's events to the requests waiting for them."""
    for seq, event in events:
        seq.events.put_nowait(event)
