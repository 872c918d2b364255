"""Dynamic batching in front of a pool of onnxruntime sessions (one runner per model graph).

One background task owns the queue. It waits for an idle session, takes the oldest request, and adds
every compatible request queued behind it up to ``max_batch_size`` rows. When the whole pool is idle
it dispatches at once (a lone request never waits for company); when other batches are in flight it
waits for more requests until the batch is full or ``max_queue_delay_ms`` has passed since the oldest
one arrived (``"auto"``: until ``AdaptiveDelay`` says go, app/batch_policy.py). Batches run in
worker threads (one per session), so the event loop never blocks on onnxruntime, and while they run
the next batch fills up. An error in a batch fails that batch's callers only.

Compute-bound graphs (a row costs more than the HTTP layer spends on a request; timed at load, see
``measure_cost``) are split across instances (``split_across_instances``, unless the model says): a
batch takes its instance's share of the queue, starts without waiting for company once more rows
would not make it cheaper per row, and one more batch queues behind each running one, so that a
session starts its next batch the moment one ends, without waiting for the busy event loop.

Rows of different lengths share a batch when the graph takes ``lengths`` or an ``attention_mask``
(it knows which positions are padding): they are right-padded with 0 to the longest and each caller
gets its own rows back, cropped to its own length. Other graphs batch only requests whose non-batch
shapes agree.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from app import logs, metrics, tracing
from app.batch_policy import AdaptiveDelay, CpuLoad
from app.core.repository_format import Batching, GraphSpec
from app.errors import DeadlineExceeded, InferenceFailed, QueueFull, ServingError
from app.session import Session

log = logging.getLogger(__name__)

PADDING_AWARE_INPUTS = ("lengths", "attention_mask")
# A graph is compute-bound when one row costs onnxruntime more than the HTTP layer spends on one
# request (30-70 us on these cores: the MLP, whose rows cost ~1 us, serves ~14,000 req/s on one core).
# Then its instances are the bottleneck and should all be running (split_across_instances when the
# model does not say): measured, the ResNet and the ViT (120-830 us per row) gain by it, LeNet-5 and
# the MLP (1-30 us) lose 11-16% (bench/instances_bench.py, bench/ceiling_bench.py).
COMPUTE_BOUND_ROW_S = 50e-6
# A batch that already holds enough rows that a bigger one would cost less than this share less per
# row starts at once when it is split (other instances busy): waiting for company buys nothing.
WORTH_WAITING = 0.1
# Split batches per session beyond the one it runs: the next starts as soon as the running one ends,
# on the session's own worker thread, instead of after the event loop (busy with HTTP) has seen the
# end and formed it: +25% for the ResNet at 32 connections on two cores (bench/ceiling_bench.py).
QUEUED_PER_SESSION = 1
# Split batches up to this size are assembled on the event loop (~10 us per 100 KB copied).
ASSEMBLE_ON_LOOP_BYTES = 1 << 20


@dataclass(frozen=True)
class BatchCost:
    """A graph's run time as ``fixed_s + per_row_s * rows``, from timed runs at load."""

    fixed_s: float
    per_row_s: float

    def rows_worth_waiting_for(self, limit: int) -> int:
        """The fewest rows whose run costs within WORTH_WAITING of the marginal cost per row."""
        if self.per_row_s <= 0:
            return limit
        return max(1, min(limit, math.ceil(self.fixed_s / (WORTH_WAITING * self.per_row_s))))


@dataclass(eq=False)
class _Request:
    feeds: dict[str, np.ndarray]  # each (rows, ...)
    rows: int
    key: tuple | None  # requests batch together only when their keys are equal
    lengths: dict[str, int]  # input name -> this request's size of its padded axis 1
    enqueued: float
    deadline: float
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    started: bool = False
    queue_s: float = 0.0  # set when its batch ran: for the request's access line
    compute_s: float = 0.0
    batch_rows: int = 0
    trace: object = field(default_factory=tracing.current_span)  # the request's span (tracing on), or None


