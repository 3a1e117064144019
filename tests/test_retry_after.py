"""Every 503 over HTTP says when to come back: `Retry-After` in whole seconds (RFC 9110
delay-seconds, what the openai client reads), on answered and streamed requests alike; and
coming back once the cause is gone is served. Checked on the status and headers a client
gets, never on a message's wording."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.access.keys import KeyPolicy, KeyStore
from tests.conftest import unit_settings
from tests.fake_upstream import FakeUpstream, Reply, Slow
from tests.gateway_server import running_gateway
from tests.ir_samples import VALID

BODY: dict[str, Any] = {"model": "schema/function_ir",
                        "messages": [{"role": "user", "content": "add"}]}


def assert_retry_after(response: httpx.Response) -> None:
    assert response.status_code == 503
    value = response.headers.get("retry-after", "")
    assert value.isdigit() and int(value) >= 1, value
    assert response.json()["error"]["type"]  # OpenAI-shaped, whatever it says


@pytest.mark.parametrize("stream", [False, True])
async def test_a_full_gateway_answers_503_with_retry_after_then_serves(
    fake: FakeUpstream, stream: bool,
) -> None:
    settings = unit_settings(fake.url, max_inflight=1, queue_size=0)
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        fake.script(Slow(1.0, then=Reply(VALID)))
        holder = asyncio.create_task(client.post("/v1/chat/completions", json=BODY))
        await fake.wait_requests(1)
        refused = await client.post("/v1/chat/completions", json={**BODY, "stream": stream})
        assert_retry_after(refused)
        assert len(fake.requests) == 1  # refused before vLLM
        assert (await holder).status_code == 200
        fake.script(Reply(VALID))
        again = await client.post("/v1/chat/completions", json={**BODY, "stream": stream})
        assert again.status_code == 200


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port  # closed again when this returns: nothing listens there


@pytest.mark.parametrize("stream", [False, True])
async def test_limits_that_cannot_be_checked_are_a_503_with_retry_after(
    fake: FakeUpstream, tmp_path: Path, stream: bool,
) -> None:
    store = KeyStore(tmp_path / "keys.json", create=True)
    _, key = store.create("limited", KeyPolicy(rpm=100))
    settings = unit_settings(
        fake.url, auth_enabled=True, keys_file=store.path, ratelimit_backend="redis",
        redis_url=f"redis://127.0.0.1:{_closed_port()}/0", redis_failure_policy="closed")
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        for _ in range(2):  # the first finds Redis down, the second the open circuit
            response = await client.post("/v1/chat/completions", json={**BODY, "stream": stream},
                                         headers={"authorization": f"Bearer {key}"})
            assert_retry_after(response)
    assert fake.requests == []
