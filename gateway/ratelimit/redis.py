"""Limits shared by every gateway instance through Redis.

Each check-and-update is one Lua script, so instances never interleave between a check
and its commit, and the scripts read Redis's own `TIME` so instance clocks don't matter.
Concurrency slots are sorted-set members scored by lease expiry: this process renews its
leases while requests run, and a crashed instance's slots expire after `lease_s`.

If Redis does not answer, `failure_policy` decides: `open` falls back to per-instance
limits (a key can then get up to N times its limit across N instances), `closed` answers
503. Redis is probed again every `probe_interval_s`, so recovery needs no restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.auth import Principal
from gateway.errors import OverloadedError
from gateway.ratelimit.base import (
    Admission,
    Verdict,
    bucket_view,
    check_fits,
    rate_limit_error,
    ratelimit_headers,
)
from gateway.ratelimit.inflight import InflightGate
from gateway.ratelimit.memory import MemoryQuotas

logger = logging.getLogger(__name__)

FailurePolicy = Literal["open", "closed"]
_BACKEND_ERRORS = (RedisError, OSError, asyncio.TimeoutError)

# Shared by the scripts: `now` in µs from Redis's clock; buckets are hashes {level, ts},
# absent when full. Levels travel as %.17g strings: replies and tostring() would round.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local WINDOW = 60000000
local EPS = 1e-6

local function level(key, limit)
  local s = redis.call('HMGET', key, 'level', 'ts')
  if not s[1] then return limit end
  local l = tonumber(s[1]) + (now - tonumber(s[2])) * limit / WINDOW
  if l > limit then return limit end
  return l
end

local function store(key, limit, l)
  if l >= limit - EPS then
    redis.call('DEL', key)
    return
  end
  redis.call('HSET', key, 'level', string.format('%.17g', l), 'ts', string.format('%.0f', now))
  redis.call('PEXPIRE', key, math.ceil((limit - l) * WINDOW / limit / 1000) + 1000)
end
"""

# KEYS: requests bucket, tokens bucket, in-flight set. ARGV: rpm, tpm, concurrency (0 = no
# limit), estimated tokens, lease member, lease µs. Checks all three, then commits all or none.
_ADMIT = _PRELUDE + """
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cost, lease = tonumber(ARGV[4]), tonumber(ARGV[6])
local refused, wait, r, k, busy = 0, 0, 0, 0, 0
if rpm > 0 then
  r = level(KEYS[1], rpm)
  if r < 1 - EPS then
    refused = refused + 1
    wait = math.max(wait, (1 - r) * WINDOW / rpm)
  end
end
if tpm > 0 then
  k = level(KEYS[2], tpm)
  if k < cost - EPS then
    refused = refused + 2
    wait = math.max(wait, (cost - k) * WINDOW / tpm)
  end
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  busy = redis.call('ZCARD', KEYS[3])
  if busy >= conc then refused = refused + 4 end
end
if refused == 0 then
  if rpm > 0 then r = r - 1; store(KEYS[1], rpm, r) end
  if tpm > 0 then k = k - cost; store(KEYS[2], tpm, k) end
  if conc > 0 then
    redis.call('ZADD', KEYS[3], now + lease, ARGV[5])
    redis.call('PEXPIRE', KEYS[3], math.ceil(lease / 1000) + 1000)
    busy = busy + 1
  end
end
return {refused, string.format('%.17g', wait), string.format('%.17g', r),
        string.format('%.17g', k), busy}
"""

# KEYS: requests bucket, tokens bucket. ARGV: rpm, requests delta, tpm, tokens delta.
# A positive delta gives units back (capped at full), a negative one charges (may go into debt).
_ADJUST = _PRELUDE + """
for i = 1, 2 do
  local limit, delta = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  if limit > 0 and delta ~= 0 then
    local l = level(KEYS[i], limit) + delta
    if l > limit then l = limit end
    store(KEYS[i], limit, l)
  end
end
return 1
"""