@dataclass
class ExecutionStats:
    """What a runner executed, in the terms of Triton's statistics extension (nanoseconds): rows
    inferred, batches executed, and per request its queue wait and its batch's input assembly,
    onnxruntime run and output split; per batch size, the same per execution. Successful batches only."""

    inference_count: int = 0
    execution_count: int = 0
    queue: list[int] = field(default_factory=lambda: [0, 0])  # [count, ns]
    compute_input: list[int] = field(default_factory=lambda: [0, 0])
    compute_infer: list[int] = field(default_factory=lambda: [0, 0])
    compute_output: list[int] = field(default_factory=lambda: [0, 0])
    by_batch_size: dict[int, list[int]] = field(default_factory=dict)  # size -> [count, in, infer, out]

    def record(self, rows: int, requests: int, queue_ns: int, phases: tuple[int, int, int]) -> None:
        self.inference_count += rows
        self.execution_count += 1
        self.queue[0] += requests
        self.queue[1] += queue_ns
        phase_stats = (self.compute_input, self.compute_infer, self.compute_output)
        for stat, ns in zip(phase_stats, phases, strict=True):
            stat[0] += requests
            stat[1] += ns * requests
        per_size = self.by_batch_size.setdefault(rows, [0, 0, 0, 0])
        per_size[0] += 1
        for i, ns in enumerate(phases, 1):
            per_size[i] += ns


def pad_to(array: np.ndarray, length: int) -> np.ndarray:
    """Right-pad axis 1 with zeros to ``length``."""
    if array.shape[1] == length:
        return array
    widths = [(0, 0)] * array.ndim
    widths[1] = (0, length - array.shape[1])
    return np.pad(array, widths)


