"""`RedisQuotas` against a fake Redis client that fails on demand: what settling, refunds,
retries' reservations, releases and lease renewals do when Redis does not answer (nothing
raised, the circuit opened, one warning an operator can read) and when it answers again.
The limits themselves are tested against a real Redis in tests/test_ratelimit.py."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.access.auth import Principal
from gateway.access.keys import KeyPolicy
from gateway.errors import QueueFullError, QueueTimeoutError, RateLimitError
from gateway.ratelimit import scripts
from gateway.ratelimit.circuit import Circuit
from gateway.ratelimit.redis import RedisLimiter, RedisQuotas
from tests.redis_server import redis_server, redis_url  # noqa: F401

SCRIPTS = {scripts.ADMIT: "admit", scripts.ADJUST: "adjust", scripts.TAKE: "take",
           scripts.RENEW: "renew"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeRedis:
    """Runs no Lua: each script call is recorded and answered from `replies`, or raises
    `error`."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], list[Any]]] = []
        self.error: BaseException | None = None
        self.replies: dict[str, Any] = {"admit": [0, 0, 9, 990], "adjust": 1, "take": 1,
                                        "renew": 1, "zrem": 1}
        self.renewed = asyncio.Event()
        self.closed = False

    def register_script(self, source: str) -> Any:
        name = SCRIPTS[source]

        async def run(keys: list[str], args: list[Any]) -> Any:
            return await self._call(name, keys, args)
        return run

    async def zrem(self, key: str, member: str) -> Any:
        return await self._call("zrem", [key], [member])

    async def _call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        self.calls.append((name, keys, list(args)))
        if name == "renew":
            self.renewed.set()
        if self.error is not None:
            raise self.error
        return self.replies[name]

    def named(self, name: str) -> list[tuple[str, list[str], list[Any]]]:
        return [call for call in self.calls if call[0] == name]

    async def aclose(self) -> None:
        self.closed = True


def key(**policy: Any) -> Principal:
    return Principal(key_id=uuid.uuid4().hex[:12], name="test", policy=KeyPolicy(**policy))


def quotas(lease_s: float = 30.0) -> tuple[RedisQuotas, FakeRedis, Clock]:
    client, clock = FakeRedis(), Clock()
    store = RedisQuotas(client, Circuit(1.0, clock), prefix="p:", lease_s=lease_s)  # type: ignore[arg-type]
    return store, client, clock


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
            and r.name == "gateway.ratelimit.circuit"]


async def test_a_failed_settle_is_swallowed_logged_and_opens_the_circuit(
        caplog: pytest.LogCaptureFixture) -> None:
    store, client, clock = quotas()
    who = key(rpm=10, tpm=1000)
    admission = await store.admit(who, 100)
    client.error = RedisConnectionError("gone")
    with caplog.at_level(logging.WARNING):
        await admission.settle(40)  # in a `finally`: must not raise
    assert store.circuit.down
    [line] = warnings(caplog)  # what could not be done, and why
    assert line.startswith("rate-limit backend: could not settle: ") and "ConnectionError" in line

    # Down: the next refund is skipped, not sent to a dead Redis...
    other = await _admitted(store, client, who)
    client.error = RedisConnectionError("gone")
    calls = len(client.calls)
    await other.cancel()
    assert len(client.calls) == calls
    # ...until the probe interval is over; a call that answers brings the circuit back.
    clock.now += 1.0
    client.error = None
    third = await _admitted(store, client, who)
    await third.settle(None)
    assert client.named("adjust")[-1][2][:4] == [0, 0, 1000, 100]  # the whole 100 back
    assert not store.circuit.down


async def _admitted(store: RedisQuotas, client: FakeRedis, who: Principal) -> Any:
    """An admission made while Redis answers (the circuit is the store's caller's: the
    fallback store skips `admit` while it is down; here `admit` is called directly)."""
    client.error = None
    return await store.admit(who, 100)


async def test_an_error_that_is_not_the_backends_propagates_and_leaves_the_circuit_up() -> None:
    store, client, _ = quotas()
    admission = await store.admit(key(tpm=1000), 10)
    client.error = ValueError("a bug, not an outage")
    with pytest.raises(ValueError):
        await admission.settle(5)
    assert not store.circuit.down


async def test_a_retry_cannot_reserve_while_redis_is_down(
        caplog: pytest.LogCaptureFixture) -> None:
    store, client, _ = quotas()
    admission = await store.admit(key(tpm=1000), 100)
    client.error = OSError("unreachable")
    with caplog.at_level(logging.WARNING):
        assert await admission.reserve(50) is False  # the safe side: the retry does not run
    assert warnings(caplog) == ["rate-limit backend: could not reserve a retry: "
                                "OSError('unreachable')"]
    client.error = None
    client.replies["take"] = 0
    store.circuit.record(True)
    assert await admission.reserve(50) is False  # Redis answers: no room
    client.replies["take"] = 1
    assert await admission.reserve(50) is True
    await admission.settle(None)  # gives back the 100 and the 50 taken
    assert client.named("adjust")[-1][2][3] == 150