# KEYS: in-flight set. ARGV: lease µs, members. XX: never resurrect a released slot.
_RENEW = _PRELUDE + """
local lease = tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + lease, ARGV[i])
end
if renewed > 0 then redis.call('PEXPIRE', KEYS[1], math.ceil(lease / 1000) + 1000) end
return renewed
"""

_REFUSALS = ((1, "requests"), (2, "tokens"), (4, "concurrency"))


class _ThrottledLog:
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


class RedisQuotas:
    """Per-key RPM, TPM and concurrency in Redis. Backend errors propagate from `admit`."""

    def __init__(self, client: Redis, *, prefix: str = "irgw:rl:", lease_s: float = 30.0):
        self._client = client
        self._prefix = prefix
        self._lease_us = int(lease_s * 1_000_000)
        self._lease_s = lease_s
        self._admit = client.register_script(_ADMIT)
        self._adjust = client.register_script(_ADJUST)
        self._renew = client.register_script(_RENEW)
        self._leases: dict[str, str] = {}  # member -> in-flight set key, while held here
        self._renewer: asyncio.Task[None] | None = None
        self._log = _ThrottledLog()

    async def admit(self, principal: Principal, estimated_tokens: int) -> Admission:
        policy = principal.policy
        key = principal.key_id or principal.name
        # One hash tag per API key keeps all three keys in one Redis Cluster slot.
        keys = [f"{self._prefix}{{{key}}}:{part}" for part in ("requests", "tokens", "inflight")]
        member = uuid.uuid4().hex
        reply = await self._admit(
            keys=keys,
            args=[
                policy.rpm or 0,
                policy.tpm or 0,
                policy.concurrency or 0,
                estimated_tokens,
                member,
                self._lease_us,
            ],
        )
        mask, wait_us, requests, tokens = int(reply[0]), float(reply[1]), reply[2], reply[3]
        verdict = Verdict(
            refused=frozenset(name for bit, name in _REFUSALS if mask & bit),
            retry_after_s=wait_us / 1_000_000,
            requests=bucket_view(policy.rpm, float(requests) if policy.rpm else None),
            tokens=bucket_view(policy.tpm, float(tokens) if policy.tpm else None),
            concurrency_limit=policy.concurrency,
        )
        if verdict.refused:
            raise rate_limit_error(principal, verdict)
        if policy.concurrency is not None:
            self._hold(member, keys[2])
        return self._admission(principal, keys, member, estimated_tokens, verdict)

    def _admission(
        self, principal: Principal, keys: list[str], member: str, reserved: int, verdict: Verdict
    ) -> Admission:
        policy = principal.policy
        rpm, tpm = policy.rpm or 0, policy.tpm or 0

        async def settle(actual_tokens: int | None) -> None:
            if tpm:
                refund = reserved if actual_tokens is None else reserved - actual_tokens
                await self._safely(self._adjust(keys=keys[:2], args=[0, 0, tpm, refund]))

        async def cancel() -> None:
            await self._safely(self._adjust(keys=keys[:2], args=[rpm, 1, tpm, reserved]))

        async def release() -> None:
            if policy.concurrency is not None:
                self._leases.pop(member, None)
                await self._safely(self._client.zrem(keys[2], member))

        return Admission(ratelimit_headers(verdict), settle=settle, release=release, cancel=cancel)

    async def _safely(self, call: Any) -> None:
        # Settling and releasing run in `finally` blocks: never raise from there. A lost
        # release frees itself when the lease runs out; a lost settle leaves the estimate.
        try:
            await call
        except _BACKEND_ERRORS as exc:
            self._log.warning("rate-limit backend: could not settle or release: %r", exc)

    def _hold(self, member: str, inflight_key: str) -> None:
        self._leases[member] = inflight_key
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        while self._leases:
            await asyncio.sleep(self._lease_s / 3)
            by_key: dict[str, list[str]] = {}
            for member, inflight_key in list(self._leases.items()):
                by_key.setdefault(inflight_key, []).append(member)
            for inflight_key, members in by_key.items():
                args = [self._lease_us, *members]
                try:
                    renewed = await self._renew(keys=[inflight_key], args=args)
                except _BACKEND_ERRORS as exc:
                    self._log.warning("rate-limit backend: could not renew leases: %r", exc)
                    continue
                if int(renewed) < len(members):
                    # Redis lost them (restart, eviction): those requests run uncounted.
                    self._log.warning(
                        "rate-limit backend: %d in-flight slots of %s were lost",
                        len(members) - int(renewed),
                        inflight_key,
                    )

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            try:
                await self._renewer
            except asyncio.CancelledError:
                pass


