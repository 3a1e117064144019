"""What request bodies may take: one (IRGW_MAX_REQUEST_BYTES) and all together
(IRGW_MAX_BODY_BYTES_IN_FLIGHT, gateway/server/body_budget.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import ValidationError

from gateway.settings import Settings
from tests.conftest import unit_settings
from tests.fake_upstream import FakeUpstream, Reply, Slow
from tests.gateway_server import running_gateway


def _chat(size: int) -> bytes:
    body = json.dumps({"model": "qwen-coder", "messages": [{"role": "user", "content": ""}]})
    return body.replace('"content": ""', '"content": "' + "x" * (size - len(body)) + '"').encode()


async def _in_pieces(body: bytes) -> AsyncIterator[bytes]:  # no content-length: chunked
    for start in range(0, len(body), 1000):
        yield body[start:start + 1000]


async def test_bodies_in_progress_share_one_budget(fake: FakeUpstream) -> None:
    settings = unit_settings(fake.url, max_request_bytes=8000, max_body_bytes_in_flight=10_000)
    fake.script(Slow(1.0, then=Reply(content="first")))
    fake.default = Reply(content="later")
    async with running_gateway(settings) as gw, httpx.AsyncClient(
            base_url=gw.url, timeout=10) as client:
        budget = gw.app.services.body_budget
        first = asyncio.create_task(client.post("/v1/chat/completions", content=_chat(6000)))
        for _ in range(500):  # until the first request waits on vLLM, its body held
            if fake.requests:
                break
            await asyncio.sleep(0.01)
        assert budget.used == 6000

        # Declared or chunked, a body that does not fit beside it waits its turn: 503.
        for content in (_chat(6000), _in_pieces(_chat(6000))):
            refused = await client.post("/v1/chat/completions", content=content)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "body_budget_exhausted"
            assert refused.headers["retry-after"] == "1"
            assert "IRGW_MAX_BODY_BYTES_IN_FLIGHT" in refused.json()["error"]["message"]
        small = await client.post("/v1/chat/completions", content=_chat(3000))
        assert small.status_code == 200  # what fits still runs

        assert (await first).status_code == 200
        assert budget.used == 0  # every request gave back what it held, refused ones too
        for content in (_chat(6000), _in_pieces(_chat(6000))):
            again = await client.post("/v1/chat/completions", content=content)
            assert again.status_code == 200
        too_big = await client.post("/v1/chat/completions", content=_in_pieces(_chat(9000)))
        assert too_big.status_code == 413
        assert budget.used == 0


def test_body_limits_default_to_real_chat_use() -> None:
    settings = Settings()
    # A 128k-token prompt is ~512 KB; 8 MiB let eight bodies take 2 GB of Python objects.
    assert settings.max_request_bytes == 2 * 1024 * 1024
    assert settings.max_body_bytes_in_flight == 8 * settings.max_request_bytes
    with pytest.raises(ValidationError, match="max_body_bytes_in_flight"):
        Settings(max_request_bytes=4096, max_body_bytes_in_flight=2048)