async def test_a_failed_release_is_swallowed_and_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    store, client, _ = quotas()
    held = await store.admit(key(rpm=10, concurrency=2), 1)
    client.error = TimeoutError("slow")
    with caplog.at_level(logging.WARNING):
        await held.release()  # the slot frees itself when its lease runs out
    assert warnings(caplog) == ["rate-limit backend: could not release: TimeoutError('slow')"]
    assert store.circuit.down
    await store.aclose()


async def test_a_failed_refund_is_swallowed_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    store, client, _ = quotas()
    admission = await store.admit(key(rpm=10, tpm=1000), 100)
    client.error = TimeoutError("slow")
    with caplog.at_level(logging.WARNING):
        await admission.cancel()
    assert warnings(caplog) == ["rate-limit backend: could not refund: TimeoutError('slow')"]
    assert store.circuit.down


async def _until(condition: Any) -> None:
    for _ in range(500):  # waits for the renewer's next rounds; a bound, not a measurement
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the renewer never got there")


async def test_held_slots_are_renewed_until_released_and_lost_ones_are_reported(
        caplog: pytest.LogCaptureFixture) -> None:
    store, client, _ = quotas(lease_s=0.03)
    who = key(concurrency=2)
    first, second = await store.admit(who, 1), await store.admit(who, 1)
    members = [call[2][4] for call in client.named("admit")]
    inflight = f"p:{{{who.key_id}}}:inflight"
    client.replies["renew"] = 2
    with caplog.at_level(logging.WARNING):
        await _until(lambda: len(client.named("renew")) >= 2)  # both renewed, twice
        assert warnings(caplog) == []
        client.replies["renew"] = 1  # Redis lost one of them (a restart, an eviction)
        await _until(lambda: warnings(caplog))
    (_, keys, args) = client.named("renew")[0]
    assert keys == [inflight] and args == [30_000, *members]
    assert warnings(caplog)[0] == f"rate-limit backend: 1 in-flight slots of {inflight} were lost"

    await first.release()
    await second.release()
    assert client.named("zrem")[-1][1:] == ([inflight], [members[1]])
    renewer = store._renewer
    assert renewer is not None
    await asyncio.wait_for(renewer, 5)  # nothing held: the renewer ends by itself
    client.renewed.clear()
    again = await store.admit(who, 1)  # held again: renewed again
    await asyncio.wait_for(client.renewed.wait(), 5)
    await again.release()
    await store.aclose()


async def test_closing_stops_renewing_and_closes_an_owned_client() -> None:
    client = FakeRedis()
    store = RedisQuotas(client, Circuit(1.0, Clock()), lease_s=0.03,  # type: ignore[arg-type]
                        owns_client=True)
    await store.admit(key(concurrency=1), 1)
    await asyncio.wait_for(client.renewed.wait(), 5)
    await store.aclose()
    assert client.closed
    renewals = len(client.named("renew"))
    await asyncio.sleep(0.05)
    assert len(client.named("renew")) == renewals
    shared = FakeRedis()
    await RedisQuotas(shared, Circuit(1.0, Clock())).aclose()  # type: ignore[arg-type]
    assert not shared.closed  # not its client to close


async def test_a_failed_renewal_is_logged_and_the_request_runs_on(
        caplog: pytest.LogCaptureFixture) -> None:
    store, client, _ = quotas(lease_s=0.03)
    held = await store.admit(key(concurrency=1), 1)
    client.error = RedisConnectionError("gone")
    with caplog.at_level(logging.WARNING):
        await _until(lambda: warnings(caplog))
    [line] = warnings(caplog)
    assert line.startswith("rate-limit backend: could not renew leases: ")
    assert store.circuit.down
    await held.release()
    await store.aclose()


async def test_keys_live_under_the_default_prefix_one_hash_tag_per_api_key() -> None:
    client = FakeRedis()
    store = RedisQuotas(client, Circuit(1.0, Clock()))  # type: ignore[arg-type]
    who = key(rpm=10, tpm=1000, concurrency=2)
    await (await store.admit(who, 7)).release()
    [(_, keys, args)] = client.named("admit")
    tag = f"irgw:rl:{{{who.key_id}}}"  # all of a key's state in one Redis Cluster slot
    assert keys == [f"{tag}:requests", f"{tag}:tokens", f"{tag}:inflight", f"{tag}:ops"]
    assert args[:4] == [10, 1000, 2, 7]
    assert args[5] == 30_000_000  # a crashed instance's slots expire after 30 s by default
    await store.aclose()


async def test_after_closing_a_held_slot_is_not_renewed() -> None:
    store, _, _ = quotas(lease_s=0.03)
    await store.aclose()
    held = await store.admit(key(concurrency=1), 1)
    assert store._renewer is None
    await held.release()


