"""The headers the gateway documents, and small helpers for building the document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
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
        "description": "Keywords of the schema the grammar engine does not enforce while "
        "decoding, or gets in another form (a `pattern` repeat split), as `pointer: keyword` "
        "(the gateway's validation still checks all of them).",
        "schema": {"type": "string"},
    },
    "x-irgw-output": {
        "description": "What the output check found: `passed`, `repaired` (raw control "
        "characters escaped), `retried` (passed after a retry), `reasked` (passed after a "
        "re-ask with the findings), `checked-at-end` (a stream: the verdict comes as the last "
        "event), `passthrough` (nothing to check).",
        "schema": {"type": "string", "enum": ["passed", "repaired", "retried", "reasked",
                                              "checked-at-end", "passthrough"]},
    },
    "x-irgw-attempts": {
        "description": "Upstream calls made for this answer (more than 1 only with the "
        "`retry` and `reask` output policies).",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "x-irgw-overhead-ms": {
        "description": "The gateway's own time on this request in milliseconds: arrival to "
        "the answer's head, minus the time spent waiting on vLLM. On every generation answer.",
        "schema": {"type": "string", "pattern": "^[0-9]+\\.[0-9]{2}$"},
    },
    "x-irgw-cache": {
        "description": "With the response cache on, for a request it may answer (deterministic, "
        "checked, opted in by the key or the schema): `hit` (answered from the cache: no "
        "tokens, no vLLM) or `miss`.",
        "schema": {"type": "string", "enum": ["hit", "miss"]},
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
                    "x-irgw-attempts", "x-irgw-overhead-ms", "x-irgw-cache", *_RATELIMIT_NAMES)


