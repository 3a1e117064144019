"""A 5xx that vLLM answers while it holds a grammar the gateway sent: the schema's fault.

vLLM 0.32 compiles a request's grammar in its engine, after the request was accepted.
When xgrammar fails there (a `pattern` repeat above 128 was one: see
`gateway.output.engine_rules`; others may remain), vLLM finishes the request with
finish_reason "error" and answers a bare `500 Internal server error` (inside a 200 stream
for a stream). Passed on as a 5xx, the `openai` client would send it twice more and the
GPU worker compile it three times. So, on a request that carried a schema's grammar, it is
`400 invalid_schema`, counted (`irgw_grammar_failures`), and logged with the sha256 of the
exact text vLLM got (what to look for in vLLM's own log, and to reproduce it). A dead
engine, a refused connection, a timeout keep their 5xx.
"""

from __future__ import annotations

import hashlib
import logging

from gateway.errors import GatewayError, SchemaNotCompiledError, UpstreamRequestFailedError
from gateway.generation.planning import ChatPlan, Mode
from gateway.observe.prometheus import Metrics

log = logging.getLogger("gateway.engine")


def schema_error_for(error: GatewayError, plan: ChatPlan, metrics: Metrics) -> GatewayError:
    """`error`, or the 400 it stands for when vLLM failed this request's grammar."""
    schema = plan.schema
    if (not isinstance(error, UpstreamRequestFailedError) or schema is None
            or plan.mode not in (Mode.SCHEMA, Mode.TOOL)):
        return error
    digest = hashlib.sha256(schema.schema_json).hexdigest()
    metrics.grammar_failed(schema.metric_label)
    log.warning("vLLM failed the grammar of schema %s (sha256 %s of the %d bytes sent): %s",
                schema.ref, digest, len(schema.schema_json), error.message)
    said = "" if error.names_grammar else (
        " (vLLM 0.32 reports a grammar it cannot compile as a bare 500)")
    converted = SchemaNotCompiledError(
        f"vLLM's structured-output engine (xgrammar) failed on the grammar for schema "
        f"{schema.ref}: {error.message}{said}. Sending it again fails the same way; "
        "simplify the schema (a pattern with a large repeat count, a deeply nested or very "
        "large schema are the usual causes)",
        param="tools" if plan.mode is Mode.TOOL else "response_format",
        headers=error.headers,
        extra={"schema_sha256": digest},
    )
    converted.tokens = error.tokens
    return converted
