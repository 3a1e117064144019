"""`FallbackQuotas` on fakes and a fake clock: what a request gets while the shared quota
store (Redis) is down, under each failure policy, and what an operator sees in the log.
(tests/test_ratelimit.py runs the same against a real Redis that is stopped and started.)"""

from __future__ import annotations

import logging
import uuid

import pytest

from gateway.access.auth import Principal
from gateway.access.keys import KeyPolicy
from gateway.errors import OverloadedError, RateLimitError
from gateway.ratelimit.base import Admission
from gateway.ratelimit.circuit import Circuit
from gateway.ratelimit.fallback import FallbackQuotas

WHO = Principal(key_id=uuid.uuid4().hex[:12], name="test", policy=KeyPolicy(rpm=10))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Store:
    """A quota store that answers with `headers`, or raises `error`, and counts its calls."""

    def __init__(self, name: str, error: BaseException | None = None) -> None:
        self.name = name
        self.error = error
        self.calls = 0
        self.closed = False
        self.close_error: BaseException | None = None

    async def admit(self, principal: Principal, estimated_tokens: int) -> Admission:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return Admission({"x-store": self.name, "x-tokens": str(estimated_tokens)})

    async def aclose(self) -> None:
        self.closed = True
        if self.close_error is not None:
            raise self.close_error


def quotas(policy: str = "open", probe_interval_s: float = 1.0
           ) -> tuple[FallbackQuotas, Store, Store, Clock]:
    clock = Clock()
    primary, fallback = Store("redis", ConnectionError("refused")), Store("memory")
    store = FallbackQuotas(primary, fallback, Circuit(probe_interval_s, clock),
                           failures=(ConnectionError, TimeoutError),
                           failure_policy=policy,  # type: ignore[arg-type]
                           clock=clock)
    return store, primary, fallback, clock


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
            and r.name == "gateway.ratelimit.circuit"]


async def test_the_primary_decides_while_it_answers() -> None:
    store, primary, fallback, _ = quotas()
    primary.error = None
    admission = await store.admit(WHO, 7)
    assert admission.headers == {"x-store": "redis", "x-tokens": "7"}
    assert (primary.calls, fallback.calls) == (1, 0)
    assert not store.circuit.down


async def test_fail_open_falls_back_and_skips_the_dead_primary(
        caplog: pytest.LogCaptureFixture) -> None:
    store, primary, fallback, clock = quotas("open", probe_interval_s=1.0)
    with caplog.at_level(logging.WARNING):
        first = await store.admit(WHO, 3)
        second = await store.admit(WHO, 4)  # the circuit is open: no call to the primary
    assert first.headers == {"x-store": "memory", "x-tokens": "3"}
    assert second.headers == {"x-store": "memory", "x-tokens": "4"}
    assert (primary.calls, fallback.calls) == (1, 2)
    assert store.circuit.down
    # one line an operator can act on: what failed, and what requests get meanwhile
    assert warnings(caplog) == ["rate-limit backend unreachable (ConnectionError('refused')); "
                                "failure policy 'open': per-instance limits"]

    clock.now += 1.0  # one probe per interval; it answers: back to shared limits
    primary.error = None
    assert (await store.admit(WHO, 5)).headers["x-store"] == "redis"
    assert not store.circuit.down and primary.calls == 2


async def test_fail_closed_is_a_503_with_retry_after_the_probe_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    store, primary, fallback, _ = quotas("closed", probe_interval_s=2.5)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # the first hits the primary, the second the open circuit
            with pytest.raises(OverloadedError) as info:
                await store.admit(WHO, 1)
            assert info.value.status_code == 503
            assert info.value.code == "ratelimit_backend_unavailable"
            assert info.value.headers["retry-after"] == "3"  # whole seconds, rounded up
            message = info.value.message  # a sentence saying what is wrong and what to do
            assert "Rate limits cannot be checked" in message and "try again" in message
            assert message[0].isupper() and message.endswith(".")
    assert (primary.calls, fallback.calls) == (1, 0)
    assert warnings(caplog) == ["rate-limit backend unreachable (ConnectionError('refused')); "
                                "failure policy 'closed': answering 503"]


async def test_the_default_policy_is_fail_open() -> None:
    primary, fallback = Store("redis", ConnectionError("refused")), Store("memory")
    store = FallbackQuotas(primary, fallback, Circuit(1.0, Clock()), failures=(ConnectionError,))
    assert store.failure_policy == "open"
    assert (await store.admit(WHO, 1)).headers["x-store"] == "memory"


async def test_a_short_probe_interval_still_says_retry_after_one_second() -> None:
    store, _, _, _ = quotas("closed", probe_interval_s=0.2)
    with pytest.raises(OverloadedError) as info:
        await store.admit(WHO, 1)
    assert info.value.headers["retry-after"] == "1"


async def test_a_key_over_its_limit_is_an_answer_not_an_outage() -> None:
    store, primary, fallback, clock = quotas()
    primary.error = RateLimitError("over")
    with pytest.raises(RateLimitError):
        await store.admit(WHO, 1)
    assert not store.circuit.down and fallback.calls == 0

    primary.error = ConnectionError("gone")  # down; then the probe finds the key over
    await store.admit(WHO, 1)
    assert store.circuit.down
    clock.now += 1.0
    primary.error = RateLimitError("over")
    with pytest.raises(RateLimitError):
        await store.admit(WHO, 1)
    assert not store.circuit.down  # it answered: shared limits again


async def test_an_unexpected_error_is_neither_an_outage_nor_hidden() -> None:
    store, primary, fallback, _ = quotas()
    primary.error = ValueError("bug")
    with pytest.raises(ValueError):
        await store.admit(WHO, 1)
    assert not store.circuit.down and fallback.calls == 0
    primary.error = None
    assert (await store.admit(WHO, 1)).headers["x-store"] == "redis"


async def test_the_outage_warning_is_throttled_on_the_stores_clock(
        caplog: pytest.LogCaptureFixture) -> None:
    store, _, _, clock = quotas("open", probe_interval_s=1.0)
    with caplog.at_level(logging.WARNING):
        await store.admit(WHO, 1)  # logged
        clock.now += 1.0
        await store.admit(WHO, 1)  # the probe fails again: held back
        clock.now += 30.0
        await store.admit(WHO, 1)  # logged, counting the one held back
    lines = warnings(caplog)
    assert len(lines) == 2
    assert lines[1].endswith("(1 similar warnings suppressed)")


async def test_closing_closes_both_even_if_the_primary_fails_to() -> None:
    store, primary, fallback, _ = quotas()
    primary.close_error = ConnectionError("gone")
    with pytest.raises(ConnectionError):
        await store.aclose()
    assert primary.closed and fallback.closed
