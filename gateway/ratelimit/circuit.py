"""Protection against a failing backend: a circuit breaker and throttled warnings."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass
class _Outage:
    """The circuit while down: since when, when the next probe may go, whether one is out."""

    since: float
    retry_at: float
    probing: bool = False


class Circuit:
    """Stops calling a Redis that failed, so a dead (or black-holed) Redis costs one
    timeout per `probe_interval_s` instead of one per request.

    Up: every call goes through. Down (after a failure): calls are skipped, except a single
    probe once per interval; the probe's success brings it back up.
    """

    def __init__(self, probe_interval_s: float, clock: Callable[[], float]) -> None:
        self._interval_s = probe_interval_s
        self._clock = clock
        self._outage: _Outage | None = None  # None: up

    @property
    def probe_interval_s(self) -> float:
        return self._interval_s

    @property
    def down(self) -> bool:
        return self._outage is not None

    @property
    def down_since(self) -> float | None:
        return None if self._outage is None else self._outage.since

    def try_call(self) -> bool:
        """May a call go to Redis now? A True while down makes the caller the probe."""
        outage = self._outage
        if outage is None:
            return True
        if outage.probing or self._clock() < outage.retry_at:
            return False
        outage.probing = True
        return True

    def record(self, ok: bool | None) -> None:
        """After a call: True answered, False failed, None unknown (cancelled)."""
        outage = self._outage
        if outage is not None:
            outage.probing = False
        if ok is None:
            return
        now = self._clock()
        if ok:
            if outage is not None:
                logger.warning(
                    "rate-limit backend answers again after %.1fs; shared limits resumed",
                    now - outage.since,
                )
            self._outage = None
        elif outage is None:
            self._outage = _Outage(since=now, retry_at=now + self._interval_s)
        else:
            outage.retry_at = now + self._interval_s
