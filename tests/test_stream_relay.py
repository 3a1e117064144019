"""The stream relays (gateway/generation/streaming.py) driven directly with vLLM's events, without a
server: what the client receives event by event, what it is charged, and how a broken
upstream stream ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import generate_latest

from gateway.errors import (
    GatewayError,
    UpstreamError,
    UpstreamRequestFailedError,
    UpstreamTimeoutError,
)
from gateway.generation.planning import estimate_prompt_tokens, plan_chat
from gateway.generation.streaming import (
    StreamState,
    relay_chat,
    relay_completion,
    stream_tokens,
    upstream_objects,
)
from gateway.observe.prometheus import Metrics
from gateway.output.registry import SchemaRegistry
from gateway.settings import Settings
from tests.ir_samples import VALID

REPO = Path(__file__).resolve().parent.parent
REGISTRY = SchemaRegistry.load(REPO / "schemas")
USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def plan(settings: Settings | None = None, **body: Any) -> Any:
    request = {"model": "qwen-coder", "messages": [{"role": "user", "content": "hi"}],
               "stream": True, **body}
    return plan_chat(request, REGISTRY, settings or Settings())


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> bytes:
    delta = {} if content is None else {"content": content}
    return orjson.dumps({"id": "c1", "created": 1, "choices": [
        {"index": 0, "delta": delta, "finish_reason": finish}], **extra})


def usage_event() -> bytes:
    return orjson.dumps({"id": "c1", "created": 1, "choices": [], "usage": USAGE})


async def events(*items: bytes | Exception) -> AsyncIterator[bytes]:
    for item in items:
        if isinstance(item, Exception):
            raise item
        yield item


def answer(text: str, *, finish: str = "stop", size: int = 5) -> list[bytes]:
    pieces = [chunk(text[i:i + size]) for i in range(0, len(text), size)]
    return [*pieces, chunk(finish=finish), usage_event(), b"[DONE]"]


async def chat_out(the_plan: Any, *items: bytes | Exception,
                   state: StreamState | None = None) -> tuple[list[Any], list[str], StreamState]:
    """The client's events (parsed; "[DONE]" as is) and SSE comments."""
    state = state or StreamState()
    parsed: list[Any] = []
    comments: list[str] = []
    async for out in relay_chat(events(*items), the_plan, "served-model", state, Metrics()):
        text = out.decode()
        assert text.endswith("\n\n") and text.count("\n\n") == 1
        if text.startswith(": "):
            comments.append(text[2:-2])
        else:
            assert text.startswith("data: ")
            data = text[6:-2]
            parsed.append(data if data == "[DONE]" else orjson.loads(data))
    return parsed, comments, state


def content_of(parsed: list[Any]) -> str:
    return "".join(c["delta"].get("content") or "" for e in parsed if isinstance(e, dict)
                   for c in e.get("choices", []))


# -- upstream_objects: vLLM's events, or the gateway's error for a broken stream


async def collect(*items: bytes | Exception) -> list[Any]:
    return [raw async for raw in upstream_objects(events(*items))]


async def test_objects_until_done_and_nothing_after() -> None:
    assert await collect(b'{"a": 1}', b'{"b": 2}', b"[DONE]", b'{"c": 3}') == [{"a": 1},
                                                                             {"b": 2}]


@pytest.mark.parametrize(("items", "message"), [
    ((b'{"a": 1}',), "the upstream stream ended without [DONE]"),
    ((b"not json",), "the upstream sent a stream event that is not JSON: b'not json'"),
    ((b"[1, 2]",), "the upstream sent a stream event that is not an object"),
])
async def test_a_broken_stream_is_an_upstream_error(items: tuple[bytes, ...],
                                                    message: str) -> None:
    with pytest.raises(UpstreamError) as error:
        await collect(*items)
    assert error.value.message == message and error.value.status_code == 502


async def test_a_long_event_that_is_not_json_is_quoted_in_part() -> None:
    with pytest.raises(UpstreamError) as error:
        await collect(b"x" * 500)
    assert error.value.message.endswith(repr(b"x" * 200))


@pytest.mark.parametrize(("code", "status"), [
    (400, 400), (422, 422), (499, 499), (399, 502), (600, 502), ("400", 502), (None, 502),
])
async def test_an_error_event_keeps_vllms_status_when_it_is_one(code: Any,
                                                               status: int) -> None:
    # An error event's `code` is vLLM's HTTP status; a 5xx or nonsense is the upstream's
    # fault (502), a 4xx the request's.
    event = orjson.dumps({"error": {"message": "bad request", "type": "BadRequestError",
                                    "code": code}})
    with pytest.raises(GatewayError) as error:
        await collect(b'{"a": 1}', event, b"[DONE]")
    assert error.value.status_code == status


