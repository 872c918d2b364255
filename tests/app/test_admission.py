"""The admission gate (app/admission.py) on a real event loop: the bound, the FIFO wait for a slot,
its expiry, a waiter that leaves, and the limits on how many may wait and how many bytes they hold."""

from __future__ import annotations

import asyncio

import pytest

from app.admission import Gate, WaitingRoom
from app.errors import QueueFull


def run(coroutine):
    return asyncio.run(coroutine)


def test_bound_without_wait_refuses_at_once_with_retry_after() -> None:
    async def scenario():
        gate = Gate("m", 2, retry_after_s=3)
        a, b = await gate.admit(), await gate.admit()
        with pytest.raises(QueueFull) as refused:
            await gate.admit()
        assert refused.value.status_code == 429 and refused.value.headers["Retry-After"] == "3"
        assert "2 requests in progress" in refused.value.message
        a.release()
        a.release()  # idempotent: one slot back, not two
        c = await gate.admit()
        assert gate.held == 2
        b.release(), c.release()
        assert gate.held == 0

    run(scenario())


def test_waiters_get_slots_oldest_first_and_expire() -> None:
    async def scenario():
        gate = Gate("m", 1, wait_s=0.2, max_waiting=10, room=WaitingRoom(1 << 20))
        first = await gate.admit()
        order: list[int] = []

        async def waiter(i: int) -> None:
            with await gate.admit(100):
                order.append(i)
                await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
        await asyncio.sleep(0.01)
        assert gate.waiting == 3 and gate.room.bytes == 300
        first.release()  # handed to waiter 0, which hands on to 1, then 2
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2] and gate.held == 0 and gate.waiting == 0 and gate.room.bytes == 0

        blocker = await gate.admit()
        started = asyncio.get_running_loop().time()
        with pytest.raises(QueueFull):
            await gate.admit()
        assert asyncio.get_running_loop().time() - started >= 0.19  # waited, then refused
        assert gate.waiting == 0 and gate.held == 1
        blocker.release()

        # Refused after wait_s, answered after hold_s; a slot freed during the hold goes to the next
        # waiter, not to the refused one.
        held = Gate("h", 1, wait_s=0.05, hold_s=0.3, max_waiting=10, room=WaitingRoom(1 << 20))
        blocker = await held.admit()
        loop = asyncio.get_running_loop()
        started = loop.time()
        refused = asyncio.create_task(held.admit())
        await asyncio.sleep(0.1)
        assert held.holding == 1 and held.waiting == 0 and not refused.done()
        blocker.release()
        assert held.held == 0
        with pytest.raises(QueueFull):
            await refused
        assert loop.time() - started >= 0.22 and held.holding == 0  # 0.75-1.25x the hold

    run(scenario())


def test_a_waiter_that_leaves_frees_its_place() -> None:
    async def scenario():
        gate = Gate("m", 1, wait_s=5, max_waiting=10, room=WaitingRoom(1 << 20))
        held = await gate.admit()
        leaving = asyncio.create_task(gate.admit(50))
        staying = asyncio.create_task(gate.admit(50))
        await asyncio.sleep(0.01)
        leaving.cancel()
        await asyncio.gather(leaving, return_exceptions=True)
        assert gate.waiting == 1 and gate.room.bytes == 50
        held.release()
        ticket = await asyncio.wait_for(staying, 1)
        assert gate.held == 1 and gate.waiting == 0
        ticket.release()
        assert gate.held == 0

    run(scenario())


def test_waiting_is_bounded_in_count_and_bytes() -> None:
    async def scenario():
        room = WaitingRoom(max_bytes=1000)
        gate = Gate("m", 1, wait_s=5, max_waiting=2, room=room)
        other = Gate("n", 1, wait_s=5, max_waiting=2, room=room)
        held, held_other = await gate.admit(), await other.admit()
        waiters = [asyncio.create_task(gate.admit(400)) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):  # a third waiter: over max_waiting
            await gate.admit(1)
        with pytest.raises(QueueFull):  # another model's waiter: over the shared bytes
            await other.admit(300)
        for task in waiters:
            task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        assert room.bytes == 0 and gate.waiting == 0
        held.release(), held_other.release()

    run(scenario())
