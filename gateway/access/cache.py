"""A response cache for deterministic, checked answers, opt-in per key or per schema.

Only a non-streamed chat request whose answer cannot vary is cached: `temperature` 0, or a
fixed `seed` when the key allows seeded caching (`cache_seeded`). The entry's key is a SHA-256
of the upstream model, the schema's ref and exact text, and the client's whole body (messages,
sampling parameters and anything else vLLM would see), so any difference is a miss. Only
answers that passed the check (passed, repaired, or passed after a retry) are stored.

A hit is answered without vLLM, without the key's token limits or budget (it costs no tokens),
counted against its requests per minute, with `x-irgw-cache: hit`, and in usage as `cached`.
In memory (one instance, LRU-bounded) or in Redis (shared by every replica, bounded by the
TTL, the entry size and Redis's own maxmemory policy). A cache that fails is a miss.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import OrderedDict
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.access.auth import Principal
from gateway.generation.planning import ChatPlan
from gateway.ratelimit.circuit import ThrottledLog
from gateway.settings import Settings

logger = logging.getLogger(__name__)
ACCEPTED = frozenset({"passed", "repaired", "retried"})
_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
# In a request's ASGI scope: the entry a cacheable request that missed is stored under.
CACHE_KEY = "irgw.cache_key"
# Fields that change how the answer is delivered, not what it is.
_DELIVERY_FIELDS = frozenset({"stream", "stream_options", "user"})


class CacheStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def aclose(self) -> None: ...


class MemoryCache:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self._entries[key] = (time.monotonic() + ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def aclose(self) -> None:
        return None


class RedisCache:
    def __init__(self, client: Redis, prefix: str, *, owns_client: bool = False) -> None:
        self._client = client
        self._prefix = prefix
        self._owns_client = owns_client

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._client.get(self._prefix + key)
        return value

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._client.set(self._prefix + key, value, px=max(1, int(ttl_s * 1000)))

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


class ResponseCache:
    def __init__(self, store: CacheStore, *, ttl_s: float, max_entry_bytes: int,
                 schemas: frozenset[str] = frozenset()) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.max_entry_bytes = max_entry_bytes
        self.schemas = schemas
        self._log = ThrottledLog()

    def key_for(self, principal: Principal, plan: ChatPlan, upstream_model: str) -> str | None:
        """The entry's key, or None when this request must not be cached."""
        policy = principal.policy
        schema = plan.schema
        if plan.stream or not plan.checked or schema is None:
            return None
        if not (policy.cache or (not schema.adhoc and schema.name in self.schemas)):
            return None
        body = plan.body
        temperature = body.get("temperature")
        seed = body.get("seed")
        greedy = type(temperature) in (int, float) and temperature == 0
        seeded = policy.cache_seeded and type(seed) is int
        if not (greedy or seeded):
            return None
        client = {k: v for k, v in body.items() if k not in _DELIVERY_FIELDS}
        try:
            text = orjson.dumps([upstream_model, schema.ref, client],
                                option=orjson.OPT_SORT_KEYS)
        except TypeError:  # a value orjson cannot encode (a huge int): not cacheable
            return None
        digest = hashlib.sha256(text)
        digest.update(b"\0" + schema.schema_json)
        return digest.hexdigest()

    async def get(self, key: str) -> dict[str, Any] | None:
        try:
            raw = await self.store.get(key)
        except _ERRORS as exc:
            self._log.warning("response cache unreachable (%r): a miss", exc)
            return None
        if raw is None:
            return None
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None

    async def put(self, key: str, response: dict[str, Any], outcome: str) -> None:
        if outcome not in ACCEPTED:
            return
        raw = orjson.dumps({"response": response, "outcome": outcome})
        if len(raw) > self.max_entry_bytes:
            return
        try:
            await self.store.put(key, raw, self.ttl_s)
        except _ERRORS as exc:
            self._log.warning("response cache unreachable (%r): answer not stored", exc)

    async def aclose(self) -> None:
        await self.store.aclose()


def fresh_copy(response: dict[str, Any]) -> dict[str, Any]:
    """A cached answer as a new completion: its own id and creation time."""
    return {**response, "id": "chatcmpl-" + os.urandom(12).hex(), "created": int(time.time())}


def build_cache(settings: Settings) -> ResponseCache | None:
    if settings.cache_backend == "off":
        return None
    store: CacheStore
    if settings.cache_backend == "redis":
        if not settings.redis_url:
            raise ValueError("IRGW_CACHE_BACKEND is 'redis' but IRGW_REDIS_URL is not set")
        from gateway.access.redisconn import redis_client

        store = RedisCache(redis_client(settings.redis_url), settings.cache_redis_prefix,
                           owns_client=True)
    else:
        store = MemoryCache(settings.cache_max_entries)
    return ResponseCache(store, ttl_s=settings.cache_ttl_s,
                         max_entry_bytes=settings.cache_max_entry_bytes,
                         schemas=frozenset(settings.cache_schemas))
