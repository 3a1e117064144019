"""API keys in Redis: the `redis` key store, shared by every gateway replica.

Records live in one hash (id -> the record's JSON, hashes only: no secret is stored) and a
version counter goes up with every write. A replica serves requests from its own copy of
the hash and asks Redis for the version every `refresh_s`; when it moved, it reloads the
hash. So a request never waits for Redis, and a create, revoke or rotate made anywhere is
seen everywhere within `refresh_s` plus a round trip. Expiry and rotation grace are times in
the record, compared on every request: they need no write to take effect.

If Redis stops answering, a replica keeps serving the keys it last loaded (a revocation
made meanwhile waits for Redis to come back) and says so in its log, once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from gateway.access.records import (
    KeyNotFoundError,
    KeyPolicy,
    KeyRecord,
    KeyStoreError,
    generate_key,
    hash_secret,
    log_active_keys,
    revoke_record,
    rotate_record,
    utc_now,
)
from gateway.access.redisconn import redis_client
from gateway.background import Periodic

logger = logging.getLogger(__name__)
_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
# Concurrent admins racing on one key: retried this often before giving up (WATCH/MULTI).
_WRITE_ATTEMPTS = 20
T = TypeVar("T")
Change = Callable[[KeyRecord], tuple[KeyRecord, str]]


class RedisKeyStore:
    def __init__(self, client: Redis, *, prefix: str = "irgw:keys:", refresh_s: float = 0.25,
                 owns_client: bool = False) -> None:
        self._client = client
        self._hash = f"{prefix}records"
        self._version_key = f"{prefix}version"
        self.refresh_s = refresh_s
        self._owns_client = owns_client
        self._records: dict[str, KeyRecord] = {}
        self._version: bytes | None = None
        self._problem: str | None = None
        self.describe = f"Redis hash {self._hash}"
        self._follower = Periodic(f"key store follower ({self.describe})", self._follow_once,
                                  refresh_s)

    @classmethod
    def from_url(cls, url: str, **kwargs: object) -> RedisKeyStore:
        return cls(redis_client(url), owns_client=True, **kwargs)  # type: ignore[arg-type]

    # -- the request path: memory only

    def get(self, key_id: str) -> KeyRecord | None:
        return self._records.get(key_id)

    def cached(self) -> list[KeyRecord]:
        return sorted(self._records.values(), key=lambda r: (r.created_at, r.id))

    # -- keeping the copy current

    async def start(self) -> None:
        """Load every key (KeyStoreError if Redis cannot be reached), then follow changes."""
        try:
            await self.reload()
        except _ERRORS as exc:
            raise KeyStoreError(f"key store {self.describe}: Redis unreachable: {exc}") from None

        log_active_keys(self.describe, self.cached())
        self._follower.start()

    async def reload(self) -> bool:
        """Reload if the version moved; True if it did."""
        version = await self._client.get(self._version_key)
        if version is not None and version == self._version:
            return False
        raw = await self._client.hgetall(self._hash)
        records: dict[str, KeyRecord] = {}
        for key_id, text in raw.items():
            try:
                record = KeyRecord.model_validate_json(text)
            except ValidationError:
                # One bad entry (a hand edit) must not lock every other key out.
                logger.error("key store %s: the entry %r is not a valid key record; ignored",
                             self.describe, key_id)
                continue
            records[record.id] = record
        self._records, self._version = records, version
        return True

    async def _follow_once(self) -> None:
        try:
            if await self.reload():
                logger.info("keys reloaded from %s: %d keys", self.describe,
                            len(self._records))
            if self._problem is not None:
                logger.warning("key store %s answers again", self.describe)
                self._problem = None
        except _ERRORS as exc:
            problem = f"{type(exc).__name__}"
            if problem != self._problem:  # once per outage, not every interval
                self._problem = problem
                logger.error("key store %s unreachable (%r); still using the %d keys "
                             "loaded before", self.describe, exc, len(self._records))

    async def aclose(self) -> None:
        await self._follower.stop()
        if self._owns_client:
            await self._client.aclose()

    # -- reading and writing from Redis itself (the CLI, the admin API)

    async def list(self) -> list[KeyRecord]:
        await self._load_wrapped()
        return self.cached()

    async def fetch(self, key_id: str) -> KeyRecord | None:
        text = await self._call(self._client.hget(self._hash, key_id))
        return None if text is None else KeyRecord.model_validate_json(text)

    async def create(self, name: str, policy: KeyPolicy | None = None, *,
                     expires_at: datetime | None = None) -> tuple[KeyRecord, str]:
        if not name.strip():
            raise ValueError("a key needs a non-blank name")
        while True:
            key_id, secret, plaintext = generate_key()
            record = KeyRecord(id=key_id, name=name, secret_sha256=hash_secret(secret),
                               policy=policy or KeyPolicy(), created_at=utc_now(),
                               expires_at=expires_at)
            added = await self._call(
                self._client.hsetnx(self._hash, record.id, record.model_dump_json()))
            if added:
                break
        await self._call(self._client.incr(self._version_key))
        await self._load_wrapped()
        return record, plaintext

    async def revoke(self, key_id: str) -> KeyRecord:
        return (await self._update(key_id, revoke_record))[0]

    async def rotate(self, key_id: str, grace_s: float) -> tuple[KeyRecord, str]:
        return await self._update(key_id, lambda record: rotate_record(record, grace_s))

    async def _update(self, key_id: str, change: Change) -> tuple[KeyRecord, str]:
        for _ in range(_WRITE_ATTEMPTS):
            try:
                async with self._client.pipeline(transaction=True) as pipe:
                    await pipe.watch(self._hash)
                    text = await pipe.hget(self._hash, key_id)
                    if text is None:
                        raise KeyNotFoundError(f"no key with id {key_id!r} in {self.describe}")
                    before = KeyRecord.model_validate_json(text)
                    record, plaintext = change(before)
                    if record == before:
                        await pipe.unwatch()
                        return record, plaintext
                    pipe.multi()
                    pipe.hset(self._hash, key_id, record.model_dump_json())
                    pipe.incr(self._version_key)
                    await pipe.execute()
                    await self._load_wrapped()
                    return record, plaintext
            except WatchError:
                continue  # another write to the keys landed in between: read again
            except _ERRORS as exc:
                raise KeyStoreError(f"key store {self.describe}: {exc}") from None
        raise KeyStoreError(f"key store {self.describe}: too many concurrent writes; retry")

    async def _load_wrapped(self) -> None:
        await self._call(self.reload())

    async def _call(self, pending: Awaitable[T]) -> T:
        try:
            return await pending
        except _ERRORS as exc:
            raise KeyStoreError(f"key store {self.describe}: {exc}") from None
