"""Relaying vLLM's streams: chat, checked as it goes, and unchecked legacy completions.

Content chunks go to the client as they arrive. The chunk that carries `finish_reason`
(and the usage chunk) is held back until the whole answer has been parsed and validated:
a valid answer then ends normally; an invalid one ends with `data: {"error": ...}` before
`data: [DONE]`, which makes the openai client raise instead of returning bad JSON.

A stream cannot be retried once content has gone out, so the `retry` and `reask`
policies act like `repair` here. The lossless repair (escaping raw control characters
inside strings) is applied on the fly, so what the client assembles is the repaired text.

Both relays end a stream that fails upstream (an error event, a body that is not JSON, a
connection lost before `[DONE]`) with the gateway's error event and `[DONE]`, so a client
never takes a cut-off stream for a whole one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import GatewayError, UpstreamError, UpstreamTimeoutError
from gateway.generation.engine_failures import schema_error_for
from gateway.generation.failures import failure_to_error
from gateway.generation.planning import ChatPlan, Mode, estimate_prompt_tokens
from gateway.generation.shapes import (
    SSE_DONE,
    chat_chunk,
    choices_of,
    finish_reason,
    object_of,
    sse,
    text_of,
    usage_of,
)
from gateway.generation.tools import as_tool_call_chunk
from gateway.observe.prometheus import Metrics
from gateway.output.validation import CheckFailure, Outcome, StreamingEscaper, check_output
from gateway.upstream.client import normalise_error


@dataclass
class StreamState:
    """What the relay learnt, read by the cleanup (token settlement, metrics)."""

    usage: dict[str, int] | None = None
    content_chunks: int = 0
    # Until vLLM's stream ends (or breaks): a client gone, or a read timeout, gave up a
    # generation vLLM was running.
    abandoned: bool = True
    outcome: str | None = None  # passed / repaired / failed / truncated / error
    parts: list[str] = field(default_factory=list)


def stream_tokens(plan: ChatPlan, state: StreamState, reserved: int) -> int | None:
    """What a stream is charged: vLLM's usage; without it, a stream given up while vLLM
    worked on it keeps its reservation (as an answer the client did not wait for: else
    leaving before the first token would make any prompt free); a stream vLLM broke off
    costs the prompt estimate plus a token per content chunk, or nothing if nothing was
    generated."""
    if state.usage is not None:
        return state.usage["total_tokens"]
    generated = estimate_prompt_tokens(plan.body) + state.content_chunks
    if state.abandoned:
        return max(reserved, generated)
    return generated if state.content_chunks else None


def _error_event(error: GatewayError) -> bytes:
    return sse(error.body())


async def upstream_objects(events: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """vLLM's stream events as objects, until `[DONE]`. Raises the gateway error for an
    error event, an event that is not a JSON object, or a stream that ends without
    `[DONE]` (vLLM died or the connection was cut)."""
    async for data in events:
        if data == b"[DONE]":
            return
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"the upstream sent a stream event that is not JSON: "
                                f"{data[:200]!r}") from None
        if not isinstance(raw, dict):
            raise UpstreamError("the upstream sent a stream event that is not an object")
        if "error" in raw:
            raise normalise_error(int(_status_of(raw)), data)
        yield raw
    raise UpstreamError("the upstream stream ended without [DONE]")


async def relay_chat(events: AsyncIterator[bytes], plan: ChatPlan, model: str,
                     state: StreamState, metrics: Metrics) -> AsyncIterator[bytes]:
    """A chat stream, checked as it goes when the plan says so. An error vLLM sent ends it
    as the client's error (a grammar vLLM failed to compile is the schema's fault, counted
    in `metrics`: `gateway.generation.engine_failures`)."""
    escaper = StreamingEscaper() if plan.checked and plan.policy.repairs else None
    # Held back until the answer is checked: (has choices, the event), written here so that
    # one vLLM's values make unwritable ends the stream with an error event.
    held: list[tuple[bool, bytes]] = []
    first = True
    finish_reason: str | None = None
    try:
        async with aclosing(upstream_objects(events)) as objects:
            async for raw in objects:
                state.usage = usage_of(raw) or state.usage
                for choice in choices_of(raw):
                    if plan.checked and choice.get("index", 0) != 0:
                        # A checked request has n=1: a second choice is no part of the
                        # answer (joined, two halves of an answer passed as one).
                        raise UpstreamError(
                            f"the upstream sent a choice with index {choice['index']} for a "
                            "request with one choice")
                    delta = object_of(choice, "delta")
                    content = text_of(delta, "content")
                    if content:
                        if escaper is not None:
                            # Escaped before shaping, so a tool call carries the repaired text.
                            content = delta["content"] = escaper.feed(content)
                        state.parts.append(content)
                        state.content_chunks += 1
                chunk = chat_chunk(raw, model, include_usage=plan.include_usage)
                for choice in chunk["choices"]:
                    if choice["finish_reason"] is not None:
                        finish_reason = choice["finish_reason"]
                if plan.mode is Mode.TOOL:
                    as_tool_call_chunk(plan, chunk, first=first)
                    first = False
                if plan.checked and (finish_reason is not None or not chunk["choices"]):
                    held.append((bool(chunk["choices"]), sse(chunk)))
                elif chunk["choices"] or plan.include_usage:
                    yield sse(chunk)
    except GatewayError as error:
        state.outcome = "error"
        state.abandoned = isinstance(error, UpstreamTimeoutError)
        yield _error_event(schema_error_for(error, plan, metrics))
        yield SSE_DONE
        return
    state.abandoned = False

    if plan.checked:
        try:
            checked = check_output(
                "".join(state.parts),
                plan.schema if plan.mode in (Mode.SCHEMA, Mode.TOOL) else None,
                repair=False,
                truncated=finish_reason == "length",
            )
        except CheckFailure as failure:
            state.outcome = "truncated" if failure.truncated else "failed"
            for has_choices, event in held:  # the usage event: the tokens are charged
                if not has_choices and plan.include_usage:
                    yield event
            yield _error_event(failure_to_error(failure, 1))
            yield SSE_DONE
            return
        except GatewayError as error:  # a check that crashed (logged): never a pass
            state.outcome = "error"
            yield _error_event(error)
            yield SSE_DONE
            return
        repaired = escaper is not None and escaper.repaired
        state.outcome = Outcome.REPAIRED if repaired else checked.outcome
        for has_choices, event in held:
            if has_choices or plan.include_usage:
                yield event
        # An SSE comment: ignored by clients, visible to anyone debugging with curl.
        yield f": irgw-output {state.outcome}\n\n".encode()
    else:
        state.outcome = "passthrough"
    yield SSE_DONE


def _status_of(raw: dict[str, Any]) -> int:
    error = raw.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, int) and 400 <= code < 600 else 500


async def relay_completion(events: AsyncIterator[bytes], include_usage: bool,
                           state: StreamState) -> AsyncIterator[bytes]:
    """An unchecked `/v1/completions` stream, relayed as vLLM sends it. vLLM is always
    asked for usage (the limiter settles on it); the usage event reaches the client only
    if it asked for one."""
    try:
        async with aclosing(upstream_objects(events)) as objects:
            async for raw in objects:
                usage = usage_of(raw)
                if usage is not None:
                    state.usage = usage
                    if not raw.get("choices"):
                        if include_usage:
                            yield sse(raw)
                        continue
                    if not include_usage:
                        raw.pop("usage")
                choices = choices_of(raw)
                for choice in choices:
                    choice["finish_reason"] = finish_reason(choice.get("finish_reason"))
                if any(choice.get("text") for choice in choices):
                    state.content_chunks += 1
                yield sse(raw)
        state.abandoned = False
    except GatewayError as error:
        state.outcome = "error"
        state.abandoned = isinstance(error, UpstreamTimeoutError)
        yield _error_event(error)
    yield SSE_DONE