async def test_an_error_event_that_is_not_an_object_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError):
        await collect(b'{"error": "oops"}', b"[DONE]")


# -- what a stream is charged


def test_a_stream_is_charged_vllms_usage_when_it_came() -> None:
    p = plan()
    state = StreamState(usage=dict(USAGE), content_chunks=3, abandoned=True)
    assert stream_tokens(p, state, reserved=500) == 18


def test_a_stream_without_usage_is_charged_by_what_happened() -> None:
    p = plan()
    prompt = estimate_prompt_tokens(p.body)
    # Given up while vLLM worked: at least the reservation.
    assert stream_tokens(p, StreamState(content_chunks=3), reserved=500) == 500
    assert stream_tokens(p, StreamState(content_chunks=3), reserved=1) == prompt + 3
    # Broken off by vLLM: the prompt and a token a chunk; nothing when nothing came.
    broken = StreamState(content_chunks=4, abandoned=False)
    assert stream_tokens(p, broken, reserved=500) == prompt + 4
    assert stream_tokens(p, StreamState(abandoned=False), reserved=500) is None


# -- relay_chat


async def test_a_checked_stream_holds_back_its_end_until_the_answer_passed() -> None:
    state = StreamState()
    parsed, comments, state = await chat_out(
        plan(model="schema/function_ir", stream_options={"include_usage": True}),
        *answer(VALID), state=state)
    assert parsed[-1] == "[DONE]" and content_of(parsed) == VALID
    finish, usage = parsed[-3], parsed[-2]
    assert finish["choices"][0]["finish_reason"] == "stop" and finish["model"] == "served-model"
    assert usage["choices"] == [] and usage["usage"] == USAGE
    assert comments == ["irgw-output passed"]
    assert state.outcome == "passed" and state.usage == USAGE and not state.abandoned
    assert state.content_chunks == len(answer(VALID)) - 3
    # Every content event carries usage only when asked: here each has the key.
    assert all("usage" in e for e in parsed[:-1])


async def test_without_include_usage_no_event_carries_usage() -> None:
    parsed, _, state = await chat_out(plan(model="schema/function_ir"), *answer(VALID))
    assert parsed[-1] == "[DONE]" and content_of(parsed) == VALID
    assert all("usage" not in e for e in parsed[:-1])
    assert all(e["choices"] for e in parsed[:-1])  # the usage-only event is not relayed
    assert parsed[-2]["choices"][0]["finish_reason"] == "stop"
    assert state.usage == USAGE  # still read: the key's tokens are settled on it


async def test_a_failing_answer_ends_with_the_error_and_the_usage_when_asked() -> None:
    bad = '{"intent": 1}'
    parsed, comments, state = await chat_out(
        plan(model="schema/function_ir", stream_options={"include_usage": True}),
        *answer(bad))
    assert parsed[-1] == "[DONE]" and comments == []
    error = parsed[-2]["error"]
    assert error["code"] == "output_validation_failed" and error["raw_output"] == bad
    assert error["attempts"] == 1  # a stream is never asked again
    assert parsed[-3]["choices"] == [] and parsed[-3]["usage"] == USAGE
    assert not any(c["finish_reason"] for e in parsed[:-2] for c in e["choices"])
    assert state.outcome == "failed"
    parsed, _, _ = await chat_out(plan(model="schema/function_ir"), *answer(bad))
    assert "error" in parsed[-2] and all("usage" not in e for e in parsed[:-2])


async def test_a_cut_off_answer_is_reported_as_truncated() -> None:
    parsed, _, state = await chat_out(plan(model="schema/function_ir"),
                                      *answer(VALID[:40], finish="length"))
    assert parsed[-2]["error"]["code"] == "output_truncated"
    assert state.outcome == "truncated"


async def test_raw_control_characters_are_repaired_on_the_way() -> None:
    text = '{"a": "x\ny"}'
    parsed, comments, state = await chat_out(
        plan(response_format={"type": "json_object"}), *answer(text, size=3))
    assert orjson.loads(content_of(parsed)) == {"a": "x\ny"}
    assert comments == ["irgw-output repaired"] and state.outcome == "repaired"
    assert state.parts and "".join(state.parts) == content_of(parsed)
    # The `error` policy repairs nothing: the same answer fails.
    parsed, _, state = await chat_out(
        plan(Settings(output_policy="error"), response_format={"type": "json_object"}),
        *answer(text, size=3))
    assert parsed[-2]["error"]["code"] == "output_validation_failed"
    assert state.outcome == "failed"


