"""Usage per key, schema and UTC day: requests, tokens, outcomes; kept off the request path.

A request adds to a dict in memory when it is over (a few µs, after the answer is sent);
every `flush_s` the counts are written in one batch, to SQLite (one instance) or Redis (every
replica adds to the same counters), and once more when the gateway shuts down. A crash loses
at most the last `flush_s` of counts of that process. A flush that fails is kept and tried
again with the next one, up to `max_pending_rows` rows (then the oldest are dropped, logged).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any, Protocol

from gateway.background import Periodic

logger = logging.getLogger(__name__)

Row = tuple[str, str, str]  # (day, key id, schema)
Counts = dict[str, int]  # "requests", "prompt_tokens", ..., "outcome:<name>" -> count
TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


class UsageSink(Protocol):
    describe: str

    async def write(self, batch: dict[Row, Counts]) -> None: ...

    async def read(self, key_id: str | None, since: date) -> dict[Row, Counts]: ...

    async def aclose(self) -> None: ...


class UsageRecorder:
    def __init__(self, sink: UsageSink, *, flush_s: float = 2.0,
                 max_pending_rows: int = 10_000) -> None:
        self.sink = sink
        self.flush_s = flush_s
        self.max_pending_rows = max_pending_rows
        self._pending: dict[Row, Counts] = {}
        self._flusher = Periodic("usage flusher", self._flush_step, self.flush_s)
        self._lock = asyncio.Lock()
        self._failing = False

    def record(self, key_id: str | None, schema: str, outcome: str,
               usage: dict[str, int] | None, tokens: int | None = None) -> None:
        """One request, once it is over. `usage` is vLLM's (prompt/completion split); without
        it, `tokens` is what the request was charged (a failure after GPU work)."""
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        row = (day, key_id or "-", schema)
        counts = self._pending.get(row)
        if counts is None:
            if len(self._pending) >= self.max_pending_rows:
                self._drop_oldest()
            counts = self._pending[row] = {}
        counts["requests"] = counts.get("requests", 0) + 1
        outcome_field = f"outcome:{outcome}"
        counts[outcome_field] = counts.get(outcome_field, 0) + 1
        if usage is not None:
            for field in TOKEN_FIELDS:
                value = usage.get(field)
                if isinstance(value, int) and value > 0:
                    counts[field] = counts.get(field, 0) + value
        elif tokens:
            counts["total_tokens"] = counts.get("total_tokens", 0) + tokens

    def _drop_oldest(self) -> None:
        oldest = next(iter(self._pending))
        del self._pending[oldest]
        logger.error("usage: more than %d rows waiting to be written to %s; dropped the "
                     "counts of %s", self.max_pending_rows, self.sink.describe, oldest)

    async def start(self) -> None:
        self._flusher.start()

    async def _flush_step(self) -> None:
        await self.flush()

    async def flush(self) -> bool:
        """Write what is pending; False (and kept for the next flush) if the sink failed."""
        async with self._lock:
            batch, self._pending = self._pending, {}
            if not batch:
                return True
            try:
                await self.sink.write(batch)
            except Exception as exc:  # any sink failure: keep the counts, say so once
                for row, counts in batch.items():
                    merged = self._pending.setdefault(row, {})
                    for field, value in counts.items():
                        merged[field] = merged.get(field, 0) + value
                while len(self._pending) > self.max_pending_rows:
                    self._drop_oldest()
                if not self._failing:
                    logger.error("usage: cannot write to %s (%r); keeping %d rows to retry",
                                 self.sink.describe, exc, len(self._pending))
                self._failing = True
                return False
            if self._failing:
                logger.warning("usage: %s written again", self.sink.describe)
            self._failing = False
            return True

    async def report(self, key_id: str | None, since: date) -> list[dict[str, Any]]:
        """Rows from `since` on, oldest day first; this process's pending counts included."""
        await self.flush()
        return rows_of(await self.sink.read(key_id, since))

    async def aclose(self) -> None:
        """Stop flushing periodically, then flush what is left (shutdown)."""
        await self._flusher.stop()
        started = time.monotonic()
        if not await self.flush():
            logger.error("usage: %d rows could not be written at shutdown and are lost",
                         len(self._pending))
        logger.info("usage flushed at shutdown in %.3fs", time.monotonic() - started)
        await self.sink.aclose()


def rows_of(merged: dict[Row, Counts]) -> list[dict[str, Any]]:
    rows = []
    for (day, key_id, schema), counts in sorted(merged.items()):
        rows.append({
            "day": day, "key_id": key_id, "schema": schema,
            "requests": counts.get("requests", 0),
            **{field: counts.get(field, 0) for field in TOKEN_FIELDS},
            "outcomes": {name.removeprefix("outcome:"): value
                         for name, value in sorted(counts.items())
                         if name.startswith("outcome:")},
        })
    return rows


def add_into(target: dict[Row, Counts], rows: Iterable[tuple[Row, str, int]]) -> None:
    for row, field, value in rows:
        counts = target.setdefault(row, {})
        counts[field] = counts.get(field, 0) + value


def parse_since(text: str | None, *, default_days: int = 30) -> date:
    """`YYYY-MM-DD`, or the last `default_days` days."""
    if text is None:
        today = datetime.now(UTC).date()
        return date.fromordinal(today.toordinal() - default_days + 1)
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a date: {text!r} (use YYYY-MM-DD)") from None
