"""Protection against a failing backend: a circuit breaker and throttled warnings."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class ThrottledLog:
    """At most one warning per interval, counting the ones it held back."""

    def __init__(self, interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self._interval_s = interval_s
        self._clock = clock
        self._next = 0.0
        self._held = 0

    def warning(self, message: str, *args: Any) -> None:
        now = self._clock()
        if now < self._next:
            self._held += 1
            return
        if self._held:
            message += f" ({self._held} similar warnings suppressed)"
        self._next = now + self._interval_s
        self._held = 0
        logger.warning(message, *args)


class Circuit:
    """Stops calling a Redis that failed, so a dead (or black-holed) Redis costs one
    timeout per `probe_interval_s` instead of one per request.

    Up: every call goes through. Down (after a failure): calls are skipped, except a single
    probe once per interval; the probe's success brings it back up.
    """

    def __init__(self, probe_interval_s: float, clock: Callable[[], float]) -> None:
        self._interval_s = probe_interval_s
        self._clock = clock
        self.down_since: float | None = None
        self._retry_at = 0.0
        self._probing = False

    @property
    def probe_interval_s(self) -> float:
        return self._interval_s

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def try_call(self) -> bool:
        """May a call go to Redis now? A True while down makes the caller the probe."""
        if self.down_since is None:
            return True
        if self._probing or self._clock() < self._retry_at:
            return False
        self._probing = True
        return True

    def record(self, ok: bool | None) -> None:
        """After a call: True answered, False failed, None unknown (cancelled)."""
        self._probing = False
        if ok is None:
            return
        now = self._clock()
        if ok:
            if self.down_since is not None:
                logger.warning(
                    "rate-limit backend answers again after %.1fs; shared limits resumed",
                    now - self.down_since,
                )
            self.down_since = None
            return
        if self.down_since is None:
            self.down_since = now
        self._retry_at = now + self._interval_s