async def test_json_object_mode_checks_for_an_object_only() -> None:
    parsed, comments, _ = await chat_out(plan(response_format={"type": "json_object"}),
                                         *answer('{"anything": [1, 2]}'))
    assert comments == ["irgw-output passed"]
    parsed, _, _ = await chat_out(plan(response_format={"type": "json_object"}),
                                  *answer("[1, 2]"))
    assert parsed[-2]["error"]["code"] == "output_validation_failed"


async def test_an_unchecked_stream_is_relayed_as_it_comes() -> None:
    parsed, comments, state = await chat_out(plan(), *answer("just prose"))
    assert content_of(parsed) == "just prose" and comments == []
    assert parsed[-2]["choices"][0]["finish_reason"] == "stop"
    assert state.outcome == "passthrough" and not state.abandoned
    parsed, _, _ = await chat_out(plan(stream_options={"include_usage": True}),
                                  *answer("just prose"))
    assert parsed[-2]["usage"] == USAGE and parsed[-2]["choices"] == []


async def test_a_second_choice_in_a_checked_stream_is_an_upstream_error() -> None:
    second = orjson.dumps({"choices": [{"index": 1, "delta": {"content": "x"}}]})
    parsed, _, state = await chat_out(plan(model="schema/function_ir"), chunk("{"), second,
                                      b"[DONE]")
    assert parsed[-1] == "[DONE]"
    assert parsed[-2]["error"]["message"] == ("the upstream sent a choice with index 1 for a "
                                              "request with one choice")
    assert state.outcome == "error" and not state.abandoned
    # Unchecked, vLLM's choices are relayed as they are.
    parsed, _, _ = await chat_out(plan(n=2), chunk("a"), second, b"[DONE]")
    assert [c["index"] for e in parsed[:-1] for c in e["choices"]] == [0, 1]


@pytest.mark.parametrize(("failure", "abandoned"), [
    (UpstreamTimeoutError("upstream read timed out"), True),
    (UpstreamError("connection lost"), False),
])
async def test_a_stream_that_breaks_ends_with_the_error(failure: Exception,
                                                        abandoned: bool) -> None:
    parsed, _, state = await chat_out(plan(model="schema/function_ir"), chunk('{"a'), failure)
    assert parsed[-1] == "[DONE]" and parsed[-2]["error"]["message"] == str(failure)
    assert state.outcome == "error" and state.abandoned is abandoned
    assert state.content_chunks == 1


async def test_a_grammar_vllm_failed_is_the_schemas_fault_on_the_stream() -> None:
    # vLLM fails the request's grammar inside the 200 stream: the client's error event is
    # the schema's 400 (sending it again would fail the same way), counted per schema.
    state, metrics = StreamState(), Metrics()
    failed = UpstreamRequestFailedError("Internal server error", names_grammar=False)
    out = [item async for item in relay_chat(
        events(chunk("{"), failed), plan(model="schema/function_ir"), "m", state, metrics)]
    assert orjson.loads(out[-2][6:])["error"]["code"] == "invalid_schema"
    assert b"irgw_grammar_failures_total" in generate_latest(metrics.registry)


async def test_a_check_that_crashes_ends_the_stream_with_its_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.generation import streaming

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise GatewayError("internal error in the gateway", code="internal_error")

    monkeypatch.setattr(streaming, "check_output", crash)
    parsed, comments, state = await chat_out(plan(model="schema/function_ir"), *answer(VALID))
    assert parsed[-2]["error"]["code"] == "internal_error" and comments == []
    assert state.outcome == "error"
    assert not any(c["finish_reason"] for e in parsed[:-2] for c in e["choices"])


# -- relay_completion


def completion(text: str | None, finish: str | None = None, **extra: Any) -> bytes:
    return orjson.dumps({"id": "cmpl-1", "choices": [
        {"index": 0, "text": text, "finish_reason": finish}], **extra})


async def completion_out(include_usage: bool, *items: bytes | Exception,
                         state: StreamState | None = None) -> tuple[list[Any], StreamState]:
    state = state or StreamState()
    out = [item async for item in relay_completion(events(*items), include_usage, state)]
    return [o[6:-2].decode() if o == b"data: [DONE]\n\n" else orjson.loads(o[6:]) for o in out], \
        state


