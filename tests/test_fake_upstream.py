"""Proves the fake vLLM upstream (tests/fake_upstream.py) does what gateway tests rely on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fake_upstream import (
    VLLM_NULL_EXTRAS,
    CrashMidStream,
    ErrorReply,
    FakeUpstream,
    Garbage,
    Reply,
    Slow,
    SlowStream,
    StreamError,
    new_error_body,
    old_error_body,
)
from tests.openai_spec import errors, validate

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def chat_request(stream: bool = False, include_usage: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "qwen-coder",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
    }
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return body


def completion_request(stream: bool = False, include_usage: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "qwen-coder", "prompt": "hi", "stream": stream}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return body


async def read_sse(response: aiohttp.ClientResponse) -> tuple[list[str], Exception | None]:
    """All ``data:`` payloads, and the error that ended the stream early, if any."""
    payloads: list[str] = []
    try:
        async for raw in response.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("data: "):
                payloads.append(line.removeprefix("data: "))
            else:
                assert line == "", f"unexpected SSE line {line!r}"
    except aiohttp.ClientError as exc:
        return payloads, exc
    return payloads, None


async def post_sse(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[list[str], Exception | None]:
    async with session.post(url, json=body) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        return await read_sse(response)


async def test_version_and_models(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    async with session.get(fake.url + "/version") as response:
        assert await response.json() == {"version": "0.32.0"}
    fake.version = "0.10.0"
    async with session.get(fake.url + "/version") as response:
        assert await response.json() == {"version": "0.10.0"}
    async with session.get(fake.url + "/v1/models") as response:
        models = await response.json()
    validate("ListModelsResponse", models)
    assert [m["id"] for m in models["data"]] == ["qwen-coder"]
    async with session.get(fake.url + "/tokenize") as response:
        assert response.status == 404
        assert await response.json() == {"detail": "Not Found"}
    assert fake.hits == {"/version": 2, "/v1/models": 1, "/tokenize": 1}
    assert fake.requests == []  # only completion calls are recorded


async def test_reply_chat_non_stream(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    fake.script(Reply('{"a": 1}', finish_reason="length"))
    headers = {"Authorization": "Bearer k", "X-Request-Id": "r1"}
    async with session.post(fake.url + CHAT, json=chat_request(), headers=headers) as response:
        assert response.status == 200
        body = await response.json()
    validate("CreateChatCompletionResponse", body)
    assert body["object"] == "chat.completion"
    assert body["model"] == "qwen-coder"
    (choice,) = body["choices"]
    assert choice["message"] == {
        "role": "assistant",
        "content": '{"a": 1}',
        "refusal": None,
        "tool_calls": [],
    }
    assert choice["logprobs"] is None
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    (recorded,) = fake.requests
    assert (recorded.method, recorded.path) == ("POST", CHAT)
    assert recorded.json == chat_request()
    assert recorded.headers["x-request-id"] == "r1"  # header lookup is case-insensitive
    assert recorded.headers["authorization"] == "Bearer k"
    assert json.loads(recorded.raw) == chat_request()


async def test_reply_extra_and_explicit_usage(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    fake.script(Reply("x", usage=usage, extra=VLLM_NULL_EXTRAS))
    async with session.post(fake.url + CHAT, json=chat_request()) as response:
        body = await response.json()
    assert body["usage"] == usage
    assert body["system_fingerprint"] is None
    assert "/system_fingerprint: None is not of type 'string'" in errors(
        "CreateChatCompletionResponse", body
    )


async def test_reply_chat_stream_with_usage(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    content = '{"name": "parse", "args": [1, 2]}'
    fake.script(Reply(content, chunk_size=5))
    payloads, failure = await post_sse(session, fake.url + CHAT, chat_request(True, True))
    assert failure is None
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    for item in chunks:
        validate("CreateChatCompletionStreamResponse", item)
        assert item["object"] == "chat.completion.chunk"
    assert len({c["id"] for c in chunks}) == 1

    first, *middle, finish, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["choices"][0]["finish_reason"] is None
    assert len(middle) == -(-len(content) // 5)  # several pieces, not one
    assert "".join(c["choices"][0]["delta"]["content"] for c in middle) == content
    assert all(c["choices"][0]["finish_reason"] is None for c in middle)
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert "content" not in finish["choices"][0]["delta"]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == len(middle)
    assert all("usage" not in c for c in chunks[:-1])


async def test_reply_stream_without_usage_and_finish_on_last_piece(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    fake.script(Reply("abcdef", chunk_size=4, finish_with_last_piece=True))
    payloads, failure = await post_sse(session, fake.url + CHAT, chat_request(stream=True))
    assert failure is None
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert payloads[-1] == "[DONE]"
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "abcd", "ef"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]


async def test_reply_completions(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    async with session.post(fake.url + COMPLETIONS, json=completion_request()) as response:
        body = await response.json()
    validate("CreateCompletionResponse", body)
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == '{"ok": true}'  # fake.default

    fake.script(Reply("hello world", chunk_size=3))
    payloads, failure = await post_sse(
        session, fake.url + COMPLETIONS, completion_request(True, True)
    )
    assert failure is None
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    *pieces, finish, usage = chunks
    assert "".join(c["choices"][0]["text"] for c in pieces) == "hello world"
    assert finish["choices"][0] | {"stop_reason": None} == {
        "index": 0,
        "text": "",
        "logprobs": None,
        "finish_reason": "stop",
        "stop_reason": None,
    }
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] > 0
    assert [r.path for r in fake.requests] == [COMPLETIONS, COMPLETIONS]


async def test_script_queue_then_default(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    fake.script(Reply("one"), Reply("two"))
    fake.default = Reply("fallback")
    assert fake.pending == 2
    seen = []
    for _ in range(4):
        async with session.post(fake.url + CHAT, json=chat_request()) as response:
            seen.append((await response.json())["choices"][0]["message"]["content"])
    assert seen == ["one", "two", "fallback", "fallback"]
    assert fake.pending == 0
    assert len(fake.requests) == 4


@pytest.mark.parametrize(
    ("behaviour", "status", "expected"),
    [
        (
            ErrorReply.new_shape(400, "bad schema"),
            400,
            {
                "error": {
                    "message": "bad schema",
                    "type": "BadRequestError",
                    "param": None,
                    "code": 400,
                }
            },
        ),
        (
            ErrorReply.old_shape(404, "no such model", "NotFoundError"),
            404,
            {
                "object": "error",
                "message": "no such model",
                "type": "NotFoundError",
                "param": None,
                "code": 404,
            },
        ),
        (ErrorReply.unauthorized(), 401, {"error": "Unauthorized"}),
        (ErrorReply(503, {"detail": "busy"}, {"Retry-After": "7"}), 503, {"detail": "busy"}),
    ],
)
async def test_error_replies(
    fake: FakeUpstream,
    session: aiohttp.ClientSession,
    behaviour: ErrorReply,
    status: int,
    expected: dict[str, Any],
) -> None:
    fake.script(behaviour)
    async with session.post(fake.url + CHAT, json=chat_request(stream=True)) as response:
        assert response.status == status
        assert response.content_type == "application/json"
        assert await response.json() == expected
        if status == 503:
            assert response.headers["Retry-After"] == "7"


async def test_api_key_enforced_on_v1_only(session: aiohttp.ClientSession) -> None:
    async with FakeUpstream(api_key="sekret") as fake:
        async with session.post(fake.url + CHAT, json=chat_request()) as response:
            assert response.status == 401
            assert await response.json() == {"error": "Unauthorized"}
        async with session.get(fake.url + "/v1/models") as response:
            assert response.status == 401
        async with session.get(fake.url + "/version") as response:
            assert response.status == 200
        auth = {"Authorization": "Bearer sekret"}
        async with session.post(fake.url + CHAT, json=chat_request(), headers=auth) as response:
            assert response.status == 200
        assert len(fake.requests) == 2  # refused requests are recorded too


async def test_garbage(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    fake.script(Garbage(), Garbage(502, b"\x00\xffnot json", "application/json"))
    async with session.post(fake.url + CHAT, json=chat_request()) as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        with pytest.raises(json.JSONDecodeError):
            json.loads(await response.read())
    async with session.post(fake.url + CHAT, json=chat_request()) as response:
        assert response.status == 502
        assert await response.read() == b"\x00\xffnot json"


async def test_non_json_request_body_is_400(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    async with session.post(fake.url + CHAT, data=b"{nope") as response:
        assert response.status == 400
        assert "error" in await response.json()
    assert fake.requests[0].json is None and fake.requests[0].raw == b"{nope"


async def test_slow_then_reply(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    fake.script(Slow(0.3, then=ErrorReply.new_shape(500, "late")))
    started = time.monotonic()
    async with session.post(fake.url + CHAT, json=chat_request()) as response:
        assert response.status == 500
    assert time.monotonic() - started >= 0.3
    assert fake.cancelled == 0


async def test_slow_records_client_disconnect(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    fake.script(Slow(30))

    async def call() -> None:
        async with session.post(fake.url + CHAT, json=chat_request()) as response:
            await response.read()

    task = asyncio.create_task(call())
    await fake.wait_requests(1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    started = time.monotonic()
    await fake.wait_cancelled(1, within_s=2)
    assert time.monotonic() - started < 2
    await asyncio.sleep(0.1)
    assert fake.cancelled == 1  # counted once, not once per detection path


async def test_slow_stream_spacing_and_disconnect(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    fake.script(SlowStream(0.05, then=Reply("abcdefgh", chunk_size=4)))
    started = time.monotonic()
    payloads, failure = await post_sse(session, fake.url + CHAT, chat_request(stream=True))
    assert failure is None
    assert len(payloads) == 5  # role, 2 pieces, finish, [DONE]
    assert time.monotonic() - started >= 5 * 0.05
    assert fake.cancelled == 0

    fake.script(SlowStream(0.2, then=Reply("x" * 100, chunk_size=1)))
    async with session.post(fake.url + CHAT, json=chat_request(stream=True)) as response:
        first = await response.content.readline()
        assert first.startswith(b"data: ")
        response.close()  # drop the connection mid-stream, as a gateway cancelling would
    await fake.wait_cancelled(1, within_s=2)


async def test_crash_mid_stream(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    fake.script(CrashMidStream(after_chunks=3, then=Reply("abcdefghijkl", chunk_size=2)))
    payloads, failure = await post_sse(session, fake.url + CHAT, chat_request(stream=True))
    assert isinstance(failure, aiohttp.ClientPayloadError)
    assert len(payloads) == 3
    assert "[DONE]" not in payloads
    assert [json.loads(p)["choices"][0]["delta"].get("content") for p in payloads] == [
        "",
        "ab",
        "cd",
    ]

    fake.script(CrashMidStream())
    async with session.post(fake.url + CHAT, json=chat_request()) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    await asyncio.sleep(0.05)
    assert fake.cancelled == 0  # the fake's own crash is not a client disconnect

    async with session.post(fake.url + CHAT, json=chat_request()) as response:
        assert response.status == 200  # the fake keeps serving after a crash


async def test_stream_error(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    fake.script(StreamError(after_chunks=2))
    payloads, failure = await post_sse(session, fake.url + CHAT, chat_request(stream=True))
    assert failure is None
    assert len(payloads) == 4
    assert "choices" in json.loads(payloads[1])
    assert json.loads(payloads[2]) == new_error_body(
        "fake engine failure", "InternalServerError", 500
    )
    assert payloads[3] == "[DONE]"

    old = old_error_body("boom", "InternalServerError", 500)
    fake.script(StreamError(after_chunks=0, error_body=old, done=False))
    payloads, failure = await post_sse(session, fake.url + CHAT, chat_request(stream=True))
    assert failure is None
    assert [json.loads(p) for p in payloads] == [old]

    fake.script(StreamError(error_body=new_error_body("too long", code=400)))
    async with session.post(fake.url + CHAT, json=chat_request()) as response:
        assert response.status == 400
        assert (await response.json())["error"]["message"] == "too long"


async def test_stop_refuses_then_start_rebinds_same_port(session: aiohttp.ClientSession) -> None:
    async with FakeUpstream() as fake:
        url, port = fake.url, fake.port
        async with session.get(url + "/version") as response:
            assert response.status == 200  # leaves a pooled keep-alive connection behind

        await fake.stop()
        assert not fake.running
        for _ in range(2):  # the pooled connection must not keep the dead server reachable
            with pytest.raises(aiohttp.ClientConnectionError):
                async with session.get(url + "/version") as response:
                    await response.read()
        with pytest.raises(aiohttp.ClientConnectorError):
            async with session.get(url + "/version") as response:
                await response.read()

        await fake.start()
        assert (fake.url, fake.port) == (url, port)
        async with session.post(url + CHAT, json=chat_request()) as response:
            assert response.status == 200
    assert fake.hits["/version"] == 1


async def test_stop_during_slow_request_is_not_a_cancellation(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeUpstream(default=Slow(30)) as fake:

        async def call() -> None:
            async with session.post(fake.url + CHAT, json=chat_request()) as response:
                await response.read()

        task = asyncio.create_task(call())
        await fake.wait_requests(1)
        await fake.stop()
        with pytest.raises(aiohttp.ClientError):
            await task
        assert fake.cancelled == 0


async def test_wait_helpers_fail_readably(fake: FakeUpstream) -> None:
    with pytest.raises(AssertionError, match="expected 1 cancellation"):
        await fake.wait_cancelled(1, within_s=0.05)
