"""Responses and per-route operations that FastAPI cannot infer from raw handlers."""

from __future__ import annotations

from gateway.openapi_doc.headers import (
    _RATELIMIT_NAMES,
    _SUCCESS_HEADERS,
    JSON,
    _headers,
    _ref,
    _schema,
)
from gateway.output.policies import POLICIES

# ---------------------------------------------------------------------------- responses

_ERROR_DESCRIPTIONS: dict[str, str] = {
    "400": "Invalid request (`invalid_request_error`): a malformed body, an invalid ad-hoc "
    "schema, or a schema whose grammar vLLM failed to compile (`invalid_schema`), max_tokens "
    "above the key's cap, a request larger than the "
    "key's TPM (`request_too_large`).",
    "401": "Missing, malformed, unknown or revoked API key (`invalid_api_key`).",
    "403": "The key may not use this schema (`schema_not_allowed`) or ad-hoc schemas "
    "(`adhoc_schema_not_allowed`).",
    "404": "Unknown schema (`schema_not_found`), model (`model_not_found`) or route.",
    "422": "The model's answer failed the check after the output policy ran out "
    "(`output_validation_failed`), or was cut off by max_tokens (`output_truncated`). Not "
    "retried by the official clients; `pointer`, `constraint`, `raw_output`, `attempts` say why.",
    "408": "The request did not arrive in time (`request_timeout`): it stalled for "
    "IRGW_REQUEST_READ_TIMEOUT_S, or its head took longer than IRGW_REQUEST_HEAD_TIMEOUT_S. "
    "The connection closes.",
    "413": "The request body is larger than the gateway accepts (`body_too_large`, "
    "IRGW_MAX_REQUEST_BYTES).",
    "431": "The request head is larger than IRGW_MAX_REQUEST_HEAD_BYTES or has more than "
    "IRGW_MAX_REQUEST_HEADERS fields (`request_header_fields_too_large`). The connection closes.",
    "429": "A per-key limit (requests or tokens per minute, requests in flight) is reached "
    "(`rate_limit_exceeded`). The official clients wait `retry-after-ms` and retry.",
    "500": "An unexpected error in the gateway (`internal_error`); details go to its log.",
    "502": "vLLM answered with something unusable (`upstream_error`).",
    "503": "vLLM is not accepting connections (`upstream_unavailable`), or the gateway is at "
    "capacity (`overloaded`), holds as many request bodies as it may "
    "(`body_budget_exhausted`) or has too many open connections (`too_many_connections`).",
    "504": "vLLM did not answer in time (`upstream_timeout`).",
}

_ERROR_HEADERS: dict[str, tuple[str, ...]] = {
    "401": ("www-authenticate",),
    "422": ("x-request-id", "x-irgw-schema", "x-irgw-overhead-ms", *_RATELIMIT_NAMES),
    "429": ("x-request-id", *_RATELIMIT_NAMES, "retry-after", "retry-after-ms",
            "x-irgw-overhead-ms"),
    "502": ("x-request-id", "x-irgw-overhead-ms"),
    "503": ("x-request-id", "retry-after", "x-irgw-overhead-ms"),
    "504": ("x-request-id", "x-irgw-overhead-ms"),
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
        # One event, not the whole body: the reading OpenAPI 3.2 gives (`itemSchema`) and
        # the one tools apply to 3.1's `schema` for text/event-stream.
        content["text/event-stream"] = {"schema": {
            "type": "object",
            "description": f"One server-sent event. Its `data` is a `{stream}` as JSON, or, "
            "when the stream fails (a structured answer fails its check, or vLLM breaks "
            "the stream off), `{\"error\": ...}` (ErrorResponse); the last event's `data` "
            "is `[DONE]`.",
            "properties": {
                "data": {"anyOf": [
                    {"const": "[DONE]"},
                    {"type": "string", "contentMediaType": "application/json",
                     "contentSchema": {"oneOf": [_schema(stream), _schema("ErrorResponse")]}},
                ]},
                "event": {"type": "string"},
            },
            "required": ["data"],
        }}
    response: JSON = {"description": description}
    if headers:
        response["headers"] = _headers(*headers)
    response["content"] = content
    return response


_API_ERRORS = ("400", "401", "403", "404", "408", "413", "422", "429", "431", "500", "502", "503",
               "504")

# A request header, not a body field: vLLM gets the client's body, and a client that does
# not send it never notices it.
_POLICY_PARAMETER: JSON = {
    "name": "x-irgw-output-policy", "in": "header", "required": False,
    "description": "This request's output policy, for a key created with "
    "`--allow-policy-override` (else 403 policy_override_not_allowed); without it, the "
    "schema's own (or IRGW_OUTPUT_POLICY).",
    "schema": {"type": "string", "enum": list(POLICIES)},
}

_OPERATIONS: dict[tuple[str, str], JSON] = {
    ("/v1/chat/completions", "post"): {
        "summary": "Create a chat completion, optionally constrained to a schema",
        "tags": ["inference"],
        "parameters": [_POLICY_PARAMETER],
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
        "parameters": [_POLICY_PARAMETER],
        "requestBody": _json_body("CompletionRequest", "A legacy completions request."),
        "responses": {
            "200": _ok("The completion (or, with `stream: true`, its chunks).", "Completion",
                       *_SUCCESS_HEADERS, stream="CompletionChunk"),
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

# Values that exist in every deployment (the registry ships them), so that readers and
# request generators reach a 200 and not only the 404.
_PATH_PARAMETER_EXAMPLES = {
    "model_id": ["schema/function_ir", "schema/function_ir@1"],
    "ref": ["function_ir", "function_ir@1", "test_plan_ir"],
}

_PATH_PARAMETER_DESCRIPTIONS = {
    "model_id": "A model id; may contain `/` (`schema/function_ir`).",
    "ref": "`name` or `name@version`.",
}

