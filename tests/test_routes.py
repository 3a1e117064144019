"""Routes other than the chat happy path: discovery, health, errors, cold starts, dialects."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import struct
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.access.keys import KeyPolicy, KeyStore
from gateway.settings import Settings
from tests import openai_spec
from tests.conftest import unit_settings
from tests.fake_upstream import FakeUpstream, Reply, Slow
from tests.gateway_server import RunningGateway, running_gateway
from tests.ir_samples import BAD_NAME, FUNCTION_IR, RAW_CONTROL, TRUNCATED, VALID

CHAT = {"model": "schema/function_ir", "messages": [{"role": "user", "content": "add"}]}


async def test_models_list_has_upstream_models_and_schema_aliases(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/v1/models")
    body = response.json()
    openai_spec.validate("ListModelsResponse", body)
    ids = [m["id"] for m in body["data"]]
    assert ids[0] == "qwen-coder"
    assert {"schema/function_ir", "schema/function_ir@1", "schema/module_ir",
            "schema/test_plan_ir"} <= set(ids)
    one = await client.get("/v1/models/schema/function_ir@1")
    openai_spec.validate("Model", one.json())
    missing = await client.get("/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


async def test_schema_registry_routes(client: httpx.AsyncClient) -> None:
    listing = (await client.get("/v1/schemas")).json()
    names = {s["name"]: s for s in listing["data"]}
    assert set(names) >= {"function_ir", "module_ir", "test_plan_ir"}
    assert names["function_ir"]["versions"] == [1] and names["function_ir"]["description"]
    one = (await client.get("/v1/schemas/function_ir")).json()
    assert one["versions"][0]["schema"]["required"] == ["intent", "signature"]
    pinned = (await client.get("/v1/schemas/function_ir@1")).json()
    assert pinned["version"] == 1
    missing = await client.get("/v1/schemas/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "schema_not_found"


async def test_health_and_readiness(client: httpx.AsyncClient, fake: FakeUpstream) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["upstream_version"] == "0.32.0"
    await fake.stop()
    down = await client.get("/readyz")
    assert down.status_code == 503 and down.headers["retry-after"]
    assert (await client.get("/healthz")).status_code == 200
    await fake.start()
    assert (await client.get("/readyz")).status_code == 200


async def test_readiness_can_leave_vllm_alone_for_callers_without_a_key(
        fake: FakeUpstream, tmp_path: Path) -> None:
    # Where vLLM scales to zero (Modal), a probe from a monitor or a scanner would start a GPU.
    store = KeyStore(tmp_path / "keys.json", create=True)
    _, key = store.create("ops", KeyPolicy())
    settings = unit_settings(fake.url, auth_enabled=True, keys_file=tmp_path / "keys.json",
                             ready_probe="with_key")
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        for headers in ({}, {"authorization": "Bearer irgw-nope-nope"}):
            anonymous = await client.get("/readyz", headers=headers)
            assert anonymous.status_code == 200 and "not probed" in anonymous.json()["reason"]
        assert fake.hits["/version"] == 0
        probed = await client.get("/readyz", headers={"authorization": f"Bearer {key}"})
        assert probed.json()["upstream_version"] == "0.32.0" and fake.hits["/version"] == 1


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/v1/nothing", 404, "unknown_route"),
    ("GET", "/v1/chat/completions", 405, "method_not_allowed"),
    ("DELETE", "/v1/models", 405, "method_not_allowed"),
    # No redirect: Starlette's was a bare 307 to an http:// URL made from the Host header.
    ("POST", "/v1/chat/completions/", 404, "unknown_route"),
    ("GET", "/v1/schemas/", 404, "unknown_route"),
])
async def test_unknown_routes_and_methods_answer_in_openai_shape(
    client: httpx.AsyncClient, method: str, path: str, status: int, code: str,
) -> None:
    response = await client.request(method, path, headers={"x-request-id": "trace-42"})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    openai_spec.validate("ErrorResponse", response.json())
    assert response.headers["x-request-id"] == "trace-42"  # to quote, whatever went wrong
    if status == 405:  # RFC 9110: the methods that are allowed
        assert response.headers["allow"] in ("POST", "GET, HEAD")


async def test_generation_routes_skip_the_middleware_stack(gateway: RunningGateway) -> None:
    # The overhead budget depends on it (bench/overhead.py); a FastAPI upgrade that changed
    # how routers are included would otherwise quietly put them back behind it.
    assert gateway.app.direct_routes == {"/v1/chat/completions", "/v1/completions"}


async def test_idle_client_connections_outlive_the_clients_own_idle_expiry(
    fake: FakeUpstream,
) -> None:
    # Clients drop idle pooled connections after 5 s (httpx, openai) or 15 s (aiohttp). A
    # server that closes first races them: a request sent as it closes is lost.
    assert Settings(upstream_url=fake.url).keepalive_timeout_s > 15
    request = b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n"
    async with running_gateway(unit_settings(fake.url, keepalive_timeout_s=2)) as gw:
        host, port = gw.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for idle_s in (0.0, 1.0):
                writer.write(request)
                assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
                await reader.readuntil(b'{"status":"ok"}')
                await asyncio.sleep(idle_s)
            await asyncio.sleep(3.0)  # past the configured 2 s: the server has closed it
            assert await asyncio.wait_for(reader.read(), 1.0) == b""
        finally:
            writer.close()


def sample(metrics_text: str, series: str) -> float:
    """One series' value in Prometheus text (0 when it is absent)."""
    found = [row for row in metrics_text.splitlines() if row.startswith(series + " ")]
    return float(found[0].removeprefix(series + " ")) if found else 0.0


