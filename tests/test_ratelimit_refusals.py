"""What a limited client and an operator read, on the in-process limiter with a frozen clock:
the exact waits and resets in the headers, the refusal's message (the key, each limit and
its figure), the 400 for a request no wait would admit, the reasons the refusal metrics
count, and reads limited by the key's requests per minute only."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from gateway.access.auth import ANONYMOUS, Principal
from gateway.access.keys import KeyPolicy
from gateway.errors import InvalidRequestError, RateLimitError
from gateway.observe.causes import refusal_reasons
from gateway.ratelimit import MemoryLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(name: str = "test", **policy: Any) -> Principal:
    return Principal(key_id=uuid.uuid4().hex[:12], name=name, policy=KeyPolicy(**policy))


def limiter(clock: Clock | None = None) -> MemoryLimiter:
    return MemoryLimiter(clock=clock or Clock(), max_inflight=100, queue_size=0)


async def refusal(limits: MemoryLimiter, who: Principal, tokens: int = 1) -> RateLimitError:
    with pytest.raises(RateLimitError) as info:
        await limits.admit(who, tokens)
    return info.value


async def test_the_message_names_the_key_every_limit_hit_and_the_wait() -> None:
    limits = limiter()
    who = key(rpm=1, tpm=1000)
    await limits.admit(who, 600)
    both = await refusal(limits, who, 900)  # 500 tokens short: 30 s; the request: 60 s
    assert both.message == (f"Rate limit reached for API key {who.key_id} on requests per "
                            "minute (limit 1) and tokens per minute (limit 1000). "
                            "Please try again in 1m0s.")
    assert refusal_reasons(both) == ("requests", "tokens")
    assert both.headers["retry-after"] == "60" and both.headers["retry-after-ms"] == "60000"


async def test_a_concurrency_refusal_asks_for_a_second() -> None:
    limits = limiter()
    who = key(concurrency=1)
    held = await limits.admit(who, 1)
    error = await refusal(limits, who)
    assert error.headers["retry-after"] == "1" and error.headers["retry-after-ms"] == "1000"
    assert error.message.endswith("on requests in flight (limit 1). Please try again in 1s.")
    assert refusal_reasons(error) == ("concurrency",)
    await held.release()


async def test_a_wait_of_one_millisecond_is_said_exactly() -> None:
    limits = limiter()
    who = key(tpm=60_000)  # a token a millisecond
    await limits.admit(who, 60_000)
    error = await refusal(limits, who, 1)
    assert error.headers["retry-after-ms"] == "1" and error.headers["retry-after"] == "1"
    assert error.message.endswith("Please try again in 1ms.")
    assert refusal_reasons(error) == ("tokens",)


async def test_reset_headers_say_when_each_bucket_is_full_again() -> None:
    clock = Clock()
    limits = limiter(clock)
    who = key(rpm=1, tpm=1000)
    first = await limits.admit(who, 600)
    assert first.headers["x-ratelimit-reset-tokens"] == "36s"  # 600 tokens at 1000/min
    assert first.headers["x-ratelimit-reset-requests"] == "1m0s"
    clock.now += 36
    error = await refusal(limits, who, 10)  # the tokens are back, the request is not
    assert error.headers["x-ratelimit-remaining-tokens"] == "1000"
    assert error.headers["x-ratelimit-reset-tokens"] == "0s"
    assert error.headers["x-ratelimit-reset-requests"] == "24s"
    assert error.headers["retry-after-ms"] == "24000"  # 0.4 of a request at 1/min


async def test_a_request_over_the_keys_tpm_is_a_400_with_the_figures() -> None:
    limits = limiter()
    with pytest.raises(InvalidRequestError) as info:
        await limits.admit(key(tpm=1000), 1001)
    error = info.value
    assert (error.status_code, error.code, error.param) == (400, "request_too_large",
                                                            "max_tokens")
    assert refusal_reasons(error) == ("request_too_large",)
    assert "up to 1001 tokens" in error.message
    assert "limit of 1000 tokens per minute" in error.message
    assert error.message.endswith("Lower max_tokens or shorten the prompt.")
    with pytest.raises(ValueError, match="must not be negative: -1"):
        await limits.admit(key(tpm=1000), -1)


async def test_a_cancelled_admission_gives_its_tokens_back_once() -> None:
    limits = limiter()
    who = key(tpm=1000)
    kept = await limits.admit(who, 400)
    cancelled = await limits.admit(who, 400)  # 200 left
    await cancelled.cancel()  # 600
    await cancelled.finish(None)  # already given back: nothing more
    assert not await cancelled.reserve(100)  # and no retry may run on it
    await refusal(limits, who, 700)
    await kept.finish(400)


async def test_no_retry_is_reserved_once_the_request_settled() -> None:
    limits = limiter()
    who = key(tpm=1000)
    admission = await limits.admit(who, 400)
    await admission.settle(400)
    assert not await admission.reserve(100)
    after = await limits.admit(who, 10)
    assert after.headers["x-ratelimit-remaining-tokens"] == "590"  # the 100 were not taken


async def test_a_key_without_limits_may_always_retry() -> None:
    limits = limiter()
    for who in (ANONYMOUS, key()):
        admission = await limits.admit(who, 10)
        assert await admission.reserve(10**9)
        await admission.finish(10)


async def test_reads_count_against_requests_per_minute_only() -> None:
    limits = limiter()
    who = key(rpm=2, tpm=100, concurrency=1)
    held = await limits.admit(who, 100)  # its slot and all its tokens
    headers = await limits.admit_read(who)  # neither stops a read
    assert headers == {"x-ratelimit-limit-requests": "2",
                       "x-ratelimit-remaining-requests": "0",
                       "x-ratelimit-reset-requests": "1m0s"}
    with pytest.raises(RateLimitError) as info:
        await limits.admit_read(who)
    assert info.value.message.startswith(f"Rate limit reached for API key {who.key_id} on "
                                         "requests per minute (limit 2)")
    await held.release()


async def test_reads_take_no_slot_and_no_tokens() -> None:
    limits = limiter()
    who = key(rpm=10, tpm=100, concurrency=1)
    for _ in range(3):
        await limits.admit_read(who)
    admission = await limits.admit(who, 100)  # the slot and every token are still there
    assert admission.headers["x-ratelimit-remaining-tokens"] == "0"
    assert admission.headers["x-ratelimit-remaining-requests"] == "6"


async def test_each_key_has_its_own_reads_whatever_its_name() -> None:
    limits = limiter()
    alice, other = key("same", rpm=1), key("same", rpm=1)
    await limits.admit_read(alice)
    assert (await limits.admit_read(other))["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(RateLimitError):
        await limits.admit_read(alice)


async def test_a_key_without_rpm_reads_freely() -> None:
    limits = limiter()
    who = key(tpm=10, concurrency=1)
    held = await limits.admit(who, 10)
    for _ in range(5):
        assert await limits.admit_read(who) == {}
    await held.release()


async def test_a_cancelled_request_gives_back_exactly_one_request() -> None:
    limits = limiter()
    who = key(rpm=3)
    await limits.admit(who, 1)
    cancelled = await limits.admit(who, 1)
    await cancelled.cancel()  # never reached vLLM
    again = await limits.admit(who, 1)
    assert again.headers["x-ratelimit-remaining-requests"] == "1"


async def test_requests_cancelled_after_their_buckets_refilled_give_back_nothing_more() -> None:
    clock = Clock()
    limits = limiter(clock)
    who = key(rpm=10, tpm=1000)
    first, second = await limits.admit(who, 100), await limits.admit(who, 100)
    clock.now += 60  # both buckets full again meanwhile
    await first.cancel()
    await second.cancel()
    after = await limits.admit(who, 1000)
    assert after.headers["x-ratelimit-remaining-requests"] == "9"
    assert after.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_a_retry_may_take_exactly_what_is_left() -> None:
    limits = limiter()
    who = key(tpm=1000)
    admission = await limits.admit(who, 400)
    assert await admission.reserve(600)
    await refusal(limits, who, 1)
    await admission.finish(1000)


async def test_a_key_may_hold_exactly_its_concurrency_after_releases() -> None:
    limits = limiter()
    who = key(concurrency=2)
    first, second = await limits.admit(who, 1), await limits.admit(who, 1)
    await first.release()  # one still held
    third = await limits.admit(who, 1)
    error = await refusal(limits, who)
    assert refusal_reasons(error) == ("concurrency",)
    await second.release()
    await third.release()
    for admission in [await limits.admit(who, 1), await limits.admit(who, 1)]:
        await admission.release()
