"""The gateway's own OpenAPI 3.1 document, generated from the app and checked in.

FastAPI's `app.openapi()` knows the routes but nothing of their bodies: the handlers read
raw JSON (to pass unknown fields on to vLLM untouched) and return `Response` objects. So the
document is post-processed here, without touching the route modules: request bodies for the
POST routes, response shapes, the OpenAI error shape for every error status, the rate-limit
and `x-irgw-*` headers, and the bearer security scheme.

    python -m gateway.openapi_doc --write   # regenerate openapi/openapi.json
    python -m gateway.openapi_doc --check   # exit 1 (with a summary) if the file is stale

The output is deterministic: insertion order as built here (never sorted, so a reader sees
`model` before `messages`), `indent=2`, a trailing newline.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import difflib
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOCUMENT_PATH = REPO / "openapi" / "openapi.json"

JSON = dict[str, Any]


def _ref(kind: str, name: str) -> JSON:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> JSON:
    return _ref("schemas", name)


def _nullable(schema: JSON) -> JSON:
    return {"anyOf": [schema, {"type": "null"}]}


# ---------------------------------------------------------------------------- headers

_RATELIMIT_HEADERS: list[tuple[str, str, JSON]] = [
    ("x-ratelimit-limit-requests", "Requests per minute this key may make (only when the key "
     "has an RPM limit).", {"type": "string", "pattern": "^[0-9]+$"}),
    ("x-ratelimit-remaining-requests", "Requests left in the bucket after this one.",
     {"type": "string", "pattern": "^[0-9]+$"}),
    ("x-ratelimit-reset-requests", "Time until the request bucket is full again, as a Go "
     "duration (`1s`, `120ms`, `6m0s`).", {"type": "string", "examples": ["1.2s", "6m0s"]}),
    ("x-ratelimit-limit-tokens", "Tokens per minute this key may use (only when the key has "
     "a TPM limit).", {"type": "string", "pattern": "^[0-9]+$"}),
    ("x-ratelimit-remaining-tokens", "Tokens left in the bucket after reserving prompt + "
     "max_tokens for this request.", {"type": "string", "pattern": "^[0-9]+$"}),
    ("x-ratelimit-reset-tokens", "Time until the token bucket is full again (Go duration).",
     {"type": "string", "examples": ["30s"]}),
]

_HEADERS: dict[str, JSON] = {
    "x-request-id": {
        "description": "The caller's `x-request-id` when it is sane (`[A-Za-z0-9._:-]{1,128}`), "
        "else a fresh `req_<hex>`; also forwarded to vLLM.",
        "schema": {"type": "string"},
    },
    "x-irgw-schema": {
        "description": "The schema the output was checked against: `name@version`, or "
        "`<name> (ad-hoc)` for a schema sent with the request.",
        "schema": {"type": "string", "examples": ["function_ir@1", "FunctionIR (ad-hoc)"]},
    },
    "x-irgw-schema-warnings": {
        "description": "Keywords of an ad-hoc schema the grammar engine does not enforce while "
        "decoding (the gateway's validation still does).",
        "schema": {"type": "string"},
    },
    "x-irgw-output": {
        "description": "What the output check found: `passed`, `repaired` (raw control "
        "characters escaped), `retried` (passed after a retry), `checked-at-end` (a stream: "
        "the verdict comes as the last event), `passthrough` (nothing to check).",
        "schema": {"type": "string", "enum": ["passed", "repaired", "retried", "checked-at-end",
                                              "passthrough"]},
    },
    "x-irgw-attempts": {
        "description": "Upstream calls made for this answer (more than 1 only with the "
        "`retry` output policy).",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    **{name: {"description": text, "schema": schema} for name, text, schema in _RATELIMIT_HEADERS},
    "retry-after": {
        "description": "Seconds to wait before retrying (whole seconds, at least 1).",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "retry-after-ms": {
        "description": "Milliseconds to wait before retrying; the official OpenAI clients "
        "prefer it over `retry-after`.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "www-authenticate": {
        "description": "Always `Bearer`.",
        "schema": {"type": "string", "const": "Bearer"},
    },
}

_HEADER_COMPONENT_NAMES = {
    name: "".join(part.capitalize() for part in name.split("-")) for name in _HEADERS
}


def _headers(*names: str) -> JSON:
    return {name: _ref("headers", _HEADER_COMPONENT_NAMES[name]) for name in names}


_RATELIMIT_NAMES = tuple(name for name, _, _ in _RATELIMIT_HEADERS)
_SUCCESS_HEADERS = ("x-request-id", "x-irgw-schema", "x-irgw-schema-warnings", "x-irgw-output",
                    "x-irgw-attempts", *_RATELIMIT_NAMES)


# ---------------------------------------------------------------------------- schemas

_MODEL_DESCRIPTION = (
    "An upstream model id (see `GET /v1/models`), or `schema/<name>[@<version>]`: the default "
    "upstream model with that registered schema as the output constraint (newest version "
    "when `@<version>` is left out)."
)

_RESPONSE_FORMAT: JSON = {
    "description": "`text` (default), `json_object` (any JSON object, parsed), or "
    "`json_schema`: with `json_schema.name` alone it names a registered schema (`function_ir`, "
    "`function_ir@1`); with `json_schema.schema` it is an ad-hoc schema (what "
    "`client.chat.completions.parse(response_format=Model)` sends; the key needs "
    "`allow_adhoc`). Not combinable with a forced tool call.",
    "oneOf": [
        {"type": "object", "title": "text",
         "properties": {"type": {"const": "text"}}, "required": ["type"]},
        {"type": "object", "title": "json_object",
         "properties": {"type": {"const": "json_object"}}, "required": ["type"]},
        {"type": "object", "title": "json_schema",
         "properties": {
             "type": {"const": "json_schema"},
             "json_schema": {
                 "type": "object",
                 "properties": {
                     "name": {"type": "string", "description": "A registered schema "
                              "(`name` or `name@version`) when `schema` is absent; otherwise "
                              "a label for the ad-hoc schema.",
                              "examples": ["function_ir", "function_ir@1"]},
                     "schema": {"type": "object", "description": "An ad-hoc JSON Schema "
                                "(Draft 2020-12); invalid ones are a 400 `invalid_schema`."},
                     "strict": {"type": "boolean", "description": "Accepted; the gateway "
                                "always constrains and validates."},
                     "description": {"type": "string"},
                 },
                 "additionalProperties": True,
             },
         },
         "required": ["type", "json_schema"]},
    ],
}

_STREAM_OPTIONS: JSON = {
    "type": "object",
    "description": "Only with `stream: true` (else 400).",
    "properties": {"include_usage": {
        "type": "boolean",
        "description": "Send a last chunk with `choices: []` and the usage.",
    }},
}

_MAX_TOKENS: JSON = {
    "type": "integer", "minimum": 1,
    "description": "Defaults to the gateway's `default_max_tokens` for structured requests; "
    "above the key's `max_tokens` cap it is a 400 `max_tokens_above_key_limit`.",
}

_TOOL: JSON = {
    "type": "object",
    "properties": {
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "description": {"type": "string"},
                "parameters": {"type": "object", "description": "JSON Schema of the "
                               "arguments. Empty or absent with the name of a registered schema: "
                               "that registered schema."},
                "strict": {"type": "boolean"},
            },
            "required": ["name"],
        },
    },
    "required": ["type", "function"],
}

_TOOL_CHOICE: JSON = {
    "description": "A forced single tool (`required` with one tool, or a named function) is "
    "served by the gateway as structured output and answered as one `tool_calls` entry with "
    "`finish_reason: tool_calls`. Anything else goes to vLLM unchanged.",
    "oneOf": [
        {"type": "string", "enum": ["none", "auto", "required"]},
        {"type": "object",
         "properties": {"type": {"const": "function"},
                        "function": {"type": "object",
                                     "properties": {"name": {"type": "string"}},
                                     "required": ["name"]}},
         "required": ["type", "function"]},
    ],
}

_MESSAGE: JSON = {
    "type": "object",
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}},
                              {"type": "null"}]},
        "name": {"type": "string"},
        "tool_calls": {"type": "array", "items": _schema("ToolCall")},
        "tool_call_id": {"type": "string"},
    },
    "required": ["role"],
    "additionalProperties": True,
}

_SAMPLING: JSON = {
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "seed": {"type": "integer"},
    "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}},
                       {"type": "null"}]},
    "user": {"type": "string"},
}

_CHAT_REQUEST: JSON = {
    "type": "object",
    "description": "OpenAI's chat request. Fields not listed are passed to vLLM as they are.",
    "properties": {
        "model": {"type": "string", "description": _MODEL_DESCRIPTION,
                  "examples": ["tiny-qwen2", "schema/function_ir", "schema/function_ir@1"]},
        "messages": {"type": "array", "minItems": 1, "items": _schema("ChatMessage")},
        "response_format": _schema("ResponseFormat"),
        "stream": {"type": "boolean", "default": False, "description": "A structured stream "
                   "holds back the finishing chunk until the whole answer is checked; a failed "
                   "check ends the stream with `data: {\"error\": ...}` before `[DONE]`."},
        "stream_options": _schema("StreamOptions"),
        "max_tokens": _MAX_TOKENS,
        "max_completion_tokens": {**_MAX_TOKENS, "description": "Preferred over `max_tokens` "
                                  "when both are set."},
        "n": {"type": "integer", "minimum": 1, "default": 1,
              "description": "Must be 1 for structured output."},
        "tools": {"type": "array", "items": _schema("Tool")},
        "tool_choice": _schema("ToolChoice"),
        "parallel_tool_calls": {"type": "boolean"},
        **_SAMPLING,
    },
    "required": ["model", "messages"],
    "additionalProperties": True,
}

_COMPLETION_REQUEST: JSON = {
    "type": "object",
    "description": "OpenAI's legacy completions request. A schema is named by `model: "
    "schema/<name>` or `response_format` and sent to vLLM in its own constraint field; naming "
    "one and also sending vLLM's `structured_outputs`/`guided_*` is a 400. A structured stream "
    "is answered after checking, as one chunk.",
    "properties": {
        "model": {"type": "string", "description": _MODEL_DESCRIPTION,
                  "examples": ["tiny-qwen2", "schema/function_ir"]},
        "prompt": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "response_format": _schema("ResponseFormat"),
        "stream": {"type": "boolean", "default": False},
        "stream_options": _schema("StreamOptions"),
        "max_tokens": _MAX_TOKENS,
        "n": {"type": "integer", "minimum": 1, "default": 1},
        **_SAMPLING,
    },
    "required": ["model", "prompt"],
    "additionalProperties": True,
}

_USAGE: JSON = {
    "type": "object",
    "properties": {"prompt_tokens": {"type": "integer"},
                   "completion_tokens": {"type": "integer"},
                   "total_tokens": {"type": "integer"}},
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
}

_FINISH_REASON: JSON = {"type": "string",
                        "enum": ["stop", "length", "tool_calls", "content_filter",
                                 "function_call"]}

_TOOL_CALL: JSON = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "type": {"const": "function"},
        "function": {"type": "object",
                     "properties": {"name": {"type": "string"},
                                    "arguments": {"type": "string", "description": "JSON text; "
                                                  "checked against the tool's schema."}},
                     "required": ["name", "arguments"]},
    },
    "required": ["id", "type", "function"],
}

_CHAT_RESPONSE: JSON = {
    "type": "object",
    "description": "Only OpenAI's fields (vLLM's extras are dropped). With a schema, "
    "`message.content` (or the tool call's `arguments`) is JSON that passed validation.",
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string", "description": "The model as the client named it."},
        "choices": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "index": {"type": "integer"},
                "message": {
                    "type": "object",
                    "properties": {
                        "role": {"const": "assistant"},
                        "content": _nullable({"type": "string"}),
                        "refusal": _nullable({"type": "string"}),
                        "tool_calls": {"type": "array", "items": _schema("ToolCall")},
                    },
                    "required": ["role", "content", "refusal"],
                },
                "logprobs": _nullable({"type": "object"}),
                "finish_reason": _FINISH_REASON,
            },
            "required": ["index", "message", "logprobs", "finish_reason"],
        }},
        "usage": _schema("Usage"),
    },
    "required": ["id", "object", "created", "model", "choices"],
}

_CHAT_CHUNK: JSON = {
    "type": "object",
    "description": "One `data:` event of a chat stream; the stream ends with `data: [DONE]`. "
    "A failed output check or an upstream error arrives as `data: {\"error\": ...}` "
    "(an ErrorResponse) before `[DONE]`.",
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion.chunk"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "index": {"type": "integer"},
                "delta": {"type": "object", "properties": {
                    "role": {"type": "string"},
                    "content": {"type": "string"},
                    "refusal": {"type": "string"},
                    "tool_calls": {"type": "array", "items": {"type": "object"}},
                }},
                "logprobs": _nullable({"type": "object"}),
                "finish_reason": _nullable(_FINISH_REASON),
            },
            "required": ["index", "delta", "finish_reason"],
        }},
        "usage": _nullable(_schema("Usage")),
    },
    "required": ["id", "object", "created", "model", "choices"],
}

_COMPLETION_RESPONSE: JSON = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "text_completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {
            "type": "object",
            "properties": {"index": {"type": "integer"}, "text": {"type": "string"},
                           "logprobs": _nullable({"type": "object"}),
                           "finish_reason": _FINISH_REASON},
            "required": ["index", "text", "logprobs", "finish_reason"],
        }},
        "usage": _schema("Usage"),
    },
    "required": ["id", "object", "created", "model", "choices"],
}

_MODEL: JSON = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "examples": ["tiny-qwen2", "schema/function_ir",
                                             "schema/function_ir@1"]},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string", "description": "`vllm` for upstream models, "
                     "`ir-gateway` for schema aliases."},
    },
    "required": ["id", "object", "created", "owned_by"],
}

_SCHEMA_VERSION: JSON = {
    "type": "object",
    "properties": {
        "object": {"const": "schema.version"},
        "name": {"type": "string"},
        "version": {"type": "integer", "minimum": 1},
        "description": {"type": "string"},
        "output_policy": {"type": "string", "enum": ["repair", "retry", "error"]},
        "schema": {"type": "object", "description": "The JSON Schema (Draft 2020-12), in "
                   "generation order."},
    },
    "required": ["object", "name", "version", "description", "output_policy", "schema"],
}

_SCHEMA_SUMMARY: JSON = {
    "type": "object",
    "properties": {
        "object": {"const": "schema"},
        "name": {"type": "string"},
        "latest_version": {"type": "integer"},
        "versions": {"type": "array", "items": {"type": "integer"}},
        "description": {"type": "string"},
        "model": {"type": "string", "description": "The `schema/<name>` model alias."},
    },
    "required": ["object", "name", "latest_version", "versions", "description", "model"],
}

_SCHEMA_DETAIL: JSON = {
    "type": "object",
    "properties": {
        "object": {"const": "schema"},
        "name": {"type": "string"},
        "latest_version": {"type": "integer"},
        "description": {"type": "string"},
        "versions": {"type": "array", "items": _schema("SchemaVersion"),
                     "description": "Every version, newest last."},
    },
    "required": ["object", "name", "latest_version", "description", "versions"],
}

_ERROR_RESPONSE: JSON = {
    "type": "object",
    "description": "OpenAI's error shape; the official clients map the status to their "
    "exception classes (400 BadRequestError, 401 AuthenticationError, 403 "
    "PermissionDeniedError, 404 NotFoundError, 422 UnprocessableEntityError, 429 "
    "RateLimitError, 5xx InternalServerError).",
    "properties": {"error": {
        "type": "object",
        "properties": {
            "message": {"type": "string"},
            "type": {"type": "string", "examples": [
                "invalid_request_error", "permission_error", "rate_limit_error",
                "output_validation_error", "upstream_error", "upstream_unavailable",
                "upstream_timeout", "server_error"]},
            "param": _nullable({"type": "string"}),
            "code": _nullable({"type": "string", "examples": [
                "invalid_api_key", "permission_denied", "schema_not_allowed",
                "adhoc_schema_not_allowed", "schema_not_found", "model_not_found",
                "invalid_schema", "unsupported_schema_feature", "max_tokens_above_key_limit",
                "request_too_large", "output_validation_failed", "output_truncated",
                "rate_limit_exceeded", "overloaded", "upstream_error", "upstream_unavailable",
                "upstream_timeout"]}),
            "pointer": {"type": "string", "description": "422 only: JSON pointer into the "
                        "model's answer where the check failed (empty: the whole answer)."},
            "constraint": {"type": "string", "description": "422 only: the schema keyword "
                           "or parse rule that failed."},
            "raw_output": {"type": "string", "description": "422 only: the model's answer "
                           "(first 16 KiB), for debugging."},
            "raw_output_truncated": {"type": "boolean"},
            "attempts": {"type": "integer", "minimum": 1,
                         "description": "422 only: upstream calls made."},
        },
        "required": ["message", "type", "param", "code"],
    }},
    "required": ["error"],
}

_HEALTH: JSON = {"type": "object", "properties": {"status": {"const": "ok"}},
                 "required": ["status"]}
_READY: JSON = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ready", "unavailable"]},
        "upstream_version": {"type": "string"},
        "dialect": {"type": "string"},
        "upstream": {"type": "string"},
        "reason": {"type": "string"},
    },
    "required": ["status"],
}

_COMPONENT_SCHEMAS: dict[str, JSON] = {
    "ChatCompletionRequest": _CHAT_REQUEST,
    "CompletionRequest": _COMPLETION_REQUEST,
    "ChatMessage": _MESSAGE,
    "ResponseFormat": _RESPONSE_FORMAT,
    "StreamOptions": _STREAM_OPTIONS,
    "Tool": _TOOL,
    "ToolChoice": _TOOL_CHOICE,
    "ToolCall": _TOOL_CALL,
    "Usage": _USAGE,
    "ChatCompletion": _CHAT_RESPONSE,
    "ChatCompletionChunk": _CHAT_CHUNK,
    "Completion": _COMPLETION_RESPONSE,
    "Model": _MODEL,
    "ModelList": {"type": "object",
                  "properties": {"object": {"const": "list"},
                                 "data": {"type": "array", "items": _schema("Model")}},
                  "required": ["object", "data"]},
    "SchemaSummary": _SCHEMA_SUMMARY,
    "SchemaList": {"type": "object",
                   "properties": {"object": {"const": "list"},
                                  "data": {"type": "array", "items": _schema("SchemaSummary")}},
                   "required": ["object", "data"]},
    "SchemaDetail": _SCHEMA_DETAIL,
    "SchemaVersion": _SCHEMA_VERSION,
    "ErrorResponse": _ERROR_RESPONSE,
    "Health": _HEALTH,
    "Readiness": _READY,
}


# ---------------------------------------------------------------------------- responses

_ERROR_DESCRIPTIONS: dict[str, str] = {
    "400": "Invalid request (`invalid_request_error`): a malformed body, an invalid ad-hoc "
    "schema (`invalid_schema`), max_tokens above the key's cap, a request larger than the "
    "key's TPM (`request_too_large`).",
    "401": "Missing, malformed, unknown or revoked API key (`invalid_api_key`).",
    "403": "The key may not use this schema (`schema_not_allowed`) or ad-hoc schemas "
    "(`adhoc_schema_not_allowed`).",
    "404": "Unknown schema (`schema_not_found`), model (`model_not_found`) or route.",
    "422": "The model's answer failed the check after the output policy ran out "
    "(`output_validation_failed`), or was cut off by max_tokens (`output_truncated`). Not "
    "retried by the official clients; `pointer`, `constraint`, `raw_output`, `attempts` say why.",
    "429": "A per-key limit (requests or tokens per minute, requests in flight) is reached "
    "(`rate_limit_exceeded`). The official clients wait `retry-after-ms` and retry.",
    "500": "An unexpected error in the gateway (`internal_error`); details go to its log.",
    "502": "vLLM answered with something unusable (`upstream_error`).",
    "503": "vLLM is not accepting connections (`upstream_unavailable`), or the gateway is at "
    "capacity (`overloaded`).",
    "504": "vLLM did not answer in time (`upstream_timeout`).",
}

_ERROR_HEADERS: dict[str, tuple[str, ...]] = {
    "401": ("www-authenticate",),
    "422": ("x-request-id", "x-irgw-schema", *_RATELIMIT_NAMES),
    "429": ("x-request-id", *_RATELIMIT_NAMES, "retry-after", "retry-after-ms"),
    "502": ("x-request-id",),
    "503": ("x-request-id", "retry-after"),
    "504": ("x-request-id",),
}


def _error_responses(*statuses: str) -> JSON:
    return {status: _ref("responses", f"Error{status}") for status in statuses}


def _response_components() -> JSON:
    responses: JSON = {}
    for status, description in _ERROR_DESCRIPTIONS.items():
        response: JSON = {"description": description}
        if status in _ERROR_HEADERS:
            response["headers"] = _headers(*_ERROR_HEADERS[status])
        response["content"] = {"application/json": {"schema": _schema("ErrorResponse")}}
        responses[f"Error{status}"] = response
    return responses


def _json_body(schema_name: str, description: str) -> JSON:
    return {"required": True, "description": description,
            "content": {"application/json": {"schema": _schema(schema_name)}}}


def _ok(description: str, schema_name: str, *headers: str, stream: str | None = None) -> JSON:
    content: JSON = {"application/json": {"schema": _schema(schema_name)}}
    if stream is not None:
        content["text/event-stream"] = {
            "schema": {"type": "string", "description": f"Server-sent events: `data: <{stream}>` "
                       "lines, then `data: [DONE]`."},
        }
    response: JSON = {"description": description}
    if headers:
        response["headers"] = _headers(*headers)
    response["content"] = content
    return response


_API_ERRORS = ("400", "401", "403", "404", "422", "429", "500", "502", "503", "504")

_OPERATIONS: dict[tuple[str, str], JSON] = {
    ("/v1/chat/completions", "post"): {
        "summary": "Create a chat completion, optionally constrained to a schema",
        "tags": ["inference"],
        "requestBody": _json_body("ChatCompletionRequest",
                                  "Name a schema by `response_format` or `model: schema/<name>`, "
                                  "or force one tool."),
        "responses": {
            "200": _ok("The completion (or, with `stream: true`, its chunks).", "ChatCompletion",
                       *_SUCCESS_HEADERS, stream="ChatCompletionChunk"),
            **_error_responses(*_API_ERRORS),
        },
    },
    ("/v1/completions", "post"): {
        "summary": "Create a text completion, optionally constrained to a schema",
        "tags": ["inference"],
        "requestBody": _json_body("CompletionRequest", "A legacy completions request."),
        "responses": {
            "200": _ok("The completion (or, with `stream: true`, its chunks).", "Completion",
                       "x-request-id", "x-irgw-schema", "x-irgw-output", *_RATELIMIT_NAMES,
                       stream="Completion"),
            **_error_responses(*_API_ERRORS),
        },
    },
    ("/v1/models", "get"): {
        "summary": "List vLLM's models and one `schema/<name>` alias per registered schema",
        "tags": ["models"],
        "responses": {"200": _ok("The models.", "ModelList"),
                      **_error_responses("401", "502", "503", "504")},
    },
    ("/v1/models/{model_id}", "get"): {
        "summary": "One model or schema alias",
        "tags": ["models"],
        "responses": {"200": _ok("The model.", "Model"),
                      **_error_responses("401", "404", "502", "503", "504")},
    },
    ("/v1/schemas", "get"): {
        "summary": "List the registered schemas",
        "tags": ["schemas"],
        "responses": {"200": _ok("The registry.", "SchemaList"), **_error_responses("401")},
    },
    ("/v1/schemas/{ref}", "get"): {
        "summary": "A registered schema: `name` (every version) or `name@version` (that one)",
        "tags": ["schemas"],
        "responses": {
            "200": {"description": "`SchemaDetail` for `name`, `SchemaVersion` for "
                    "`name@version`.",
                    "content": {"application/json": {"schema": {"oneOf": [
                        _schema("SchemaDetail"), _schema("SchemaVersion")]}}}},
            **_error_responses("401", "404"),
        },
    },
    ("/healthz", "get"): {
        "summary": "Liveness",
        "tags": ["operations"],
        "security": [],
        "responses": {"200": _ok("The process is up.", "Health")},
    },
    ("/readyz", "get"): {
        "summary": "Readiness: vLLM answers `/version` now",
        "tags": ["operations"],
        "security": [],
        "responses": {
            "200": _ok("Ready.", "Readiness"),
            "503": {"description": "vLLM is not answering (or runs an unsupported version).",
                    "headers": _headers("retry-after"),
                    "content": {"application/json": {"schema": _schema("Readiness")}}},
        },
    },
    ("/metrics", "get"): {
        "summary": "Prometheus metrics",
        "tags": ["operations"],
        "security": [],
        "responses": {"200": {"description": "Prometheus text exposition format.",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}},
    },
}

_PATH_PARAMETER_DESCRIPTIONS = {
    "model_id": "A model id; may contain `/` (`schema/function_ir`).",
    "ref": "`name` or `name@version`.",
}


class UndocumentedRouteError(Exception):
    """The app has a route this module does not describe: add it to `_OPERATIONS`."""


def enrich(generated: JSON) -> JSON:
    """FastAPI's document for the app, with what the handlers cannot declare filled in."""
    doc = copy.deepcopy(generated)
    missing = [
        f"{method.upper()} {path}"
        for path, item in doc.get("paths", {}).items()
        for method in item
        if (path, method) not in _OPERATIONS
    ]
    if missing:
        raise UndocumentedRouteError(
            f"routes without documentation in gateway/openapi_doc.py: {', '.join(missing)}"
        )
    paths: JSON = {}
    for path, item in doc["paths"].items():
        paths[path] = {}
        for method, operation in item.items():
            extra = _OPERATIONS[(path, method)]
            described: JSON = {
                "summary": extra["summary"],
                "operationId": operation["operationId"],
                "tags": extra["tags"],
            }
            if "description" in operation:
                described["description"] = operation["description"]
            if "security" in extra:
                described["security"] = extra["security"]
            # FastAPI's generated titles add nothing; keep name/in/required/schema.
            parameters = [
                {"name": p["name"], "in": p["in"], "required": p.get("required", False),
                 **({"description": _PATH_PARAMETER_DESCRIPTIONS[p["name"]]}
                    if p["name"] in _PATH_PARAMETER_DESCRIPTIONS else {}),
                 "schema": {"type": p["schema"].get("type", "string")}}
                for p in operation.get("parameters", [])
            ]
            if parameters:
                described["parameters"] = parameters
            if "requestBody" in extra:
                described["requestBody"] = extra["requestBody"]
            # FastAPI's 422 HTTPValidationError never reaches clients: the gateway turns
            # request validation errors into a 400 in OpenAI's shape.
            described["responses"] = extra["responses"]
            paths[path][method] = described
    result: JSON = {
        "openapi": doc["openapi"],
        "info": doc["info"],
        "security": [{"bearerAuth": []}],
        "tags": [
            {"name": "inference", "description": "OpenAI-compatible endpoints."},
            {"name": "models", "description": "Upstream models and schema aliases."},
            {"name": "schemas", "description": "The named, versioned schema registry."},
            {"name": "operations", "description": "Health, readiness, metrics (no key needed)."},
        ],
        "paths": paths,
        "components": {
            "schemas": _COMPONENT_SCHEMAS,
            "responses": _response_components(),
            "headers": {_HEADER_COMPONENT_NAMES[name]: header
                        for name, header in _HEADERS.items()},
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "An ir-gateway API key (`irgw-<id>-<secret>`), sent the way "
                "OpenAI's clients send `api_key`.",
            }},
        },
    }
    # A deep copy: the module-level constants are shared between calls and must not be
    # aliased into a document a caller might mutate.
    return copy.deepcopy(result)


