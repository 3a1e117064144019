"""An answer from vLLM that the gateway cannot write back (a value nested deeper than the
255 levels orjson writes) is a 502, and the request's slots are given back."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import unit_settings
from tests.fake_upstream import FakeUpstream, RawBody, RawStream, Reply
from tests.gateway_server import running_gateway
from tests.sse import read_events


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(("path", "body", "choice"), [
    ("/v1/chat/completions",
     {"model": "qwen-coder", "messages": [{"role": "user", "content": "x"}]},
     {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}),
    ("/v1/completions", {"model": "qwen-coder", "prompt": "x"},
     {"index": 0, "text": "hi", "finish_reason": "stop"}),
    ("/v1/completions", {"model": "qwen-coder", "prompt": "x", "stream": True,
                         "response_format": {"type": "json_object"}},
     {"index": 0, "text": "{}", "finish_reason": "stop"}),
])
async def test_an_unwritable_answer_is_a_502_and_frees_its_slot(
        fake: FakeUpstream, path: str, body: dict[str, Any], choice: dict[str, Any]) -> None:
    fake.script(RawBody({"id": _deep(300), "object": "x", "created": 1, "model": "m",
                         "choices": [choice]}))
    fake.default = Reply(content="{}")
    # One slot in all: a slot the first request kept would refuse the second.
    settings = unit_settings(fake.url, max_inflight=1, queue_size=1, queue_timeout_s=0.5)
    async with running_gateway(settings) as gw, httpx.AsyncClient(
            base_url=gw.url, timeout=10) as client:
        first = await client.post(path, json=body)
        assert first.status_code == 502, first.text
        assert first.json()["error"]["type"] == "upstream_error"
        assert first.headers["x-request-id"]
        second = await client.post(path, json=body)
        assert second.status_code == 200, second.text


def _chunk(choice: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "c", "object": "x", "created": 1, "model": "m", "choices": [choice], **extra}


@pytest.mark.parametrize(("path", "body", "events"), [
    ("/v1/chat/completions",
     {"model": "qwen-coder", "messages": [{"role": "user", "content": "x"}], "stream": True},
     [_chunk({"index": 0, "delta": {"role": "assistant", "content": "h"},
              "finish_reason": None}),
      _chunk({"index": 0, "delta": {"content": "i"}, "finish_reason": None}, id=_deep(300))]),
    ("/v1/chat/completions",  # checked: the last chunk is held back, then written
     {"model": "qwen-coder", "messages": [{"role": "user", "content": "x"}], "stream": True,
      "response_format": {"type": "json_object"}},
     [_chunk({"index": 0, "delta": {"role": "assistant", "content": "{}"},
              "finish_reason": None}),
      _chunk({"index": 0, "delta": {}, "finish_reason": "stop"}, id=_deep(300))]),
    ("/v1/completions", {"model": "qwen-coder", "prompt": "x", "stream": True},
     [_chunk({"index": 0, "text": "h", "finish_reason": None}, id=_deep(300))]),
])
async def test_an_unwritable_stream_event_ends_the_stream_with_an_error_event(
        fake: FakeUpstream, path: str, body: dict[str, Any], events: list[Any]) -> None:
    fake.script(RawStream(events))
    settings = unit_settings(fake.url, max_inflight=1, queue_size=1, queue_timeout_s=0.5)
    async with running_gateway(settings) as gw, httpx.AsyncClient(
            base_url=gw.url, timeout=10) as client:
        async with client.stream("POST", path, json=body) as response:
            assert response.status_code == 200
            received, _ = await read_events(response)
        assert received[-1] == "[DONE]", received
        assert received[-2]["error"]["type"] == "upstream_error", received
        assert gw.app.services.metrics.inflight == 0
