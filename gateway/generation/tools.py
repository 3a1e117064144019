"""Forced tool calls, served by the gateway as structured output.

vLLM 0.32 refuses a forced `tool_choice` unless a tool-call parser is configured, and the
parser needs the model's own tool tokens. One forced tool is really a schema: the gateway
sends vLLM the tool's parameters as a json_schema response_format, checks the answer like
any other, and returns it in OpenAI's `tool_calls` shape with `finish_reason: "tool_calls"`.
Several tools, or `tool_choice: "auto"`, go to vLLM unchanged.
"""

from __future__ import annotations

import uuid
from typing import Any

from gateway.errors import InvalidRequestError
from gateway.generation.planning import ADHOC_NAME_RE, ChatPlan, Mode, require_one_choice
from gateway.output.adhoc import PendingAdhoc
from gateway.output.policies import policy_named
from gateway.output.registry import SchemaRegistry
from gateway.settings import Settings

_EMPTY_OBJECT: dict[str, Any] = {"type": "object", "properties": {}}


def _forced_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice in (None, "auto", "none"):
        return None
    functions = [t.get("function") for t in tools if isinstance(t, dict)]
    if not all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in functions):
        raise InvalidRequestError("each tool needs a 'function' with a 'name'", param="tools")
    if choice == "required":
        return functions[0] if len(functions) == 1 else None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        for function in functions:
            if function["name"] == name:
                return function
        raise InvalidRequestError(f"tool_choice names {name!r}, which is not in 'tools'",
                                  param="tool_choice")
    raise InvalidRequestError(
        "tool_choice must be 'none', 'auto', 'required' or a named function",
        param="tool_choice",
    )


def plan_tool_call(plan: ChatPlan, registry: SchemaRegistry, settings: Settings) -> None:
    """Turn `plan` into a TOOL plan when the request forces exactly one tool."""
    function = _forced_tool(plan.body)
    if function is None:
        return
    if plan.mode is not Mode.PASSTHROUGH:
        raise InvalidRequestError(
            "a forced tool call and a response_format/schema model cannot be combined; "
            "use one of them", param="tool_choice",
        )
    name: str = function["name"]
    if not ADHOC_NAME_RE.fullmatch(name):  # it becomes the x-irgw-schema header, too
        raise InvalidRequestError(
            "a function's name must be 1-64 characters of a-z, A-Z, 0-9, '_' and '-' (as "
            "OpenAI requires)", param="tools",
        )
    parameters = function.get("parameters")
    if not parameters and name in registry:
        plan.schema = registry.resolve(name)
        plan.policy = policy_named(settings.output_policy or plan.schema.output_policy)
        plan.warnings.extend(plan.schema.unenforced)
    else:  # compiled once the key is authorized and admitted (gateway.output.adhoc)
        plan.pending = PendingAdhoc(name, parameters or _EMPTY_OBJECT)
        plan.policy = policy_named(settings.output_policy or settings.adhoc_output_policy)
    plan.mode = Mode.TOOL
    plan.tool_name = name
    plan.tool_call_id = f"call_{uuid.uuid4().hex[:24]}"
    require_one_choice(plan.body)


def as_tool_call_response(plan: ChatPlan, choice: dict[str, Any]) -> None:
    message = choice["message"]
    message["tool_calls"] = [{
        "id": plan.tool_call_id,
        "type": "function",
        "function": {"name": plan.tool_name, "arguments": message["content"]},
    }]
    message["content"] = None
    if choice["finish_reason"] == "stop":  # "length" stays: the cap was reached
        choice["finish_reason"] = "tool_calls"


def as_tool_call_chunk(plan: ChatPlan, chunk: dict[str, Any], *, first: bool) -> None:
    """Content deltas become argument deltas of the one tool call."""
    for choice in chunk["choices"]:
        delta = choice["delta"]
        content = delta.pop("content", None)
        if first or content:
            call: dict[str, Any] = {"index": 0, "function": {"arguments": content or ""}}
            if first:
                call.update(id=plan.tool_call_id, type="function")
                call["function"]["name"] = plan.tool_name
            delta["tool_calls"] = [call]
        if choice["finish_reason"] == "stop":
            choice["finish_reason"] = "tool_calls"
