"""`POST /v1/chat/completions`.

authenticate → resolve the schema → authorize → limit → compile an ad-hoc schema → call
upstream → validate → respond. A named schema is resolved before the limiter runs so that a
request refused for its schema (404, 403) consumes no quota; resolving touches nothing
shared. An ad-hoc schema is only noted then, and compiled once the key is admitted.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.generation.admission import prepare
from gateway.generation.cached import from_cache
from gateway.generation.checking import (
    Route,
    answer,
    failure_to_error,
    respond,
    settlement,
    success_headers,
)
from gateway.generation.engine_failures import schema_error_for
from gateway.generation.planning import (
    ChatPlan,
    Mode,
    plan_chat,
    upstream_chat_body,
)
from gateway.generation.relaying import relayed
from gateway.generation.shapes import chat_completion
from gateway.generation.streaming import StreamState, relay_chat
from gateway.generation.tools import as_tool_call_response, plan_tool_call
from gateway.output.validation import CheckedOutput
from gateway.routes.common import RawRoute, header, read_json, services_of
from gateway.server.asgi import JSONResponse
from gateway.services import Services

router = APIRouter(route_class=RawRoute)


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


CHAT = Route("/v1/chat/completions", "chat", chat_completion,
             lambda choice: choice["message"]["content"], _accept, _reask)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    services = services_of(request)
    principal = services.authenticator.authenticate(header(request, b"authorization"))
    body = await read_json(request, services.settings.max_request_bytes, services.body_budget,
                           services.settings.request_body_timeout_s)
    plan = plan_chat(body, services.registry, services.settings, principal.policy.allows_schema)
    plan_tool_call(plan, services.registry, services.settings)
    if (cached := await from_cache(request, services, principal, plan)) is not None:
        return cached
    prepared = await prepare(request, services, principal, plan)
    model = plan.body["model"]
    body = upstream_chat_body(plan, prepared.dialect, prepared.upstream_model,
                              prepared.max_tokens)
    if plan.stream:
        return await relayed(
            request, services, "/v1/chat/completions", plan, body, prepared,
            lambda events, state: relay_chat(
                events, plan, model, state, failure_to_error,
                lambda error: schema_error_for(error, plan, services.metrics)),
            answer_headers={"x-irgw-output": "checked-at-end"} if plan.checked else {},
            after=lambda state: _count_checked_stream(services, plan, state),
        )

    completed = await answer(CHAT, request, services, plan, body, model, prepared)
    return await respond(prepared, completed, lambda: JSONResponse(
        completed.response, headers=success_headers(plan, completed, prepared.headers),
        after_send=settlement(CHAT, services, plan, prepared, completed)))


def _count_checked_stream(services: Services, plan: ChatPlan, state: StreamState) -> None:
    if plan.schema is not None and state.outcome in ("passed", "repaired", "failed", "truncated"):
        services.metrics.output_checked(plan.schema.metric_label, state.outcome)