class RedisLimiter:
    """The `redis` backend: shared per-key limits, per-instance in-flight cap."""

    def __init__(
        self,
        client: Redis,
        *,
        max_inflight: int = 16,
        queue_size: int = 16,
        queue_timeout_s: float = 5.0,
        failure_policy: FailurePolicy = "open",
        prefix: str = "irgw:rl:",
        lease_s: float = 30.0,
        probe_interval_s: float = 1.0,
        owns_client: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.quotas = RedisQuotas(client, prefix=prefix, lease_s=lease_s)
        self.fallback = MemoryQuotas(clock)
        self.gate = InflightGate(max_inflight, queue_size, queue_timeout_s)
        self.failure_policy = failure_policy
        self._client = client
        self._owns_client = owns_client
        self._probe_interval_s = probe_interval_s
        self._clock = clock
        self._down_until = 0.0
        self._down_since: float | None = None
        self._log = _ThrottledLog(clock=clock)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        socket_timeout_s: float = 0.5,
        connect_timeout_s: float = 0.25,
        **kwargs: Any,
    ) -> RedisLimiter:
        client = Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            # One retry, on connection errors only: it replaces a pooled connection that died
            # with a restarted Redis. Never retry timeouts: the script may have run.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        return cls(client, owns_client=True, **kwargs)

    @property
    def backend_down(self) -> bool:
        return self._down_since is not None

    async def admit(self, principal: Principal, estimated_tokens: int) -> Admission:
        admission = await self._admit_quotas(principal, estimated_tokens)
        return await self.gate.enter(admission)

    async def _admit_quotas(self, principal: Principal, estimated_tokens: int) -> Admission:
        if not principal.policy.has_rate_limits:
            return Admission({})  # nothing to enforce, so no reason to touch Redis
        check_fits(principal, estimated_tokens)
        if self._clock() < self._down_until:
            return self._degraded(principal, estimated_tokens)
        try:
            admission = await self.quotas.admit(principal, estimated_tokens)
        except _BACKEND_ERRORS as exc:
            now = self._clock()
            self._down_until = now + self._probe_interval_s
            if self._down_since is None:
                self._down_since = now
            self._log.warning(
                "rate-limit backend unreachable (%r); failure policy %r: %s",
                exc,
                self.failure_policy,
                "per-instance limits" if self.failure_policy == "open" else "answering 503",
            )
            return self._degraded(principal, estimated_tokens)
        if self._down_since is not None:
            logger.warning(
                "rate-limit backend answers again after %.1fs; shared limits resumed",
                self._clock() - self._down_since,
            )
            self._down_since = None
        return admission

    def _degraded(self, principal: Principal, estimated_tokens: int) -> Admission:
        if self.failure_policy == "closed":
            raise OverloadedError(
                "Rate limits cannot be checked right now; try again shortly.",
                code="ratelimit_backend_unavailable",
                headers={"retry-after": str(max(1, round(self._probe_interval_s)))},
            )
        return self.fallback.admit(principal, estimated_tokens)

    async def aclose(self) -> None:
        await self.quotas.aclose()
        if self._owns_client:
            await self._client.aclose()
