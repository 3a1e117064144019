"""Streaming through the gateway: relayed as it arrives, checked at the end."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from tests import openai_spec
from tests.conftest import unit_settings
from tests.fake_upstream import CrashMidStream, FakeUpstream, Reply, SlowStream, StreamError
from tests.gateway_server import running_gateway
from tests.ir_samples import BAD_NAME, FUNCTION_IR, RAW_CONTROL, TRUNCATED, VALID
from tests.sse import assembled_content, read_events

BODY: dict[str, Any] = {
    "model": "schema/function_ir",
    "messages": [{"role": "user", "content": "IR for add"}],
    "stream": True,
}


async def stream(client: httpx.AsyncClient, **extra: Any) -> tuple[httpx.Response, list[Any],
                                                                    list[str]]:
    async with client.stream("POST", "/v1/chat/completions", json={**BODY, **extra}) as response:
        events, comments = await read_events(response)
    return response, events, comments


async def test_valid_stream_reassembles_and_conforms(client: httpx.AsyncClient,
                                                     fake: FakeUpstream) -> None:
    fake.script(Reply(VALID, chunk_size=7))
    response, events, comments = await stream(client, stream_options={"include_usage": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-irgw-schema"] == "function_ir@1"
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for chunk in chunks:
        openai_spec.validate("CreateChatCompletionStreamResponse", chunk)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert json.loads(assembled_content(chunks)) == FUNCTION_IR
    assert "irgw-output passed" in comments
    # vLLM gets include_usage always (for token settlement), the client only when asked.
    assert fake.requests[-1].json["stream_options"] == {"include_usage": True}


async def test_usage_chunk_only_when_asked(client: httpx.AsyncClient, fake: FakeUpstream) -> None:
    fake.script(Reply(VALID))
    _, events, _ = await stream(client)
    assert all(e == "[DONE]" or e["choices"] for e in events)
    assert all(e == "[DONE]" or "usage" not in e for e in events)


async def test_chunks_are_relayed_as_they_arrive(client: httpx.AsyncClient,
                                                 fake: FakeUpstream) -> None:
    fake.script(SlowStream(0.15, Reply(VALID, chunk_size=20)))
    started = time.monotonic()
    arrivals: list[float] = []
    async with client.stream("POST", "/v1/chat/completions", json=BODY) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic() - started)
    # Never buffered whole: the first content arrives long before the last.
    assert len(arrivals) > 5
    assert arrivals[1] < arrivals[-1] - 0.5


async def test_stream_that_fails_the_schema_ends_with_an_error_event(
    client: httpx.AsyncClient, fake: FakeUpstream,
) -> None:
    fake.script(Reply(BAD_NAME))
    response, events, _ = await stream(client)
    assert response.status_code == 200
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert error["code"] == "output_validation_failed"
    assert error["pointer"] == "/signature/name"
    openai_spec.validate("ErrorResponse", events[-2])
    # The finish chunk was held back: nothing claims the answer finished normally.
    assert not any(isinstance(e, dict) and e.get("choices") and e["choices"][0]["finish_reason"]
                   for e in events[:-2])


async def test_a_failed_stream_still_reports_its_usage_when_asked(
    client: httpx.AsyncClient, fake: FakeUpstream,
) -> None:
    fake.script(Reply(BAD_NAME))
    _, events, _ = await stream(client, stream_options={"include_usage": True})
    assert events[-1] == "[DONE]" and "error" in events[-2]
    usage = events[-3]  # the tokens are charged all the same: the client learns how many
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    openai_spec.validate("CreateChatCompletionStreamResponse", usage)


async def test_truncated_stream_is_reported_as_truncated(client: httpx.AsyncClient,
                                                         fake: FakeUpstream) -> None:
    fake.script(Reply(TRUNCATED, finish_reason="length"))
    _, events, _ = await stream(client, max_tokens=12)
    assert events[-2]["error"]["code"] == "output_truncated"
    assert not any(isinstance(e, dict) and e.get("choices")
                   and e["choices"][0]["finish_reason"] == "stop" for e in events)


async def test_raw_control_characters_are_repaired_in_flight(client: httpx.AsyncClient,
                                                              fake: FakeUpstream) -> None:
    fake.script(Reply(RAW_CONTROL, chunk_size=5))
    _, events, comments = await stream(client)
    assert events[-1] == "[DONE]"
    document = json.loads(assembled_content(events[:-1]))  # strict parse of what the client got
    assert document["intent"]["summary"] == "Add two\nintegers.\t"
    assert "irgw-output repaired" in comments


async def test_error_policy_stream_refuses_raw_control(fake: FakeUpstream) -> None:
    async with running_gateway(unit_settings(fake.url, output_policy="error")) as gw, \
            httpx.AsyncClient(base_url=gw.url) as client:
        fake.script(Reply(RAW_CONTROL))
        _, events, _ = await stream(client)
    assert events[-2]["error"]["code"] == "output_validation_failed"


async def test_upstream_error_inside_the_stream_is_relayed(client: httpx.AsyncClient,
                                                           fake: FakeUpstream) -> None:
    fake.script(StreamError(after_chunks=2))
    _, events, _ = await stream(client)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["type"] == "upstream_error"
    openai_spec.validate("ErrorResponse", events[-2])


async def test_upstream_crash_mid_stream_ends_with_an_error(client: httpx.AsyncClient,
                                                            fake: FakeUpstream) -> None:
    fake.script(CrashMidStream(after_chunks=3, then=Reply(VALID)))
    _, events, _ = await stream(client)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "upstream_error"


async def test_unchecked_stream_passes_through(client: httpx.AsyncClient,
                                               fake: FakeUpstream) -> None:
    fake.script(Reply("just some prose", chunk_size=3))
    _, events, _ = await stream(client, model="qwen-coder")
    assert assembled_content(events[:-1]) == "just some prose"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


async def _disconnect_midway(url: str, body: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        try:
            await asyncio.wait_for(client.post("/v1/chat/completions", json=body), timeout=0.3)
        except TimeoutError:
            pass


@pytest.mark.parametrize("own_protocol", [True, False],
                         ids=["gateway-protocol", "other-server"])
async def test_client_disconnect_cancels_the_upstream_call(fake: FakeUpstream,
                                                           own_protocol: bool) -> None:
    # Under `ir-gateway serve` the connection itself signals the disconnect; under another
    # ASGI server a watcher task notices it through receive(). Both must cancel vLLM.
    from tests.fake_upstream import Slow

    async with running_gateway(unit_settings(fake.url), own_protocol=own_protocol) as gateway:
        fake.script(Slow(5.0, then=Reply(VALID)))
        await _disconnect_midway(gateway.url, {**BODY, "stream": False})
        await fake.wait_cancelled(1, within_s=3)

        fake.script(SlowStream(0.5, then=Reply(VALID, chunk_size=2)))
        await _disconnect_midway(gateway.url, BODY)
        await fake.wait_cancelled(2, within_s=3)

        # Gone before vLLM's first bytes (it is slow to answer, or still booting): the
        # stream is not even opened for a client who left.
        fake.script(Slow(10.0, then=SlowStream(0.5, then=Reply(VALID))))
        await _disconnect_midway(gateway.url, BODY)
        await fake.wait_cancelled(3, within_s=3)

        # The connection that went away cancels nothing else: later requests are answered.
        fake.script(Reply(VALID))
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            response = await client.post("/v1/chat/completions", json={**BODY, "stream": False})
        assert response.status_code == 200
        assert response.headers["x-irgw-output"] == "passed"




COMPLETION: dict[str, Any] = {"model": "qwen-coder", "prompt": "def add(a, b):", "stream": True}


async def stream_completion(client: httpx.AsyncClient,
                            **extra: Any) -> tuple[httpx.Response, list[Any]]:
    async with client.stream("POST", "/v1/completions", json={**COMPLETION, **extra}) as response:
        events, _ = await read_events(response)
    return response, events


@pytest.mark.parametrize("asked", [True, False])
async def test_unchecked_completion_stream_carries_usage_only_when_asked(
        client: httpx.AsyncClient, fake: FakeUpstream, asked: bool) -> None:
    fake.script(Reply(" return a + b", chunk_size=4))
    extra = {"stream_options": {"include_usage": True}} if asked else {}
    response, events = await stream_completion(client, **extra)
    assert response.status_code == 200 and events[-1] == "[DONE]"
    assert "".join(c["text"] for e in events[:-1] for c in e["choices"]) == " return a + b"
    usage = [e for e in events[:-1] if "usage" in e]
    if asked:
        assert len(usage) == 1 and usage[0]["choices"] == []
        assert usage[0]["usage"]["total_tokens"] > 0
    else:
        assert usage == []
    # vLLM is asked for usage either way: the key's token limit settles on it.
    assert fake.requests[-1].json["stream_options"]["include_usage"] is True


@pytest.mark.parametrize("failure", [
    CrashMidStream(after_chunks=2, then=Reply(" return a + b", chunk_size=2)),
    StreamError(after_chunks=2),
    StreamError(after_chunks=2, done=False),
])
async def test_unchecked_completion_stream_that_fails_upstream_ends_with_an_error(
        client: httpx.AsyncClient, fake: FakeUpstream, failure: Any) -> None:
    fake.script(failure)
    response, events = await stream_completion(client)
    assert response.status_code == 200 and events[-1] == "[DONE]"
    assert events[-2]["error"]["type"] == "upstream_error"
    openai_spec.validate("ErrorResponse", events[-2])
    assert all("error" not in e for e in events[:-2])  # what came before is vLLM's text


# -- forced tool calls and request ids, streamed


def _forced_tool(name: str, parameters: dict[str, Any] | None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if parameters is not None:
        function["parameters"] = parameters
    return {"model": "qwen-coder", "tools": [{"type": "function", "function": function}],
            "tool_choice": "required"}


CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
        "additionalProperties": False}


@pytest.mark.parametrize(("name", "parameters", "answer", "pointer"), [
    ("get_weather", CITY, '{"town": "Paris"}', ""),  # the tool's own parameters
    ("function_ir", None, BAD_NAME, "/signature/name"),  # a registered schema by name
], ids=["parameters", "registered"])
async def test_streamed_forced_tool_call_arguments_are_checked_against_its_schema(
    client: httpx.AsyncClient, fake: FakeUpstream, name: str, parameters: Any, answer: str,
    pointer: str,
) -> None:
    # JSON objects both, so only the tool's schema can refuse them.
    fake.script(Reply(answer, chunk_size=4))
    response, events, _ = await stream(client, **_forced_tool(name, parameters))
    assert response.status_code == 200 and events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert error["code"] == "output_validation_failed" and error["pointer"] == pointer
    openai_spec.validate("ErrorResponse", events[-2])
    assert not any(isinstance(e, dict) and e.get("choices") and e["choices"][0]["finish_reason"]
                   for e in events[:-2])
    # The same stream with a conforming answer ends as a finished tool call.
    fake.script(Reply('{"city": "Paris"}' if parameters else VALID, chunk_size=4))
    _, events, _ = await stream(client, **_forced_tool(name, parameters))
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_a_stream_passes_the_request_id_to_vllm(
    client: httpx.AsyncClient, fake: FakeUpstream, path: str,
) -> None:
    body = BODY if path == "/v1/chat/completions" else COMPLETION
    for given in ("trace-stream-7", None):
        fake.script(Reply(VALID, chunk_size=9))
        headers = {"x-request-id": given} if given else {}
        async with client.stream("POST", path, json=body, headers=headers) as response:
            events, _ = await read_events(response)
        assert events[-1] == "[DONE]" and "error" not in events[-2]
        sent = fake.requests[-1].headers.get("x-request-id")
        # One id in the client's answer and in vLLM's log: given, or the gateway's own.
        assert sent is not None and sent == response.headers["x-request-id"]
        assert sent == given if given else sent.startswith("req_")