async def test_the_connection_pool_is_bounded_and_gives_up_on_a_dead_redis_quickly() -> None:
    """What `from_url` promises (no Redis needed, nothing connects): a burst shares 64
    connections, waiting up to 5 s for one, rather than opening one each; a hung Redis fails
    a call after 5 s and an unreachable one the connect after 2 s; a connection that died
    with a restarted Redis is retried once, a timeout never (the call may still be running)."""
    limiter = RedisLimiter.from_url("redis://127.0.0.1:1/0")
    try:
        pool = limiter.quotas._client.connection_pool
        assert isinstance(pool, BlockingConnectionPool)
        assert (pool.max_connections, pool.timeout) == (64, 5.0)
        options = pool.connection_kwargs
        assert (options["socket_timeout"], options["socket_connect_timeout"]) == (5.0, 2.0)
        retry = options["retry"]
        assert retry.get_retries() == 1
        assert isinstance(retry._backoff, NoBackoff)
        assert retry._supported_errors == (RedisConnectionError,)
        # Defaults no setting overrides: the keys' prefix, the slots' lease, and a dead
        # Redis probed once a second (so the `closed` policy's 503 says Retry-After: 1).
        assert (limiter.quotas._prefix, limiter.quotas._lease_s) == ("irgw:rl:", 30.0)
        assert limiter.circuit.probe_interval_s == 1.0
    finally:
        await limiter.aclose()  # it owns its client: the pool is closed with it


@pytest.mark.parametrize(("policy", "given_back"), [
    ({"tpm": 1000}, [0, 1, 1000, 100]),  # no RPM: no request bucket to give one back to
    ({"rpm": 10}, [10, 1, 0, 100]),
    ({"rpm": 10, "tpm": 1000}, [10, 1, 1000, 100]),
])
async def test_a_request_that_never_ran_gives_back_what_it_took(policy: dict[str, int],
                                                                given_back: list[int]) -> None:
    store, client, _ = quotas()
    admission = await store.admit(key(**policy), 100)
    await admission.cancel()
    [(_, keys, args)] = client.named("adjust")
    assert args[:4] == given_back  # (limit, units back) for requests, then for tokens
    assert keys[0].endswith(":requests") and keys[1].endswith(":tokens")


async def test_a_refusal_says_which_limit_and_how_long_to_wait() -> None:
    store, client, _ = quotas()
    who = key(rpm=10, concurrency=2)
    client.replies["admit"] = [4, 0, 9, 0]  # every slot busy: no wait Redis can name
    with pytest.raises(RateLimitError) as info:
        await store.admit(who, 1)
    assert info.value.refused == ("concurrency",)
    assert "requests in flight (limit 2)" in info.value.message
    # Redis's wait, in µs, rounded up: waiting what the headers say is always enough.
    client.replies["admit"] = [1, 60_000_001, 0, 0]
    with pytest.raises(RateLimitError) as info:
        await store.admit(who, 1)
    assert info.value.refused == ("requests",)
    assert info.value.headers["retry-after-ms"] == "60001"
    assert info.value.headers["retry-after"] == "61"
    assert "requests per minute (limit 10)" in info.value.message


async def test_a_limiter_given_a_client_leaves_it_to_its_owner() -> None:
    shared = FakeRedis()
    await RedisLimiter(shared).aclose()  # type: ignore[arg-type]
    assert not shared.closed


async def test_a_limiter_from_a_url_closes_its_connections(redis_url: str) -> None:  # noqa: F811
    watcher = Redis.from_url(redis_url)
    try:
        before = len(await watcher.client_list())
        limiter = RedisLimiter.from_url(redis_url, prefix=f"test:{uuid.uuid4().hex[:8]}:")
        await (await limiter.admit(key(rpm=5), 1)).release()
        assert len(await watcher.client_list()) == before + 1
        await limiter.aclose()

        async def closed() -> bool:
            return len(await watcher.client_list()) == before
        for _ in range(500):  # the server drops it as soon as it reads the close
            if await closed():
                break
            await asyncio.sleep(0.01)
        assert await closed()
    finally:
        await watcher.aclose()


async def test_the_limiter_queues_for_its_in_flight_slots_as_configured() -> None:
    limiter = RedisLimiter(FakeRedis(), max_inflight=1, queue_size=1,  # type: ignore[arg-type]
                           queue_timeout_s=0.05)
    held = await limiter.admit(key(), 1)
    waiting = asyncio.ensure_future(limiter.admit(key(), 1))  # the one place in the queue
    await asyncio.sleep(0)
    with pytest.raises(QueueFullError):
        await limiter.admit(key(), 1)
    with pytest.raises(QueueTimeoutError):  # a bound so that a queue without one fails
        await asyncio.wait_for(waiting, 5)
    await held.release()
    await limiter.aclose()


async def test_the_limiters_outage_warnings_are_throttled_on_its_clock(
        caplog: pytest.LogCaptureFixture) -> None:
    client, clock = FakeRedis(), Clock()
    client.error = RedisConnectionError("gone")
    limiter = RedisLimiter(client, clock=clock)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        await limiter.admit(key(rpm=10), 1)  # per-instance limits meanwhile
        clock.now += 31.0  # the probe fails again, past the warning's interval
        await limiter.admit(key(rpm=10), 1)
    assert len([line for line in warnings(caplog) if "unreachable" in line]) == 2
    await limiter.aclose()
