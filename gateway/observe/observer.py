"""One `Observation` per generation request, begun and ended by `GatewayApp`: the
`x-irgw-overhead-ms` header, then the request's metrics, its JSON log line and its span."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from starlette.responses import Response
from starlette.types import Scope

from gateway.errors import GatewayError
from gateway.observe import hooks
from gateway.observe.causes import error_outcome, refusal_reasons, upstream_cause
from gateway.observe.logs import request_record
from gateway.observe.metrics import RequestMetrics
from gateway.observe.tracing import Tracing, build_tracing

if TYPE_CHECKING:
    from gateway.generation.planning import ChatPlan
    from gateway.generation.streaming import StreamState
    from gateway.settings import Settings

request_log = logging.getLogger("gateway.requests")
_OPERATIONS = {"/v1/chat/completions": "chat", "/v1/completions": "text_completion"}


class Observation:
    """What one request did, written by the hooks (gateway.observe.hooks) as it runs."""

    __slots__ = ("answer", "attempt_started", "attempts", "error", "key_id", "observer",
                 "outcome", "path", "plan", "response", "span", "started", "stream_opened",
                 "stream_state", "token", "traceparent", "ttft_s", "upstream_cause",
                 "upstream_s")

    def __init__(self, observer: Observer, path: str) -> None:
        self.observer = observer
        self.path = path
        self.started = time.perf_counter()
        self.upstream_s = 0.0
        self.attempt_started = self.started
        self.attempts = 0
        self.key_id: str | None = None
        self.plan: ChatPlan | None = None
        self.outcome: str | None = None
        self.answer: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.upstream_cause: str | None = None
        self.stream_opened = False
        self.stream_state: StreamState | None = None
        self.ttft_s: float | None = None
        self.traceparent: str | None = None
        self.span: Any = None
        self.response: Response | None = None
        self.token: Any = None

    @property
    def operation(self) -> str:
        return _OPERATIONS.get(self.path, "chat")

    def usage(self) -> dict[str, Any] | None:
        if self.answer is not None:
            return self.answer.get("usage")
        if self.stream_state is not None:
            return self.stream_state.usage
        return None

    def finish_reasons(self) -> list[str]:
        if self.answer is None:
            return []
        return [c.get("finish_reason") or "" for c in self.answer.get("choices") or []]


class Observer:
    def __init__(self, settings: Settings, registry: CollectorRegistry, limiter: Any) -> None:
        self.json_log = settings.log_format == "json"
        self.log_content = settings.log_content
        self.log_content_max_chars = settings.log_content_max_chars
        self.metrics = RequestMetrics(registry, key_labels=settings.metrics_key_labels,
                                      max_keys=settings.metrics_max_keys, limiter=limiter)
        self.tracing: Tracing = build_tracing()

    def begin(self, scope: Scope) -> Observation:
        obs = Observation(self, scope["path"])
        # The client's W3C trace context: continued by our span, or passed on to vLLM as
        # is when the gateway does not trace. A scan of a few header pairs.
        for name, value in scope["headers"]:
            if name == b"traceparent":
                obs.traceparent = value.decode("latin-1")[:55]
                break
        if self.tracing.enabled:
            self.tracing.begin(obs, scope)
        obs.token = hooks.current.set(obs)
        return obs

    def failed(self, obs: Observation, error: BaseException) -> None:
        obs.error = error

    def stamp(self, obs: Observation, response: Response) -> None:
        """`x-irgw-overhead-ms`: the gateway's own time so far (all of it but the waits on
        vLLM), on the answer's head."""
        obs.response = response
        overhead_ms = (time.perf_counter() - obs.started - obs.upstream_s) * 1000
        response.raw_headers.append((b"x-irgw-overhead-ms", b"%.2f" % max(overhead_ms, 0.0)))

    def end(self, obs: Observation, status: int) -> None:
        hooks.current.reset(obs.token)
        total_s = time.perf_counter() - obs.started
        plan = obs.plan
        schema = plan.schema.metric_label if plan is not None and plan.schema else ""
        error = obs.error
        state = obs.stream_state
        if error is not None:
            outcome = error_outcome(error)
        elif state is not None:
            outcome = state.outcome or "client_gone"
        else:
            outcome = obs.outcome or ("client_gone" if status == 499 else "error")
        cause = obs.upstream_cause or (upstream_cause(error) if error is not None else None)
        if cause is None and outcome == "error" and state is not None:
            cause = "stream_error"
        usage = obs.usage()
        route = obs.path
        m = self.metrics
        m.duration.observe((route, schema), total_s)
        m.upstream.observe((route,), obs.upstream_s)
        m.gateway.observe((route,), max(total_s - obs.upstream_s, 0.0))
        if obs.ttft_s is not None:
            m.ttft.observe((route, schema), obs.ttft_s)
        if usage:
            m.prompt_tokens.inc((route, schema), usage.get("prompt_tokens") or 0)
            m.completion_tokens.inc((route, schema), usage.get("completion_tokens") or 0)
        m.outcomes.inc((route, schema, outcome))
        if isinstance(error, GatewayError):
            for reason in refusal_reasons(error):
                m.refusals.inc((reason,))
        if cause is not None:
            m.upstream_errors.inc((cause,))
        if m.key_labels:
            key = m.key_label(obs.key_id)
            m.key_requests.inc((key, f"{status // 100}xx"))
            if usage:
                m.key_tokens.inc((key, "prompt"), usage.get("prompt_tokens") or 0)
                m.key_tokens.inc((key, "completion"), usage.get("completion_tokens") or 0)
        if obs.span is not None:
            self.tracing.end(obs, status, outcome, usage)
        if self.json_log:
            record = request_record(obs, status, outcome, total_s, usage, self)
            request_log.info("request", extra={"irgw": record})
        # Let go of the request's data now. The error's traceback holds `_respond`'s frame,
        # which holds `obs`: a cycle that only the collector frees (rarely: runtime.py), and
        # with it every frame of the request and its parsed body. And a connection opened
        # during the request (to vLLM, to Redis) keeps a copy of the request's context, so
        # `obs`, for as long as it stays open.
        obs.error = obs.plan = obs.answer = obs.response = obs.stream_state = None

    async def aclose(self) -> None:
        await self.tracing.aclose()
