"""Every error the gateway can answer with, as a specific exception class.

Handlers in `gateway.app` turn any `GatewayError` into OpenAI's error shape
`{"error": {"message", "type", "param", "code"}}` in one place, so route code only
raises. Status codes are chosen with the official client's retry rules in mind:
it retries 408/409/429/5xx by itself, so anything that repeating the same request
cannot fix (a bad schema, an answer that failed validation) must be a 4xx other
than those.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class GatewayError(Exception):
    status_code: int = 500
    error_type: str = "server_error"
    default_code: str | None = None
    # Tokens vLLM spent before the error (a failed check still cost GPU time): what the
    # rate limiter settles the request at. None: unknown, the reservation is refunded.
    tokens: int | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers: dict[str, str] = dict(headers or {})
        # Extra fields ride inside the error object; OpenAI's clients ignore unknown keys.
        self.extra: dict[str, Any] = dict(extra or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.error_type,
            "param": self.param,
            "code": self.code,
        }
        error.update(self.extra)
        return {"error": error}


class InvalidRequestError(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class BodyTooLargeError(InvalidRequestError):
    status_code = 413
    default_code = "body_too_large"


class InvalidSchemaError(InvalidRequestError):
    default_code = "invalid_schema"


class SchemaNotCompiledError(InvalidSchemaError):
    """vLLM failed this request's grammar (xgrammar could not compile the schema): a 400,
    as sending the same schema again fails the same way, never a 5xx the client retries."""


class UnsupportedSchemaError(InvalidRequestError):
    """A valid JSON Schema that uses a keyword the grammar engine would silently ignore."""

    default_code = "unsupported_schema_feature"


class RequestTimeoutError(InvalidRequestError):
    """The request did not arrive in time (a stall, or a head past its deadline)."""

    status_code = 408
    default_code = "request_timeout"


class HeaderFieldsTooLargeError(InvalidRequestError):
    status_code = 431
    default_code = "request_header_fields_too_large"


class NotFoundError(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class SchemaNotFoundError(NotFoundError):
    default_code = "schema_not_found"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"


class MethodNotAllowedError(GatewayError):
    status_code = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class AuthenticationError(GatewayError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    status_code = 403
    error_type = "permission_error"
    default_code = "permission_denied"


class RateLimitError(GatewayError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"
    refused: tuple[str, ...] = ()  # which limits: "requests", "tokens", "concurrency"


class OutputValidationError(GatewayError):
    """The model's answer is not valid for the schema, after the output policy ran out.

    422: the official client does not retry it, and a retry with the same request is the
    gateway's job (the `retry` policy), not the client's.
    """

    status_code = 422
    error_type = "output_validation_error"
    default_code = "output_validation_failed"


class OutputTruncatedError(OutputValidationError):
    """The answer was cut off by `max_tokens`; repeating the request would cut it again."""

    default_code = "output_truncated"


class UpstreamError(GatewayError):
    """vLLM answered with something the gateway cannot use (a 5xx, garbage)."""

    status_code = 502
    error_type = "upstream_error"
    default_code = "upstream_error"


class UpstreamRequestFailedError(UpstreamError):
    """vLLM, alive, failed this one request with a 5xx: its `GenerationError` (a bare 500
    "Internal server error", which is how vLLM 0.32 reports a grammar that failed to
    compile), or a 5xx whose text names the grammar. `names_grammar` tells which."""

    def __init__(self, message: str, *, names_grammar: bool) -> None:
        super().__init__(message)
        self.names_grammar = names_grammar


class UpstreamUnavailableError(GatewayError):
    """vLLM refused connections until the connect deadline (booting, cold start, down)."""

    status_code = 503
    error_type = "upstream_unavailable"
    default_code = "upstream_unavailable"


class OverloadedError(GatewayError):
    status_code = 503
    error_type = "server_error"
    default_code = "overloaded"
    reason = "overloaded"  # what the refusal metric counts


class QueueFullError(OverloadedError):
    reason = "queue_full"


class QueueTimeoutError(OverloadedError):
    reason = "queue_timeout"


class UpstreamTimeoutError(GatewayError):
    status_code = 504
    error_type = "upstream_timeout"
    default_code = "upstream_timeout"


class UpstreamStatusError(GatewayError):
    """An error vLLM itself returned, passed on with vLLM's status and normalised body."""

    def __init__(self, status_code: int, message: str, *, error_type: str | None = None,
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)
        self.status_code = status_code
        self.error_type = error_type or (
            "invalid_request_error" if 400 <= status_code < 500 else "upstream_error"
        )
