"""Admission: a request is admitted or refused before any work that grows with it is done.

Each model has a :class:`Gate`: a count of its requests in progress (from the moment the model's name
is read off the body until the answer is ready) and a bound on it, the model's own capacity to hold
work: ``batching.max_queue_size`` for batched graphs, the decode loop's active + queued sequences for
language models, the search threads for seq2seq. The front door (app/frontend.py) passes a request
through the gate before its body is parsed, images decoded or arrays built.

A request that finds its model at the bound waits, unparsed, in a FIFO for a slot, for at most
``wait_s``: that wait counts towards its latency, so it is short. If no slot comes, the answer is
429 with Retry-After, sent ``hold_s`` after the request arrived. The hold is what keeps goodput under
a flood: clients that retry a 429 at once (most load generators, many scripts) would otherwise come
back within microseconds, and answering them would take the event loop from the admitted requests;
held (for a jittered time, so that they do not come back in step), they come back at about the pace
Retry-After asks for, and a held request costs no CPU. The FIFO
hands slots out oldest first, so none starves. At most ``max_waiting`` requests wait or are held per
model, and their bodies hold less than ``max_waiting_bytes`` over all models; beyond either, 429 at
once.

Gates also tell when a replaced model version may stop (app/registry.py): each ticket carries the
gate's epoch at admission; the registry swaps versions, advances the epoch, and waits
(:meth:`Gate.drained`) until every request admitted in an earlier epoch (which may have picked the old
version) has been answered.

Gates run on the event loop only, so they need no lock.
"""

from __future__ import annotations

import asyncio
import collections
import random
from dataclasses import dataclass

from app import metrics
from app.errors import QueueFull


@dataclass
class WaitingRoom:
    """What all gates' waiting requests hold together (their bodies are in memory)."""

    max_bytes: int
    bytes: int = 0


class Ticket:
    """One admitted request's slot; released once, at the end of its ``with`` block or earlier."""

    __slots__ = ("_epoch", "_gate")

    def __init__(self, gate: Gate) -> None:
        self._gate: Gate | None = gate
        self._epoch = gate.epoch
        gate._epochs[self._epoch] = gate._epochs.get(self._epoch, 0) + 1

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate._release()
            gate._leave(self._epoch)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Gate:
    def __init__(
        self,
        model: str,
        limit: int,
        *,
        wait_s: float = 0.0,
        hold_s: float = 0.0,
        max_waiting: int = 0,
        room: WaitingRoom | None = None,
        retry_after_s: float = 1.0,
    ) -> None:
        self.model = model
        self.limit = limit
        self.wait_s = wait_s
        self.hold_s = max(hold_s, wait_s / 0.75)
        self.max_waiting = max_waiting
        self.room = room or WaitingRoom(0)
        self.retry_after_s = retry_after_s
        self.held = 0
        self.waiting = 0  # waiting for a slot
        self.holding = 0  # refused, held until their 429 is due
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self.epoch = 0
        self._epochs: dict[int, int] = {}  # epoch -> admitted requests not yet answered
        self._drainers: list[tuple[int, asyncio.Future]] = []
        # Created now, at 0: a series born with its first event loses that event to rate().
        self._rejected = metrics.REJECTED.labels(model, "admission")

    async def admit(self, body_bytes: int = 0) -> Ticket:
        """A slot for one request (waiting for one if allowed), or QueueFull."""
        if self.held < self.limit and not self.waiting:
            self.held += 1
            return Ticket(self)
        room = self.room
        if self.wait_s <= 0 or self.waiting >= self.max_waiting or room.bytes + body_bytes > room.max_bytes:
            raise self._refusal()
        slot = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        self.waiting += 1
        room.bytes += body_bytes
        expiry = asyncio.get_running_loop().call_later(self.wait_s, self._expire, slot)
        try:
            await slot  # set by _release, which hands its slot straight over (held stays the same)
        except QueueFull:  # no slot within wait_s: refused, answered once the hold is over
            self.holding += 1
            try:
                # Jittered (0.75-1.25x): refusals handed out together would otherwise come back
                # together, a burst that holds up the event loop, and stay in step.
                await asyncio.sleep(self.hold_s * (0.75 + random.random() / 2) - self.wait_s)
            finally:
                self.holding -= 1
            raise
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled() and slot.exception() is None:
                self._release()  # the slot arrived as the client left: pass it on
            raise
        finally:
            expiry.cancel()
            room.bytes -= body_bytes
            if not slot.done() or slot.cancelled():
                self.waiting -= 1  # cancelled while waiting (expired and handed-over ones are counted)
        return Ticket(self)

    def _expire(self, slot: asyncio.Future) -> None:
        if not slot.done():
            self.waiting -= 1
            slot.set_exception(self._refusal())

    def _release(self) -> None:
        while self._waiters:
            slot = self._waiters.popleft()
            if not slot.done():
                self.waiting -= 1
                slot.set_result(None)
                return
        self.held -= 1

    def advance(self) -> int:
        """Start a new epoch (after the registry swapped versions); returns it."""
        self.epoch += 1
        return self.epoch

    def _leave(self, epoch: int) -> None:
        left = self._epochs[epoch] - 1
        if left:
            self._epochs[epoch] = left
            return
        del self._epochs[epoch]
        pending = []
        for before, future in self._drainers:
            if future.done():
                continue
            if self._busy_before(before):
                pending.append((before, future))
            else:
                future.set_result(None)
        self._drainers = pending

    def _busy_before(self, epoch: int) -> bool:
        return any(e < epoch for e in self._epochs)

    async def drained(self, epoch: int, timeout_s: float) -> bool:
        """Wait until every request admitted before ``epoch`` has been answered (streams included);
        False when ``timeout_s`` passed first."""
        if not self._busy_before(epoch):
            return True
        future = asyncio.get_running_loop().create_future()
        self._drainers.append((epoch, future))
        try:
            async with asyncio.timeout(timeout_s):
                await future
        except TimeoutError:
            return False
        return True

    def _refusal(self) -> QueueFull:
        self._rejected.inc()
        return QueueFull(
            f"model {self.model!r} has {self.held} requests in progress and "
            f"{self.waiting + self.holding} waiting, its limit; retry later",
            self.retry_after_s,
        )