@pytest.mark.parametrize("include_usage", [True, False])
async def test_a_completion_stream_carries_usage_only_when_asked(include_usage: bool) -> None:
    items = (completion("def"), completion(""), completion(" f", "repetition"),
             orjson.dumps({"id": "cmpl-1", "choices": [], "usage": USAGE}), b"[DONE]")
    parsed, state = await completion_out(include_usage, *items)
    assert parsed[-1] == "[DONE]"
    texts = [c["text"] for e in parsed[:-1] for c in e["choices"]]
    assert texts == ["def", "", " f"]
    assert parsed[2]["choices"][0]["finish_reason"] == "length"  # vLLM's word, OpenAI's way
    usage = [e for e in parsed[:-1] if "usage" in e]
    assert usage == ([{"id": "cmpl-1", "choices": [], "usage": USAGE}] if include_usage
                     else [])
    assert state.usage == USAGE and state.content_chunks == 2 and not state.abandoned


@pytest.mark.parametrize("include_usage", [True, False])
async def test_usage_on_a_text_event_is_kept_only_when_asked(include_usage: bool) -> None:
    parsed, state = await completion_out(include_usage, completion("x", "stop", usage=USAGE),
                                         b"[DONE]")
    assert parsed[0]["choices"][0]["text"] == "x"
    assert ("usage" in parsed[0]) is include_usage
    assert state.usage == USAGE


@pytest.mark.parametrize(("failure", "abandoned"), [
    (UpstreamTimeoutError("upstream read timed out"), True),
    (UpstreamError("connection lost"), False),
])
async def test_a_completion_stream_that_breaks_ends_with_the_error(
        failure: Exception, abandoned: bool) -> None:
    parsed, state = await completion_out(False, completion("def"), failure)
    assert parsed[0]["choices"][0]["text"] == "def"
    assert parsed[-1] == "[DONE]" and parsed[-2]["error"]["message"] == str(failure)
    assert state.outcome == "error" and state.abandoned is abandoned


# -- found by mutation testing


async def test_choices_without_an_index_are_the_first_choice() -> None:
    # vLLM may leave `index` out: a checked stream takes such a choice as choice 0.
    bare = [orjson.dumps({"choices": [{"delta": {"content": piece}}]})
            for piece in ('{"a": ', '1}')]
    parsed, comments, _ = await chat_out(plan(response_format={"type": "json_object"}),
                                         *bare, chunk(finish="stop"), b"[DONE]")
    assert content_of(parsed) == '{"a": 1}' and comments == ["irgw-output passed"]


@pytest.mark.parametrize(("code", "message"), [
    (600, "upstream error (500): engine failed"),
    (None, "upstream error (500): engine failed"),
    (503, "upstream error (503): engine failed"),
])
async def test_an_error_event_without_a_usable_status_reads_as_a_500(code: Any,
                                                                      message: str) -> None:
    event = orjson.dumps({"error": {"message": "engine failed", "type": "X", "code": code}})
    with pytest.raises(UpstreamError) as error:
        await collect(event)
    assert error.value.message == message and error.value.status_code == 502


async def test_a_streamed_tool_call_names_itself_once_then_carries_arguments() -> None:
    # plan_chat plans the forced tool itself.
    tool_plan = plan(tools=[{"type": "function", "function": {"name": "get_weather"}}],
                     tool_choice="required")
    parsed, _, _ = await chat_out(tool_plan, *answer('{"city": "Paris"}', size=6))
    calls = [c["delta"]["tool_calls"][0] for e in parsed[:-1] for c in e["choices"]
             if "tool_calls" in c["delta"]]
    assert calls[0]["id"] == tool_plan.tool_call_id and calls[0]["type"] == "function"
    assert calls[0]["function"]["name"] == "get_weather"
    assert all("id" not in c and "name" not in c["function"] for c in calls[1:])
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city": "Paris"}'
    assert parsed[-2]["choices"][0]["finish_reason"] == "tool_calls"


async def test_a_completion_stream_cut_after_its_usage_event_ends_with_an_error() -> None:
    usage = orjson.dumps({"id": "cmpl-1", "choices": [], "usage": USAGE})
    parsed, state = await completion_out(True, completion("def"), usage)  # no [DONE]
    assert parsed[-1] == "[DONE]"
    assert parsed[-2]["error"]["message"] == "the upstream stream ended without [DONE]"
    assert state.outcome == "error"
