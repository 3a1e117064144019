"""The bodies the benchmarks send and the fake vLLM answers with.

Two sets: `function_ir`, the overhead benchmarks' named-schema request and vLLM's answer to
it (a valid compact `function_ir` document, the one the unit tests use); and `invoice`,
upstream_client.py's ~1.5 KB request and ~1 KB answer (or a 30-chunk stream)."""

from __future__ import annotations

import json
from typing import Any

import orjson

from bench.common.procs import REPO
from tests.ir_samples import FUNCTION_IR

CHAT_PATH = "/v1/chat/completions"
UPSTREAM_MODEL = "qwen-coder"
USER_CONTENT = "IR for a function that adds two ints"
SCHEMA_FILE = REPO / "schemas" / "function_ir.v1.json"
COMPLETION_ID = "chatcmpl-6f1c2e9a4b7d4e0f9a3c1b2d5e8f7a60"
CREATED = 1732700000


def gateway_body() -> bytes:
    return orjson.dumps({"model": "schema/function_ir",
                         "messages": [{"role": "user", "content": USER_CONTENT}]})


def direct_body() -> bytes:
    """What the gateway sends vLLM for `gateway_body()`: model, constraint, max_tokens."""
    schema = json.loads(SCHEMA_FILE.read_text())["schema"]
    return orjson.dumps({
        "model": UPSTREAM_MODEL,
        "messages": [{"role": "user", "content": USER_CONTENT}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "function_ir", "schema": schema, "strict": True},
        },
        "max_tokens": 1024,
    })


def _completion(model: str, content: str, usage: tuple[int, int]) -> bytes:
    prompt, completion = usage
    return orjson.dumps({
        "id": COMPLETION_ID,
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "tool_calls": []},
            "logprobs": None,
            "finish_reason": "stop",
            "stop_reason": None,
        }],
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt + completion,
                  "completion_tokens": completion},
        "prompt_logprobs": None,
    })


def completion_body() -> bytes:
    """vLLM's answer to `direct_body()`."""
    return _completion(UPSTREAM_MODEL, orjson.dumps(FUNCTION_IR).decode(), (212, 56))


# --- upstream_client.py's set --------------------------------------------------------------

INVOICE_MODEL = "Qwen/Qwen2.5-7B-Instruct"
STREAM_CHUNKS = 30


def _pad(text: str, size: int) -> str:
    return (text * (size // len(text) + 1))[:size]


def invoice_request(stream: bool) -> bytes:
    """A ~1.5 KB OpenAI chat request with a json_schema response_format."""
    body: dict[str, Any] = {
        "model": INVOICE_MODEL,
        "messages": [
            {"role": "system",
             "content": "You extract structured records. Answer with JSON only."},
            {"role": "user",
             "content": _pad("Invoice 2024-118 from ACME GmbH, total 1,234.50 EUR. ", 720)},
        ],
        "temperature": 0.0,
        "max_tokens": 256,
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "invoice",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {
                    "number": {"type": "string"},
                    "vendor": {"type": "string"},
                    "total": {"type": "number"},
                    "currency": {"type": "string", "enum": ["EUR", "USD", "GBP"]},
                },
                "required": ["number", "vendor", "total", "currency"],
                "additionalProperties": False,
            },
        }},
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def invoice_completion() -> bytes:
    """A fixed ~1 KB `chat.completion` answer to `invoice_request`."""
    content = orjson.dumps({"number": "2024-118", "vendor": "ACME GmbH", "total": 1234.5,
                            "currency": "EUR", "notes": _pad("line item widget x4; ", 420)})
    return _completion(INVOICE_MODEL, content.decode(), (312, 156))


def sse_chunks(model: str) -> list[bytes]:
    """30 `chat.completion.chunk` events plus `data: [DONE]`, as vLLM sends them."""
    chunks: list[bytes] = []
    for i in range(STREAM_CHUNKS):
        delta: dict[str, Any] = {"content": f"tok{i:03d} "}
        if i == 0:
            delta = {"role": "assistant", "content": ""}
        event = {
            "id": COMPLETION_ID,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": "stop" if i == STREAM_CHUNKS - 1 else None}],
        }
        chunks.append(b"data: " + orjson.dumps(event) + b"\n\n")
    chunks.append(b"data: [DONE]\n\n")
    return chunks
