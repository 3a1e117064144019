"""A streamed answer from vLLM, relayed: what both generation routes do around their relay
(`gateway.generation.streaming`): open vLLM's stream, and settle the request however the
stream ends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any

from starlette.requests import Request

from gateway import observe
from gateway.errors import GatewayError
from gateway.generation.admission import Prepared
from gateway.generation.engine_failures import schema_error_for
from gateway.generation.planning import ChatPlan
from gateway.generation.streaming import StreamState, stream_tokens
from gateway.server.asgi import SSEResponse, until_disconnect
from gateway.services import Services

Relay = Callable[[AsyncIterator[bytes], StreamState], AsyncIterator[bytes]]


async def relayed(request: Request, services: Services, path: str, plan: ChatPlan,
                  body: dict[str, Any], prepared: Prepared, relay: Relay, *,
                  answer_headers: Mapping[str, str] | None = None,
                  after: Callable[[StreamState], None] | None = None) -> SSEResponse:
    """vLLM's stream at `path`, as `relay` turns it into the client's events. When it closes,
    however it ends, the tokens are settled on what the relay saw, the slots freed, then
    `after` runs. A stream that cannot be opened settles at once and raises with the
    request's headers (the request id vLLM was sent, the limits)."""
    admission, headers = prepared.admission, prepared.headers
    stack = AsyncExitStack()
    try:
        # Watched: a client that leaves while vLLM is reached (connect retries through a
        # cold start, a wait for a pooled connection, vLLM's first bytes) cancels it.
        sent = stack.enter_context(observe.upstream_attempt(prepared.request_id, stream=True))
        events = await until_disconnect(request, stack.enter_async_context(
            services.upstream.stream(path, body, sent)
        ))
    except BaseException as exc:
        await stack.aclose()
        error = schema_error_for(exc, plan, services.metrics) if isinstance(
            exc, GatewayError) else exc
        tokens = prepared.tokens_on_failure(error)
        await admission.finish(tokens)
        prepared.count_usage(services, "error" if isinstance(error, GatewayError) else "cancelled",
                             None, tokens)
        if isinstance(error, GatewayError):
            error.headers.update(headers)
        if error is exc:
            raise
        raise error from exc
    state = StreamState()
    events = observe.relayed(events, state)

    async def on_close() -> None:
        await stack.aclose()
        charged = stream_tokens(plan, state, prepared.reserved)
        await admission.finish(charged)
        prepared.count_usage(services, state.outcome if not state.abandoned else "cancelled",
                             state.usage, charged)
        if after is not None:
            after(state)

    return SSEResponse(relay(events, state), headers={**headers, **(answer_headers or {})},
                       on_close=on_close)
