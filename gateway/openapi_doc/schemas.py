"""Component schemas: the request and response bodies the gateway understands."""

from __future__ import annotations

from gateway.openapi_doc.headers import JSON, _nullable, _schema
from gateway.output.policies import POLICIES

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
                              "a label for the ad-hoc schema: 1-64 characters of a-z, A-Z, "
                              "0-9, `_` and `-`, as OpenAI requires.",
                              "examples": ["function_ir", "function_ir@1"]},
                     "schema": {"type": "object", "description": "An ad-hoc JSON Schema "
                                "(Draft 2020-12); invalid ones are a 400 `invalid_schema`."},
                     "strict": {"type": "boolean", "description": "Accepted; the gateway "
                                "always constrains and validates."},
                     "description": {"type": "string"},
                 },
                 "additionalProperties": True,
                 "if": {"required": ["schema"]},
                 "then": {"properties": {"name": {"pattern": "^[A-Za-z0-9_-]{1,64}$"}}},
             },
         },
         "required": ["type", "json_schema"]},
    ],
}

_STREAM_OPTIONS: JSON = {
    "type": "object",
    "description": "Only with `stream: true` (else 400); `null` means none.",
    "properties": {"include_usage": {
        "type": "boolean",
        "description": "Send a last chunk with `choices: []` and the usage.",
    }},
}

# vLLM and OpenAI refuse `stream_options` on a request that does not stream; so does the
# gateway (400), and the document says so, so that a client generated from it agrees.
_STREAM_OPTIONS_ONLY_WHEN_STREAMING: JSON = {
    "if": {"not": {"properties": {"stream": {"const": True}}, "required": ["stream"]}},
    "then": {"properties": {"stream_options": {"type": "null"}}},
}

_MAX_TOKENS: JSON = {
    "type": "integer", "minimum": 1,
    "description": "Per answer. Defaults to the gateway's `default_max_tokens` for structured "
    "requests and for keys with a token limit (clipped to what the key's limits allow). "
    "`n` x prompts x max_tokens above the key's `max_tokens` cap is a 400 "
    "`max_tokens_above_key_limit`; with the prompt, above its TPM a 400 `request_too_large`.",
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
        "stream_options": _nullable(_schema("StreamOptions")),
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
    **_STREAM_OPTIONS_ONLY_WHEN_STREAMING,
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
        "stream_options": _nullable(_schema("StreamOptions")),
        "max_tokens": _MAX_TOKENS,
        "n": {"type": "integer", "minimum": 1, "default": 1},
        **_SAMPLING,
    },
    "required": ["model", "prompt"],
    "additionalProperties": True,
    **_STREAM_OPTIONS_ONLY_WHEN_STREAMING,
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


