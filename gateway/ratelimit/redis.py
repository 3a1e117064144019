"""Limits shared by every gateway instance through Redis.

Each check-and-update is one Lua script, so instances never interleave between a check
and its commit, and the scripts read Redis's own `TIME` so instance clocks don't matter.
Concurrency slots are sorted-set members scored by lease expiry: this process renews its
leases while requests run, and a crashed instance's slots expire after `lease_s`.

The `redis` backend puts these behind `FallbackQuotas` (ratelimit/fallback.py): if Redis does
not answer, `failure_policy` decides between per-instance limits and a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.access.auth import Principal
from gateway.ratelimit import scripts
from gateway.ratelimit.base import (
    Admission,
    Verdict,
    bucket_view,
    rate_limit_error,
    ratelimit_headers,
)
from gateway.ratelimit.circuit import Circuit, ThrottledLog
from gateway.ratelimit.fallback import FailurePolicy, FallbackQuotas
from gateway.ratelimit.inflight import InflightGate
from gateway.ratelimit.limiter import Limiter
from gateway.ratelimit.memory import MemoryQuotas

_BACKEND_ERRORS = (RedisError, OSError, asyncio.TimeoutError)

_REFUSALS = ((1, "requests"), (2, "tokens"), (4, "concurrency"))
# How long Redis remembers that an admission or adjustment ran: far longer than a retry takes
# (a reconnect within the connect timeout), short enough that the ids of a busy key stay few.
_KEEP_US = 20_000_000


class RedisQuotas:
    """Per-key RPM, TPM and concurrency in Redis: a `QuotaStore`. Backend errors propagate
    from `admit`; settling, releasing and lease renewal swallow them (they run in `finally`
    blocks)."""

    def __init__(
        self,
        client: Redis,
        circuit: Circuit,
        *,
        prefix: str = "irgw:rl:",
        lease_s: float = 30.0,
        owns_client: bool = False,
    ) -> None:
        self._client = client
        self._owns_client = owns_client
        self.circuit = circuit
        self._prefix = prefix
        self._lease_us = int(lease_s * 1_000_000)
        self._lease_s = lease_s
        self._admit = client.register_script(scripts.ADMIT)
        self._adjust = client.register_script(scripts.ADJUST)
        self._take = client.register_script(scripts.TAKE)
        self._renew = client.register_script(scripts.RENEW)
        self._leases: dict[str, str] = {}  # member -> in-flight set key, while held here
        self._renewer: asyncio.Task[None] | None = None
        self._closed = False
        self._log = ThrottledLog()

    async def admit(self, principal: Principal, estimated_tokens: int) -> Admission:
        policy = principal.policy
        key = principal.key_id or principal.name
        # One hash tag per API key keeps all three keys in one Redis Cluster slot.
        keys = [f"{self._prefix}{{{key}}}:{part}"
                for part in ("requests", "tokens", "inflight", "ops")]
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
                _KEEP_US,
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

        buckets_and_ops = [keys[0], keys[1], keys[3]]
        held = [reserved]  # grows with each retry reserved

        async def settle(actual_tokens: int | None) -> None:
            if tpm:
                refund = held[0] if actual_tokens is None else held[0] - actual_tokens
                args = [0, 0, tpm, refund, member + ":settle", _KEEP_US]
                await self._quietly(
                    "settle", lambda: self._adjust(keys=buckets_and_ops, args=args)
                )

        async def cancel() -> None:
            args = [rpm, 1, tpm, held[0], member + ":cancel", _KEEP_US]
            await self._quietly(
                "refund", lambda: self._adjust(keys=buckets_and_ops, args=args)
            )

        async def take(tokens: int) -> bool:
            if not tpm:
                return True
            # Redis unreachable: no room either, the retry is not run (the safe side).
            args = [tpm, tokens, f"{member}:take{held[0]}", _KEEP_US]
            taken = await self._quietly(
                "reserve a retry", lambda: self._take(keys=[keys[1], keys[3]], args=args)
            )
            if taken is None or not int(taken):
                return False
            held[0] += tokens
            return True

        async def release() -> None:
            if policy.concurrency is not None:
                self._leases.pop(member, None)
                await self._quietly("release", lambda: self._client.zrem(keys[2], member))

        return Admission(ratelimit_headers(verdict), settle=settle, release=release,
                         cancel=cancel, take=take)

    async def _quietly(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        # Skipped while Redis is down: a lost release frees itself when its lease runs out,
        # a lost settle leaves the estimate charged. Either errs on the safe side.
        if not self.circuit.try_call():
            return None
        ok: bool | None = None
        try:
            result = await call()
            ok = True
            return result
        except _BACKEND_ERRORS as exc:
            ok = False
            self._log.warning("rate-limit backend: could not %s: %r", what, exc)
            return None
        finally:
            self.circuit.record(ok)

    def _hold(self, member: str, inflight_key: str) -> None:
        self._leases[member] = inflight_key
        if self._closed:
            return
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        # The flag, not only the cancel, ends this loop: on Python 3.11, asyncio.wait_for
        # (inside redis-py) returns its result and drops a cancel that lands just as the
        # I/O completes, and a loop that relied on the cancel would then run forever.
        while self._leases and not self._closed:
            await asyncio.sleep(self._lease_s / 3)
            by_key: dict[str, list[str]] = {}
            for member, inflight_key in list(self._leases.items()):
                by_key.setdefault(inflight_key, []).append(member)
            for inflight_key, members in by_key.items():
                if self._closed:
                    return
                args = [self._lease_us, *members]
                renewed = await self._quietly(
                    "renew leases",
                    lambda key=inflight_key, args=args: self._renew(keys=[key], args=args),
                )
                if renewed is not None and int(renewed) < len(members):
                    # Redis lost them (restart, eviction): those requests run uncounted.
                    self._log.warning(
                        "rate-limit backend: %d in-flight slots of %s were lost",
                        len(members) - int(renewed),
                        inflight_key,
                    )

    async def aclose(self) -> None:
        self._closed = True
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self._owns_client:
            await self._client.aclose()


class RedisLimiter(Limiter):
    """The `redis` backend: shared per-key limits (this instance's own while Redis is down,
    under the `open` policy), per-instance in-flight cap."""

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
        self.circuit = Circuit(probe_interval_s, clock)
        self.quotas = RedisQuotas(client, self.circuit, prefix=prefix, lease_s=lease_s,
                                  owns_client=owns_client)
        self.fallback = MemoryQuotas(clock)
        self.failure_policy = failure_policy
        store = FallbackQuotas(self.quotas, self.fallback, self.circuit, failures=_BACKEND_ERRORS,
                               failure_policy=failure_policy, clock=clock)
        super().__init__(store, InflightGate(max_inflight, queue_size, queue_timeout_s))

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        # A killed Redis refuses at once and a black-holed one fails the connect timeout;
        # the read timeout only has to catch a hung server. Kept well above what a busy
        # event loop adds to a round trip in a burst: a false "Redis is down" would switch
        # every instance to its own limits, multiplying them by the number of instances.
        socket_timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
        max_connections: int = 64,
        pool_timeout_s: float = 5.0,
        **kwargs: Any,
    ) -> RedisLimiter:
        # A bounded pool that makes callers wait for a connection: a burst of requests
        # would otherwise open a connection each, and time out while connecting.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout_s,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            # One retry, on connection errors only: it replaces a pooled connection that died
            # with a restarted Redis (the scripts that charge are idempotent, in case one ran
            # before its connection dropped). Never retry timeouts: Redis may still be
            # running the first call.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        return cls(Redis.from_pool(pool), owns_client=True, **kwargs)

    @property
    def backend_down(self) -> bool:
        return self.circuit.down
