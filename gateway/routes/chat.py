"""`POST /v1/chat/completions`: the generation pipeline (`gateway.generation.pipeline`) with
chat's parts. A stream is relayed as vLLM sends it and checked as it goes; a checked answer
can come from the response cache."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter

from gateway.generation.context import Call, Route
from gateway.generation.pipeline import endpoint as pipeline_endpoint
from gateway.generation.planning import ChatPlan, Mode, plan_chat, upstream_chat_body
from gateway.generation.shapes import chat_completion
from gateway.generation.streaming import StreamState, relay_chat
from gateway.generation.tools import as_tool_call_response
from gateway.output.validation import CheckedOutput
from gateway.routes.common import RawRoute


def _text(choice: dict[str, Any]) -> Any:
    return choice["message"]["content"]


def _accept(plan: ChatPlan, choice: dict[str, Any], checked: CheckedOutput) -> None:
    choice["message"]["content"] = checked.text
    if plan.mode is Mode.TOOL:
        as_tool_call_response(plan, choice)


def _reask(body: dict[str, Any], failed: str, findings: str) -> dict[str, Any]:
    """The conversation so far, the failed answer as the assistant's turn and the findings
    as the user's. Always from the first body: one failed answer at a time, so a re-ask
    grows by one answer, not by every earlier one."""
    return {**body, "messages": [*body["messages"], {"role": "assistant", "content": failed},
                                 {"role": "user", "content": findings}]}


def _relay(call: Call, events: AsyncIterator[bytes],
           state: StreamState) -> AsyncIterator[bytes]:
    return relay_chat(events, call.plan, call.model, state, call.services.metrics)


CHAT = Route("/v1/chat/completions", "chat", plan=plan_chat, upstream_body=upstream_chat_body,
             shape=chat_completion, text=_text, accept=_accept, reask=_reask, relay=_relay,
             relays_checked=True, cached=True)
endpoint = pipeline_endpoint(CHAT)

router = APIRouter(route_class=RawRoute)
# Listed for the OpenAPI document and for the 405 of other methods; a POST goes straight to
# `endpoint` (create_app's table of direct routes).
router.add_api_route(CHAT.path, endpoint, methods=["POST"], name="chat_completions")