async def test_metrics_count_every_answer_by_route_template(client: httpx.AsyncClient,
                                                             fake: FakeUpstream) -> None:
    fake.script(Reply(VALID))
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert (await client.post("/v1/chat/completions", content=b"{")).status_code == 400
    assert (await client.get("/v1/models/schema/function_ir")).status_code == 200
    for n in range(3):  # arbitrary paths must not each become a label (unbounded memory)
        assert (await client.get(f"/v1/nothing/{n}")).status_code == 404
    text = (await client.get("/metrics")).text

    def count(route: str, status: int) -> float:
        return sample(text, f'irgw_requests_total{{route="{route}",status="{status}"}}')

    assert count("/v1/chat/completions", 200) == 1
    assert count("/v1/chat/completions", 400) == 1
    assert count("/v1/models/{model_id:path}", 200) == 1
    assert count("unmatched", 404) == 3
    assert "/v1/nothing" not in text
    # The scrape itself is in flight while it renders; nothing else is.
    assert "irgw_inflight_requests 1.0" in text


async def test_metrics_count_checked_outputs_and_upstream_time_on_both_routes(
        client: httpx.AsyncClient, fake: FakeUpstream) -> None:
    # LlamaIndex's OpenAILike calls /v1/completions: its checked answers must show in the
    # same outcome counters an operator watches for chat.
    completion = {"model": "schema/function_ir", "prompt": "add"}
    for route, body, reply, status in (
        ("/v1/chat/completions", CHAT, Reply(VALID), 200),
        ("/v1/chat/completions", CHAT, Reply(RAW_CONTROL), 200),
        ("/v1/chat/completions", CHAT, Reply(BAD_NAME), 422),
        ("/v1/completions", completion, Reply(VALID), 200),
        ("/v1/completions", completion, Reply(RAW_CONTROL), 200),
        ("/v1/completions", completion, Reply(BAD_NAME), 422),
        ("/v1/completions", completion, Reply(TRUNCATED, finish_reason="length"), 422),
        ("/v1/chat/completions", {**CHAT, "stream": True}, Reply(RAW_CONTROL), 200),
    ):
        fake.script(reply)
        assert (await client.post(route, json=body)).status_code == status, (route, reply)
    text = ""

    def outcome(name: str) -> float:
        return sample(text, f'irgw_output_checks_total{{outcome="{name}",schema="function_ir@1"}}')

    for _ in range(50):  # a stream's outcome is counted as it closes, just after its end
        text = (await client.get("/metrics")).text
        if outcome("repaired") == 3:
            break
        await asyncio.sleep(0.02)
    assert (outcome("passed"), outcome("repaired"), outcome("failed"),
            outcome("truncated")) == (2, 3, 2, 1)
    assert sample(text, 'irgw_upstream_seconds_count{route="chat"}') == 2
    assert sample(text, 'irgw_upstream_seconds_count{route="completions"}') == 2


