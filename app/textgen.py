"""Continuous (iteration-level) batching of text generation over a GPT ``decoder_step`` graph.

One loop per model advances every active sequence by one token per step, as text-generation-inference
and vLLM do. New requests join at step boundaries: their prompts are prefilled together in one call
(right-padded, T = 0 caches), and from then on each step is one call over all decoding sequences.
Each sequence keeps its own KV cache (1, H, T_i, D); a step pads the caches to the longest along T,
hides the padding with ``attention_mask`` and gives each row its own ``position_ids``, then keeps only
each row's real slots of the presents. Finished or disconnected sequences leave at once. A sequence
that fills the context window continues on a sliding window: its last half is prefilled again.

The step itself (feeds, onnxruntime, cache bookkeeping, sampling) runs in a worker thread; the event
loop only admits requests and delivers tokens, so it never blocks on a step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from app import metrics
from app.errors import QueueFull
from app.sampling import SamplingParams, select_next_tokens
from app.session import Session
from app.tokenizer import CharTokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationLimits:
    max_active_sequences: int = 32  # sequences advanced together per step
    max_queued_sequences: int = 64  # waiting to join; beyond this, 429
    max_cached_tokens: int = 32 * 128  # sum of active caches' lengths (bounds memory)


@dataclass(eq=False)
class Sequence:
    """One generation request as the loop sees it; its events go to ``events`` on the event loop."""

    prompt: list[int]
    params: SamplingParams
    max_new_tokens: int
    stop: tuple[str, ...]
    rng: np.random.Generator
    eos_id: int | None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    seen: list[int] = field(default_factory=list)  # prompt + generated ids
    new: list[int] = field(default_factory=list)
    text: str = ""  # decoded generated text (cut at a stop string)
    pending: list[int] = field(default_factory=list)  # ids to feed next step
    past: dict[str, np.ndarray] | None = None  # None: the next step prefills ``pending``
    cancelled: bool = False
    finish_reason: str | None = None
    created: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None

    def __post_init__(self) -> None:
        self.seen = list(self.prompt)
        self.pending = list(self.prompt)

    @property
    def cached(self) -> int:
        return 0 if self.past is None else next(iter(self.past.values())).shape[2]


class TextGenerator:
    """The decode loop of one text-generation model."""

    def __init__(
        self,
        name: str,
        session: Session,
        tokenizer: CharTokenizer,
        block_size: int,
        limits: GenerationLimits,
    ) -> None:
        self.name = name
        self.session = session
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.limits = limits
        graph = session.graph
        self.past_specs = [spec for spec in graph.inputs if spec.name.startswith("past_")]
        # Which output holds each past input's next value (present_key_0 -> past_key_0), by name.
        self.present_index = {
            name.replace("present_", "past_"): i for i, name in enumerate(session.output_names) if i > 0
        }
        self._waiting: list[Sequence] = []
        self._active: list[Sequence] = []
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"gen-{name}")
        self._task: asyncio.Task | None = None
        self._active_gauge = metrics.GEN_ACTIVE.labels(name)
        self._queued_gauge = metrics.GEN_QUEUED.labels(name)
        self._cached_gauge = metrics.GEN_CACHED_TOKENS.labels(name)

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"generate-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for seq in self._waiting + self._active:
            self._finish(seq, "shutdown")
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------------------ requests

    def submit(
        self,
        prompt: list[int],
        params: SamplingParams,
        max_new_tokens: int,
        stop: tuple[str, ...] = (),
        seed: int | None = None,
        eos_id: int | None = None,
    ) -> Sequence:
        if len(self._waiting) >= self.limits.max_queued_sequences:
            metrics.REJECTED.labels(self.name, "generation_queue_full").inc()
            raise QueueFull(f"model {self.name!r} has {len(self._waiting)} generations queued; retry later")
        seq = Sequence(prompt, params, max_new_tokens, stop, np.random.default_rng(seed), eos_id)
        self._waiting.append(seq)
        self._queued_gauge.set(len(self._waiting))
        self._wake.set()
        return seq

    def cancel(self, seq: Sequence) -> None:
        """The client went away: the loop drops the sequence before its next step."""
        seq.cancelled = True
        self._wake.set()

    @property
    def active(self) -> int:
        return len(self._active)

    # ------------------------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._admit()
            if not self._active:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = list(self._active)
            try:
                tokens = await loop.run_in_executor(self._executor, self._step, batch)
            except Exception as exc:  # a failed step ends its sequences, not the loop
                log.exception("model %s: generation step failed", self.name)
                for seq in batch:
                    self._finish(seq, "error", error=str(exc))
                continue
            for seq, token in zip(batch, tokens, strict=True):
                if token is not None:
                    self._deliver(seq, token)

    def _admit(self) -> None:
        """Drop cancelled sequences, then move waiting ones in while the limits allow."""
        for seq in [s for s in self._active + self._waiting if s.cancelled]:
            self._finish(seq, "cancelled")
        cached = sum(s.cached + len(s.pending) for s in self._active)
        while self._waiting and len(self._active) < self.limits.max_active_sequences:
            need = len(self._waiting[0].pending)
            if self._active and cached + need > self.limits.max_cached_tokens:
                break
            seq = self._waiting.pop(0)
            self._active.append(seq)
            cached += need
        self._active_gauge.set(len(self._active))
        self._queued_gauge.set(len(self._waiting))
        self._cached_gauge.set(cached)

    def _deliver(self, seq: Sequence, token: int) -> None:
        now = time.perf_counter()
        if seq.first_token_at is None:
            seq.first_token_at = now
            metrics.GEN_TTFT.labels(self.name).observe(now - seq.created)
        metrics.GEN_TOKENS.labels(self.name).inc()
        seq.new.append(token)
        seq.seen.append(token)
        piece = self.tokenizer.decode([token], stop_at_eos=False)
        if seq.eos_id is not None and token == seq.eos_id:
            self._finish(seq, "eos")
            return
        before = len(seq.text)
        seq.text += piece
        hit = min(
            (i for i in (seq.text.find(s, max(0, before - len(s))) for s in seq.stop) if i >= 0), default=-1
        )
        if hit >= 0:
            piece = seq.text[before:hit]
            seq.text = seq.text[:hit]
            if piece:
                seq.events.put_nowait(("token", piece))
            self._finish(seq, "stop")
            return
        seq.events.put_nowait(("token", piece))
        if len(seq.new) >= seq.max_new_tokens:
            self._finish(seq, "length")
            return
        if len(seq.seen) >= self.block_size:  # the window is full: continue on its last half
            seq.past = None
            seq.pending = seq.seen[-(self.block_size // 2) :]
        else:
            seq.pending = [token]

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        if seq.finish_reason is not None:
            return
        seq.finish_reason = reason
        seq.past = None  # free the cache now
        if seq in self._active:
            self._active.remove(seq)
        if seq in self._waiting:
            self._waiting.remove(seq)
        self._active_gauge.set(len(self._active))
        self._queued_gauge.set(len(self._waiting))
        metrics.GEN_FINISHED.labels(self.name, reason).inc()
        if seq.first_token_at is not None and len(seq.new) > 1:
            per_token = (time.perf_counter() - seq.first_token_at) / (len(seq.new) - 1)
            metrics.GEN_TIME_PER_TOKEN.labels(self.name).observe(per_token)
        seq.events.put_nowait(("done", error))

    # ------------------------------------------------------------------------------ one step (worker thread)

    def _step(self, batch: list[Sequence]) -> list[int | None]:
        """Prefill the sequences without a cache, advance the others by one token; returns each
        sequence's next token."""
        logits: dict[int, np.ndarray] = {}
        prefill = [s for s in batch if s.past is None]
        decode = [s for s in batch if s.past is not None]
        if prefill:
            started = time.perf_counter()
            logits.update(self._prefill(prefill))
            metrics.GEN_STEP_TIME.labels(self.name, "prefill").observe(time.perf_counter() - started)
        if decode:
            started = time.perf_counter()
            logits.update(self._decode(decode))
            metrics.GEN_STEP_TIME.labels(self.name, "decode").observe(time.perf_counter() - started)
            metrics.GEN_DECODE_BATCH.labels(self.name).observe(len(decode))
        tokens: list[int | None] = []
        for seq in batch:
            row = logits[id(seq)]  # (V,)
            tokens.append(int(select_next_tokens(row[None], seq.params, seq.rng, [seq.seen])[0]))
        return tokens

    def _prefill(self, seqs: list[Sequence]) -> dict[int, np.ndarray]:
        lengths = [len(s.pending) for s in seqs]
        longest = max(lengths)
        tokens = np.zeros((len(seqs), longest), np.int64)
        mask = np.zeros((len(seqs), longest), np.int64)
        for i, seq in enumerate(seqs):
            tokens[i, : lengths[i]] = seq.pending
            mask[i, : lengths[i]] = 1
        feeds = {
            "tokens": tokens,
            "attention_mask": mask,
            "position_ids": np.tile(np.arange(longest, dtype=np.int64), (len(seqs), 1)),
            **{
                spec.name: np.zeros((len(seqs), spec.shape[1], 0, spec.shape[3]), np.float32)
                for spec in self.past_specs
            },
        }
        out, *presents = self.session.run(feeds)
        result = {}
        for i, seq in enumerate(seqs):
            n = lengths[i]
            seq.past = {
                spec.name: p[i : i + 1, :, :n] for spec, p in zip(self.past_specs, presents, strict=True)
            }
            seq.pending = []
            result[id(seq)] = out[i, n - 1]
        return result

    def _decode(self, seqs: list[Sequence]) -> dict[int, np.ndarray]:
        cached = [s.cached for s in seqs]
        longest = max(cached)
        mask = np.zeros((len(seqs), longest + 1), np.int64)
        mask[:, longest] = 1
        for i, n in enumerate(cached):
            mask[i, :n] = 1
        feeds = {
            "tokens": np.array([[s.pending[-1]] for s in seqs], np.int64),
            "attention_mask": mask,
            "position_ids": np.array([[n] for n in cached], np.int64),
        }
        for spec in self.past_specs:
            parts = [_pad_time(s.past[spec.name], longest) for s in seqs]
            feeds[spec.name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        outputs = self.session.run(feeds)
        out = outputs[0]  # (B, 1, V)
        result = {}
        for i, (seq, n) in enumerate(zip(seqs, cached, strict=True)):
            seq.past = {}
            for spec in self.past_specs:
                present = outputs[self.present_index[spec.name]]  # (B, H, longest + 1, D)
                seq.past[spec.name] = np.concatenate(
                    [present[i : i + 1, :, :n], present[i : i + 1, :, longest:]], axis=2
                )
            seq.pending = []
            result[id(seq)] = out[i, -1]
        return result


def _pad_time(past: np.ndarray, length: int) -> np.ndarray:
    """(1, H, T, D) -> (1, H, length, D), zeros after the real slots (hidden by the attention mask)."""
    if past.shape[2] == length:
        return past
    return np.pad(past, ((0, 0), (0, 0), (0, length - past.shape[2]), (0, 0)))
