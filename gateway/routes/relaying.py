"""A streamed answer from vLLM, relayed: what both generation routes do around their relay
(`gateway.streaming`): open vLLM's stream, and settle the request however the stream ends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any

from starlette.requests import Request

from gateway.asgi import SSEResponse, until_disconnect
from gateway.errors import GatewayError
from gateway.planning import ChatPlan
from gateway.routes.admission import Prepared
from gateway.services import Services
from gateway.streaming import StreamState, stream_tokens

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
        events = await until_disconnect(request, stack.enter_async_context(
            services.upstream.stream(path, body, {"x-request-id": prepared.request_id})
        ))
    except BaseException as exc:
        await stack.aclose()
        tokens = prepared.tokens_on_failure(exc)
        await admission.finish(tokens)
        prepared.count_usage(services, "error" if isinstance(exc, GatewayError) else "cancelled",
                             None, tokens)
        if isinstance(exc, GatewayError):
            exc.headers.update(headers)
        raise
    state = StreamState()

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
