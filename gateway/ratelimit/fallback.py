"""A shared quota store that degrades instead of failing every request when it is down.

`failure_policy` decides what a request gets while the primary store (Redis) does not
answer: `open` falls back to this instance's own limits (a key can then get up to N times
its limit across N instances), `closed` answers 503. The circuit skips the primary while it
is down and probes it once per interval, so recovery needs no restart.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

from gateway.access.auth import Principal
from gateway.errors import OverloadedError, RateLimitError
from gateway.ratelimit.base import Admission, QuotaStore
from gateway.ratelimit.circuit import Circuit, ThrottledLog

FailurePolicy = Literal["open", "closed"]


class FallbackQuotas:
    """`primary` while it answers; on its `failures`, `fallback` or a 503. A `QuotaStore`."""

    def __init__(
        self,
        primary: QuotaStore,
        fallback: QuotaStore,
        circuit: Circuit,
        *,
        failures: tuple[type[BaseException], ...],
        failure_policy: FailurePolicy = "open",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        # Shared with the primary, whose settling and lease renewal also skip a dead backend.
        self.circuit = circuit
        self.failure_policy = failure_policy
        self._failures = failures
        self._log = ThrottledLog(clock=clock)

    async def admit(self, principal: Principal, estimated_tokens: int) -> Admission:
        if not self.circuit.try_call():
            return await self._degraded(principal, estimated_tokens)
        ok: bool | None = None
        try:
            admission = await self.primary.admit(principal, estimated_tokens)
            ok = True
            return admission
        except RateLimitError:
            ok = True  # the backend answered; the key is over its limit
            raise
        except self._failures as exc:
            ok = False
            self._log.warning(
                "rate-limit backend unreachable (%r); failure policy %r: %s",
                exc,
                self.failure_policy,
                "per-instance limits" if self.failure_policy == "open" else "answering 503",
            )
        finally:
            self.circuit.record(ok)
        return await self._degraded(principal, estimated_tokens)

    async def _degraded(self, principal: Principal, estimated_tokens: int) -> Admission:
        if self.failure_policy == "closed":
            raise OverloadedError(
                "Rate limits cannot be checked right now; try again shortly.",
                code="ratelimit_backend_unavailable",
                headers={"retry-after": str(max(1, math.ceil(self.circuit.probe_interval_s)))},
            )
        return await self.fallback.admit(principal, estimated_tokens)

    async def aclose(self) -> None:
        try:
            await self.primary.aclose()
        finally:
            await self.fallback.aclose()
