"""The Redis backend's Lua scripts, run directly against a real Redis: a second run of the
same admission or adjustment (what a retry after a lost reply is) changes nothing, and a
different id does. test_ratelimit.py checks the same through a proxy that drops replies;
this checks the scripts' own contract, without redis-py's retry in between.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.ratelimit import scripts
from tests.redis_server import redis_server, redis_url  # noqa: F401  (fixtures)

KEEP_US = 20_000_000
LEASE_US = 30_000_000


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:  # noqa: F811
    redis = Redis.from_url(redis_url)
    try:
        yield redis
    finally:
        await redis.aclose()


def keys_for(tag: str) -> list[str]:
    return [f"test:{{{tag}}}:{part}" for part in ("requests", "tokens", "inflight", "ops")]


async def levels(redis: Redis, keys: list[str]) -> tuple[float | None, float | None, int]:
    """The stored levels (None: full, no hash) and the number of in-flight members. A run
    that changes nothing leaves the stored hash exactly as it was."""
    requests = await redis.hget(keys[0], "level")
    tokens = await redis.hget(keys[1], "level")
    return (None if requests is None else float(requests),
            None if tokens is None else float(tokens), await redis.zcard(keys[2]))


def near(level: float | None, expected: float, refill: float) -> bool:
    """`expected` plus what the bucket may have refilled meanwhile (rpm 10, tpm 1000: 1/6
    request and 17 tokens a second; `refill` allows a few seconds of a slow machine), far
    less than one run more or less would change."""
    return level is not None and expected - 1e-6 <= level <= expected + refill


async def test_an_admission_run_twice_counts_once(client: Redis) -> None:
    admit = client.register_script(scripts.ADMIT)
    keys = keys_for(uuid.uuid4().hex)
    member = uuid.uuid4().hex
    args = [10, 1000, 2, 100, member, LEASE_US, KEEP_US]  # rpm, tpm, concurrency, cost
    assert int((await admit(keys=keys, args=args))[0]) == 0  # admitted
    once = await levels(client, keys)
    assert near(once[0], 9, 0.5) and near(once[1], 900, 50) and once[2] == 1
    again = await admit(keys=keys, args=args)  # the retry of a call whose reply was lost
    assert int(again[0]) == 0 and await levels(client, keys) == once
    # Another admission is another request.
    await admit(keys=keys, args=[10, 1000, 2, 100, uuid.uuid4().hex, LEASE_US, KEEP_US])
    requests, tokens, busy = await levels(client, keys)
    assert near(requests, 8, 0.5) and near(tokens, 800, 50) and busy == 2


async def test_an_adjustment_run_twice_counts_once(client: Redis) -> None:
    admit = client.register_script(scripts.ADMIT)
    adjust = client.register_script(scripts.ADJUST)
    keys = keys_for(uuid.uuid4().hex)
    buckets_and_ops = [keys[0], keys[1], keys[3]]
    for _ in range(2):
        await admit(keys=keys, args=[10, 1000, 0, 300, uuid.uuid4().hex, LEASE_US, KEEP_US])
    refund = [0, 0, 1000, 200, "settle-1", KEEP_US]  # give back 200 tokens
    assert int(await adjust(keys=buckets_and_ops, args=refund)) == 1
    requests, tokens, _ = await levels(client, keys)
    assert near(requests, 8, 0.5) and near(tokens, 600, 50)
    assert int(await adjust(keys=buckets_and_ops, args=refund)) == 0  # the retry: no-op
    assert await levels(client, keys) == (requests, tokens, 0)
    # Another id is another adjustment: a charge applies.
    await adjust(keys=buckets_and_ops, args=[0, 0, 1000, -150, "settle-2", KEEP_US])
    _, charged, _ = await levels(client, keys)
    assert near(charged, tokens - 150, 50)
    # A request cancelled, and the cancel retried: one request back (9), not two (10).
    cancel = [10, 1, 0, 0, "cancel-1", KEEP_US]
    await adjust(keys=buckets_and_ops, args=cancel)
    after_one = await levels(client, keys)
    assert near(after_one[0], 9, 0.5)
    await adjust(keys=buckets_and_ops, args=cancel)
    assert await levels(client, keys) == after_one
