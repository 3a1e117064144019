"""An answer that failed its check, as the error the client gets: one spelling for the
non-streamed loop (`checking`) and the stream's closing error event (`streaming`)."""

from __future__ import annotations

from gateway.errors import GatewayError, OutputTruncatedError, OutputValidationError
from gateway.output.validation import CheckFailure


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
