"""Usage accounting: counted off the request path, written in batches, flushed on shutdown,
read back after a restart (SQLite) and summed over two replicas (Redis)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.access.keys import KeyPolicy, KeyStore
from gateway.access.redisconn import redis_client
from gateway.access.usage import UsageRecorder, parse_since
from gateway.access.usage_sinks import RedisUsage, SqliteUsage
from gateway.cli import main
from tests.conftest import unit_settings
from tests.fake_upstream import FakeUpstream, Reply
from tests.gateway_server import gateway_process, running_gateway
from tests.ir_samples import BAD_NAME, RAW_CONTROL, VALID
from tests.redis_server import redis_server, redis_url  # noqa: F401  (fixtures)

BODY = {"model": "schema/function_ir", "messages": [{"role": "user", "content": "add"}],
        "max_tokens": 50}
USED = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
TODAY = datetime.now(UTC).date()


class BrokenSink:
    describe = "a sink that fails"

    def __init__(self) -> None:
        self.fail = True
        self.written: list[Any] = []

    async def write(self, batch: Any) -> None:
        if self.fail:
            raise OSError("disk full")
        self.written.append(batch)

    async def read(self, key_id: str | None, since: date) -> Any:
        return {}

    async def aclose(self) -> None:
        return None


async def test_a_failed_flush_keeps_the_counts_within_a_bound() -> None:
    sink = BrokenSink()
    recorder = UsageRecorder(sink, max_pending_rows=2)  # type: ignore[arg-type]
    recorder.record("k1", "s", "passed", USED)
    assert not await recorder.flush()
    recorder.record("k1", "s", "passed", USED)
    recorder.record("k2", "s", "failed", None, tokens=5)
    recorder.record("k3", "s", "passed", None)  # a third row: the oldest (k1) goes
    sink.fail = False
    assert await recorder.flush()
    (written,) = sink.written
    assert {row[1] for row in written} == {"k2", "k3"}
    assert written[(str(TODAY), "k2", "s")] == {"requests": 1, "outcome:failed": 1,
                                                 "total_tokens": 5}


async def test_sqlite_adds_batches_up(tmp_path: Path) -> None:
    recorder = UsageRecorder(SqliteUsage(tmp_path / "usage.db"))
    for outcome in ("passed", "repaired", "passed"):
        recorder.record("k1", "function_ir@1", outcome, USED)
        await recorder.flush()
    recorder.record("k2", "-", "passthrough", USED)
    (row,) = await recorder.report("k1", parse_since(None))
    assert row == {"day": str(TODAY), "key_id": "k1", "schema": "function_ir@1", "requests": 3,
                   "prompt_tokens": 33, "completion_tokens": 21, "total_tokens": 54,
                   "outcomes": {"passed": 2, "repaired": 1}}
    assert len(await recorder.report(None, TODAY)) == 2
    assert await recorder.report(None, date.fromordinal(TODAY.toordinal() + 1)) == []
    await recorder.aclose()


def _settings(fake: FakeUpstream, tmp_path: Path, **overrides: Any) -> Any:
    return unit_settings(fake.url, auth_enabled=True, keys_file=tmp_path / "keys.json",
                         **overrides)


async def test_usage_survives_a_restart_and_reads_over_http_and_cli(
        fake: FakeUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = KeyStore(tmp_path / "keys.json", create=True)
    user, key = store.create("team")
    _, admin = store.create("ops", KeyPolicy(scopes=["admin"]))
    # A flush interval far beyond the test: only the flush at shutdown writes.
    settings = _settings(fake, tmp_path, usage_backend="sqlite",
                         usage_file=tmp_path / "usage.db", usage_flush_s=60)
    headers = {"authorization": f"Bearer {key}"}
    async with running_gateway(settings) as gw, \
            httpx.AsyncClient(base_url=gw.url, headers=headers) as client:
        fake.script(Reply(VALID, usage=USED), Reply(RAW_CONTROL, usage=USED))
        assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 200
        assert (await client.post("/v1/chat/completions",
                                  json={**BODY, "model": "schema/function_ir@1"})
                ).status_code == 200  # repaired
        fake.script(Reply(BAD_NAME, usage=USED))
        assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 422
        fake.script(Reply(VALID, usage=USED))
        streamed = await client.post("/v1/chat/completions", json={**BODY, "stream": True})
        assert streamed.status_code == 200
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        response = await client.get("/admin/v1/usage", params={"key": user.id},
                                    headers={"authorization": f"Bearer {admin}"})
        assert response.status_code == 200, response.text
        rows = response.json()["data"]
        denied = await client.get("/admin/v1/usage", headers=headers)
        assert denied.status_code == 403
        bad = await client.get("/admin/v1/usage", params={"since": "yesterday"},
                               headers={"authorization": f"Bearer {admin}"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
    (row,) = rows
    assert row["key_id"] == user.id and row["schema"] == "function_ir@1"
    # The failed answer's tokens are charged whole (vLLM's split is not kept past the check).
    assert row["requests"] == 4 and row["prompt_tokens"] == 33 and row["total_tokens"] == 72
    assert row["outcomes"] == {"passed": 2, "repaired": 1, "failed": 1}

    code = await asyncio.to_thread(main, ["usage", "--backend", "sqlite", "--usage-file",
                                          str(tmp_path / "usage.db"), "--key", user.id])
    out = capsys.readouterr().out
    assert code == 0 and "REQUESTS" in out and user.id in out and "failed=1" in out


async def test_two_replicas_add_to_one_count_and_flush_when_stopped(
        fake: FakeUpstream, tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    fake.default = Reply(VALID, usage=USED)
    store = KeyStore(tmp_path / "keys.json", create=True)
    user, key = store.create("team")
    prefix = f"test:{uuid.uuid4().hex[:8]}:usage:"
    settings = _settings(fake, tmp_path, usage_backend="redis", redis_url=redis_url,
                         usage_redis_prefix=prefix, usage_flush_s=60)
    async with gateway_process(settings) as one, gateway_process(settings) as two, \
            httpx.AsyncClient(headers={"authorization": f"Bearer {key}"}) as client:
        for i in range(10):
            url = (one, two)[i % 2]
            assert (await client.post(f"{url}/v1/chat/completions", json=BODY)
                    ).status_code == 200
    # Both processes were stopped with SIGTERM: what each held was written as it stopped.
    sink = RedisUsage(redis_client(redis_url), prefix=prefix, owns_client=True)
    try:
        merged = await sink.read(user.id, TODAY)
    finally:
        await sink.aclose()
    assert merged == {(str(TODAY), user.id, "function_ir@1"): {
        "requests": 10, "outcome:passed": 10, "prompt_tokens": 110, "completion_tokens": 70,
        "total_tokens": 180}}
