"""An ad-hoc schema is compiled off the event loop: within the caps a compile still takes
seconds of Python (a oneOf of 2,400 members: ~3 s here), and every other request, /healthz
included, must go on meanwhile."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest

from gateway.output import adhoc
from tests.conftest import unit_settings
from tests.fake_upstream import FakeUpstream, Reply
from tests.gateway_server import running_gateway
from tests.test_adhoc_admission import SMALL, adhoc_body


async def test_other_requests_are_answered_while_an_adhoc_schema_compiles(
        fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    started, release = threading.Event(), threading.Event()
    released_while_compiling: list[bool] = []
    real = adhoc.adhoc_schema

    def gated(*args: Any) -> Any:
        # Held until the test, on the loop, has had /healthz answered (a hang guard of
        # 10 s: a compile on the loop keeps the test from ever getting there).
        started.set()
        released_while_compiling.append(release.wait(10))
        return real(*args)

    monkeypatch.setattr(adhoc, "adhoc_schema", gated)
    fake.default = Reply('{"a": 1}')
    async with running_gateway(unit_settings(fake.url)) as gw, httpx.AsyncClient(
            base_url=gw.url, timeout=30) as client:
        request = asyncio.create_task(client.post("/v1/chat/completions",
                                                  json=adhoc_body(SMALL)))
        assert await asyncio.to_thread(started.wait, 10)
        health = await client.get("/healthz")
        release.set()
        response = await request
    assert health.status_code == 200
    assert response.status_code == 200, response.text
    assert released_while_compiling == [True]


def test_an_adhoc_schema_is_read_for_the_engine_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # The engine rules walk every node in Python (most of a compile's time): once gives
    # both the grammar vLLM is sent and the warnings; twice doubled the compile.
    from gateway.output import registry

    calls: list[Any] = []
    real = registry.analyse

    def counting(schema: Any) -> Any:
        calls.append(schema)
        return real(schema)

    monkeypatch.setattr(registry, "analyse", counting)
    schema = {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 2}}}
    compiled = registry.adhoc_schema("M", schema, "repair")
    assert len(calls) == 1
    assert compiled.unenforced and "multipleOf" not in str(compiled.grammar)