@contextlib.contextmanager
def _quiet_auth_warning() -> Iterator[None]:
    # Building the app with auth off (no keys file needed) logs a loud warning meant for
    # operators; it is noise when only the route table is wanted.
    logger = logging.getLogger("gateway.auth")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def build_document() -> JSON:
    from gateway.app import create_app
    from gateway.settings import Settings

    # Auth off so no keys file is needed; the document still declares bearer auth,
    # which is how the gateway is deployed. Only the route table is read from the app.
    with _quiet_auth_warning():
        app = create_app(Settings(auth_enabled=False, schemas_dir=REPO / "schemas"))
    return enrich(app.openapi())


def render(doc: JSON) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def check(path: Path = DOCUMENT_PATH) -> list[str]:
    """Differences between the generated document and `path`, as unified-diff lines."""
    expected = render(build_document())
    try:
        actual = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [f"{path} does not exist"]
    if actual == expected:
        return []
    return list(difflib.unified_diff(actual.splitlines(), expected.splitlines(),
                                     fromfile=f"{path} (checked in)", tofile="generated",
                                     lineterm="", n=1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.openapi_doc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help=f"write {DOCUMENT_PATH}")
    action.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    action.add_argument("--print", action="store_true", help="print the document")
    parser.add_argument("--path", type=Path, default=DOCUMENT_PATH)
    args = parser.parse_args(argv)
    if args.print:
        sys.stdout.write(render(build_document()))
        return 0
    if args.write:
        args.path.parent.mkdir(parents=True, exist_ok=True)
        args.path.write_text(render(build_document()), encoding="utf-8")
        print(f"wrote {args.path}")
        return 0
    if not args.path.is_file():
        print(f"{args.path} does not exist; run `python -m gateway.openapi_doc --write` "
              "(or `make openapi`)", file=sys.stderr)
        return 1
    diff = check(args.path)
    if not diff:
        print(f"{args.path} is up to date")
        return 0
    changed = sum(1 for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---"))
    print(f"{args.path} is stale ({changed} changed lines); run "
          "`python -m gateway.openapi_doc --write` (or `make openapi`). First differences:",
          file=sys.stderr)
    for line in diff[:60]:
        print(line, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
