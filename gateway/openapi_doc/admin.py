"""The admin API's operations and bodies (`/admin/v1/`, gateway/routes/admin.py)."""

from __future__ import annotations

from gateway.access.admin_ops import KeyRequest
from gateway.access.records import KeyPolicy
from gateway.openapi_doc.headers import JSON, _nullable, _schema
from gateway.openapi_doc.operations import _error_responses, _json_body, _ok

_REF_TEMPLATE = "#/components/schemas/{model}"
_TIME = {"type": "string", "format": "date-time"}

_ADMIN_KEY: JSON = {
    "type": "object",
    "description": "A key as the admin API shows it: never its secret, nor its hash.",
    "properties": {
        "id": {"type": "string", "pattern": "^[A-Za-z0-9]{12}$"},
        "name": {"type": "string"},
        "policy": _schema("KeyPolicy"),
        "created_at": _TIME,
        "revoked_at": _nullable(_TIME),
        "expires_at": _nullable(_TIME),
        "previous_valid_until": _nullable({
            **_TIME, "description": "Until when the secret the last rotation replaced works."}),
        "rotated_at": _nullable(_TIME),
    },
    "required": ["id", "name", "policy", "created_at", "revoked_at"],
}

_USAGE_ROW: JSON = {
    "type": "object",
    "properties": {
        "day": {"type": "string", "format": "date"},
        "key_id": {"type": "string"},
        "schema": {"type": "string", "description": "The schema's name, `-` for none, "
                   "`adhoc` for an ad-hoc schema."},
        "requests": {"type": "integer"},
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "outcomes": {"type": "object", "additionalProperties": {"type": "integer"},
                     "description": "Requests by outcome: passed, repaired, retried (re-asked), "
                     "failed, truncated, passthrough (unchecked), error."},
    },
    "required": ["day", "key_id", "schema", "requests", "prompt_tokens", "completion_tokens",
                 "outcomes"],
}

ADMIN_SCHEMAS: JSON = {
    "KeyPolicy": KeyPolicy.model_json_schema(ref_template=_REF_TEMPLATE),
    "AdminKey": _ADMIN_KEY,
    "AdminKeyList": {"type": "object",
                     "properties": {"object": {"const": "list"},
                                    "data": {"type": "array", "items": _schema("AdminKey")}},
                     "required": ["object", "data"]},
    "AdminKeyWithSecret": {"allOf": [_schema("AdminKey"), {
        "type": "object",
        "properties": {"key": {"type": "string", "description": "The key, shown this once."}},
        "required": ["key"]}]},
    "AdminKeyRequest": KeyRequest.model_json_schema(ref_template=_REF_TEMPLATE),
    "AdminRotateRequest": {"type": "object", "additionalProperties": False, "properties": {
        "grace": {"anyOf": [{"type": "string", "examples": ["1h", "30m"]}, {"type": "integer"}],
                  "description": "How long the replaced secret stays valid (default 0s)."}}},
    "UsageRow": _USAGE_ROW,
    "UsageReport": {"type": "object",
                    "properties": {"object": {"const": "list"},
                                   "data": {"type": "array", "items": _schema("UsageRow")}},
                    "required": ["object", "data"]},
}

_ADMIN_ERRORS = ("401", "403", "503")


def _admin(summary: str, responses: JSON, body: JSON | None = None) -> JSON:
    operation: JSON = {"summary": summary, "tags": ["admin"]}
    if body is not None:
        operation["requestBody"] = body
    operation["responses"] = responses
    return operation


ADMIN_OPERATIONS: dict[tuple[str, str], JSON] = {
    ("/admin/v1/keys", "get"): _admin(
        "List keys (admin scope)", {"200": _ok("Every key.", "AdminKeyList"),
                                    **_error_responses(*_ADMIN_ERRORS)}),
    ("/admin/v1/keys", "post"): _admin(
        "Create a key (admin scope); its secret is in this answer only",
        {"201": _ok("The key, with its secret.", "AdminKeyWithSecret"),
         **_error_responses("400", *_ADMIN_ERRORS)},
        _json_body("AdminKeyRequest", "The key's name, policy and optional lifetime.")),
    ("/admin/v1/keys/{key_id}", "get"): _admin(
        "One key (admin scope)", {"200": _ok("The key.", "AdminKey"),
                                  **_error_responses("404", *_ADMIN_ERRORS)}),
    ("/admin/v1/keys/{key_id}/revoke", "post"): _admin(
        "Revoke a key (admin scope); every replica refuses it within a second",
        {"200": _ok("The revoked key.", "AdminKey"),
         **_error_responses("404", *_ADMIN_ERRORS)}),
    ("/admin/v1/keys/{key_id}/rotate", "post"): _admin(
        "Give a key a new secret (admin scope); the old one works for `grace`",
        {"200": _ok("The key, with its new secret.", "AdminKeyWithSecret"),
         **_error_responses("400", "404", *_ADMIN_ERRORS)},
        {**_json_body("AdminRotateRequest", "Optional: the grace period."),
         "required": False}),
    ("/admin/v1/usage", "get"): _admin(
        "Usage per key, schema and UTC day (admin scope)",
        {"200": _ok("Rows, oldest day first.", "UsageReport"),
         **_error_responses("400", *_ADMIN_ERRORS)}),
}

ADMIN_PARAMETER_DESCRIPTIONS = {
    "key_id": "A key's id (the 12 characters after `irgw-`).",
    "key": "Only this key's usage (its id).",
    "since": "From this UTC day on (`YYYY-MM-DD`); default: the last 30 days.",
}