@pytest.mark.parametrize(("content", "needle"), [
    (b'{"model": "x", "messages": [', "not valid JSON"),
    (b"", "empty"),
    (b'["a list"]', "must be an object"),
    (b'{"messages": []}', "'model'"),
    (b'{"model": "x", "messages": "hi"}', "'messages'"),
    (b'{"model": "x", "messages": [{}], "response_format": {"type": "xml"}}', "response_format"),
    (b'{"model": "x", "messages": [{}], "stream_options": {"include_usage": true}}',
     "stream_options"),
])
async def test_malformed_requests_are_400(client: httpx.AsyncClient, fake: FakeUpstream,
                                          content: bytes, needle: str) -> None:
    response = await client.post("/v1/chat/completions", content=content,
                                 headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert needle in response.json()["error"]["message"]
    openai_spec.validate("ErrorResponse", response.json())
    assert not fake.requests


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate, gzip"])
async def test_a_compressed_body_is_a_400_saying_so(client: httpx.AsyncClient,
                                                    fake: FakeUpstream, encoding: str) -> None:
    # It was read as it came: "str is not valid UTF-8: surrogates not allowed".
    body = gzip.compress(json.dumps(CHAT).encode())
    response = await client.post("/v1/chat/completions", content=body, headers={
        "content-type": "application/json", "content-encoding": encoding})
    assert response.status_code == 400
    assert "send it uncompressed" in response.json()["error"]["message"]
    assert not fake.requests
    identity = await client.post("/v1/chat/completions", content=b"{}", headers={
        "content-type": "application/json", "content-encoding": "identity"})
    assert "'model'" in identity.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_oversized_bodies_are_413_whether_declared_or_streamed(fake: FakeUpstream,
                                                                     path: str) -> None:
    settings = unit_settings(fake.url, max_request_bytes=4096)
    big = {**CHAT, "prompt": "x", "messages": [{"role": "user", "content": "x" * 5000}]}

    async def chunks() -> Any:  # no content-length: the limit must hold while reading
        data = json.dumps(big).encode()
        for start in range(0, len(data), 1000):
            yield data[start:start + 1000]

    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        declared = await client.post(path, json=big)
        streamed = await client.post(path, content=chunks(),
                                     headers={"content-type": "application/json"})
        fake.script(Reply(VALID))
        small = await client.post("/v1/chat/completions", json=CHAT)
    for response in (declared, streamed):
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "body_too_large"
        assert "4096 bytes" in response.json()["error"]["message"]
        openai_spec.validate("ErrorResponse", response.json())
    assert small.status_code == 200
    assert len(fake.requests) == 1  # nothing oversized reached vLLM


async def test_connect_retry_rides_out_a_boot_then_gives_up_with_503(
    fake: FakeUpstream,
) -> None:
    settings = unit_settings(fake.url, connect_deadline_s=3.0)
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url,
                                                                  timeout=20) as client:
        await fake.stop()
        fake.script(Reply(VALID))
        pending = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
        await asyncio.sleep(0.8)
        await fake.start()  # vLLM finished booting while the gateway kept retrying
        response = await pending
        assert response.status_code == 200, response.text
        assert json.loads(response.json()["choices"][0]["message"]["content"]) == FUNCTION_IR

    short = unit_settings(fake.url, connect_deadline_s=0.4)
    async with running_gateway(short) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        await fake.stop()
        response = await client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "upstream_unavailable"
        assert int(response.headers["retry-after"]) > 0
        await fake.start()
        fake.script(Reply(VALID))
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_upstream_timeout_is_504(fake: FakeUpstream) -> None:
    settings = unit_settings(fake.url, upstream_timeout_s=0.3)
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        await client.get("/readyz")
        fake.script(Slow(2.0, then=Reply(VALID)))
        response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"


