"""Token budgets: what a key may spend per UTC day or calendar month, exact across replicas.

A request reserves what it may cost (the same reservation its TPM takes: prompt estimate +
n x max_tokens) before it runs, and is settled at what vLLM reports once it is over, like the
rate limits. A reservation that does not fit what is left is refused with 429
`insufficient_quota` (which the openai client does not retry), saying when the budget resets.
In Redis, each spend and settlement is one idempotent Lua script (gateway/ratelimit/scripts.py),
so concurrent requests on any number of replicas never spend more than the budget.

`BudgetedLimiter` wraps the configured limiter: no route needs to know budgets exist.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.access.auth import Principal
from gateway.access.records import BudgetPeriod
from gateway.access.redisconn import redis_client
from gateway.errors import OverloadedError, RateLimitError
from gateway.ratelimit import scripts
from gateway.ratelimit.base import Admission, AdmissionControl
from gateway.ratelimit.circuit import Circuit, ThrottledLog
from gateway.settings import Settings

_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
_KEEP_US = 20_000_000  # as the limiter's: how long Redis remembers that a spend ran
T = TypeVar("T")


class QuotaExceededError(RateLimitError):
    default_code = "insufficient_quota"


@dataclass(frozen=True, slots=True)
class Period:
    name: str  # "2026-12-06" or "2026-12"
    resets_at: datetime

    @property
    def ttl_s(self) -> int:
        """How long its counter is kept: to the reset, and a day more for usage reports."""
        return max(1, math.ceil((self.resets_at - datetime.now(UTC)).total_seconds())) + 86400


def period_of(kind: BudgetPeriod, now: datetime) -> Period:
    if kind == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return Period(start.strftime("%Y-%m-%d"), start + timedelta(days=1))
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (first + timedelta(days=32)).replace(day=1)
    return Period(first.strftime("%Y-%m"), following)


def quota_error(principal: Principal, budget: int, used: int, cost: int,
                period: Period, now: datetime) -> QuotaExceededError:
    kind = principal.policy.budget_period
    wait_s = max(1, math.ceil((period.resets_at - now).total_seconds()))
    return QuotaExceededError(
        f"API key {principal.key_id} has used {used} of its {budget} tokens for this "
        f"{'day' if kind == 'day' else 'month'} (UTC); this request may need {cost} more. "
        f"The budget resets at {period.resets_at:%Y-%m-%dT%H:%M:%SZ}.",
        headers={"retry-after": str(wait_s)},
    )


class BudgetStore(Protocol):
    async def spend(self, counter: str, budget: int, tokens: int, op: str,
                    ttl_s: int) -> tuple[bool, int]:
        """Take `tokens` if `counter` stays within `budget`: (taken, used after)."""
        ...

    async def adjust(self, counter: str, delta: int, op: str, ttl_s: int) -> None: ...

    async def used(self, counter: str) -> int: ...

    async def aclose(self) -> None: ...


class MemoryBudgets:
    """One instance's budgets (exact for one replica; lost on restart). A period's counter is
    dropped once it has expired, as Redis drops its keys."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._used: dict[str, tuple[int, float]] = {}  # counter -> (used, expires at)
        self._clock = clock
        self._next_sweep = 0.0

    def _get(self, counter: str) -> int:
        entry = self._used.get(counter)
        return 0 if entry is None or entry[1] <= self._clock() else entry[0]

    def _set(self, counter: str, used: int, ttl_s: int) -> None:
        now = self._clock()
        self._used[counter] = (used, now + ttl_s)
        if now >= self._next_sweep:  # at most once a minute: old periods go
            self._next_sweep = now + 60
            for name in [n for n, (_, expires) in self._used.items() if expires <= now]:
                del self._used[name]

    async def spend(self, counter: str, budget: int, tokens: int, op: str,
                    ttl_s: int) -> tuple[bool, int]:
        used = self._get(counter)
        if used + tokens > budget:
            return False, used
        self._set(counter, used + tokens, ttl_s)
        return True, used + tokens

    async def adjust(self, counter: str, delta: int, op: str, ttl_s: int) -> None:
        self._set(counter, max(0, self._get(counter) + delta), ttl_s)

    async def used(self, counter: str) -> int:
        return self._get(counter)

    async def aclose(self) -> None:
        return None


class RedisBudgets:
    def __init__(self, client: Redis, *, owns_client: bool = False) -> None:
        self._client = client
        self._owns_client = owns_client
        self._spend = client.register_script(scripts.SPEND)
        self._refund = client.register_script(scripts.REFUND)

    async def spend(self, counter: str, budget: int, tokens: int, op: str,
                    ttl_s: int) -> tuple[bool, int]:
        taken, used = await self._spend(keys=[counter, _ops(counter)],
                                        args=[budget, tokens, op, _KEEP_US, ttl_s])
        return bool(int(taken)), int(used)

    async def adjust(self, counter: str, delta: int, op: str, ttl_s: int) -> None:
        await self._refund(keys=[counter, _ops(counter)], args=[delta, op, _KEEP_US, ttl_s])

    async def used(self, counter: str) -> int:
        return int(await self._client.get(counter) or 0)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


