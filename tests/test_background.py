"""Background loops stop when the gateway shuts down (gateway/background.py), even when a
step swallows the cancellation, as redis-py can while a command is in flight."""

from __future__ import annotations

import asyncio
import contextlib

from gateway.access.redis_keys import RedisKeyStore
from gateway.background import Periodic
from tests.redis_server import redis_server, redis_url  # noqa: F401  (fixtures)


async def test_a_loop_whose_step_swallows_the_cancellation_still_stops() -> None:
    steps = 0

    async def step() -> None:
        nonlocal steps
        steps += 1
        with contextlib.suppress(asyncio.CancelledError):  # what a client library may do
            await asyncio.sleep(0.01)

    loop = Periodic("test loop", step, 0.001, step_first=True)
    loop.start()
    await asyncio.sleep(0.05)
    assert loop.running and steps > 1
    await loop.stop(timeout_s=5)
    assert not loop.running
    counted = steps
    await asyncio.sleep(0.05)
    assert steps == counted  # it really stopped, not just stopped being waited for


async def test_stop_does_not_swallow_the_callers_own_cancellation() -> None:
    async def step() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)
        await asyncio.sleep(10)  # a step that goes on after swallowing the cancellation

    loop = Periodic("slow loop", step, 0.001, step_first=True)
    loop.start()
    await asyncio.sleep(0.01)
    stopping = asyncio.create_task(loop.stop(timeout_s=30))
    await asyncio.sleep(0.01)
    stopping.cancel()
    done, _ = await asyncio.wait({stopping}, timeout=5)
    assert done and stopping.cancelled()


async def test_the_redis_key_store_closes_while_following_fast(redis_url: str) -> None:  # noqa: F811
    # Before: a cancellation landing inside a redis-py command was swallowed and the
    # follower looped on, so aclose (and the gateway's shutdown) waited for ever.
    for attempt in range(30):
        keys = RedisKeyStore.from_url(redis_url, prefix=f"bg{attempt}:", refresh_s=0.001)
        await keys.start()
        await asyncio.sleep(0.002 * (attempt % 5))
        closing = asyncio.create_task(keys.aclose())
        done, _ = await asyncio.wait({closing}, timeout=10)
        assert done, f"aclose did not return (attempt {attempt})"
