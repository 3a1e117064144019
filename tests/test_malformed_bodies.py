"""Bodies the gateway cannot use are clean errors, never a 500 or a dropped connection
(issue 17: 11, a request nested deeper than orjson writes; 12, malformed upstream answers)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests import openai_spec
from tests.fake_upstream import FakeUpstream, RawBody, RawStream, Reply
from tests.sse import read_events

CHAT = {"model": "qwen-coder", "messages": [{"role": "user", "content": "x"}]}
CHECKED = {**CHAT, "response_format": {"type": "json_object"}}


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [256, 600, 1020])
@pytest.mark.parametrize(("path", "where"), [
    ("/v1/chat/completions", "message"),
    ("/v1/chat/completions", "extra"),
    ("/v1/completions", "prompt"),
])
async def test_a_body_nested_past_what_can_be_written_is_a_400(
        client: httpx.AsyncClient, fake: FakeUpstream, path: str, where: str,
        depth: int) -> None:
    # orjson reads 1024 levels and writes 255: the body read, then failed on its way to
    # vLLM (a 500, which the openai client retries twice).
    body: dict[str, Any]
    if where == "message":
        body = {**CHAT, "messages": [{"role": "user", "content": nested(depth)}]}
    elif where == "extra":
        body = {**CHAT, "vendor_extension": nested(depth)}
    else:
        body = {"model": "qwen-coder", "prompt": nested(depth)}
    response = await client.post(path, content=_dumps_deep(body))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "nested_too_deeply"
    assert fake.requests == []


async def test_a_body_nested_as_deep_as_can_be_written_still_goes_through(
        client: httpx.AsyncClient, fake: FakeUpstream) -> None:
    body = {**CHAT, "vendor_extension": nested(250), "more": [[1]] * 300}
    response = await client.post("/v1/chat/completions", content=_dumps_deep(body))
    assert response.status_code == 200, response.text


def _dumps_deep(value: Any) -> bytes:
    # httpx's json= uses the standard library, whose recursion limit is near these depths.
    import sys
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    try:
        import json
        return json.dumps(value).encode()
    finally:
        sys.setrecursionlimit(limit)


# -- 12: malformed upstream answers


def _answer(**choice: Any) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", **choice}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("content is a number", _answer(message={"content": 42}), "'content'"),
    ("content is an object", _answer(message={"content": {"a": 1}}), "'content'"),
    ("message is a string", _answer(message="hi"), "'message'"),
    ("choices is an object", {"choices": {"0": {}}}, "'choices'"),
    ("a choice is a string", {"choices": ["hi"]}, "each choice"),
    ("usage is a string", {**_answer(message={"content": "{}"}), "usage": "lots"},
     "'usage'"),
    ("usage counts are strings", {**_answer(message={"content": "{}"}),
                                  "usage": {"prompt_tokens": "1", "completion_tokens": 1}},
     "usage.prompt_tokens"),
    ("finish_reason is a list", _answer(message={"content": "{}"}, finish_reason=["stop"]),
     "'finish_reason'"),
    ("tool_calls is a string", _answer(message={"content": "{}", "tool_calls": "f"}),
     "'tool_calls'"),
    ("index is a string", {"choices": [{"index": "0", "message": {"content": "{}"}}]},
     "'index'"),
]


@pytest.mark.parametrize("checked", [False, True], ids=["unchecked", "checked"])
@pytest.mark.parametrize(("why", "answer", "named"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_a_malformed_answer_is_a_502_naming_the_cause(
        client: httpx.AsyncClient, fake: FakeUpstream, why: str, answer: dict[str, Any],
        named: str, checked: bool) -> None:
    fake.script(RawBody(answer))
    response = await client.post("/v1/chat/completions", json=CHECKED if checked else CHAT)
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "upstream_error" and named in error["message"]
    openai_spec.validate("ErrorResponse", response.json())


@pytest.mark.parametrize("answer", [{"choices": {"0": {}}}, {"choices": [{"text": 5}]},
                                    {"choices": [{"text": "{}"}], "usage": []}])
async def test_a_malformed_completion_is_a_502(
        client: httpx.AsyncClient, fake: FakeUpstream, answer: dict[str, Any]) -> None:
    fake.script(RawBody(answer))
    response = await client.post("/v1/completions", json={"model": "qwen-coder",
                                                           "prompt": "x"})
    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_error"


def _chunk(**choice: Any) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": None, **choice}]}


STREAMED: list[tuple[str, list[Any]]] = [
    ("content is a number", [_chunk(delta={"content": 42})]),
    ("delta is a list", [_chunk(delta=["x"])]),
    ("choices is a string", [{"choices": "x"}]),
    ("a choice is a number", [{"choices": [1]}]),
    ("usage is a list", [{"choices": [], "usage": [1]}]),
    ("finish_reason is an object", [_chunk(delta={}, finish_reason={"x": 1})]),
]


@pytest.mark.parametrize("checked", [False, True], ids=["unchecked", "checked"])
@pytest.mark.parametrize(("why", "events"), STREAMED, ids=[s[0] for s in STREAMED])
async def test_a_malformed_stream_ends_with_an_error_event(
        client: httpx.AsyncClient, fake: FakeUpstream, why: str, events: list[Any],
        checked: bool) -> None:
    fake.script(RawStream([_chunk(delta={"role": "assistant", "content": ""}), *events]))
    body = {**(CHECKED if checked else CHAT), "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        received, _ = await read_events(response)
    assert received[-1] == "[DONE]"
    assert received[-2]["error"]["code"] == "upstream_error"
    assert "malformed" in received[-2]["error"]["message"]


async def test_a_malformed_completion_stream_ends_with_an_error_event(
        client: httpx.AsyncClient, fake: FakeUpstream) -> None:
    fake.script(RawStream([{"choices": [{"text": "a", "finish_reason": None}]},
                           {"choices": "oops"}]))
    body = {"model": "qwen-coder", "prompt": "x", "stream": True}
    async with client.stream("POST", "/v1/completions", json=body) as response:
        received, _ = await read_events(response)
    assert received[-1] == "[DONE]" and received[-2]["error"]["code"] == "upstream_error"


async def test_well_formed_answers_still_pass(client: httpx.AsyncClient,
                                              fake: FakeUpstream) -> None:
    fake.script(Reply('{"a": 1}', usage={"prompt_tokens": 3, "completion_tokens": 2,
                                         "total_tokens": 5}))
    response = await client.post("/v1/chat/completions", json=CHECKED)
    assert response.status_code == 200 and response.json()["usage"]["total_tokens"] == 5
