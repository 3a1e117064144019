"""OpenAI's response shapes, rebuilt from what vLLM sends.

vLLM adds fields of its own (`prompt_logprobs`, `kv_transfer_params`, `reasoning_content`,
`service_tier: null`, ...), some of which OpenAI's spec does not allow. The gateway copies
only the fields OpenAI defines, so every client sees the shape its SDK was written for.

What the gateway reads is checked on the way: a body that is not the shape vLLM sends
(`choices` not a list, a choice not an object, content not a string, bad `usage`) is an
UpstreamError (502, or an error event in a stream) naming what was wrong, never a 500
or a dropped connection.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.errors import UpstreamError
from gateway.server.asgi import SSE_END

FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})


def malformed(what: str, value: Any) -> UpstreamError:
    shown = repr(value)
    return UpstreamError(f"the upstream sent a malformed answer: {what}, got "
                         f"{shown[:100]}{'...' if len(shown) > 100 else ''}")


def choices_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The answer's choices; absent or null is none."""
    choices = data.get("choices")
    if choices is None:
        return []
    if not isinstance(choices, list):
        raise malformed("'choices' must be a list", choices)
    for choice in choices:
        if not isinstance(choice, dict):
            raise malformed("each choice must be an object", choice)
        index = choice.get("index", 0)
        if type(index) is not int:
            raise malformed("a choice's 'index' must be an integer", index)
    return choices


def object_of(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise malformed(f"a choice's '{key}' must be an object", value)
    return value


def text_of(raw: dict[str, Any], key: str) -> str | None:
    """A choice's generated text (`content` or `text`): a string or null."""
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise malformed(f"'{key}' must be a string or null", value)
    return value


def finish_reason(value: Any) -> str | None:
    """vLLM's reason in OpenAI's words. vLLM's own "abort" and "error" mean the generation
    failed: an upstream error, never an answer that looks finished. "repetition" (stopped
    by its repetition check) cut the answer short, as "length" does. Anything else
    unknown is taken for a stop."""
    if value is not None and not isinstance(value, str):
        raise malformed("'finish_reason' must be a string or null", value)
    if value is None or value in FINISH_REASONS:
        return value
    if value in ("abort", "error"):
        raise UpstreamError(f"vLLM ended the generation with finish_reason {value!r}")
    return "length" if value == "repetition" else "stop"


def _logprobs(raw: Any) -> dict[str, Any] | None:
    # OpenAI's object has both keys; vLLM's only `content`.
    if not isinstance(raw, dict):
        return None
    return {"content": raw.get("content"), "refusal": raw.get("refusal")}


def usage_of(data: Any) -> dict[str, int] | None:
    usage = data.get("usage") if isinstance(data, dict) else None
    if usage is None:
        return None
    if not isinstance(usage, dict):
        raise malformed("'usage' must be an object", usage)
    counts: dict[str, int] = {}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = usage.get(key)
        if value is not None and (type(value) is not int or value < 0):
            raise malformed(f"'usage.{key}' must be a non-negative integer", value)
        counts[key] = value or 0
    prompt, completion = counts["prompt_tokens"], counts["completion_tokens"]
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": counts["total_tokens"] or prompt + completion}


def _message(raw: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text_of(raw, "content"),
        "refusal": text_of(raw, "refusal"),
    }
    tool_calls = raw.get("tool_calls")
    if tool_calls:
        message["tool_calls"] = [_tool_call(call) for call in _calls(tool_calls)]
    return message


def _calls(tool_calls: Any) -> list[dict[str, Any]]:
    if not isinstance(tool_calls, list) or not all(isinstance(c, dict) for c in tool_calls):
        raise malformed("'tool_calls' must be a list of objects", tool_calls)
    return tool_calls


def _tool_call(raw: dict[str, Any]) -> dict[str, Any]:
    function = object_of(raw, "function")
    return {
        "id": raw.get("id"),
        "type": "function",
        "function": {"name": function.get("name"), "arguments": function.get("arguments")},
    }


def chat_completion(data: dict[str, Any], model: str) -> dict[str, Any]:
    choices = []
    for index, raw in enumerate(choices_of(data)):
        choices.append({
            "index": raw.get("index", index),
            "message": _message(object_of(raw, "message")),
            "logprobs": _logprobs(raw.get("logprobs")),
            "finish_reason": finish_reason(raw.get("finish_reason")) or "stop",
        })
    result: dict[str, Any] = {
        "id": data.get("id") or "chatcmpl-gateway",
        "object": "chat.completion",
        "created": data.get("created") or int(time.time()),
        "model": model,
        "choices": choices,
    }
    usage = usage_of(data)
    if usage is not None:
        result["usage"] = usage
    return result


def chat_chunk(data: dict[str, Any], model: str, *, include_usage: bool) -> dict[str, Any]:
    choices = []
    for index, raw in enumerate(choices_of(data)):
        delta_raw = object_of(raw, "delta")
        delta: dict[str, Any] = {}
        if "role" in delta_raw:
            delta["role"] = delta_raw["role"]
        if text_of(delta_raw, "content") is not None:
            delta["content"] = delta_raw["content"]
        if text_of(delta_raw, "refusal") is not None:
            delta["refusal"] = delta_raw["refusal"]
        if delta_raw.get("tool_calls"):
            delta["tool_calls"] = _calls(delta_raw["tool_calls"])
        choices.append({
            "index": raw.get("index", index),
            "delta": delta,
            "logprobs": _logprobs(raw.get("logprobs")),
            "finish_reason": finish_reason(raw.get("finish_reason")),
        })
    chunk: dict[str, Any] = {
        "id": data.get("id") or "chatcmpl-gateway",
        "object": "chat.completion.chunk",
        "created": data.get("created") or int(time.time()),
        "model": model,
        "choices": choices,
    }
    if include_usage:
        chunk["usage"] = usage_of(data)
    return chunk


def sse(payload: dict[str, Any]) -> bytes:
    """One event; an UpstreamError when vLLM's values cannot be written back (nested past
    orjson's 255 levels), so that a relay ends with an error event, not a cut connection."""
    try:
        return b"data: " + orjson.dumps(payload) + b"\n\n"
    except orjson.JSONEncodeError as exc:
        raise unwritable(exc) from exc


def unwritable(exc: Exception) -> UpstreamError:
    return UpstreamError(f"the upstream sent an answer that cannot be written back: {exc}")


SSE_DONE = SSE_END  # the response holds it back until the request is settled
