"""A streamed answer from vLLM, relayed: what both generation routes do around their relay
(`Route.relay`): open vLLM's stream, and settle the request however the stream ends."""

from __future__ import annotations

from contextlib import AsyncExitStack

from gateway import observe
from gateway.errors import GatewayError
from gateway.generation.context import Call
from gateway.generation.engine_failures import schema_error_for
from gateway.generation.streaming import StreamState, stream_tokens
from gateway.server.asgi import SSEResponse, until_disconnect

# Outcomes of a checked stream that count as checked (not "error": vLLM broke off).
_CHECKED_OUTCOMES = ("passed", "repaired", "failed", "truncated")


async def relayed(call: Call) -> SSEResponse:
    """vLLM's stream, as the route's relay turns it into the client's events. When it
    closes, however it ends, the tokens are settled on what the relay saw, the slots freed
    and a checked stream's outcome counted. A stream that cannot be opened settles at once
    and raises with the request's headers (the request id vLLM was sent, the limits)."""
    services, plan, prepared = call.services, call.plan, call.prepared
    admission, headers = prepared.admission, prepared.headers
    stack = AsyncExitStack()
    try:
        # Watched: a client that leaves while vLLM is reached (connect retries through a
        # cold start, a wait for a pooled connection, vLLM's first bytes) cancels it.
        sent = stack.enter_context(observe.upstream_attempt(prepared.request_id, stream=True))
        events = await until_disconnect(call.request, stack.enter_async_context(
            services.upstream.stream(call.route.path, call.body, sent)
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
        if plan.schema is not None and state.outcome in _CHECKED_OUTCOMES:
            services.metrics.output_checked(plan.schema.metric_label, state.outcome)

    answer_headers = {**headers}
    if plan.checked:  # the status line goes out before the answer is whole
        answer_headers["x-irgw-output"] = "checked-at-end"
    return SSEResponse(call.route.relay(call, events, state), headers=answer_headers,
                       on_close=on_close)