class Runner:
    """Batches requests for one graph and runs them on ``sessions`` (the model's instances)."""

    def __init__(self, name: str, graph: GraphSpec, sessions: list[Session], batching: Batching) -> None:
        self.name = name
        self.graph = graph
        self.sessions = sessions
        self.batching = batching
        names = {spec.name for spec in graph.inputs}
        # Axis 1 of these inputs may differ between requests of one batch (padded to the longest).
        self.padded_inputs = (
            {spec.name for spec in graph.inputs if len(spec.shape) >= 2 and spec.shape[1] < 0}
            if names & set(PADDING_AWARE_INPUTS)
            else set()
        )
        self._queue: collections.deque[_Request] = collections.deque()
        self._arrived = asyncio.Event()
        # A session appears here once per batch it may be given: one running, and when batches are
        # split (compute-bound graphs) one more queued behind it, which its worker thread starts the
        # moment the first ends instead of after a round trip through a busy event loop (start()).
        self._idle: asyncio.Queue[Session] = asyncio.Queue()
        self._in_flight: set[asyncio.Task] = set()
        # Batches given to sessions. Not len(_in_flight): a finished task leaves that set one loop
        # iteration after its session is back, which made a lone request wait for company.
        self._busy = 0
        # One worker thread per session: a batch queued behind another on its session waits there.
        self._executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ort-{name}-{i}")
            for i in range(len(sessions))
        ]
        self.cost: BatchCost | None = None  # measure_cost() at load
        self.split = self._splits()
        self._enough_rows = batching.max_batch_size
        self._task: asyncio.Task | None = None
        self.batches_run = 0  # counters for /models and tests: how much batching actually happened
        self.requests_run = 0
        self.stats = ExecutionStats()
        # Labelled children looked up once: .labels() takes a lock and a dict lookup per call.
        self._queue_depth = metrics.QUEUE_DEPTH.labels(name)
        self._queue_time = metrics.QUEUE_TIME.labels(name)
        self._compute_time = metrics.COMPUTE_TIME.labels(name)
        self._batch_size = metrics.BATCH_SIZE.labels(name)
        self._in_flight_gauge = metrics.IN_FLIGHT.labels(name)
        self._rejected_deadline = metrics.REJECTED.labels(name, "deadline")
        # Created now, at 0: a series born with its first event loses that event to rate().
        self._rejected_full = metrics.REJECTED.labels(name, "queue_full")
        # max_queue_delay_ms "auto": each hold is chosen from the batch cost measured here, the arrival
        # rate and the latency target, instead of a fixed delay.
        self.policy: AdaptiveDelay | None = None
        if batching.max_queue_delay_ms == "auto":
            # The cores this process may run on (taskset, a container's cpuset), not the machine's.
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            self.policy = AdaptiveDelay(batching.latency_target_ms / 1000, cpu=CpuLoad(cores))
            self._hold_gauge = metrics.BATCH_HOLD.labels(name)
            self._cost_gauges = (
                metrics.BATCH_COST.labels(name, "batch"),
                metrics.BATCH_COST.labels(name, "row"),
            )

    # ------------------------------------------------------------------------------ lifecycle

    def measure_cost(self) -> BatchCost:
        """Time runs of one row and of max_batch_size rows on the first instance (blocking: at load,
        before ``start``), and decide from them whether batches split across instances."""
        limit = self.batching.max_batch_size
        one = self.sessions[0].time_run(1)
        full = self.sessions[0].time_run(limit) if limit > 1 else one
        per_row = max(0.0, (full - one) / (limit - 1)) if limit > 1 else one
        self.cost = BatchCost(fixed_s=max(0.0, one - per_row), per_row_s=per_row)
        self.split = self._splits()
        self._enough_rows = self.cost.rows_worth_waiting_for(limit) if self.split else limit
        return self.cost

    @property
    def needs_cost(self) -> bool:
        """Whether measure_cost() would decide anything: several instances, the split not configured
        off."""
        return len(self.sessions) > 1 and self.batching.split_across_instances is not False

    def _splits(self) -> bool:
        """The model's split_across_instances; when it does not say, whether the graph is compute-bound."""
        configured = self.batching.split_across_instances
        if configured is not None:
            return configured
        cost = self.cost
        return len(self.sessions) > 1 and cost is not None and cost.per_row_s >= COMPUTE_BOUND_ROW_S

    def start(self) -> None:
        for _ in range(1 + QUEUED_PER_SESSION if self.split else 1):
            for session in self.sessions:
                self._idle.put_nowait(session)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        for request in self._queue:
            if not request.future.done():
                request.future.set_exception(InferenceFailed(f"model {self.name!r} is shutting down"))
        self._queue.clear()
        for executor in self._executors:
            executor.shutdown(wait=True)

    # ------------------------------------------------------------------------------ submitting

    async def infer(self, feeds: dict[str, np.ndarray], timeout_s: float | None = None) -> list[np.ndarray]:
        """Run ``feeds`` (every input with the same leading batch size, at most max_batch_size) and
        return this request's rows of every output, in the graph's output order."""
        rows = len(next(iter(feeds.values())))
        if len(self._queue) >= self.batching.max_queue_size:
            self._rejected_full.inc()
            raise QueueFull(f"model {self.name!r} has {len(self._queue)} requests queued; retry later")
        now = time.perf_counter()
        timeout_s = self.batching.timeout_ms / 1000 if timeout_s is None else timeout_s
        request = _Request(
            feeds=feeds,
            rows=rows,
            key=self._key(feeds),
            lengths={name: feeds[name].shape[1] for name in self.padded_inputs},
            enqueued=now,
            deadline=now + timeout_s,
        )
        if self.policy is not None:
            self.policy.arrived(now, rows)
        self._queue.append(request)
        self._queue_depth.set(len(self._queue))
        self._arrived.set()
        # A timer rather than asyncio.wait_for: one handle per request instead of a task and a shield.
        expiry = asyncio.get_running_loop().call_later(timeout_s, self._expire, request)
        try:
            result = await request.future
        finally:
            expiry.cancel()
        logs.add_batch(request.queue_s, request.compute_s, request.batch_rows)
        return result

    def _expire(self, request: _Request) -> None:
        """The deadline passed: fail the request unless its batch already started (then its answer is
        moments away). The batcher skips requests whose future is done."""
        if request.started or request.future.done():
            return
        self._rejected_deadline.inc()
        request.future.set_exception(
            DeadlineExceeded(f"model {self.name!r}: no batch started within the request's deadline")
        )

    def _key(self, feeds: dict[str, np.ndarray]) -> tuple | None:
        if self.padded_inputs:
            shapes = tuple(
                v.shape[2:] if k in self.padded_inputs else v.shape[1:] for k, v in sorted(feeds.items())
            )
        else:
            shapes = tuple(v.shape[1:] for _, v in sorted(feeds.items()))
        return shapes

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------------------------ batching loop

    async def _loop(self) -> None:
        while True:
            session = await self._idle.get()
            try:
                batch = await self._next_batch()
            except BaseException:
                self._idle.put_nowait(session)
                raise
            self._busy += 1
            task = asyncio.get_running_loop().create_task(self._execute(session, batch))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    def _still_waiting(self, request: _Request, now: float) -> bool:
        """False for a request that left the queue's business: cancelled, answered, or (failed here)
        past its deadline."""
        if request.future.done():
            return False
        if request.deadline <= now:
            request.future.set_exception(DeadlineExceeded(f"model {self.name!r}: deadline passed in queue"))
            self._rejected_deadline.inc()
            return False
        return True

    def _pop_live(self) -> _Request | None:
        """The oldest request still waiting."""
        now = time.perf_counter()
        while self._queue:
            request = self._queue.popleft()
            if self._still_waiting(request, now):
                return request
        return None

    async def _next_batch(self) -> list[_Request]:
        while True:
            first = self._pop_live()
            if first is not None:
                break
            self._arrived.clear()
            await self._arrived.wait()
        batch, rows = [first], first.rows
        limit = self.batching.max_batch_size
        pool_idle = self._busy == 0 and not self._cpu_bound()  # nothing else running: dispatch at once
        if self.policy is None:
            close_at = first.enqueued + self.batching.max_queue_delay_ms / 1000
        while True:
            share = self._share(rows)
            rows += self._take_compatible(batch, share - rows)
            # Full; or nothing else running; or the rest of the queue is other instances' share; or
            # split and big enough that more rows would not make it cheaper per row.
            if rows >= limit or pool_idle or (share < limit and self._queue) or rows >= self._enough_rows:
                break
            if self.policy is not None:
                close_at = self._adaptive_release(first, rows, share)
                if close_at is None:
                    break
            remaining = close_at - time.perf_counter()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                rows += self._take_compatible(batch, self._share(rows) - rows)
                break
        self._queue_depth.set(len(self._queue))
        return batch

    def _adaptive_release(self, first: _Request, rows: int, room: int) -> float | None:
        """When the batch should leave under max_queue_delay_ms "auto"; None: now. Asked again at every
        arrival and every finished batch, so a pool that went idle while this batch waited for company
        dispatches it at once (unless the process is CPU-bound)."""
        if self._busy == 0 and not self._cpu_bound():
            return None
        now = time.perf_counter()
        decision = self.policy.decide(now, first.enqueued, rows, room, concurrent=self._busy + 1)
        self._hold_gauge.set(max(0.0, decision.release_at - first.enqueued))
        return decision.release_at if decision.release_at > now else None

    def _cpu_bound(self) -> bool:
        """Adaptive batching: the process keeps its cores busy, so an idle instance is no spare capacity
        (the HTTP work needs the cores too) and an idle pool waits for company as well."""
        if self.policy is None:
            return False
        return self.policy.idle_pool_waits(time.perf_counter(), time.process_time())

    def _share(self, taken: int) -> int:
        """The most rows a batch holding ``taken`` rows may grow to. With several instances, its share
        of what is queued: a compute-bound graph costs about the same per row at any batch size, so
        32 queued rows run sooner as two batches of 16 on two instances than as one of 32 while the
        other instance finds nothing left to take."""
        limit = self.batching.max_batch_size
        instances = len(self.sessions)
        if instances > 1 and self.split:
            queued = taken + sum(request.rows for request in self._queue)
            limit = min(limit, max(taken, -(-queued // instances)))
        return limit

    def _take_compatible(self, batch: list[_Request], room: int) -> int:
        """Move queued requests with the first one's key into ``batch`` while they fit; FIFO order is
        kept for the rest."""
        key = batch[0].key
        taken, kept = 0, collections.deque()
        now = time.perf_counter()
        while self._queue:
            request = self._queue.popleft()
            if not self._still_waiting(request, now):
                continue
            if request.key == key and request.rows <= room - taken:
                batch.append(request)
                taken += request.rows
            else:
                kept.append(request)
                if taken >= room:
                    break
        kept.extend(self._queue)
        self._queue = kept
        return taken

    # ------------------------------------------------------------------------------ execution

    async def _execute(self, session: Session, batch: list[_Request]) -> None:
        formed = time.perf_counter()
        concurrent = self._busy  # batches given to sessions now, this one included: the cost model's key
        for request in batch:
            request.started = True  # past its deadline now, it is answered anyway: moments away
        rows = sum(r.rows for r in batch)
        self._batch_size.observe(rows)
        self.batches_run += 1
        self.requests_run += len(batch)
        self._in_flight_gauge.inc()
        ok = False
        started = formed  # when the run began: later than ``formed`` when queued behind another
        try:
            loop = asyncio.get_running_loop()
            executor = self._executors[self.sessions.index(session)]
            # Split batches are assembled here: on the worker thread, numpy's copy gives up the
            # interpreter and taking it back waited behind the busy event loop, every batch (+5-9%
            # for the ResNet on two cores). Large ones stay on the worker: nothing heavy here.
            feeds, assembly_ns = None, 0
            if self.split and self._fits_on_loop(batch):
                feeds = self._assemble(batch)
                assembly_ns = int((time.perf_counter() - formed) * 1e9)
            started, results, phases = await loop.run_in_executor(
                executor, self._run_batch, session, batch, feeds
            )
            phases = (phases[0] + assembly_ns, *phases[1:])
            if self.policy is not None:
                # The batch's own time, measured on its thread: the event loop's lag in handing it over
                # and back grows with the load, not with the rows, and would teach the model that
                # every batch is slow under load.
                self._learn(rows, sum(phases) / 1e9, concurrent)
            ok = True
        except ServingError as exc:
            results = [exc] * len(batch)
        except Exception:  # any onnxruntime failure fails this batch only
            log.exception("model %s: batch of %d requests failed", self.name, len(batch))
            results = [
                InferenceFailed(f"model {self.name!r}: inference failed; the server log has the details")
            ] * len(batch)
        finally:
            self._in_flight_gauge.dec()
            self._busy -= 1
            self._idle.put_nowait(session)
            if self.policy is not None:
                self._arrived.set()  # a batch waiting for company decides again: the pool may be idle
        queue_s = 0.0
        for request in batch:
            self._queue_time.observe(started - request.enqueued)
            queue_s += started - request.enqueued
        if ok:
            self.stats.record(rows, len(batch), int(queue_s * 1e9), phases)
            for request in batch:
                request.queue_s, request.compute_s = started - request.enqueued, sum(phases) / 1e9
                request.batch_rows = rows
        if tracing.enabled():  # linked to each request's span; their queue spans end at ``started``
            span = tracing.start_batch(
                self.name,
                self.graph.file,
                f"{self.graph.file}#{self.sessions.index(session)}",
                session.provider,
                [(r.trace, r.enqueued) for r in batch],
                rows,
                started,
            )
            if span is not None:
                tracing.end_batch(span, failed=not ok)
        for request, result in zip(batch, results, strict=True):
            if request.future.done():
                continue
            if isinstance(result, Exception):
                request.future.set_exception(result)
            else:
                request.future.set_result(result)

    def _learn(self, rows: int, seconds: float, concurrent: int) -> None:
        self.policy.observe(rows, seconds, concurrent)
        terms = self.policy.cost.terms(concurrent)
        if terms is not None:
            for gauge, value in zip(self._cost_gauges, terms, strict=True):
                gauge.set(value)

    @staticmethod
    def _fits_on_loop(batch: list[_Request]) -> bool:
        return sum(a.nbytes for r in batch for a in r.feeds.values()) <= ASSEMBLE_ON_LOOP_BYTES

    def _assemble(self, batch: list[_Request]) -> dict[str, np.ndarray]:
        """The batch's feeds: each input's rows concatenated (padded to the longest where allowed)."""
        feeds = {}
        for name in batch[0].feeds:
            parts = [r.feeds[name] for r in batch]
            if name in self.padded_inputs:
                longest = max(p.shape[1] for p in parts)
                parts = [pad_to(p, longest) for p in parts]
            feeds[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return feeds

    def _run_batch(
        self, session: Session, batch: list[_Request], feeds: dict[str, np.ndarray] | None
    ) -> tuple[float, list[list[np.ndarray]], tuple[int, int, int]]:
        """Worker thread: assemble the feeds (unless given), run, split rows back per request; also
        when it began (perf_counter) and the nanoseconds of those three phases."""
        started = time.perf_counter()
        t0 = time.perf_counter_ns()
        if feeds is None:
            feeds = self._assemble(batch)
        t1 = time.perf_counter_ns()
        outputs = session.run(feeds)
        t2 = time.perf_counter_ns()
        self._compute_time.observe(time.perf_counter() - started)
        # Outputs with a dynamic axis 1 follow the padded inputs' axis 1: crop them per request.
        crop = [len(spec.shape) >= 2 and spec.shape[1] < 0 for spec in self.graph.outputs]
        own_length = next(iter(self.padded_inputs), None)
        results, offset = [], 0
        for request in batch:
            rows = []
            for output, cropped in zip(outputs, crop, strict=True):
                part = output[offset : offset + request.rows]
                if cropped and own_length is not None:
                    part = part[:, : request.lengths[own_length]]
                rows.append(part)
            results.append(rows)
            offset += request.rows
        return started, results, (t1 - t0, t2 - t1, time.perf_counter_ns() - t2)