@pytest.mark.parametrize(("version", "field"), [
    ("0.32.0", "structured_outputs"), ("0.11.1", "structured_outputs"), ("0.9.2", "guided_json"),
])
async def test_completions_dialect_follows_the_upstream_version(version: str, field: str) -> None:
    async with FakeUpstream(version=version) as fake, running_gateway(
        unit_settings(fake.url)) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        fake.script(Reply(VALID))
        response = await client.post("/v1/completions", json={
            "model": "schema/function_ir", "prompt": "IR for add:"})
        assert response.status_code == 200, response.text
        openai_spec.validate("CreateCompletionResponse", response.json())
        sent = fake.requests[-1].json
        assert field in sent and "response_format" not in sent
        schema = sent[field]["json"] if field == "structured_outputs" else sent[field]
        assert schema["required"] == ["intent", "signature"]
        # Chat always uses response_format, whatever the release.
        fake.script(Reply(VALID))
        await client.post("/v1/chat/completions", json=CHAT)
        sent = fake.requests[-1].json
        assert sent["response_format"]["type"] == "json_schema"
        assert not any(k.startswith("guided_") or k == "structured_outputs" for k in sent)


async def test_completions_checks_the_answer(client: httpx.AsyncClient,
                                             fake: FakeUpstream) -> None:
    from tests.ir_samples import BAD_NAME

    fake.script(Reply(BAD_NAME))
    response = await client.post("/v1/completions", json={
        "model": "qwen-coder", "prompt": "IR:",
        "response_format": {"type": "json_schema", "json_schema": {"name": "function_ir"}}})
    assert response.status_code == 422
    assert response.json()["error"]["pointer"] == "/signature/name"


@pytest.mark.parametrize(("prompt", "status"), [
    (["IR for add", "IR for sub"], 400),  # vLLM would answer each; only one would be checked
    ([[1, 2], [3, 4]], 400),
    (["IR for add"], 200),
    ([1, 2, 3], 200),  # the token ids of one prompt
])
async def test_checked_completions_take_one_prompt(
        client: httpx.AsyncClient, fake: FakeUpstream, prompt: Any, status: int) -> None:
    fake.script(Reply(VALID))
    response = await client.post("/v1/completions", json={
        "model": "schema/function_ir", "prompt": prompt})
    assert response.status_code == status, response.text
    if status == 400:
        assert response.json()["error"]["param"] == "prompt" and fake.requests == []
    fake.script(Reply("4"))
    unchecked = await client.post("/v1/completions", json={"model": "qwen-coder",
                                                           "prompt": prompt})
    assert unchecked.status_code == 200  # without a schema, vLLM's own business


def _tool_body(tool_choice: Any, parameters: Any = None, name: str = "function_ir",
               **extra: Any) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name, "description": "Record the IR"}
    if parameters is not None:
        function["parameters"] = parameters
    return {"model": "qwen-coder", "messages": [{"role": "user", "content": "add"}],
            "tools": [{"type": "function", "function": function}],
            "tool_choice": tool_choice, **extra}


@pytest.mark.parametrize("tool_choice", [
    "required", {"type": "function", "function": {"name": "function_ir"}}])
