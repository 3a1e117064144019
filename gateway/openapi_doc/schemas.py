"""Component schemas: the response bodies (the request bodies: `requests.py`)."""

from __future__ import annotations

from gateway.openapi_doc.headers import JSON, _nullable, _schema
from gateway.output.policies import POLICIES

# ---------------------------------------------------------------------------- schemas

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


def _completion(finish_reason: JSON) -> JSON:
    return {
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
                               "finish_reason": finish_reason},
                "required": ["index", "text", "logprobs", "finish_reason"],
            }},
            "usage": _schema("Usage"),
        },
        "required": ["id", "object", "created", "model", "choices"],
    }


_COMPLETION_RESPONSE = _completion(_FINISH_REASON)
# A streamed piece has the same shape; `finish_reason` stays null until the last one.
_COMPLETION_CHUNK = _completion(_nullable(_FINISH_REASON))

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
        "output_policy": {"type": "string", "enum": list(POLICIES)},
        "checks": {"type": "array", "description": "Checks beyond JSON Schema that an answer "
                   "must also pass (README: Checks beyond JSON Schema); `at` are JSON pointers "
                   "into the answer, `*` for every item of an array.",
                   "items": {"type": "object", "properties": {
                       "check": {"type": "string", "examples": [
                           "python_identifier", "unique", "python_type",
                           "dotted_module_name", "test_function_name"]},
                       "at": {"type": "array", "items": {"type": "string"}}},
                       "required": ["check", "at"]}},
        "schema": {"type": "object", "description": "The JSON Schema (Draft 2020-12), in "
                   "generation order."},
    },
    "required": ["object", "name", "version", "description", "output_policy", "checks",
                 "schema"],
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
        "canary": {"type": "object", "description": "The last check that vLLM enforces the "
                   "schemas it is sent (IRGW_CANARY); `not_constraining` makes readiness fail.",
                   "properties": {
                       "verdict": {"type": "string", "enum": [
                           "constraining", "not_constraining", "inconclusive"]},
                       "reason": {"type": "string"},
                       "age_s": {"type": "number"}},
                   "required": ["verdict", "reason", "age_s"]},
    },
    "required": ["status"],
}

_COMPONENT_SCHEMAS: dict[str, JSON] = {
    "ToolCall": _TOOL_CALL,
    "Usage": _USAGE,
    "ChatCompletion": _CHAT_RESPONSE,
    "ChatCompletionChunk": _CHAT_CHUNK,
    "Completion": _COMPLETION_RESPONSE,
    "CompletionChunk": _COMPLETION_CHUNK,
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


