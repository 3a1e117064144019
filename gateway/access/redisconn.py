"""The Redis connections of the key store, budgets and usage: bounded, with the limiter's
timeouts (gateway/ratelimit/redis.py says why these values)."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

MAX_CONNECTIONS = 32


def redis_client(url: str) -> Redis:
    pool = BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=5.0, socket_timeout=5.0,
        socket_connect_timeout=2.0,
        # One retry on a dropped connection (a restarted Redis): every write here is
        # idempotent (ids) or a read.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
    return Redis.from_pool(pool)
