"""Forced tool calls, answered in OpenAI's `tool_calls` shape.

vLLM 0.32 refuses a forced `tool_choice` unless a tool-call parser is configured, and the
parser needs the model's own tool tokens. One forced tool is really a schema: `plan_chat`
plans it as one (the tool's parameters sent as a json_schema response_format, the answer
checked like any other), and this module returns the answer as the one tool call with
`finish_reason: "tool_calls"`. Several tools, or `tool_choice: "auto"`, go to vLLM unchanged.
"""

from __future__ import annotations

from typing import Any

from gateway.generation.planning import ChatPlan


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
        # The arguments are the checked content, and only that: vLLM was sent no tools, so
        # a tool call of its own is not one the client asked for, nor checked.
        delta.pop("tool_calls", None)
        delta.pop("function_call", None)
        if first or content:
            call: dict[str, Any] = {"index": 0, "function": {"arguments": content or ""}}
            if first:
                call.update(id=plan.tool_call_id, type="function")
                call["function"]["name"] = plan.tool_name
            delta["tool_calls"] = [call]
        if choice["finish_reason"] == "stop":
            choice["finish_reason"] = "tool_calls"
