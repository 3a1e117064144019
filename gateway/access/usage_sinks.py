"""Where usage counts are kept: SQLite (one instance) or Redis (shared by every replica)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from contextlib import closing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from redis.asyncio import Redis

from gateway.access.usage import Counts, Row, UsageRecorder, add_into
from gateway.settings import Settings

# Each flush to Redis is applied once even if a dropped connection makes the client send it
# again: the batch id is claimed first (SET NX) in the same script.
_ADD = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) then return 0 end
for i = 3, #ARGV, 3 do
  local key = KEYS[tonumber(ARGV[i])]
  redis.call('HINCRBY', key, ARGV[i + 1], tonumber(ARGV[i + 2]))
  redis.call('EXPIRE', key, tonumber(ARGV[2]))
end
return 1
"""
_FIELDS_PER_CALL = 2000  # bounds one script's arguments; a bigger flush takes several calls
_MAX_REPORT_DAYS = 800


class SqliteUsage:
    """One row per (day, key, schema, field). Writes run in a thread: never on the loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.describe = f"usage database {path}"
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS usage (day TEXT NOT NULL, key_id TEXT NOT "
                       "NULL, schema TEXT NOT NULL, field TEXT NOT NULL, value INTEGER NOT NULL, "
                       "PRIMARY KEY (day, key_id, schema, field))")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")  # readers (the CLI) never block the writer
        return db

    def _write(self, batch: dict[Row, Counts]) -> None:
        # closing(): sqlite3's own context manager commits (the inner `db`) but never closes.
        with closing(self._connect()) as db, db:
            db.executemany(
                "INSERT INTO usage VALUES (?, ?, ?, ?, ?) ON CONFLICT (day, key_id, schema, "
                "field) DO UPDATE SET value = value + excluded.value",
                [(*row, field, value) for row, counts in batch.items()
                 for field, value in counts.items()])

    def _read(self, key_id: str | None, since: date) -> dict[Row, Counts]:
        query = "SELECT day, key_id, schema, field, value FROM usage WHERE day >= ?"
        args: list[str] = [since.isoformat()]
        if key_id is not None:
            query += " AND key_id = ?"
            args.append(key_id)
        merged: dict[Row, Counts] = {}
        with closing(self._connect()) as db:
            add_into(merged, (((d, k, s), f, v) for d, k, s, f, v in db.execute(query, args)))
        return merged

    async def write(self, batch: dict[Row, Counts]) -> None:
        await asyncio.to_thread(self._write, batch)

    async def read(self, key_id: str | None, since: date) -> dict[Row, Counts]:
        return await asyncio.to_thread(self._read, key_id, since)

    async def aclose(self) -> None:
        return None


class RedisUsage:
    """One hash per UTC day (`<prefix><day>`), fields `<key id>|<schema>|<field>`."""

    def __init__(self, client: Redis, *, prefix: str = "irgw:usage:",
                 retention_days: int = 400, owns_client: bool = False) -> None:
        self._client = client
        self._prefix = prefix
        self._retention_s = retention_days * 86400
        self._owns_client = owns_client
        self._add = client.register_script(_ADD)
        self.describe = f"Redis ({prefix}*)"

    async def write(self, batch: dict[Row, Counts]) -> None:
        items = [(f"{self._prefix}{day}", f"{key_id}|{schema}|{field}", value)
                 for (day, key_id, schema), counts in batch.items()
                 for field, value in counts.items()]
        for start in range(0, len(items), _FIELDS_PER_CALL):
            chunk = items[start:start + _FIELDS_PER_CALL]
            keys = sorted({key for key, _, _ in chunk})
            index = {key: i + 2 for i, key in enumerate(keys)}  # KEYS[1] is the batch id
            args: list[str | int] = [3600, self._retention_s]
            for key, field, value in chunk:
                args += [index[key], field, value]
            batch_id = f"{self._prefix}batch:{uuid.uuid4().hex}"
            await self._add(keys=[batch_id, *keys], args=args)

    async def read(self, key_id: str | None, since: date) -> dict[Row, Counts]:
        today = datetime.now(UTC).date()
        days = min((today - since).days + 1, _MAX_REPORT_DAYS)
        merged: dict[Row, Counts] = {}
        for offset in range(max(0, days)):
            day = (since + timedelta(days=offset)).isoformat()
            raw = await self._client.hgetall(f"{self._prefix}{day}")
            entries = []
            for name, value in raw.items():
                owner, rest = name.decode().split("|", 1)
                schema, field = rest.rsplit("|", 1)
                if key_id is None or owner == key_id:
                    entries.append(((day, owner, schema), field, int(value)))
            add_into(merged, entries)
        return merged

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


def build_sink(settings: Settings) -> SqliteUsage | RedisUsage | None:
    if settings.usage_backend == "off":
        return None
    if settings.usage_backend == "redis":
        if not settings.redis_url:
            raise ValueError("IRGW_USAGE_BACKEND is 'redis' but IRGW_REDIS_URL is not set")
        from gateway.access.redisconn import redis_client

        return RedisUsage(redis_client(settings.redis_url), prefix=settings.usage_redis_prefix,
                          retention_days=settings.usage_retention_days, owns_client=True)
    if settings.usage_file is None:
        raise ValueError("IRGW_USAGE_BACKEND is 'sqlite' but IRGW_USAGE_FILE is not set")
    return SqliteUsage(settings.usage_file)


def build_usage(settings: Settings) -> UsageRecorder | None:
    sink = build_sink(settings)
    if sink is None:
        return None
    return UsageRecorder(sink, flush_s=settings.usage_flush_s,
                         max_pending_rows=settings.usage_max_pending_rows)
