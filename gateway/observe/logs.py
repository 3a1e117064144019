"""Logs: readable text (the default, and `make dev`'s), or one JSON object per line
(IRGW_LOG_FORMAT=json) with one `request` line per generation request.

A request line carries ids, the schema, the outcome, tokens and times; never a key's
secret (only its id) and no message content unless IRGW_LOG_CONTENT is on, and then
truncated to IRGW_LOG_CONTENT_MAX_CHARS and marked as content.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from gateway.observe.causes import error_code

if TYPE_CHECKING:
    from gateway.observe.observer import Observation, Observer
    from gateway.settings import Settings

_TRACEPARENT_RE = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """Every record as one JSON object: time (UTC, ISO 8601), level, logger, message, plus
    a request line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "irgw", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure_logging(settings: Settings) -> None:
    """The root logger for `ir-gateway serve`: text or JSON lines on stderr."""
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)


def uvicorn_logging(settings: Settings) -> dict[str, Any]:
    """In JSON mode uvicorn configures no logging of its own: its records reach the root
    logger's JSON handler like every other."""
    return {"log_config": None} if settings.log_format == "json" else {}


def trace_id(obs: Observation) -> str | None:
    if obs.span is not None:
        return format(obs.span.get_span_context().trace_id, "032x")
    if obs.traceparent is not None:
        match = _TRACEPARENT_RE.fullmatch(obs.traceparent)
        return match.group(1) if match else None
    return None


def _request_id(obs: Observation) -> str | None:
    if obs.response is not None:
        for name, value in obs.response.raw_headers:
            if name == b"x-request-id":
                return value.decode("latin-1")
    return None


def _clip(text: str, limit: int) -> tuple[str, bool]:
    return (text, False) if len(text) <= limit else (text[:limit], True)


def request_record(obs: Observation, status: int, outcome: str, total_s: float,
                   usage: dict[str, Any] | None, observer: Observer) -> dict[str, Any]:

    plan = obs.plan
    schema = plan.schema.ref if plan is not None and plan.schema is not None else None
    error = obs.error
    attempts = obs.attempts
    if isinstance(getattr(error, "extra", None), dict):
        attempts = error.extra.get("attempts", attempts)  # type: ignore[union-attr]
    record: dict[str, Any] = {
        "event": "request",
        "request_id": _request_id(obs),
        "key_id": obs.key_id,
        "route": obs.path,
        "model": plan.body.get("model") if plan is not None else None,
        "schema": schema,
        "stream": plan.stream if plan is not None else None,
        "outcome": outcome,
        "status": status,
        "error_code": error_code(error),
        "prompt_tokens": usage.get("prompt_tokens") if usage else None,
        "completion_tokens": usage.get("completion_tokens") if usage else None,
        "total_ms": round(total_s * 1000, 2),
        "upstream_ms": round(obs.upstream_s * 1000, 2),
        "gateway_ms": round(max(total_s - obs.upstream_s, 0.0) * 1000, 2),
        "ttft_ms": round(obs.ttft_s * 1000, 2) if obs.ttft_s is not None else None,
        "attempts": attempts,
        "trace_id": trace_id(obs),
    }
    if observer.log_content and plan is not None:
        limit = observer.log_content_max_chars
        asked = plan.body.get("messages", plan.body.get("prompt"))
        request_text, cut_request = _clip(orjson.dumps(asked, default=str).decode(), limit)
        answer = _answer_text(obs)
        answer_text, cut_answer = _clip(answer, limit) if answer is not None else (None, False)
        # Marked, so that whoever reads or ships these logs sees they carry user content.
        record["content"] = {"logged": "IRGW_LOG_CONTENT", "request": request_text,
                             "answer": answer_text, "truncated": cut_request or cut_answer}
    return record


def _answer_text(obs: Observation) -> str | None:
    if obs.answer is not None:
        choices = obs.answer.get("choices") or []
        if not choices:
            return None
        first = choices[0]
        message = first.get("message")
        text = message.get("content") if isinstance(message, dict) else first.get("text")
        return text if isinstance(text, str) else orjson.dumps(message, default=str).decode()
    if obs.stream_state is not None:
        return "".join(obs.stream_state.parts)
    return None