def _ops(counter: str) -> str:
    return counter + ":ops"


class BudgetedLimiter:
    """`inner`'s limits, plus the key's token budget (if it has one)."""

    def __init__(self, inner: AdmissionControl, store: BudgetStore, *, prefix: str = "irgw:budget:",
                 failure_policy: Literal["open", "closed"] = "open",
                 probe_interval_s: float = 1.0) -> None:
        self.inner = inner
        self.store = store
        self._prefix = prefix
        self.failure_policy = failure_policy
        self._circuit = Circuit(probe_interval_s, time.monotonic)
        self._log = ThrottledLog()

    def __getattr__(self, name: str) -> object:
        # What else the wrapped limiter offers (its in-flight gate, its backend's state).
        return getattr(self.inner, name)

    def counter(self, key_id: str, period: Period) -> str:
        # One hash tag per key: the counter and its ops set share a Redis Cluster slot.
        return f"{self._prefix}{{{key_id}}}:{period.name}"

    async def admit(self, principal: Principal, estimated_tokens: int) -> Admission:
        budget = principal.policy.budget_tokens
        if budget is None or principal.key_id is None:
            return await self.inner.admit(principal, estimated_tokens)
        now = datetime.now(UTC)
        period = period_of(principal.policy.budget_period, now)
        counter = self.counter(principal.key_id, period)
        op = uuid.uuid4().hex
        verdict = await self._call(self.store.spend(counter, budget, estimated_tokens, op,
                                                    period.ttl_s))
        if verdict is not None and not verdict[0]:
            raise quota_error(principal, budget, verdict[1], estimated_tokens, period, now)
        if verdict is None:  # Redis down, failure policy open: this request is not counted
            return await self.inner.admit(principal, estimated_tokens)
        held = [estimated_tokens]

        async def settle_budget(actual: int | None, why: str) -> None:
            delta = (actual or 0) - held[0]
            if delta:
                await self._call(self.store.adjust(counter, delta, f"{op}:{why}", period.ttl_s),
                                 quiet=True)

        try:
            admission = await self.inner.admit(principal, estimated_tokens)
        except BaseException:
            await settle_budget(None, "refused")
            raise

        async def settle(actual: int | None) -> None:
            try:
                await admission.settle(actual)
            finally:
                await settle_budget(actual, "settle")

        async def cancel() -> None:
            try:
                await admission.cancel()
            finally:
                await settle_budget(None, "cancel")

        async def take(tokens: int) -> bool:
            taken = await self._call(self.store.spend(
                counter, budget, tokens, f"{op}:take{held[0]}", period.ttl_s), quiet=True)
            if not taken or not taken[0]:
                return False
            held[0] += tokens
            if await admission.reserve(tokens):
                return True
            held[0] -= tokens
            await self._call(self.store.adjust(counter, -tokens, f"{op}:untake{held[0]}",
                                               period.ttl_s), quiet=True)
            return False

        return Admission(admission.headers, settle=settle, release=admission.release,
                         cancel=cancel, take=take)

    async def _call(self, pending: Awaitable[T], *, quiet: bool = False) -> T | None:
        """The store's answer; None when Redis failed and the policy is `open` (or `quiet`:
        settling runs in `finally` blocks, where a lost adjustment leaves the reservation
        charged, the safe side). A spend under the `closed` policy: 503."""
        if not self._circuit.try_call():
            _close(pending)
            return None if quiet else self._down()
        ok: bool | None = None
        try:
            result = await pending
            ok = True
            return result
        except _ERRORS as exc:
            ok = False
            self._log.warning("budget backend unreachable (%r); failure policy %r", exc,
                              self.failure_policy)
        finally:
            self._circuit.record(ok)
        return None if quiet else self._down()

    def _down(self) -> None:
        if self.failure_policy == "closed":
            raise OverloadedError("Token budgets cannot be checked right now; try again "
                                  "shortly.", code="budget_backend_unavailable",
                                  headers={"retry-after": "1"})
        return None

    async def admit_read(self, principal: Principal) -> dict[str, str]:
        return await self.inner.admit_read(principal)

    async def aclose(self) -> None:
        await self.inner.aclose()
        await self.store.aclose()


def with_budgets(limiter: AdmissionControl, settings: Settings) -> BudgetedLimiter:
    """The limiter with token budgets, kept where the rate limits are (one backend)."""
    store: BudgetStore
    if settings.ratelimit_backend == "redis" and settings.redis_url:
        store = RedisBudgets(redis_client(settings.redis_url), owns_client=True)
    else:
        store = MemoryBudgets()
    return BudgetedLimiter(limiter, store, failure_policy=settings.redis_failure_policy)


def _close(pending: object) -> None:
    close = getattr(pending, "close", None)
    if close is not None:
        close()  # a coroutine never awaited would warn
