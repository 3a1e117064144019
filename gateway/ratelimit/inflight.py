"""The cap on requests in flight to the upstream, with a short bounded wait queue.

It lives in each gateway process, also with the Redis backend: it guards this process's
connection pool and memory, needs no round trip, and stays exact when Redis is down.
With several instances in front of one vLLM, set `max_inflight` to vLLM's capacity
divided by the number of instances (vLLM's own scheduler queues any excess anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from gateway.errors import QueueFullError, QueueTimeoutError
from gateway.ratelimit.base import Admission

_RETRY_AFTER = {"retry-after": "1"}


class InflightGate:
    def __init__(self, max_inflight: int, queue_size: int, queue_timeout_s: float) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self.max_inflight = max_inflight
        self.queue_size = queue_size
        self.queue_timeout_s = queue_timeout_s
        self._active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def active(self) -> int:
        return self._active

    @property
    def waiting(self) -> int:
        return sum(not waiter.done() for waiter in self._waiters)

    async def acquire(self) -> None:
        """Take a slot, waiting up to `queue_timeout_s` in a queue of `queue_size`."""
        if self._active < self.max_inflight and not self._waiters:
            self._active += 1
            return
        if self.waiting >= self.queue_size:
            raise QueueFullError(
                "The gateway is at capacity and its queue is full; try again shortly.",
                headers=_RETRY_AFTER,
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just as we gave up: pass it on, don't leak it.
                self.release()
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise QueueTimeoutError(
                    f"The gateway is at capacity; no slot freed within {self.queue_timeout_s:g}s. "
                    "Try again shortly.",
                    headers=_RETRY_AFTER,
                ) from None
            raise

    def release(self) -> None:
        # Hand the slot straight to the oldest waiter, so a newcomer cannot jump the queue.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._active -= 1

    async def enter(self, admission: Admission) -> Admission:
        """Hold a slot for `admission`; if none comes, undo the admission and raise."""
        try:
            await self.acquire()
        except BaseException:
            await admission.cancel()
            raise

        async def release() -> None:
            self.release()

        admission.add_release(release)
        return admission
