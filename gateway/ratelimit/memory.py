"""In-process limits: exact for one gateway instance, and the Redis store's fallback.

Every decision runs without an `await` between check and commit, so on one event loop
it is atomic without locks.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.access.auth import Principal
from gateway.ratelimit.base import (
    EPSILON,
    WINDOW_S,
    Admission,
    Verdict,
    bucket_view,
    rate_limit_error,
    ratelimit_headers,
)
from gateway.ratelimit.inflight import InflightGate
from gateway.ratelimit.limiter import Limiter

Clock = Callable[[], float]


class MemoryQuotas:
    """Per-key RPM, TPM and concurrency in this process: a `QuotaStore`."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        # (key, "requests"|"tokens") -> (level, when); a full bucket is simply absent.
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self._in_flight: dict[str, int] = {}

    def in_flight(self, key: str) -> int:
        return self._in_flight.get(key, 0)

    async def admit(self, principal: Principal, estimated_tokens: int) -> Admission:
        policy = principal.policy
        key = principal.key_id or principal.name
        now = self._clock()
        refused: set[str] = set()
        wait_s = 0.0

        # Check every limit first, commit only if all pass: a refusal consumes nothing.
        requests = tokens = None
        if policy.rpm is not None:
            requests = self._level((key, "requests"), policy.rpm, now)
            if requests < 1 - EPSILON:
                refused.add("requests")
                wait_s = max(wait_s, (1 - requests) * WINDOW_S / policy.rpm)
        if policy.tpm is not None:
            tokens = self._level((key, "tokens"), policy.tpm, now)
            if tokens < estimated_tokens - EPSILON:
                refused.add("tokens")
                wait_s = max(wait_s, (estimated_tokens - tokens) * WINDOW_S / policy.tpm)
        if policy.concurrency is not None and self.in_flight(key) >= policy.concurrency:
            refused.add("concurrency")

        if not refused:
            if policy.rpm is not None and requests is not None:
                requests -= 1
                self._store((key, "requests"), policy.rpm, requests, now)
            if policy.tpm is not None and tokens is not None:
                tokens -= estimated_tokens
                self._store((key, "tokens"), policy.tpm, tokens, now)
            if policy.concurrency is not None:
                self._in_flight[key] = self.in_flight(key) + 1

        verdict = Verdict(
            refused=frozenset(refused),
            retry_after_s=wait_s,
            requests=bucket_view(policy.rpm, requests),
            tokens=bucket_view(policy.tpm, tokens),
            concurrency_limit=policy.concurrency,
        )
        if refused:
            raise rate_limit_error(principal, verdict)
        return self._admission(principal, key, estimated_tokens, verdict)

    def _admission(
        self, principal: Principal, key: str, reserved: int, verdict: Verdict
    ) -> Admission:
        policy = principal.policy
        held = [reserved]  # grows with each retry reserved

        async def settle(actual_tokens: int | None) -> None:
            if policy.tpm is not None:
                refund = held[0] if actual_tokens is None else held[0] - actual_tokens
                self._adjust((key, "tokens"), policy.tpm, refund)

        async def cancel() -> None:
            if policy.rpm is not None:
                self._adjust((key, "requests"), policy.rpm, 1)
            if policy.tpm is not None:
                self._adjust((key, "tokens"), policy.tpm, held[0])

        async def take(tokens: int) -> bool:
            if policy.tpm is None:
                return True
            bucket = (key, "tokens")
            now = self._clock()
            level = self._level(bucket, policy.tpm, now)
            if level < tokens - EPSILON:
                return False
            self._store(bucket, policy.tpm, level - tokens, now)
            held[0] += tokens
            return True

        async def release() -> None:
            if policy.concurrency is not None:
                left = self.in_flight(key) - 1
                if left > 0:
                    self._in_flight[key] = left
                else:
                    self._in_flight.pop(key, None)

        return Admission(ratelimit_headers(verdict), settle=settle, release=release,
                         cancel=cancel, take=take)

    def _level(self, bucket: tuple[str, str], limit: int, now: float) -> float:
        state = self._buckets.get(bucket)
        if state is None:
            return float(limit)
        level, when = state
        return min(float(limit), level + max(0.0, now - when) * limit / WINDOW_S)

    def _store(self, bucket: tuple[str, str], limit: int, level: float, now: float) -> None:
        if level >= limit - EPSILON:
            self._buckets.pop(bucket, None)
        else:
            self._buckets[bucket] = (level, now)

    def _adjust(self, bucket: tuple[str, str], limit: int, delta: float) -> None:
        """Give back (`delta` > 0) or charge (`delta` < 0, may go into debt) `delta` units."""
        if delta == 0:
            return
        now = self._clock()
        level = min(float(limit), self._level(bucket, limit, now) + delta)
        self._store(bucket, limit, level, now)

    async def aclose(self) -> None:
        return None


class MemoryLimiter(Limiter):
    """The `memory` backend: per-key limits and the in-flight cap, all in this process."""

    def __init__(
        self,
        *,
        max_inflight: int = 16,
        queue_size: int = 16,
        queue_timeout_s: float = 5.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.quotas = MemoryQuotas(clock)
        super().__init__(self.quotas, InflightGate(max_inflight, queue_size, queue_timeout_s))
