"""The request bodies of the document, built from the request contract.

Every field the gateway checks comes from its row in `gateway/generation/contract.py`: the
enforced fragment, what the document adds, null where the gateway reads null as unset. What
is written here is only what no check reads: the objects vLLM checks (messages, tools) and
the descriptions of whole objects.
"""

from __future__ import annotations

import dataclasses

from gateway.generation import contract
from gateway.generation.contract import Field
from gateway.openapi_doc.headers import JSON, _schema


def _described(field: Field, description: str) -> Field:
    """The row with a description for one route (chat and completions stream differently)."""
    return dataclasses.replace(field, documented={**field.documented, "description": description})


def _request(description: str, fields: tuple[Field, ...]) -> JSON:
    return {
        "type": "object",
        "description": description,
        "properties": {field.name: field.schema() for field in fields},
        "required": [field.name for field in fields if field.required],
        "additionalProperties": True,
        **contract.STREAM_OPTIONS_NEED_STREAM.schema,
    }


_CHAT_FIELDS = (
    contract.MODEL, contract.MESSAGES, contract.RESPONSE_FORMAT,
    _described(contract.STREAM, "A structured stream holds back the finishing chunk until the "
               "whole answer is checked; a failed check ends the stream with "
               "`data: {\"error\": ...}` before `[DONE]`."),
    contract.STREAM_OPTIONS, contract.MAX_TOKENS, contract.MAX_COMPLETION_TOKENS, contract.N,
    contract.TOOLS, contract.TOOL_CHOICE, contract.PARALLEL_TOOL_CALLS, contract.ECHO,
    *contract.SAMPLING,
)
_COMPLETION_FIELDS = (
    contract.MODEL, contract.PROMPT, contract.RESPONSE_FORMAT, contract.STREAM,
    contract.STREAM_OPTIONS, contract.MAX_TOKENS, contract.N, contract.BEST_OF, contract.ECHO,
    *contract.SAMPLING,
)
# The fields of each route's body, as the document lists them (tests/test_contract.py
# checks that every field the gateway enforces is on one of them).
ROUTE_FIELDS: dict[str, tuple[Field, ...]] = {
    "ChatCompletionRequest": _CHAT_FIELDS, "CompletionRequest": _COMPLETION_FIELDS,
}


def _response_format() -> JSON:
    spec = {
        "type": "object",
        "properties": {field.name: field.schema() for field in contract.JSON_SCHEMA_FIELDS},
        "additionalProperties": True,
        # `name` is a label with `schema` (OpenAI's rule), else the registered schema.
        "if": {"required": ["schema"]},
        "then": {"properties": {"name": contract.ADHOC_NAME.enforced}},
        "else": {"properties": {"name": contract.REGISTERED_NAME.enforced},
                 "required": ["name"]},
    }
    branches = []
    for kind in contract.RESPONSE_FORMAT_TYPE.enforced["enum"]:
        branch: JSON = {"type": "object", "title": kind,
                        "properties": {"type": {"const": kind}}, "required": ["type"]}
        if kind == "json_schema":  # the one kind with a body, a required object
            branch["properties"][contract.JSON_SCHEMA.name] = {**contract.JSON_SCHEMA.enforced,
                                                               **spec}
            branch["required"].append(contract.JSON_SCHEMA.name)
        branches.append(branch)
    return {
        "description": "`text` (default), `json_object` (any JSON object, parsed), or "
        "`json_schema`: with `json_schema.name` alone it names a registered schema "
        "(`function_ir`, `function_ir@1`); with `json_schema.schema` it is an ad-hoc schema "
        "(what `client.chat.completions.parse(response_format=Model)` sends; the key needs "
        "`allow_adhoc`). Not combinable with a forced tool call.",
        **contract.RESPONSE_FORMAT.enforced,
        "oneOf": branches,
    }


# Checked by vLLM, not the gateway (tools.py reads a forced tool's name and parameters).
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

REQUEST_SCHEMAS: dict[str, JSON] = {
    "ChatCompletionRequest": _request(
        "OpenAI's chat request. Fields not listed are passed to vLLM as they are.",
        _CHAT_FIELDS),
    "CompletionRequest": _request(
        "OpenAI's legacy completions request. A schema is named by `model: schema/<name>` or "
        "`response_format` and sent to vLLM in its own constraint field; naming one and also "
        "sending vLLM's `structured_outputs`/`guided_*` is a 400. A structured stream is "
        "answered after checking, as one chunk.", _COMPLETION_FIELDS),
    "ChatMessage": _MESSAGE,
    "ResponseFormat": _response_format(),
    "StreamOptions": {
        **contract.STREAM_OPTIONS.enforced,
        "description": "Only with `stream: true` (else 400); `null` means none.",
        "properties": {contract.INCLUDE_USAGE.name: contract.INCLUDE_USAGE.schema()},
    },
    "Tool": _TOOL,
    "ToolChoice": _TOOL_CHOICE,
}
