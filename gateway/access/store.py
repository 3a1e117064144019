"""The key store interface both backends implement, and the choice between them.

`get` is what every request calls: it must answer from memory (the file store at most
stats its file, four times a second). Everything else is for the CLI and the admin API.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from gateway.access.keys import KeyStore
from gateway.access.records import KeyPolicy, KeyRecord, KeyStoreError
from gateway.settings import Settings


class KeyLookup(Protocol):
    def get(self, key_id: str) -> KeyRecord | None: ...


class KeyBackend(KeyLookup, Protocol):
    describe: str

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def list(self) -> list[KeyRecord]: ...

    async def fetch(self, key_id: str) -> KeyRecord | None: ...

    async def create(self, name: str, policy: KeyPolicy | None = None, *,
                     expires_at: datetime | None = None) -> tuple[KeyRecord, str]: ...

    async def revoke(self, key_id: str) -> KeyRecord: ...

    async def rotate(self, key_id: str, grace_s: float) -> tuple[KeyRecord, str]: ...


class FileKeys:
    """The JSON keys file behind the store interface. Its writes are short and local (a lock,
    a write, an fsync), so they run inline: only admins make them."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self.describe = f"keys file {store.path}"

    def get(self, key_id: str) -> KeyRecord | None:
        return self.store.get(key_id)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def list(self) -> list[KeyRecord]:
        return self.store.list()

    async def fetch(self, key_id: str) -> KeyRecord | None:
        return self.store.get(key_id)

    async def create(self, name: str, policy: KeyPolicy | None = None, *,
                     expires_at: datetime | None = None) -> tuple[KeyRecord, str]:
        return self.store.create(name, policy, expires_at=expires_at)

    async def revoke(self, key_id: str) -> KeyRecord:
        return self.store.revoke(key_id)

    async def rotate(self, key_id: str, grace_s: float) -> tuple[KeyRecord, str]:
        return self.store.rotate(key_id, grace_s)


def as_backend(store: KeyLookup) -> KeyBackend | None:
    """The store as a full backend, if it is one (a bare KeyStore is wrapped)."""
    if isinstance(store, KeyStore):
        return FileKeys(store)
    return store if hasattr(store, "rotate") else None  # type: ignore[return-value]


def build_key_backend(settings: Settings, *, create: bool = False) -> KeyBackend:
    """The configured store. The Redis one loads its keys in `start()`."""
    if settings.keys_backend == "redis":
        if not settings.redis_url:
            raise KeyStoreError("IRGW_KEYS_BACKEND is 'redis' but IRGW_REDIS_URL is not set")
        from gateway.access.redis_keys import RedisKeyStore

        return RedisKeyStore.from_url(settings.redis_url, prefix=settings.keys_redis_prefix,
                                      refresh_s=settings.keys_refresh_s)
    if settings.keys_file is None:
        raise KeyStoreError("no keys file: set IRGW_KEYS_FILE (or pass --keys-file), or use "
                            "IRGW_KEYS_BACKEND=redis with IRGW_REDIS_URL")
    return FileKeys(KeyStore(settings.keys_file, create=create))
