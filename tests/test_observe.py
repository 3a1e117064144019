"""Seeing inside a request: `x-irgw-overhead-ms`, JSON request lines, request metrics.

Real gateways (uvicorn, and an `ir-gateway serve` process for the logs) in front of the
fake upstream, which is what can be made slow or failing on demand."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from gateway.access.keys import KeyPolicy, KeyStore
from tests.conftest import unit_settings
from tests.fake_upstream import ErrorReply, FakeUpstream, Reply, Slow
from tests.gateway_server import free_port, running_gateway, serving_process
from tests.ir_samples import VALID

BODY = {"model": "schema/function_ir", "max_tokens": 50,
        "messages": [{"role": "user", "content": "a function that adds two integers"}]}
REQUEST_FIELDS = {"time", "request_id", "key_id", "route", "schema", "outcome", "status",
                  "error_code", "prompt_tokens", "completion_tokens", "total_ms",
                  "upstream_ms", "gateway_ms", "attempts", "trace_id"}


def overhead_ms(response: httpx.Response) -> float:
    return float(response.headers["x-irgw-overhead-ms"])


async def test_overhead_header_counts_the_gateway_not_vllm(fake: FakeUpstream,
                                                           client: httpx.AsyncClient) -> None:
    # vLLM takes 400 ms: the header must not count them, the total must.
    fake.script(Slow(0.4, Reply(VALID)), Slow(0.4, Reply(VALID)))
    answered = await client.post("/v1/chat/completions", json=BODY)
    assert answered.status_code == 200
    assert 0 < overhead_ms(answered) < 400
    streamed = await client.post("/v1/chat/completions", json={**BODY, "stream": True})
    assert streamed.status_code == 200
    assert 0 < overhead_ms(streamed) < 400
    # Every generation answer carries it, errors included.
    refused = await client.post("/v1/chat/completions",
                                json={**BODY, "model": "schema/no_such_schema"})
    assert refused.status_code == 404
    assert overhead_ms(refused) >= 0
    legacy = await client.post("/v1/completions", json={"model": "m", "prompt": "x"})
    assert legacy.status_code == 200 and overhead_ms(legacy) >= 0


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_request_metrics_answer_an_operators_questions(fake: FakeUpstream,
                                                             tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json", create=True)
    record, key = store.create("team-a", KeyPolicy(rpm=2))
    settings = unit_settings(fake.url, auth_enabled=True, keys_file=tmp_path / "keys.json",
                             metrics_key_labels=True)
    fake.script(Reply(VALID), Reply(VALID), ErrorReply.new_shape(503, "busy"))
    async with running_gateway(settings) as gateway, httpx.AsyncClient(
            base_url=gateway.url, timeout=20,
            headers={"authorization": f"Bearer {key}"}) as http:
        assert (await http.post("/v1/chat/completions", json=BODY)).status_code == 200
        streamed = await http.post("/v1/chat/completions", json={**BODY, "stream": True})
        assert streamed.status_code == 200
        assert (await http.post("/v1/chat/completions", json=BODY)).status_code == 429
        text = (await http.get("/metrics")).text
    samples = metric_samples(text)
    route, schema = "/v1/chat/completions", "function_ir@1"
    assert value(samples, "irgw_request_duration_seconds_count", route=route,
                 schema=schema) == 3
    assert value(samples, "irgw_request_upstream_seconds_count", route=route) == 3
    assert value(samples, "irgw_request_gateway_seconds_count", route=route) == 3
    assert value(samples, "irgw_stream_time_to_first_token_seconds_count", route=route,
                 schema=schema) == 1
    assert value(samples, "irgw_request_outcomes_total", route=route, schema=schema,
                 outcome="passed") == 2
    assert value(samples, "irgw_request_outcomes_total", route=route, schema=schema,
                 outcome="refused") == 1
    assert value(samples, "irgw_limiter_refusals_total", reason="requests") == 1
    assert value(samples, "irgw_limiter_refusals_total", reason="tokens") == 0
    assert ("irgw_limiter_refusals_total", frozenset({("reason", "tokens")})) in samples
    # The fake's default usage: 10 prompt tokens, one completion token per streamed piece.
    assert value(samples, "irgw_prompt_tokens_total", route=route, schema=schema) == 20
    assert value(samples, "irgw_completion_tokens_total", route=route, schema=schema) > 0
    assert value(samples, "irgw_key_requests_total", key_id=record.id,
                 status_class="2xx") == 2
    assert value(samples, "irgw_key_requests_total", key_id=record.id,
                 status_class="4xx") == 1
    assert value(samples, "irgw_upstream_slots", ) == 16
    assert ("irgw_queue_depth", frozenset()) in samples
    assert key not in text and key.rsplit("-", 1)[-1] not in text


async def test_upstream_errors_are_counted_by_cause(fake: FakeUpstream,
                                                    client: httpx.AsyncClient,
                                                    gateway: Any) -> None:
    fake.script(ErrorReply.new_shape(503, "busy"), ErrorReply.new_shape(400, "too long"))
    assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 502
    assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 400
    await fake.stop()
    assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 503
    samples = metric_samples((await client.get("/metrics")).text)
    for cause in ("server_error", "rejected", "unavailable"):
        assert value(samples, "irgw_upstream_errors_total", cause=cause) == 1, cause
    assert value(samples, "irgw_upstream_errors_total", cause="timeout") == 0
    assert value(samples, "irgw_request_outcomes_total", route="/v1/chat/completions",
                 schema="function_ir@1", outcome="error") == 3


async def test_key_labels_are_bounded(fake: FakeUpstream, tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json", create=True)
    keys = [store.create(f"k{i}", KeyPolicy())[1] for i in range(3)]
    settings = unit_settings(fake.url, auth_enabled=True, keys_file=tmp_path / "keys.json",
                             metrics_key_labels=True, metrics_max_keys=2)
    fake.default = Reply(VALID)
    async with running_gateway(settings) as gateway, httpx.AsyncClient(
            base_url=gateway.url, timeout=20) as http:
        for key in keys:
            answered = await http.post("/v1/chat/completions", json=BODY,
                                       headers={"authorization": f"Bearer {key}"})
            assert answered.status_code == 200
        samples = metric_samples((await http.get("/metrics")).text)
    labels = {dict(lbl)["key_id"] for name, lbl in samples if name == "irgw_key_requests_total"}
    assert len(labels) == 3 and "(other)" in labels


async def test_a_json_request_line_per_request_and_no_secret(fake: FakeUpstream,
                                                            tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json", create=True)
    record, key = store.create("team-a", KeyPolicy())
    fake.script(Reply(VALID))
    port = free_port()
    env = {**os.environ, "IRGW_UPSTREAM_URL": fake.url, "IRGW_KEYS_FILE": str(store.path),
           "IRGW_LOG_FORMAT": "json", "IRGW_LOG_LEVEL": "info", "IRGW_HUGE_PAGES": "false",
               "IRGW_CANARY": "off",  # the fake is not vLLM: its scripted answer is this test's
           "IRGW_SCHEMAS_DIR": str(Path(__file__).parent.parent / "schemas")}
    log_path = tmp_path / "stderr.log"
    command = [sys.executable, "-m", "gateway", "serve", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log_file:
        async with serving_process(command, env, url, stderr=log_file), httpx.AsyncClient(
                base_url=url, timeout=20) as http:
            answered = await http.post(
                "/v1/chat/completions", json=BODY,
                headers={"authorization": f"Bearer {key}", "x-request-id": "req-observed",
                         "traceparent": "00-0af7651916cd43dd8448eb211c80319c-"
                                        "b7ad6b7169203331-01"})
            assert answered.status_code == 200
            refused = await http.post("/v1/chat/completions", json=BODY,
                                      headers={"authorization": "Bearer irgw-nope-wrong"})
            assert refused.status_code == 401
            await http.get("/healthz")
    text = log_path.read_text()
    lines = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    requests = [line for line in lines if line.get("event") == "request"]
    assert len(requests) == 2  # one per generation request, none for /healthz
    ok, bad = requests
    assert REQUEST_FIELDS <= ok.keys()
    assert ok["request_id"] == "req-observed" and ok["key_id"] == record.id
    assert (ok["route"], ok["schema"], ok["outcome"], ok["status"]) == (
        "/v1/chat/completions", "function_ir@1", "passed", 200)
    assert ok["error_code"] is None and ok["attempts"] == 1
    assert ok["prompt_tokens"] == 10 and ok["completion_tokens"] >= 1
    assert ok["total_ms"] >= ok["upstream_ms"] > 0 and ok["gateway_ms"] > 0
    assert ok["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert "content" not in ok
    assert (bad["status"], bad["error_code"], bad["key_id"]) == (401, "invalid_api_key", None)
    # Not the key, nor its secret part, anywhere in the logs; no message content either.
    assert key not in text and key.rsplit("-", 1)[-1] not in text
    assert "adds two integers" not in text


async def test_content_is_logged_only_when_asked_truncated_and_marked(
        fake: FakeUpstream, caplog: Any) -> None:
    fake.script(Reply(VALID))
    settings = unit_settings(fake.url, log_format="json", log_content=True,
                             log_content_max_chars=20)
    async with running_gateway(settings) as gateway, httpx.AsyncClient(
            base_url=gateway.url, timeout=20) as http:
        with caplog.at_level("INFO", logger="gateway.requests"):
            assert (await http.post("/v1/chat/completions", json=BODY)).status_code == 200
            await asyncio.sleep(0)
    records = [r for r in caplog.records if r.name == "gateway.requests"]
    assert len(records) == 1
    content = records[0].irgw["content"]
    assert content["logged"] == "IRGW_LOG_CONTENT" and content["truncated"] is True
    assert len(content["request"]) == 20 and content["answer"] == VALID[:20]
