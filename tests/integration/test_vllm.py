"""The gateway's promises, checked against a real vLLM (CPU build, xgrammar) on the tiny model.

Every 200 answer is re-checked here, independently of the gateway: a strict parse (no raw
control characters) and Draft 2020-12 validation against the schema that was asked for.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from gateway.dev.vllm_process import VllmServer, build_dev_model
from gateway.observe.prometheus import Metrics
from gateway.upstream.canary import Canary, Verdict
from gateway.upstream.dialects import Dialect
from tests.conftest import REPO
from tests.gateway_server import running_gateway
from tests.integration.conftest import REPORT, Live, live_settings, start_vllm
from tests.sse import assembled_content, read_events

SCHEMAS = {path.stem.split(".")[0]: json.loads(path.read_text())
           for path in sorted((REPO / "schemas").glob("*.json"))}
PROMPTS = {
    "function_ir": "Describe a function that parses an ISO date string into a date.",
    "module_ir": "Describe a small module for reading CSV reports.",
    "test_plan_ir": "Plan tests for a function slugify(text: str) -> str.",
}
TYPED_ERRORS = {"output_validation_failed", "output_truncated"}


def strictly_valid(content: str, schema: dict[str, Any]) -> bool:
    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        document = json.loads(content, strict=True, parse_constant=refuse)
    except ValueError:
        return False
    return not list(Draft202012Validator(schema).iter_errors(document))


async def ask(client: httpx.AsyncClient, live: Live, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/v1/chat/completions", json=body, headers=live.headers())


def outcome_of(response: httpx.Response, schema: dict[str, Any]) -> str:
    if response.status_code == 200:
        content = response.json()["choices"][0]["message"]["content"]
        if not strictly_valid(content, schema):
            return "INVALID-BUT-200"
        return response.headers["x-irgw-output"]
    error = response.json()["error"]
    if error["code"] in TYPED_ERRORS:
        return str(error["code"])
    REPORT.append(f"unexpected answer {response.status_code}: {error['message']}")
    return f"unexpected-{response.status_code}-{error['code']}"


async def test_every_schema_both_ways_is_valid_or_a_typed_error(live: Live) -> None:
    totals: Counter[str] = Counter()
    semaphore = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=live.url, timeout=180) as client:
        for name, spec in SCHEMAS.items():
            for way in ("response_format", "model"):
                async def one(i: int, name: str = name, way: str = way) -> httpx.Response:
                    body: dict[str, Any] = {
                        "messages": [{"role": "user", "content": PROMPTS[name]}],
                        "temperature": 1.0, "seed": i, "max_tokens": 400,
                    }
                    if way == "model":
                        body["model"] = f"schema/{name}"
                    else:
                        body["model"] = live.model
                        body["response_format"] = {"type": "json_schema",
                                                   "json_schema": {"name": name}}
                    async with semaphore:
                        return await ask(client, live, body)

                responses = await asyncio.gather(*(one(i) for i in range(20)))
                counts = Counter(outcome_of(r, spec["schema"]) for r in responses)
                REPORT.append(f"{name:13} via {way:15}: {dict(counts)}")
                totals.update(counts)
                for response in responses:
                    if response.status_code == 200:
                        assert response.headers["x-irgw-schema"] == f"{name}@1"
    REPORT.append(f"all schemas, 20 each way: {dict(totals)} "
                  f"(INVALID-BUT-200: {totals['INVALID-BUT-200']})")
    assert totals["INVALID-BUT-200"] == 0
    assert not [k for k in totals if k.startswith("unexpected")]
    assert totals["passed"] + totals["repaired"] + totals["retried"] > 0


async def test_stream_reassembles_to_a_valid_document_with_usage(live: Live) -> None:
    schema = SCHEMAS["function_ir"]["schema"]
    valid = 0
    async with httpx.AsyncClient(base_url=live.url, timeout=180) as client:
        for seed in range(3):
            async with client.stream("POST", "/v1/chat/completions", headers=live.headers(),
                                     json={"model": "schema/function_ir", "stream": True,
                                           "seed": seed, "temperature": 0.7, "max_tokens": 400,
                                           "stream_options": {"include_usage": True},
                                           "messages": [{"role": "user",
                                                         "content": PROMPTS["function_ir"]}]}
                                     ) as response:
                events, comments = await read_events(response)
            assert events[-1] == "[DONE]"
            if "error" in events[-2]:
                assert events[-2]["error"]["code"] in TYPED_ERRORS
                continue
            chunks = events[:-1]
            assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
            assert strictly_valid(assembled_content(chunks), schema)
            assert any(c.startswith("irgw-output") for c in comments)
            valid += 1
    assert valid > 0


async def test_sixteen_concurrent_requests_all_complete(live: Live) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=180) as client:
        responses = await asyncio.gather(*(
            ask(client, live, {"model": "schema/function_ir", "seed": i, "temperature": 0.8,
                               "max_tokens": 400,
                               "messages": [{"role": "user", "content": PROMPTS["function_ir"]}]})
            for i in range(16)))
    outcomes = Counter(outcome_of(r, SCHEMAS["function_ir"]["schema"]) for r in responses)
    REPORT.append(f"16 concurrent: {dict(outcomes)}")
    assert all(r.status_code in (200, 422) for r in responses)
    assert outcomes["INVALID-BUT-200"] == 0


async def test_dialect_matches_the_real_version(live: Live) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        version = (await client.get(f"{live.vllm.url}/version")).json()["version"]
        ready = (await client.get(f"{live.url}/readyz")).json()
    assert version.startswith("0.32")
    canary = ready.pop("canary")
    assert ready == {"status": "ready", "upstream_version": version, "dialect": "vllm-0.12+"}
    # The real engine enforces the schema the gateway spells for it, on chat and completions.
    assert canary["verdict"] == "constraining", canary


class _MisspeltCanary(Canary):
    """The canary spelling chat's constraint as `guided_json`, which vLLM >= 0.12 silently
    ignores: what a renamed field looks like after an upgrade."""

    def _body(self, path: str, dialect: Dialect, model: str) -> dict[str, Any]:
        body = super()._body(path, dialect, model)
        if "response_format" in body:
            body["guided_json"] = body.pop("response_format")["json_schema"]["schema"]
        return body


async def test_the_canary_catches_a_constraint_the_real_vllm_drops(live: Live) -> None:
    services = live.gateway.app.services
    canary = _MisspeltCanary(services.settings, services.upstream, Metrics())
    result = await canary.refresh()
    assert result.verdict is Verdict.NOT_CONSTRAINING, result
    assert "/v1/chat/completions answered text that ignores the schema" in result.reason
    REPORT.append(f"canary, constraint dropped on the real vLLM: {result.reason[:160]}")


async def test_too_small_max_tokens_is_reported_as_truncation(live: Live) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=180) as client:
        for stream in (False, True):
            body = {"model": "schema/module_ir", "max_tokens": 8, "stream": stream,
                    "messages": [{"role": "user", "content": PROMPTS["module_ir"]}]}
            response = await ask(client, live, body)
            if stream:
                events = [json.loads(line[5:]) for line in response.text.splitlines()
                          if line.startswith("data:") and "[DONE]" not in line]
                assert events[-1]["error"]["code"] == "output_truncated"
                assert not any(e.get("choices") and e["choices"][0]["finish_reason"] == "stop"
                               for e in events)
            else:
                assert response.status_code == 422
                assert response.json()["error"]["code"] == "output_truncated"


# What pydantic writes for `set[str]`, `HttpUrl`, `conint(multiple_of=5)`, and more that
# vLLM's xgrammar backend refuses to compile (a 400 for the whole request, before the fix).
ADHOC_WITH_HOLES = {
    "type": "object",
    "properties": {
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3,
                 "uniqueItems": True},
        "url": {"type": "string", "format": "uri", "minLength": 1, "maxLength": 40},
        "step": {"type": "integer", "multipleOf": 5, "minimum": 0, "maximum": 100},
        "code": {"type": "string", "format": "isbn", "maxLength": 12},
        "extra": {"type": "object", "properties": {"a": {"type": "integer"}},
                  "propertyNames": {"pattern": "^[a-z]+$"}, "additionalProperties": False},
    },
    "required": ["tags", "url", "step", "code", "extra"],
    "additionalProperties": False,
}


async def test_adhoc_schemas_with_keywords_xgrammar_refuses_still_run(live: Live) -> None:
    body = {"model": live.model, "max_tokens": 200, "messages": [
        {"role": "user", "content": "Tag a link to a book."}],
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "Holes", "schema": ADHOC_WITH_HOLES}}}
    async with httpx.AsyncClient(base_url=live.url, timeout=180) as client:
        outcomes: Counter[str] = Counter()
        for _ in range(4):
            outcomes[outcome_of(await ask(client, live, body), ADHOC_WITH_HOLES)] += 1
    REPORT.append(f"ad-hoc schema with keywords vLLM's xgrammar refuses: {dict(outcomes)}")
    # Decoded under what the grammar can enforce, checked against all of the schema:
    # valid answers or typed errors, never vLLM's 400 and never an invalid 200.
    assert set(outcomes) <= {"passed", "repaired", *TYPED_ERRORS}, outcomes


# -- the untrained model: xgrammar's raw-control-character hole, and vLLM going away

HOLE_SCHEMA = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "maxLength": 40},
        "rationale": {"type": "string", "maxLength": 40},
    },
    "required": ["summary", "rationale"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def untrained_vllm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    model = build_dev_model(trained=False)
    server = start_vllm(model, tmp_path_factory.mktemp("vllm-untrained") / "vllm.log")
    try:
        yield server
    finally:
        server.stop()


async def test_raw_control_characters_really_occur_and_are_repaired(
    untrained_vllm: VllmServer, live: Live,
) -> None:
    body = {"model": "tiny-qwen2", "temperature": 1.0, "max_tokens": 120,
            "messages": [{"role": "user", "content": "Summarise."}],
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "hole", "schema": HOLE_SCHEMA, "strict": True}}}
    settings = live_settings(untrained_vllm.url, live.keys.path)
    async with httpx.AsyncClient(timeout=180) as client, running_gateway(settings) as gw:
        direct = await asyncio.gather(*(
            client.post(f"{untrained_vllm.url}/v1/chat/completions", json={**body, "seed": i})
            for i in range(32)))
        raw = [r.json()["choices"][0]["message"]["content"] for r in direct]
        broken = sum(not strictly_valid(text, HOLE_SCHEMA) for text in raw)
        with_controls = sum(any(ord(c) < 32 for c in text) for text in raw)
        via = await asyncio.gather(*(
            client.post(f"{gw.url}/v1/chat/completions", json={**body, "seed": i},
                        headers=live.headers())
            for i in range(32)))
    outcomes = Counter(outcome_of(r, HOLE_SCHEMA) for r in via)
    REPORT.append(f"untrained model, direct from vLLM: {broken}/32 not strict JSON+schema, "
                  f"{with_controls}/32 hold raw control characters; through the gateway: "
                  f"{dict(outcomes)}")
    assert with_controls > 0, "the hole did not show up: is this still xgrammar 0.2.8?"
    assert outcomes["INVALID-BUT-200"] == 0
    assert outcomes["repaired"] > 0


async def test_vllm_stopping_mid_run_gives_503_then_recovers(
    untrained_vllm: VllmServer, live: Live, tmp_path: Path,
) -> None:
    body = {"model": "tiny-qwen2", "max_tokens": 40,
            "messages": [{"role": "user", "content": "hi"}]}
    settings = live_settings(untrained_vllm.url, live.keys.path, connect_deadline_s=1.0)
    async with httpx.AsyncClient(timeout=180) as client, running_gateway(settings) as gw:
        url = f"{gw.url}/v1/chat/completions"
        assert (await client.post(url, json=body, headers=live.headers())).status_code == 200
        untrained_vllm.stop()
        down = await client.post(url, json=body, headers=live.headers())
        assert down.status_code in (502, 503)
        assert down.json()["error"]["code"] in ("upstream_unavailable", "upstream_error")
        if down.status_code == 503:
            assert int(down.headers["retry-after"]) > 0
        untrained_vllm.start()
        untrained_vllm.wait_ready(timeout_s=400)
        back = await client.post(url, json=body, headers=live.headers())
        assert back.status_code == 200, back.text