async def test_forced_tool_is_served_as_a_checked_schema(
    client: httpx.AsyncClient, fake: FakeUpstream, tool_choice: Any,
) -> None:
    fake.script(Reply(VALID))
    response = await client.post("/v1/chat/completions",
                                 json=_tool_body(tool_choice, parallel_tool_calls=False))
    assert response.status_code == 200, response.text
    body = response.json()
    openai_spec.validate("CreateChatCompletionResponse", body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "function_ir"
    assert json.loads(call["function"]["arguments"]) == FUNCTION_IR
    sent = fake.requests[-1].json
    assert "tools" not in sent and "tool_choice" not in sent
    # Empty parameters + a registered name: the registered schema is what vLLM gets.
    assert sent["response_format"]["json_schema"]["schema"]["required"] == ["intent", "signature"]


async def test_forced_tool_call_cut_at_max_tokens_says_length(client: httpx.AsyncClient,
                                                              fake: FakeUpstream) -> None:
    # The arguments happen to be complete JSON, but the cap was reached: the client must
    # see "length", not a "tool_calls" that looks finished.
    fake.script(Reply(VALID, finish_reason="length"))
    response = await client.post("/v1/chat/completions", json=_tool_body("required"))
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"]["tool_calls"]


async def test_a_forced_tool_needs_a_name_openai_would_take(client: httpx.AsyncClient,
                                                             fake: FakeUpstream) -> None:
    # The name is also the x-irgw-schema header: one no header can carry failed the answer
    # after vLLM had run.
    response = await client.post("/v1/chat/completions", json=_tool_body(
        "required", {"type": "object"}, name="r\u00e9sum\u00e9\nx"))
    assert response.status_code == 400 and response.json()["error"]["param"] == "tools"
    assert fake.requests == []


async def test_forced_tool_with_parameters_validates_arguments(client: httpx.AsyncClient,
                                                               fake: FakeUpstream) -> None:
    parameters = {"type": "object", "properties": {"city": {"type": "string"}},
                  "required": ["city"], "additionalProperties": False}
    fake.script(Reply('{"town": "Paris"}'))
    response = await client.post("/v1/chat/completions",
                                 json=_tool_body("required", parameters, name="get_weather"))
    assert response.status_code == 422
    fake.script(Reply('{"city": "Paris"}'))
    response = await client.post("/v1/chat/completions", json=_tool_body(
        "required", parameters, name="get_weather", stream=True))
    lines = [json.loads(line[5:]) for line in response.text.splitlines()
             if line.startswith("data:") and "[DONE]" not in line]
    for chunk in lines:
        openai_spec.validate("CreateChatCompletionStreamResponse", chunk)
    calls = [c["choices"][0]["delta"].get("tool_calls") for c in lines if c["choices"]]
    arguments = "".join(c[0]["function"]["arguments"] for c in calls if c)
    assert json.loads(arguments) == {"city": "Paris"}
    assert calls[0][0]["function"]["name"] == "get_weather" and calls[0][0]["id"]
    assert lines[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_auto_tool_choice_passes_through(client: httpx.AsyncClient,
                                               fake: FakeUpstream) -> None:
    fake.script(Reply("plain"))
    body = _tool_body("auto", {"type": "object"})
    await client.post("/v1/chat/completions", json=body)
    sent = fake.requests[-1].json
    assert sent["tool_choice"] == "auto" and sent["tools"] == body["tools"]


async def test_gateway_credentials_go_upstream_never_the_clients(fake: FakeUpstream) -> None:
    settings = unit_settings(fake.url, upstream_api_key="vllm-key",
                             upstream_headers={"Modal-Key": "wk-1", "Modal-Secret": "ws-1"})
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        fake.script(Reply(VALID))
        await client.post("/v1/chat/completions", json=CHAT,
                          headers={"authorization": "Bearer client-key"})
    sent = fake.requests[-1].headers
    assert sent["authorization"] == "Bearer vllm-key"
    assert (sent["modal-key"], sent["modal-secret"]) == ("wk-1", "ws-1")


async def test_upstream_cookies_never_reach_another_callers_request(
    fake: FakeUpstream,
) -> None:
    # One upstream session serves every caller: a cookie set by vLLM or a proxy in front of
    # it (a load balancer's affinity cookie, say) for one request must not ride on the next.
    # By host name: cookie jars ignore cookies set by bare IP addresses.
    by_name = fake.url.replace("127.0.0.1", "localhost")
    async with running_gateway(unit_settings(by_name)) as gw, \
            httpx.AsyncClient(base_url=gw.url) as client:
        fake.script(Reply(VALID, headers={"Set-Cookie": "affinity=caller-a; Path=/"}),
                    Reply(VALID))
        for _ in range(2):
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert "cookie" not in fake.requests[-1].headers
    assert "accept-encoding" not in fake.requests[-1].headers  # bodies are parsed as sent


@pytest.mark.parametrize("drop", ["close", "reset"])
async def test_a_connection_dropped_before_any_answer_is_retried_once(drop: str) -> None:
    """What a keep-alive race looks like: the server closes the connection the gateway just
    reused. The request never reached vLLM, so the gateway retries it once. A server that
    closes with our request still unread sends a reset, not a clean close: same case."""
    from aiohttp import web

    calls = {"chat": 0}

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"version": "0.32.0"})

    async def chat_handler(request: web.Request) -> web.Response:
        calls["chat"] += 1
        if calls["chat"] in (1, 3, 4):
            assert request.transport is not None
            if drop == "reset":
                request.transport.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.transport.abort()  # no status line, no headers: as if closed idle
            raise web.HTTPInternalServerError  # never sent
        return web.json_response({
            "id": "x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": VALID},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_post("/v1/chat/completions", chat_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        settings = unit_settings(f"http://127.0.0.1:{port}", upstream_model="m")
        async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            first = await client.post("/v1/chat/completions", json=CHAT)
            assert first.status_code == 200 and calls["chat"] == 2
            # Dropped twice in a row is not a stale connection: a clear 502, no loop.
            second = await client.post("/v1/chat/completions", json=CHAT)
            assert second.status_code == 502 and calls["chat"] == 4
            assert second.json()["error"]["code"] == "upstream_error"
    finally:
        await runner.cleanup()


async def test_errors_before_the_upstream_call_carry_the_request_id(
        fake: FakeUpstream) -> None:
    settings = unit_settings(fake.url, max_inflight=1, queue_size=0)
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        bad = await client.post("/v1/chat/completions", content=b"{nope",
                                headers={"x-request-id": "trace-1"})
        assert bad.status_code == 400 and bad.headers["x-request-id"] == "trace-1"
        fake.script(Slow(1.0, then=Reply(VALID)))
        first = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
        await fake.wait_requests(1)
        refused = await client.post("/v1/chat/completions", json=CHAT,
                                    headers={"x-request-id": "trace-2"})
        assert refused.status_code == 503 and refused.headers["x-request-id"] == "trace-2"
        assert (await first).status_code == 200
        generated = await client.post("/v1/chat/completions", content=b"{nope")
        assert generated.headers["x-request-id"].startswith("req_")


async def test_a_client_gone_mid_body_is_a_499_not_a_400(gateway: RunningGateway,
                                                        client: httpx.AsyncClient) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                 b"content-type: application/json\r\ncontent-length: 100\r\n\r\n{\"mod")
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    for _ in range(50):
        metrics = (await client.get("/metrics")).text
        if 'route="/v1/chat/completions",status="499"' in metrics:
            break
        await asyncio.sleep(0.05)
    assert 'route="/v1/chat/completions",status="499"' in metrics
    assert 'route="/v1/chat/completions",status="400"' not in metrics
