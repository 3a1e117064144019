"""OpenTelemetry traces, checked by a real OTLP/HTTP receiver on loopback: the gateway's
own exporter (opentelemetry-sdk, configured by OTEL_* variables) sends protobuf, which
the receiver decodes with opentelemetry-proto."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.cli import build_parser
from gateway.observe.tracing import build_tracing, dev_tracing, tracing_wanted
from tests.conftest import unit_settings
from tests.fake_upstream import FakeUpstream, Reply
from tests.gateway_server import running_gateway
from tests.ir_samples import VALID

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
BODY = {"model": "schema/function_ir", "max_tokens": 50,
        "messages": [{"role": "user", "content": "a function that adds two integers"}]}


class Receiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces, protobuf in, protobuf out."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.resources: list[dict[str, Any]] = []
        self.content_types: list[str] = []

    async def traces(self, request: web.Request) -> web.Response:
        self.content_types.append(request.content_type)
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in export.resource_spans:
            self.resources.append(attributes(resource_spans.resource.attributes))
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    receiving = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", receiving.traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield receiving, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def attributes(items: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in items:
        value = item.value
        kind = value.WhichOneof("value")
        if kind == "array_value":
            found[item.key] = [getattr(v, v.WhichOneof("value")) for v in value.array_value.values]
        else:
            found[item.key] = getattr(value, kind)
    return found


def test_tracing_is_off_unless_an_endpoint_is_set() -> None:
    assert not tracing_wanted({})
    assert tracing_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert tracing_wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x/v1/traces"})
    assert not tracing_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x",
                               "OTEL_SDK_DISABLED": "true"})
    assert not tracing_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x",
                               "OTEL_TRACES_EXPORTER": "none"})
    assert not build_tracing({}).enabled
    with pytest.raises(ValueError, match="OTLP/HTTP"):
        build_tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x",
                       "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})


async def test_a_named_schema_request_is_one_trace_continued_into_vllm(
        fake: FakeUpstream, receiver: tuple[Receiver, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    receiving, url = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-under-test")
    fake.script(Reply("not json at all"), Reply(VALID))  # one retry: two attempts
    settings = unit_settings(fake.url, output_policy="retry")
    async with running_gateway(settings) as gateway, httpx.AsyncClient(
            base_url=gateway.url, timeout=20) as http:
        answered = await http.post("/v1/chat/completions", json=BODY,
                                   headers={"traceparent": TRACEPARENT})
        assert answered.status_code == 200
        assert answered.headers["x-irgw-output"] == "retried"
    # The gateway has shut down: its spans are flushed.
    assert receiving.content_types and set(receiving.content_types) == {
        "application/x-protobuf"}
    assert receiving.resources[0]["service.name"] == "gateway-under-test"
    spans = receiving.spans
    roots = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    assert len(roots) == 1
    root = roots[0]
    assert root.trace_id.hex() == CLIENT_TRACE and root.parent_span_id.hex() == CLIENT_SPAN
    assert root.name == "chat schema/function_ir"
    found = attributes(root.attributes)
    assert found["gen_ai.operation.name"] == "chat"
    assert found["gen_ai.request.model"] == "schema/function_ir"
    assert found["gen_ai.usage.input_tokens"] == 10
    assert found["gen_ai.usage.output_tokens"] >= 1
    assert found["gen_ai.response.finish_reasons"] == ["stop"]
    assert (found["irgw.schema"], found["irgw.schema.version"]) == ("function_ir", "1")
    assert (found["irgw.outcome"], found["irgw.policy"], found["irgw.attempts"]) == (
        "retried", "retry", 2)
    assert found["http.response.status_code"] == 200
    assert "irgw.key_id" not in found  # auth is off here: no key, no attribute

    children = [s for s in spans if s.parent_span_id == root.span_id]
    assert all(s.trace_id == root.trace_id for s in spans)
    names = sorted(s.name for s in children)
    assert names == ["chat schema/function_ir", "chat schema/function_ir",
                     "irgw.admission", "irgw.check", "irgw.check"]
    attempts = sorted((s for s in children if s.kind == Span.SPAN_KIND_CLIENT),
                      key=lambda s: s.start_time_unix_nano)
    assert [attributes(s.attributes)["irgw.attempt"] for s in attempts] == [1, 2]
    for child in children:
        assert root.start_time_unix_nano <= child.start_time_unix_nano
        assert child.end_time_unix_nano <= root.end_time_unix_nano
    # vLLM got the attempt's own span as its parent, in the client's trace.
    sent = [request.headers["traceparent"] for request in fake.requests]
    assert sent == [f"00-{CLIENT_TRACE}-{s.span_id.hex()}-01" for s in attempts]


async def test_a_stream_and_a_keyed_request_are_traced(
        fake: FakeUpstream, receiver: tuple[Receiver, str], tmp_path: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.access.keys import KeyPolicy, KeyStore

    receiving, url = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{url}/v1/traces")
    store = KeyStore(tmp_path / "keys.json", create=True)
    record, key = store.create("team-a", KeyPolicy())
    fake.script(Reply(VALID))
    settings = unit_settings(fake.url, auth_enabled=True, keys_file=store.path)
    async with running_gateway(settings) as gateway, httpx.AsyncClient(
            base_url=gateway.url, timeout=20) as http:
        streamed = await http.post("/v1/chat/completions", json={**BODY, "stream": True},
                                   headers={"authorization": f"Bearer {key}"})
        assert streamed.status_code == 200 and "[DONE]" in streamed.text
    (root,) = [s for s in receiving.spans if s.kind == Span.SPAN_KIND_SERVER]
    assert not root.parent_span_id  # no traceparent from the client: a new trace
    found = attributes(root.attributes)
    assert found["irgw.key_id"] == record.id and found["irgw.stream"] is True
    assert found["irgw.outcome"] == "passed" and found["irgw.ttft_ms"] > 0
    assert found["gen_ai.usage.input_tokens"] == 10
    (attempt,) = [s for s in receiving.spans if s.kind == Span.SPAN_KIND_CLIENT]
    assert attempt.parent_span_id == root.span_id
    assert attempt.end_time_unix_nano <= root.end_time_unix_nano
    assert fake.requests[0].headers["traceparent"].split("-")[2] == attempt.span_id.hex()
    assert key not in str(receiving.spans) and key.rsplit("-", 1)[-1] not in str(
        receiving.spans)


async def test_without_tracing_the_clients_traceparent_still_reaches_vllm(
        fake: FakeUpstream, client: httpx.AsyncClient) -> None:
    fake.script(Reply(VALID))
    answered = await client.post("/v1/chat/completions", json=BODY,
                                 headers={"traceparent": TRACEPARENT})
    assert answered.status_code == 200
    assert fake.requests[0].headers["traceparent"] == TRACEPARENT


def test_make_dev_can_trace_vllm_and_the_gateway_to_one_endpoint() -> None:
    env: dict[str, str] = {}
    url = "http://127.0.0.1:4318/v1/traces"
    assert dev_tracing(None, env) == [] and env == {}
    assert dev_tracing(url, env) == ["--otlp-traces-endpoint", url]
    assert env == {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": url,
                   "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}
    assert tracing_wanted(env)
    args = build_parser().parse_args(["dev", "--tiny", "--otlp-traces-endpoint", url])
    assert args.otlp_traces_endpoint == url
