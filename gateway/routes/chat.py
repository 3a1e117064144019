"""`POST /v1/chat/completions`.

authenticate → resolve the schema → limit → call upstream → validate → respond.
The schema is resolved before the limiter runs so that a request refused for its schema
(404, 403) consumes no quota; resolving touches nothing shared.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.asgi import ClientDisconnectedError, JSONResponse, SSEResponse, until_disconnect
from gateway.errors import (
    GatewayError,
    OutputTruncatedError,
    OutputValidationError,
    UpstreamError,
)
from gateway.planning import (
    ChatPlan,
    Mode,
    estimate_prompt_tokens,
    plan_chat,
    upstream_chat_body,
)
from gateway.ratelimit.base import Admission
from gateway.routes.admission import prepare
from gateway.routes.common import RawRoute, header, read_json, services_of
from gateway.services import Services
from gateway.shapes import chat_completion
from gateway.streaming import StreamState, relay_chat
from gateway.tools import as_tool_call_response, plan_tool_call
from gateway.validation import CheckedOutput, CheckFailure, check_output

router = APIRouter(route_class=RawRoute)


@dataclass
class Completed:
    response: dict[str, Any]
    outcome: str
    attempts: int
    tokens: int
    upstream_s: float  # from the first call to the accepted answer


def failure_to_error(failure: CheckFailure, attempts: int, tokens: int = 0) -> GatewayError:
    error_class = OutputTruncatedError if failure.truncated else OutputValidationError
    message = (
        f"the model's answer does not conform to the schema: {failure.describe()}"
        if not failure.truncated
        else f"{failure.reason}; raise max_tokens or use a schema with tighter bounds"
    )
    error = error_class(message, extra={**failure.error_extra(), "attempts": attempts})
    error.tokens = tokens
    return error


def count_failed_check(services: Services, plan: ChatPlan, error: GatewayError) -> None:
    if plan.schema is not None and isinstance(error, OutputValidationError):
        outcome = "truncated" if isinstance(error, OutputTruncatedError) else "failed"
        services.metrics.output_checked(plan.schema.ref, outcome)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    services = services_of(request)
    principal = services.authenticator.authenticate(header(request, b"authorization"))
    body = await read_json(request, services.settings.max_request_bytes)
    plan = plan_chat(body, services.registry, services.settings)
    plan_tool_call(plan, services.registry, services.settings)
    prepared = await prepare(request, services, principal, plan)
    rid, headers, admission = prepared.request_id, prepared.headers, prepared.admission
    model = plan.body["model"]
    body = upstream_chat_body(plan, prepared.dialect, prepared.upstream_model,
                              prepared.max_tokens)
    if plan.stream:
        return await _stream(services, plan, body, model, rid, headers, admission)

    tokens: int | None = None
    answered = False
    try:
        completed = await until_disconnect(
            request, _complete(services, plan, body, model, rid)
        )
        answered = True
    except ClientDisconnectedError:
        # vLLM's usage is lost with the cancelled call but the GPU did work: keep the
        # reservation charged rather than refund it.
        tokens = prepared.reserved
        return Response(status_code=499)
    except GatewayError as error:
        tokens = error.tokens
        error.headers.update(headers)
        count_failed_check(services, plan, error)
        raise
    finally:
        if not answered:
            await admission.finish(tokens)

    async def settle() -> None:
        # After the answer is on its way: at low load every step runs on cold caches, and
        # the client should not wait for steps whose result it never sees.
        await admission.finish(completed.tokens)
        services.metrics.upstream_took("chat", completed.upstream_s)
        if plan.checked and plan.schema is not None:
            services.metrics.output_checked(plan.schema.ref, completed.outcome)

    if plan.checked:
        headers["x-irgw-output"] = completed.outcome
        headers["x-irgw-attempts"] = str(completed.attempts)
    return JSONResponse(completed.response, headers=headers, after_send=settle)


async def _complete(services: Services, plan: ChatPlan, body: dict[str, Any], model: str,
                    rid: str) -> Completed:
    attempts = 1 + (services.settings.max_retries if plan.policy == "retry" else 0)
    tokens = 0
    started = time.perf_counter()
    for attempt in range(1, attempts + 1):
        data = await services.upstream.post_json("/v1/chat/completions", body,
                                                  {"x-request-id": rid})
        response = chat_completion(data if isinstance(data, dict) else {}, model)
        usage = response.get("usage")
        tokens += usage["total_tokens"] if usage else 0
        if not response["choices"]:
            raise UpstreamError("the upstream answered without choices")
        if not plan.checked:
            return Completed(response, "passthrough", attempt, tokens,
                             time.perf_counter() - started)
        choice = response["choices"][0]
        try:
            checked = check_output(
                choice["message"]["content"],
                plan.schema if plan.mode in (Mode.SCHEMA, Mode.TOOL) else None,
                repair=plan.policy != "error",
                truncated=choice["finish_reason"] == "length",
            )
        except CheckFailure as failure:
            if failure.truncated or attempt == attempts:
                raise failure_to_error(failure, attempt, tokens) from None
            continue
        upstream_s = time.perf_counter() - started
        _present(plan, response, checked)
        outcome = "retried" if attempt > 1 else checked.outcome.value
        return Completed(response, outcome, attempt, tokens, upstream_s)
    raise AssertionError("unreachable")


def _present(plan: ChatPlan, response: dict[str, Any], checked: CheckedOutput) -> None:
    choice = response["choices"][0]
    choice["message"]["content"] = checked.text
    if plan.mode is Mode.TOOL:
        as_tool_call_response(plan, choice)


async def _stream(services: Services, plan: ChatPlan, body: dict[str, Any], model: str,
                  rid: str, headers: dict[str, str], admission: Admission) -> Response:
    stack = AsyncExitStack()
    try:
        events = await stack.enter_async_context(
            services.upstream.stream("/v1/chat/completions", body, {"x-request-id": rid})
        )
    except BaseException:
        await stack.aclose()
        await admission.finish(None)
        raise
    state = StreamState()

    async def on_close() -> None:
        await stack.aclose()
        if state.usage is not None:
            tokens: int | None = state.usage["total_tokens"]
        elif state.content_chunks:
            # Cut short before vLLM reported usage: what was generated still cost GPU time.
            tokens = estimate_prompt_tokens(plan.body) + state.content_chunks
        else:
            tokens = None
        await admission.finish(tokens)
        if plan.schema is not None and state.outcome in (
            "passed", "repaired", "failed", "truncated"
        ):
            services.metrics.output_checked(plan.schema.ref, state.outcome)

    if plan.checked:
        headers["x-irgw-output"] = "checked-at-end"
    relay = relay_chat(events, plan, model, state, failure_to_error)
    return SSEResponse(relay, headers=headers, on_close=on_close)

