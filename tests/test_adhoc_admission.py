"""Ad-hoc schemas (issue 17, finding 3): authenticate, authorize, admit, then compile; caps
with a clear 400; a repeated schema compiled once.

Compiles are counted where every ad-hoc schema is compiled (the validator's construction in
gateway.output.registry), so these tests say nothing about timing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.errors import InvalidSchemaError
from gateway.output import registry
from tests.conftest import unit_settings
from tests.fake_upstream import FakeUpstream, Reply
from tests.gateway_server import running_gateway
from tests.test_limits_e2e import new_key


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    seen: list[Any] = []
    real = registry._fast_validator

    def counting(schema: Any) -> Any:
        seen.append(schema)
        return real(schema)

    monkeypatch.setattr(registry, "_fast_validator", counting)
    yield seen


def huge_schema(width: int = 20_000) -> dict[str, Any]:
    return {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 40}
                                             for i in range(width)}}


def adhoc_body(schema: Any, name: str = "Model") -> dict[str, Any]:
    return {"model": "qwen-coder", "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": name, "schema": schema}}}


def tool_body(parameters: Any) -> dict[str, Any]:
    return {"model": "qwen-coder", "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": parameters}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}}}


SMALL = {"type": "object", "properties": {"a": {"type": "integer"}}}


async def test_a_key_without_the_adhoc_right_is_refused_before_any_compile(
        tmp_path: Path, fake: FakeUpstream, compiles: list[Any]) -> None:
    _, _, key = new_key(tmp_path, allow_adhoc=False)
    settings = unit_settings(fake.url, auth_enabled=True, keys_file=tmp_path / "keys.json")
    async with running_gateway(settings) as gw, httpx.AsyncClient(
            base_url=gw.url, timeout=60, headers={"authorization": f"Bearer {key}"}) as http:
        compiles.clear()  # the registry's own schemas, compiled at startup
        for body in (adhoc_body(huge_schema()), tool_body(huge_schema())):
            response = await http.post("/v1/chat/completions", json=body)
            assert response.status_code == 403, response.text
            assert response.json()["error"]["code"] == "adhoc_schema_not_allowed"
    assert compiles == [] and fake.requests == []


async def test_a_key_over_its_rpm_gets_429_before_any_compile(
        tmp_path: Path, fake: FakeUpstream, compiles: list[Any]) -> None:
    _, _, key = new_key(tmp_path, allow_adhoc=True, rpm=1)
    settings = unit_settings(fake.url, auth_enabled=True, keys_file=tmp_path / "keys.json")
    fake.script(Reply('{"a": 1}'))
    async with running_gateway(settings) as gw, httpx.AsyncClient(
            base_url=gw.url, timeout=60, headers={"authorization": f"Bearer {key}"}) as http:
        compiles.clear()  # the registry's own schemas, compiled at startup
        first = await http.post("/v1/chat/completions", json=adhoc_body(SMALL))
        assert first.status_code == 200, first.text
        assert len(compiles) == 1
        for body in (adhoc_body(huge_schema()), adhoc_body({**SMALL, "title": "other"})):
            response = await http.post("/v1/chat/completions", json=body)
            assert response.status_code == 429
    assert len(compiles) == 1


@pytest.mark.parametrize(("schema", "setting"), [
    (huge_schema(2_000), "IRGW_ADHOC_SCHEMA_MAX_BYTES"),
    ({"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(600)}},
     "IRGW_ADHOC_SCHEMA_MAX_NODES"),
])
async def test_an_adhoc_schema_past_a_cap_is_a_400_naming_it(
        fake: FakeUpstream, compiles: list[Any], schema: dict[str, Any], setting: str) -> None:
    settings = unit_settings(fake.url, adhoc_schema_max_bytes=32_768,
                             adhoc_schema_max_nodes=1_000)
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url,
                                                                  timeout=60) as http:
        compiles.clear()  # the registry's own schemas, compiled at startup
        for body in (adhoc_body(schema), tool_body(schema)):
            response = await http.post("/v1/chat/completions", json=body)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["code"] == "invalid_schema" and setting in error["message"]
    assert compiles == [] and fake.requests == []


@pytest.mark.parametrize("depth", [20, 110])  # JSON levels: 41, 221
async def test_an_adhoc_schema_nested_past_the_cap_is_a_400(
        fake: FakeUpstream, compiles: list[Any], depth: int) -> None:
    nested: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        nested = {"type": "object", "properties": {"a": nested}}
    settings = unit_settings(fake.url, adhoc_schema_max_depth=32)
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url,
                                                                  timeout=60) as http:
        compiles.clear()  # the registry's own schemas, compiled at startup
        response = await http.post("/v1/chat/completions", json=adhoc_body(nested))
    assert response.status_code == 400, response.text
    assert "IRGW_ADHOC_SCHEMA_MAX_DEPTH" in response.json()["error"]["message"]
    assert compiles == []


async def test_a_repeated_adhoc_schema_is_compiled_once(
        client: httpx.AsyncClient, fake: FakeUpstream, compiles: list[Any]) -> None:
    # What `client.chat.completions.parse(response_format=Model)` does on every call.
    for _ in range(3):
        fake.script(Reply('{"a": 1}'))
        response = await client.post("/v1/chat/completions", json=adhoc_body(SMALL))
        assert response.status_code == 200 and response.headers["x-irgw-output"] == "passed"
    fake.script(Reply('{"a": "one"}'))  # the cached schema still checks
    response = await client.post("/v1/chat/completions", json=adhoc_body(SMALL))
    assert response.status_code == 422
    assert len(compiles) == 1


def test_the_cache_is_bounded_and_keyed_by_the_exact_text(compiles: list[Any]) -> None:
    from gateway.output.adhoc import AdhocSchemas, PendingAdhoc

    cache = AdhocSchemas(policy="repair", max_bytes=65_536, max_depth=32, max_nodes=1_000,
                         cache_size=2)
    a, b, c = ({**SMALL, "title": t} for t in "abc")
    for schema in (a, b, a, c, a, b):  # b is the least recently used when c comes
        cache.compile(PendingAdhoc("M", schema))
    assert [s["title"] for s in compiles] == ["a", "b", "c", "b"]
    assert len(cache) == 2
    # Same text under another name is another schema (the name is in the answer's header).
    assert cache.compile(PendingAdhoc("N", a)).name == "N"
    with pytest.raises(InvalidSchemaError, match="must be a JSON object"):
        cache.compile(PendingAdhoc("M", [SMALL]))
