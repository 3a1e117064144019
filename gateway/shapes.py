"""OpenAI's response shapes, rebuilt from what vLLM sends.

vLLM adds fields of its own (`prompt_logprobs`, `kv_transfer_params`, `reasoning_content`,
`service_tier: null`, ...), some of which OpenAI's spec does not allow. The gateway copies
only the fields OpenAI defines, so every client sees the shape its SDK was written for.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.errors import UpstreamError

FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})


def finish_reason(value: Any) -> str | None:
    """vLLM's reason in OpenAI's words. vLLM's own "abort" and "error" mean the generation
    failed: an upstream error, never an answer that looks finished. "repetition" (stopped
    by its repetition check) cut the answer short, as "length" does. Anything else
    unknown is taken for a stop."""
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
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": int(usage.get("total_tokens") or prompt + completion)}


def _message(raw: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": raw.get("content"),
        "refusal": raw.get("refusal"),
    }
    tool_calls = raw.get("tool_calls")
    if tool_calls:
        message["tool_calls"] = [_tool_call(call) for call in tool_calls]
    return message


def _tool_call(raw: dict[str, Any]) -> dict[str, Any]:
    function = raw.get("function") or {}
    return {
        "id": raw.get("id"),
        "type": "function",
        "function": {"name": function.get("name"), "arguments": function.get("arguments")},
    }


def chat_completion(data: dict[str, Any], model: str) -> dict[str, Any]:
    choices = []
    for index, raw in enumerate(data.get("choices") or []):
        choices.append({
            "index": raw.get("index", index),
            "message": _message(raw.get("message") or {}),
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
    for index, raw in enumerate(data.get("choices") or []):
        delta_raw = raw.get("delta") or {}
        delta: dict[str, Any] = {}
        if "role" in delta_raw:
            delta["role"] = delta_raw["role"]
        if delta_raw.get("content") is not None:
            delta["content"] = delta_raw["content"]
        if delta_raw.get("refusal") is not None:
            delta["refusal"] = delta_raw["refusal"]
        if delta_raw.get("tool_calls"):
            delta["tool_calls"] = delta_raw["tool_calls"]
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
    return b"data: " + orjson.dumps(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
