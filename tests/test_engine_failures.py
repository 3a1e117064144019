"""vLLM failing a request's grammar is the schema's 400, never a 5xx the client retries.

The fake upstream answers with the exact bodies vLLM 0.32.0 sent on the CPU build when
xgrammar 0.2.8 crashed compiling `{"type":"string","pattern":"^[0-9a-zA-Z_-]{1,255}$"}`
(seen here; vLLM's log had `grammar_functor.cc:3567: Check failed`): a bare 500
`Internal server error` (its GenerationError), and inside a 200 stream the same error as an
event after the role chunk.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import httpx
import orjson
import pytest

from tests import openai_spec
from tests.fake_upstream import ErrorReply, FakeUpstream, Reply, StreamError, new_error_body
from tests.ir_samples import VALID
from tests.sse import read_events

MESSAGES = [{"role": "user", "content": "IR for a function that adds two ints"}]
# What vLLM 0.32.0 answered, byte for byte in its fields (non-streamed and streamed).
VLLM_GRAMMAR_500 = ErrorReply.new_shape(500, "Internal server error", type="InternalServerError")
VLLM_GRAMMAR_EVENT = new_error_body("Internal server error", "InternalServerError", 500)
WIDE = {"type": "object", "properties": {"id": {"type": "string",
                                                "pattern": "^[0-9a-zA-Z_-]{1,255}$"}},
        "required": ["id"], "additionalProperties": False}


def wide_format() -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "Wide", "schema": WIDE}}


async def chat(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    body.setdefault("model", "schema/function_ir")
    body.setdefault("messages", MESSAGES)
    return await client.post("/v1/chat/completions", json=body)


def sent_schema_sha256(fake: FakeUpstream) -> str:
    schema = fake.requests[-1].json["response_format"]["json_schema"]["schema"]
    return hashlib.sha256(orjson.dumps(schema)).hexdigest()


async def grammar_failures(client: httpx.AsyncClient) -> str:
    text = (await client.get("/metrics")).text
    return "\n".join(line for line in text.splitlines()
                     if line.startswith("irgw_grammar_failures_total"))


async def test_vllm_500_on_a_registered_schema_is_400_invalid_schema_counted_and_logged(
    client: httpx.AsyncClient, fake: FakeUpstream, caplog: pytest.LogCaptureFixture,
) -> None:
    fake.script(VLLM_GRAMMAR_500)
    with caplog.at_level(logging.WARNING, logger="gateway.engine"):
        response = await chat(client)
    assert response.status_code == 400, response.text
    body = response.json()
    openai_spec.validate("ErrorResponse", body)
    error = body["error"]
    assert error["code"] == "invalid_schema"
    assert error["type"] == "invalid_request_error"
    assert "function_ir@1" in error["message"] and "xgrammar" in error["message"]
    digest = sent_schema_sha256(fake)
    assert error["schema_sha256"] == digest
    assert digest in caplog.text
    assert len(fake.requests) == 1
    assert 'irgw_grammar_failures_total{schema="function_ir@1"} 1.0' in (
        await grammar_failures(client))


async def test_the_retry_policy_does_not_compile_a_failing_grammar_again(
    client: httpx.AsyncClient, fake: FakeUpstream,
) -> None:
    fake.script(VLLM_GRAMMAR_500, Reply(VALID))
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    response = await chat(client, model="qwen-coder", response_format={
        "type": "json_schema", "json_schema": {"name": "P", "schema": schema}})
    assert response.status_code == 400
    assert len(fake.requests) == 1


async def test_adhoc_stream_gets_an_invalid_schema_error_event(
    client: httpx.AsyncClient, fake: FakeUpstream,
) -> None:
    fake.script(StreamError(after_chunks=1, error_body=VLLM_GRAMMAR_EVENT))
    async with client.stream("POST", "/v1/chat/completions", json={
            "model": "qwen-coder", "messages": MESSAGES, "stream": True,
            "response_format": wide_format()}) as response:
        events, _ = await read_events(response)
    errors = [e for e in events if isinstance(e, dict) and "error" in e]
    assert len(errors) == 1 and events[-1] == "[DONE]"
    assert errors[0]["error"]["code"] == "invalid_schema"
    assert errors[0]["error"]["schema_sha256"] == sent_schema_sha256(fake)
    assert "Wide (ad-hoc)" in errors[0]["error"]["message"]
    assert 'schema="(ad-hoc)"} 1.0' in await grammar_failures(client)


async def test_forced_tool_and_completions_get_the_same_400(
    client: httpx.AsyncClient, fake: FakeUpstream,
) -> None:
    fake.script(VLLM_GRAMMAR_500)
    response = await client.post("/v1/chat/completions", json={
        "model": "qwen-coder", "messages": MESSAGES, "tool_choice": "required",
        "tools": [{"type": "function", "function": {"name": "function_ir"}}]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tools"
    fake.script(VLLM_GRAMMAR_500)
    response = await client.post("/v1/completions", json={
        "model": "schema/function_ir", "prompt": "add two ints"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_schema"


async def test_a_5xx_naming_the_grammar_is_400_whatever_its_shape(
    client: httpx.AsyncClient, fake: FakeUpstream,
) -> None:
    fake.script(ErrorReply.new_shape(
        500, "Failed to compile grammar: RuntimeError: grammar_functor.cc:3567: Check failed",
        type="InternalServerError"))
    response = await chat(client)
    assert response.status_code == 400
    assert "Check failed" in response.json()["error"]["message"]


@pytest.mark.parametrize("reply", [
    # A dead engine (EngineDeadError), an overloaded one (RetryableRequestError, 503).
    ErrorReply.new_shape(500, "EngineCore encountered an issue. See stack trace (above) for "
                         "the root cause.", type="InternalServerError"),
    ErrorReply.new_shape(503, "Request failed; please retry", type="InternalServerError"),
])
async def test_real_outages_stay_502(client: httpx.AsyncClient, fake: FakeUpstream,
                                     reply: ErrorReply) -> None:
    fake.script(reply)
    response = await chat(client)
    assert response.status_code == 502
    assert await grammar_failures(client) == ""


@pytest.mark.parametrize("extra", [{}, {"response_format": {"type": "json_object"}}])
async def test_without_a_schema_a_bare_500_stays_502(
    client: httpx.AsyncClient, fake: FakeUpstream, extra: dict[str, Any],
) -> None:
    # No schema of the client's in vLLM's grammar: nothing the client can fix.
    fake.script(VLLM_GRAMMAR_500)
    response = await chat(client, model="qwen-coder", **extra)
    assert response.status_code == 502


async def test_a_wide_repeat_reaches_vllm_split_and_is_named_in_the_warnings(
    client: httpx.AsyncClient, fake: FakeUpstream,
) -> None:
    fake.script(Reply('{"id": "' + "a" * 200 + '"}'))
    response = await chat(client, model="qwen-coder", response_format=wide_format())
    assert response.status_code == 200, response.text
    sent = fake.requests[-1].json["response_format"]["json_schema"]["schema"]
    assert sent["properties"]["id"]["pattern"] == (
        "^[0-9a-zA-Z_-]{1,128}[0-9a-zA-Z_-]{0,127}$")
    warnings = response.headers["x-irgw-schema-warnings"]
    assert "/properties/id: pattern '^[0-9a-zA-Z_-]{1,255}$'" in warnings
    # Still checked against the schema as written: 256 characters are one too many.
    fake.script(Reply('{"id": "' + "a" * 256 + '"}'))
    response = await chat(client, model="qwen-coder", response_format=wide_format())
    assert response.status_code == 422
    assert "{1,255}" in response.headers["x-irgw-schema-warnings"]
