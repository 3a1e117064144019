"""OpenTelemetry traces, exported over OTLP/HTTP, configured by the standard `OTEL_*`
variables and off unless an endpoint is set (OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). Off, nothing of the SDK is imported.

One SERVER span per generation request, named and attributed after the GenAI semantic
conventions (`gen_ai.*`) plus the gateway's own (`irgw.*`: schema, version, outcome,
policy, attempts, key id; never a key's secret), with child spans for admission (time
spent waiting for the limiter and a GPU slot), each call to vLLM (a CLIENT span, whose
context vLLM gets as `traceparent`) and checking the answer. A client's `traceparent`
makes the request's span a child of the client's. Spans are exported in batches from the
SDK's own thread (OTEL_BSP_* tune it), never on the request path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from starlette.types import Scope

if TYPE_CHECKING:
    from gateway.observe.observer import Observation

log = logging.getLogger("gateway.tracing")


def tracing_wanted(env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() in ("none", ""):
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def dev_tracing(endpoint: str | None, env: MutableMapping[str, str]) -> list[str]:
    """`ir-gateway dev --otlp-traces-endpoint URL`: the gateway (in this process) and vLLM
    (a child, which inherits `env`) both export to URL over OTLP/HTTP; vLLM's own default
    would be gRPC. Returns the vLLM flags."""
    if not endpoint:
        return []
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = endpoint
    env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = "http/protobuf"
    return ["--otlp-traces-endpoint", endpoint]


class Tracing:
    """Disabled: a placeholder (`enabled` False) whose methods are never called."""

    enabled = False

    def begin(self, obs: Observation, scope: Scope) -> None:
        raise NotImplementedError

    def child(self, obs: Observation, name: str) -> Any:
        raise NotImplementedError

    def attempt(self, obs: Observation, headers: dict[str, str]) -> Any:
        raise NotImplementedError

    def end_attempt(self, span: Any, error: BaseException | None) -> None:
        raise NotImplementedError

    def end(self, obs: Observation, status: int, outcome: str,
            usage: dict[str, Any] | None) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


def build_tracing(env: Mapping[str, str] | None = None) -> Tracing:
    env = os.environ if env is None else env
    if not tracing_wanted(env):
        return Tracing()
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
    if protocol.strip() != "http/protobuf":
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: the gateway exports "
                         "traces over OTLP/HTTP only (http/protobuf)")
    return SdkTracing()


class SdkTracing(Tracing):
    enabled = True

    def __init__(self) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from gateway import __version__

        resource = Resource.create({"service.version": __version__})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: "ir-gateway"}))
        # The SDK reads the sampler (OTEL_TRACES_SAMPLER), the exporter's endpoint, headers
        # and timeout, and the batching limits from the environment itself.
        self._provider = TracerProvider(resource=resource)
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self._tracer = self._provider.get_tracer("ir-gateway", __version__)
        self._propagator = TraceContextTextMapPropagator()
        self._in_context = set_span_in_context
        self._server, self._client, self._internal = (
            SpanKind.SERVER, SpanKind.CLIENT, SpanKind.INTERNAL)
        self._error_status = Status(StatusCode.ERROR)
        log.info("tracing on: OTLP/HTTP to %s", os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))

    def begin(self, obs: Observation, scope: Scope) -> None:
        carrier = {}
        for name, value in scope["headers"]:
            if name in (b"traceparent", b"tracestate"):
                carrier[name.decode()] = value.decode("latin-1")
        parent = self._propagator.extract(carrier) if carrier else None
        obs.span = self._tracer.start_span(
            obs.operation, context=parent, kind=self._server,
            attributes={"gen_ai.operation.name": obs.operation, "http.request.method": "POST",
                        "http.route": obs.path})

    def child(self, obs: Observation, name: str) -> _Child:
        return _Child(self._tracer.start_span(name, context=self._in_context(obs.span),
                                              kind=self._internal))

    def attempt(self, obs: Observation, headers: dict[str, str]) -> Any:
        plan = obs.plan
        span = self._tracer.start_span(
            f"{obs.operation} {plan.body.get('model') if plan is not None else ''}".strip(),
            context=self._in_context(obs.span), kind=self._client,
            attributes={"gen_ai.operation.name": obs.operation, "gen_ai.provider.name": "vllm",
                        "irgw.attempt": obs.attempts})
        self._propagator.inject(headers, context=self._in_context(span))
        return span

    def end_attempt(self, span: Any, error: BaseException | None) -> None:
        if error is not None:
            span.set_attribute("error.type", getattr(error, "code", None)
                               or type(error).__name__)
            span.set_status(self._error_status)
        span.end()

    def end(self, obs: Observation, status: int, outcome: str,
            usage: dict[str, Any] | None) -> None:
        span = obs.span
        plan = obs.plan
        attributes: dict[str, Any] = {
            "http.response.status_code": status, "irgw.outcome": outcome,
            "irgw.attempts": obs.attempts, "irgw.upstream_ms": round(obs.upstream_s * 1000, 3)}
        if obs.key_id is not None:
            attributes["irgw.key_id"] = obs.key_id
        if plan is not None:
            model = plan.body.get("model")
            if isinstance(model, str):
                attributes["gen_ai.request.model"] = model
                span.update_name(f"{obs.operation} {model}")
            if plan.schema is not None:
                attributes["irgw.schema"] = plan.schema.name
                attributes["irgw.schema.version"] = str(plan.schema.version) \
                    if not plan.schema.adhoc else "ad-hoc"
                attributes["irgw.policy"] = plan.policy.name
            attributes["irgw.stream"] = plan.stream
        if usage:
            attributes["gen_ai.usage.input_tokens"] = usage.get("prompt_tokens") or 0
            attributes["gen_ai.usage.output_tokens"] = usage.get("completion_tokens") or 0
        reasons = obs.finish_reasons()
        if reasons:
            attributes["gen_ai.response.finish_reasons"] = reasons
        error = obs.error
        if error is not None:
            attributes["error.type"] = getattr(error, "code", None) or type(error).__name__
        if obs.ttft_s is not None:
            attributes["irgw.ttft_ms"] = round(obs.ttft_s * 1000, 3)
        span.set_attributes(attributes)
        if status >= 500:
            span.set_status(self._error_status)
        span.end()

    async def aclose(self) -> None:
        import asyncio

        # shutdown() flushes what is batched, over the network: not on the event loop.
        await asyncio.to_thread(self._provider.shutdown)


class _Child:
    """A child span for a `with` block. Not contextlib's generator form: that writes the
    exception's __traceback__, which a frozen dataclass exception (CheckFailure) refuses."""

    __slots__ = ("_span",)

    def __init__(self, span: Any) -> None:
        self._span = span

    def __enter__(self) -> Any:
        return self._span

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is not None:
            self._span.set_attribute("error.type", kind.__name__)
        self._span.end()
