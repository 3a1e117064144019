"""A periodic background task that stops when asked, and only then.

Cancelling a task is not enough to stop a loop that calls redis-py: a cancellation that
lands while a command is in flight can be swallowed inside the client, and a loop that
catches the client's errors then goes on for ever, `aclose` waiting on it (seen with the
Redis key store's follower: shutdown hung). So the loop also checks a flag that `stop`
sets before it cancels, and `stop` waits a bounded time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

# What `stop` waits for the task to end before it gives up on it (it still ends at its
# next check of the flag).
STOP_TIMEOUT_S = 5.0


class Periodic:
    """Runs `step` every `interval_s` (or after the delay `step` returns) in one task."""

    def __init__(self, name: str, step: Callable[[], Awaitable[float | None]],
                 interval_s: float, *, step_first: bool = False) -> None:
        self.name = name
        self._step = step
        self._interval_s = interval_s
        self._step_first = step_first
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        delay: float | None = None
        if not self._step_first:
            await asyncio.sleep(self._interval_s)
        while not self._stopping:
            delay = await self._step()
            if self._stopping:
                break
            await asyncio.sleep(self._interval_s if delay is None else delay)

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        task.cancel()
        # asyncio.wait, not `await task`: a cancellation of the caller itself must not be
        # taken for the task's own.
        await asyncio.wait({task}, timeout=timeout_s)
        if not task.done():
            logger.warning("%s did not stop within %.0f s; it ends at its next step",
                           self.name, timeout_s)
        elif not task.cancelled() and task.exception() is not None:
            logger.error("%s had failed: %r", self.name, task.exception())
