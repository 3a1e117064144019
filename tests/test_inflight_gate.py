"""The in-flight cap as a client and an operator see it: exactly `max_inflight` run, exactly
`queue_size` wait, a freed slot goes to the oldest waiter, refusals are 503s that say which
(the metrics' reason) with Retry-After, and no slot leaks whichever way a waiter leaves.
Waits are ended by events, never measured."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import QueueFullError, QueueTimeoutError
from gateway.observe.causes import refusal_reasons
from gateway.ratelimit import Admission
from gateway.ratelimit.inflight import InflightGate


async def settle_loop() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_inflight must be at least 1"):
        InflightGate(0, 1, 1.0)
    assert InflightGate(1, 0, 1.0).max_inflight == 1


async def test_exactly_the_cap_runs_and_exactly_the_queue_waits() -> None:
    gate = InflightGate(2, 2, 60.0)
    await gate.acquire()
    await gate.acquire()
    assert (gate.active, gate.waiting) == (2, 0)
    waiters = [asyncio.create_task(gate.acquire()) for _ in range(2)]
    await settle_loop()
    assert gate.waiting == 2 and not any(w.done() for w in waiters)
    with pytest.raises(QueueFullError) as info:
        await gate.acquire()
    error = info.value
    assert error.status_code == 503 and error.headers == {"retry-after": "1"}
    assert refusal_reasons(error) == ("queue_full",)
    assert error.message == "The gateway is at capacity and its queue is full; try again shortly."
    gate.release()
    await settle_loop()
    assert waiters[0].done() and not waiters[1].done()  # the oldest first
    assert (gate.active, gate.waiting) == (2, 1)
    gate.release()
    await asyncio.gather(*waiters)
    gate.release()
    gate.release()
    assert (gate.active, gate.waiting) == (0, 0)


async def test_a_newcomer_does_not_jump_the_queue() -> None:
    gate = InflightGate(1, 5, 60.0)
    await gate.acquire()
    first = asyncio.create_task(gate.acquire())
    await settle_loop()
    gate.release()  # handed to `first`, not left free for whoever comes next
    newcomer = asyncio.create_task(gate.acquire())
    await settle_loop()
    assert first.done() and not newcomer.done()
    assert gate.active == 1
    gate.release()
    await newcomer
    gate.release()
    assert gate.active == 0


async def test_a_timed_out_waiter_is_told_the_wait_and_leaves_no_trace() -> None:
    gate = InflightGate(1, 1, 0.05)
    await gate.acquire()
    with pytest.raises(QueueTimeoutError) as info:
        await gate.acquire()
    error = info.value
    assert error.status_code == 503 and error.headers == {"retry-after": "1"}
    assert refusal_reasons(error) == ("queue_timeout",)
    assert error.message == ("The gateway is at capacity; no slot freed within 0.05s. "
                             "Try again shortly.")
    assert gate.waiting == 0 and len(gate._waiters) == 0
    # Its place in the queue is free again: one more may wait.
    waiter = asyncio.create_task(gate.acquire())
    await settle_loop()
    gate.release()
    await waiter
    gate.release()
    assert gate.active == 0


async def test_a_cancelled_waiter_leaves_its_place_and_no_slot() -> None:
    gate = InflightGate(1, 1, 60.0)
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await settle_loop()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.waiting == 0 and len(gate._waiters) == 0
    gate.release()
    assert gate.active == 0


async def test_a_slot_handed_over_as_the_waiter_gives_up_is_passed_on() -> None:
    gate = InflightGate(1, 2, 60.0)
    await gate.acquire()
    leaving = asyncio.create_task(gate.acquire())
    staying = asyncio.create_task(gate.acquire())
    await settle_loop()
    gate.release()  # handed to `leaving`...
    leaving.cancel()  # ...which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await leaving
    await asyncio.wait_for(staying, 5)  # the slot went on, not lost
    assert gate.active == 1
    gate.release()
    assert gate.active == 0


async def test_entering_a_full_gate_undoes_the_admission() -> None:
    gate = InflightGate(1, 0, 60.0)
    await gate.acquire()
    undone: list[str] = []

    async def cancel() -> None:
        undone.append("cancel")

    async def release() -> None:
        undone.append("release")

    with pytest.raises(QueueFullError):
        await gate.enter(Admission({}, cancel=cancel, release=release))
    assert undone == ["cancel", "release"]
    gate.release()
    admission = await gate.enter(Admission({"x": "1"}))
    assert admission.headers == {"x": "1"} and gate.active == 1
    await admission.release()
    assert gate.active == 0


async def test_a_waiter_cancelled_as_its_slot_is_freed_just_leaves() -> None:
    gate = InflightGate(1, 1, 60.0)
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await settle_loop()
    waiter.cancel()
    gate.release()  # before the cancelled waiter runs again: it is passed over
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (gate.active, gate.waiting) == (0, 0)
    await gate.acquire()
    gate.release()
