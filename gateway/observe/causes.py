"""How an error is counted: the cause of an upstream failure, the reason of a refusal, and
the outcome a request ends with."""

from __future__ import annotations

from gateway.errors import (
    GatewayError,
    OutputTruncatedError,
    OutputValidationError,
    OverloadedError,
    RateLimitError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.server.asgi import ClientDisconnectedError

_REFUSING_CODES = ("request_too_large", "max_tokens_above_key_limit")


def upstream_cause(error: BaseException) -> str | None:
    """None when the error is not vLLM's (the client left, the gateway refused)."""
    if isinstance(error, UpstreamUnavailableError):
        return "unavailable"
    if isinstance(error, UpstreamTimeoutError):
        return "timeout"
    if isinstance(error, UpstreamStatusError):
        return "rejected"  # vLLM refused the request itself (a 4xx: too long a prompt, ...)
    if isinstance(error, UpstreamError):
        return "auth" if error.code == "upstream_auth" else "server_error"
    return None


def refusal_reasons(error: GatewayError) -> tuple[str, ...]:
    if isinstance(error, RateLimitError):
        return error.refused or ("requests",)
    if isinstance(error, OverloadedError):
        if error.code == "ratelimit_backend_unavailable":
            return ("limiter_unavailable",)
        return (error.reason,)
    if error.code in _REFUSING_CODES:
        return (str(error.code),)
    return ()


def error_outcome(error: BaseException) -> str:
    if isinstance(error, ClientDisconnectedError):
        return "client_gone"
    if isinstance(error, OutputTruncatedError):
        return "truncated"
    if isinstance(error, OutputValidationError):
        return "failed"
    if isinstance(error, GatewayError):
        if refusal_reasons(error):
            return "refused"
        if upstream_cause(error) is not None or error.status_code >= 500:
            return "error"
        return "rejected"  # the request itself was wrong (400, 401, 403, 404, 413)
    return "error"


def error_code(error: BaseException | None) -> str | None:
    if isinstance(error, GatewayError):
        return error.code
    if isinstance(error, ClientDisconnectedError):
        return "client_disconnected"
    return None if error is None else "internal_error"
