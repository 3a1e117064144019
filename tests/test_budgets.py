"""Token budgets per key and day or month: on both backends, and exact across two gateway
processes sharing a real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.access.auth import Principal
from gateway.access.budgets import (
    BudgetedLimiter,
    MemoryBudgets,
    QuotaExceededError,
    RedisBudgets,
    period_of,
)
from gateway.access.keys import KeyPolicy, KeyStore
from gateway.access.redisconn import redis_client
from gateway.errors import RateLimitError
from gateway.generation.budget import token_budget
from gateway.generation.planning import plan_chat
from gateway.output.registry import SchemaRegistry
from gateway.ratelimit import MemoryLimiter
from gateway.ratelimit.redis import RedisLimiter
from tests import openai_spec
from tests.conftest import REPO, REPORT, unit_settings
from tests.fake_upstream import FakeUpstream, Reply
from tests.gateway_server import gateway_process
from tests.ir_samples import VALID
from tests.redis_server import redis_server, redis_url  # noqa: F401  (fixtures)

BODY = {"model": "schema/function_ir", "messages": [{"role": "user", "content": "add"}],
        "max_tokens": 50}


def test_periods_are_utc_days_and_calendar_months() -> None:
    day = period_of("day", datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    assert day.name == "2026-12-31" and day.resets_at == datetime(2027, 1, 1, tzinfo=UTC)
    month = period_of("month", datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    assert month.name == "2026-12" and month.resets_at == datetime(2027, 1, 1, tzinfo=UTC)
    assert period_of("month", datetime(2027, 1, 31, tzinfo=UTC)).resets_at == \
        datetime(2027, 2, 1, tzinfo=UTC)


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest,
                  redis_url: str) -> AsyncIterator[BudgetedLimiter]:  # noqa: F811
    if request.param == "memory":
        budgeted = BudgetedLimiter(MemoryLimiter(max_inflight=100), MemoryBudgets())
    else:
        budgeted = BudgetedLimiter(
            RedisLimiter.from_url(redis_url, max_inflight=100),
            RedisBudgets(redis_client(redis_url), owns_client=True),
            prefix=f"test:{uuid.uuid4().hex[:8]}:")
    try:
        yield budgeted
    finally:
        await budgeted.aclose()


def _key(**policy: Any) -> Principal:
    return Principal(uuid.uuid4().hex[:12], "team", KeyPolicy(**policy))


async def test_a_budget_admits_what_fits_and_settles_at_real_usage(
        limiter: BudgetedLimiter) -> None:
    key = _key(budget_tokens=1000)
    held = [await limiter.admit(key, 300) for _ in range(3)]
    with pytest.raises(QuotaExceededError) as info:
        await limiter.admit(key, 300)
    error = info.value
    assert error.status_code == 429 and error.code == "insufficient_quota"
    assert "900 of its 1000 tokens" in error.message and "resets at" in error.message
    assert int(error.headers["retry-after"]) >= 1
    openai_spec.validate("ErrorResponse", error.body())
    await held[0].finish(100)  # used 100 of its 300: 200 come back
    await held[1].cancel()  # never ran: all 300 come back
    third = await limiter.admit(key, 500)
    with pytest.raises(QuotaExceededError, match="900 of its 1000"):
        await limiter.admit(key, 101)
    # A retry's reservation is taken from the budget too, and only if it fits.
    assert await third.reserve(100) and not await third.reserve(1)
    await third.finish(None)
    await held[2].finish(300)
    assert await limiter.store.used(limiter.counter(key.key_id or "", period_of(
        "day", datetime.now(UTC)))) == 400


async def test_a_rate_limit_refusal_gives_the_budget_back(limiter: BudgetedLimiter) -> None:
    key = _key(budget_tokens=1000, rpm=1)
    await (await limiter.admit(key, 400)).finish(400)
    with pytest.raises(RateLimitError) as info:
        await limiter.admit(key, 400)
    assert info.value.code == "rate_limit_exceeded"
    counter = limiter.counter(key.key_id or "", period_of("day", datetime.now(UTC)))
    assert await limiter.store.used(counter) == 400


async def test_redis_spends_are_idempotent(redis_url: str) -> None:  # noqa: F811
    store = RedisBudgets(redis_client(redis_url), owns_client=True)
    counter = f"test:{uuid.uuid4().hex}"
    try:
        # The same spend run twice (a retry after a dropped connection) counts once.
        assert await store.spend(counter, 100, 60, "op1", 60) == (True, 60)
        assert await store.spend(counter, 100, 60, "op1", 60) == (True, 60)
        assert await store.spend(counter, 100, 60, "op2", 60) == (False, 60)
        await store.adjust(counter, -10, "op1:settle", 60)
        await store.adjust(counter, -10, "op1:settle", 60)
        assert await store.used(counter) == 50
    finally:
        await store.aclose()


def _reservation() -> int:
    settings = unit_settings("http://127.0.0.1:1")
    plan = plan_chat(dict(BODY), SchemaRegistry.load(REPO / "schemas"), settings)
    return token_budget(plan, KeyPolicy(), settings.default_max_tokens).reserved


async def test_a_budget_is_exact_across_two_replicas(
        fake: FakeUpstream, tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    reserved = _reservation()
    # Each answer uses exactly its reservation, so however the burst interleaves with the
    # settlements, exactly `fits` requests fit.
    fake.default = Reply(VALID, usage={"prompt_tokens": reserved - 20, "completion_tokens": 20,
                                       "total_tokens": reserved})
    fits = 7
    store = KeyStore(tmp_path / "keys.json", create=True)
    _, key = store.create("team", KeyPolicy(budget_tokens=fits * reserved))
    settings = unit_settings(fake.url, auth_enabled=True, keys_file=tmp_path / "keys.json",
                             ratelimit_backend="redis", redis_url=redis_url,
                             max_inflight=256, queue_size=256)
    async with gateway_process(settings) as one, gateway_process(settings) as two, \
            httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=60)) as client:
        responses = await asyncio.gather(*(
            client.post(f"{(one, two)[i % 2]}/v1/chat/completions", json=BODY,
                        headers={"authorization": f"Bearer {key}"}) for i in range(60)))
    statuses = Counter(r.status_code for r in responses)
    REPORT.append(f"budget of {fits} x {reserved} tokens, burst of 60 over two replicas: "
                  f"{dict(statuses)}")
    assert statuses == {200: fits, 429: 60 - fits}
    assert len(fake.requests) == fits
    for response in responses:
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "insufficient_quota"
            assert "resets at" in response.json()["error"]["message"]


async def test_the_memory_backend_forgets_a_period_once_it_is_over() -> None:
    now = [0.0]
    store = MemoryBudgets(clock=lambda: now[0])
    assert await store.spend("k:2026-12-05", 100, 60, "op", ttl_s=10) == (True, 60)
    now[0] = 61.0  # past the period, and past the next sweep (at most once a minute)
    assert await store.used("k:2026-12-05") == 0
    assert await store.spend("k:2026-12-06", 100, 60, "op2", ttl_s=10) == (True, 60)
    assert list(store._used) == ["k:2026-12-06"]  # the old period was swept, not kept
