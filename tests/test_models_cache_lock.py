"""A cached model list is answered at once, even while another caller refreshes it: the
generation path (`schema/...` aliases ask for the default model) must not wait behind a
`/v1/models` refresh that vLLM is slow to answer (it retries connecting through a restart
for IRGW_CONNECT_DEADLINE_S)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.settings import Settings
from gateway.upstream.client import UpstreamClient


async def test_a_cached_model_list_does_not_wait_for_a_refresh(
        monkeypatch: pytest.MonkeyPatch) -> None:
    client = UpstreamClient(Settings(upstream_url="http://127.0.0.1:9", auth_enabled=False))
    answer = asyncio.Event()
    asked = asyncio.Event()

    async def slow_vllm(path: str, **_: Any) -> Any:  # vLLM restarting: no answer yet
        asked.set()
        await answer.wait()
        return {"data": [{"id": "new"}]}

    monkeypatch.setattr(client, "get_json", slow_vllm)
    answer.set()
    assert await client.model_ids() == ["new"]
    answer.clear()
    asked.clear()

    refresh = asyncio.create_task(client.model_ids(max_age_s=0))  # stale for this caller
    await asked.wait()
    cached = asyncio.create_task(client.model_ids())  # kept until forgotten: cached
    for _ in range(5):
        await asyncio.sleep(0)
    assert cached.done() and cached.result() == ["new"]
    answer.set()
    assert await refresh == ["new"]
