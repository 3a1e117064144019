"""Checks beyond JSON Schema through the gateway: an answer the schema accepts but that is no
usable IR (a parameter called `class`, a type hint that is a call) is a failed check like
any other: the 422 names the pointer, the output policies apply, metrics count it, streams
end with the error event; a check that crashes is a 500, never a pass."""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest

from gateway.output import checks
from tests import openai_spec
from tests.conftest import unit_settings
from tests.fake_upstream import FakeUpstream, Reply
from tests.gateway_server import running_gateway
from tests.ir_samples import FUNCTION_IR, VALID
from tests.sse import read_events
from tests.test_routes import sample

BODY: dict[str, Any] = {"model": "schema/function_ir",
                        "messages": [{"role": "user", "content": "IR for add"}]}


def answer_with(**signature: Any) -> str:
    ir = copy.deepcopy(FUNCTION_IR)
    ir["signature"].update(signature)
    return json.dumps(ir, separators=(",", ":"))


# Valid for function_ir's JSON Schema (names match its pattern, hints are short strings).
KEYWORD_PARAMETER = answer_with(parameters=[{"name": "class", "type_hint": "int"}])
CALL_AS_TYPE = answer_with(returns="__import__('os').system('id')")


async def test_a_semantically_wrong_answer_is_a_422_naming_the_pointer(
    client: httpx.AsyncClient, fake: FakeUpstream,
) -> None:
    fake.script(Reply(KEYWORD_PARAMETER))
    response = await client.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "output_validation_failed"
    assert error["pointer"] == "/signature/parameters/0/name"
    assert error["constraint"] == ("check python_identifier at "
                                   "/signature/parameters/*/name")
    assert "'class' is a Python keyword" in error["message"]
    assert error["raw_output"] == KEYWORD_PARAMETER and error["attempts"] == 1
    openai_spec.validate("ErrorResponse", response.json())

    metrics = (await client.get("/metrics")).text
    assert sample(metrics, 'irgw_output_checks_total{outcome="failed",schema="function_ir@1"}') \
        == 1


async def test_the_retry_policy_asks_again_after_a_failed_check(fake: FakeUpstream) -> None:
    settings = unit_settings(fake.url, output_policy="retry", max_retries=2)
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        fake.script(Reply(CALL_AS_TYPE), Reply(VALID))
        response = await client.post("/v1/chat/completions", json=BODY)
        assert response.status_code == 200, response.text
        assert response.headers["x-irgw-output"] == "retried"
        assert response.headers["x-irgw-attempts"] == "2"
        assert response.json()["choices"][0]["message"]["content"] == VALID

        fake.script(*[Reply(CALL_AS_TYPE)] * 3)
        response = await client.post("/v1/chat/completions", json=BODY)
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["attempts"] == 3 and error["pointer"] == "/signature/returns"
    assert "a call is not allowed" in error["message"]
    assert len(fake.requests) == 5
    assert sample(metrics, 'irgw_output_checks_total{outcome="retried",schema="function_ir@1"}') \
        == 1
    assert sample(metrics, 'irgw_output_checks_total{outcome="failed",schema="function_ir@1"}') \
        == 1


async def test_the_repair_policy_does_not_repair_a_failed_check(
    client: httpx.AsyncClient, fake: FakeUpstream,
) -> None:
    # repair (the shipped schemas' policy) only escapes control characters: one attempt.
    fake.script(Reply(answer_with(parameters=[{"name": "a", "type_hint": "int"},
                                              {"name": "a", "type_hint": "int"}])))
    response = await client.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 422
    assert response.json()["error"]["pointer"] == "/signature/parameters/1/name"
    assert "unique" in response.json()["error"]["constraint"]
    assert len(fake.requests) == 1


async def test_a_stream_that_fails_a_check_ends_with_the_error_event(
    client: httpx.AsyncClient, fake: FakeUpstream,
) -> None:
    fake.script(Reply(KEYWORD_PARAMETER, chunk_size=9))
    async with client.stream("POST", "/v1/chat/completions",
                             json={**BODY, "stream": True}) as response:
        events, _ = await read_events(response)
    assert response.status_code == 200
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert error["code"] == "output_validation_failed"
    assert error["pointer"] == "/signature/parameters/0/name"


def _broken(value: Any) -> str | None:
    raise RuntimeError("a bug in a check")


async def test_a_check_that_raises_is_a_500_never_a_pass(
    client: httpx.AsyncClient, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setitem(checks.VALUE_CHECKS, "python_type", _broken)
    fake.script(Reply(VALID))
    response = await client.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert any(r.name == "gateway.output.checks" and r.exc_info for r in caplog.records)

    fake.script(Reply(VALID))
    async with client.stream("POST", "/v1/chat/completions",
                             json={**BODY, "stream": True}) as streamed:
        events, comments = await read_events(streamed)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "internal_error"
    assert not any("passed" in comment for comment in comments)
