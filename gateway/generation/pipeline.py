"""The generation pipeline: one sequence for chat and legacy completions, streamed or not.

authenticate → read → plan → (answer from the cache) → authorize, admit, compile →
upstream body → call vLLM and check (or relay the stream, checked as it goes) → respond,
with the bookkeeping after the answer is sent. What differs between the endpoints is their
`Route` (`gateway.generation.context`); the route modules declare it and nothing more.

A named schema is resolved while planning, before the limiter runs, so that a request
refused for its schema (404, 403) consumes no quota; resolving touches nothing shared. An
ad-hoc schema is only noted then, and compiled once the key is admitted (`prepare`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import GatewayError
from gateway.generation.admission import prepare
from gateway.generation.cached import from_cache
from gateway.generation.checking import Completed, answer
from gateway.generation.context import Call, Route
from gateway.generation.planning import ChatPlan
from gateway.generation.relaying import relayed
from gateway.generation.shapes import SSE_DONE, sse, unwritable
from gateway.server.asgi import SSE_MEDIA_TYPE, BodyResponse, JSONResponse
from gateway.server.reading import header, read_json
from gateway.services import Services

Endpoint = Callable[[Request], Awaitable[Response]]


def endpoint(route: Route) -> Endpoint:
    """The handler of `route`: the pipeline, with that route's parts."""

    # No docstring: FastAPI would print it as the operation's description in /openapi.json.
    async def generate(request: Request) -> Response:
        services: Services = request.app.services
        principal = services.authenticator.authenticate(header(request, b"authorization"))
        settings = services.settings
        body = await read_json(request, settings.max_request_bytes, services.body_budget,
                               settings.request_body_timeout_s)
        plan = route.plan(body, services.registry, settings, principal.policy.allows_schema)
        if route.cached and (hit := await from_cache(request, services, principal,
                                                     plan)) is not None:
            return hit
        prepared = await prepare(request, services, principal, plan)
        call = Call(route, request, services, plan, prepared,
                    route.upstream_body(plan, prepared.dialect, prepared.upstream_model,
                                        prepared.max_tokens),
                    plan.body["model"])
        if plan.stream and (route.relays_checked or not plan.checked):
            return await relayed(call)
        return await respond(call, await answer(call))

    return generate


async def respond(call: Call, completed: Completed) -> Response:
    """The answer, whose `after_send` settles the request: a JSON body, or for a stream
    checked whole, one content chunk. If it cannot be written (vLLM's answer holds a value
    nested deeper than the 255 levels orjson writes), the request is settled here (else its
    slots and reservation were never given back) and the client gets a 502 naming the
    cause, not a 500."""
    plan, prepared = call.plan, call.prepared
    try:
        headers = success_headers(plan, completed, prepared.headers)
        if plan.stream:
            return _one_chunk_stream(completed.response, plan.include_usage, headers,
                                     settlement(call, completed))
        return JSONResponse(completed.response, headers=headers,
                            after_send=settlement(call, completed))
    except BaseException as exc:
        await prepared.admission.finish(completed.tokens)
        error = unwritable(exc) if isinstance(exc, orjson.JSONEncodeError) else exc
        if isinstance(error, GatewayError):
            error.headers.update(prepared.headers)
        if error is exc:
            raise
        raise error from exc


def success_headers(plan: ChatPlan, completed: Completed,
                    headers: dict[str, str]) -> dict[str, str]:
    if plan.checked:
        headers["x-irgw-output"] = completed.outcome
        headers["x-irgw-attempts"] = str(completed.attempts)
    return headers


def settlement(call: Call, completed: Completed) -> Callable[[], Awaitable[None]]:
    """The request's bookkeeping, for `after_send`: at low load every step runs on cold
    caches, and the client should not wait for steps whose result it never sees."""
    async def settle() -> None:
        services, plan, prepared = call.services, call.plan, call.prepared
        await prepared.admission.finish(completed.tokens)
        prepared.count_usage(services, completed.outcome, completed.response.get("usage"),
                             completed.tokens)
        if prepared.cache_key is not None and services.cache is not None:
            await services.cache.put(prepared.cache_key, completed.response, completed.outcome)
        services.metrics.upstream_took(call.route.label, completed.upstream_s)
        if plan.checked and plan.schema is not None:
            services.metrics.output_checked(plan.schema.metric_label, completed.outcome)

    return settle


def _one_chunk_stream(response: dict[str, Any], include_usage: bool, headers: dict[str, str],
                      settle: Callable[[], Awaitable[None]]) -> Response:
    # A stream answered whole once checked: a completion cannot be retracted once streamed.
    chunk = {k: v for k, v in response.items() if k != "usage"}
    events = [sse(chunk)]
    if include_usage and "usage" in response:
        events.append(sse({**chunk, "choices": [], "usage": response["usage"]}))
    events.append(SSE_DONE)
    return BodyResponse(b"".join(events), media_type=SSE_MEDIA_TYPE, headers=headers,
                        after_send=settle)
