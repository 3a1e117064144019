"""A scoped key learns no schema name outside its scope from a generation request either:
a name outside the scope is a 403 whether it exists or not (as `/v1/schemas/{name}`
answers), and the 404 for an unknown name lists only the schemas the key may use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fake_upstream import FakeUpstream
from tests.gateway_server import running_gateway
from tests.test_limits_e2e import keyed_settings, new_key

MESSAGES = [{"role": "user", "content": "x"}]


def _by_model(name: str) -> dict[str, Any]:
    return {"model": f"schema/{name}", "messages": MESSAGES}


def _by_format(name: str) -> dict[str, Any]:
    return {"model": "qwen-coder", "messages": MESSAGES, "response_format": {
        "type": "json_schema", "json_schema": {"name": name}}}


@pytest.mark.parametrize("make", [_by_model, _by_format])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_a_scoped_key_learns_no_other_schema_name(
        fake: FakeUpstream, tmp_path: Path, make: Any, path: str) -> None:
    _, _, key = new_key(tmp_path, schemas=["function_ir"])
    async with running_gateway(keyed_settings(fake, tmp_path / "keys.json")) as gw, \
            httpx.AsyncClient(base_url=gw.url,
                              headers={"authorization": f"Bearer {key}"}) as client:
        answers = {}
        for name in ("no_such_schema", "module_ir", "module_ir@1", "function_ir@9"):
            body = make(name)
            if path == "/v1/completions":
                body = {k: v for k, v in body.items() if k != "messages"} | {"prompt": "x"}
            answers[name] = await client.post(path, json=body)
    for name, answer in answers.items():  # none names a schema the request did not
        assert "test_plan_ir" not in answer.text, (name, answer.text)
        if "module_ir" not in name:
            assert "module_ir" not in answer.text, (name, answer.text)
    for name in ("no_such_schema", "module_ir", "module_ir@1"):
        assert answers[name].status_code == 403, answers[name].text
        assert answers[name].json()["error"]["code"] == "schema_not_allowed"
    assert answers["function_ir@9"].status_code == 404  # its own schema: versions listed
    assert fake.requests == []


async def test_an_unreadable_version_of_its_own_schema_lists_no_other(
        fake: FakeUpstream, tmp_path: Path) -> None:
    _, _, key = new_key(tmp_path, schemas=["function_ir"])
    async with running_gateway(keyed_settings(fake, tmp_path / "keys.json")) as gw, \
            httpx.AsyncClient(base_url=gw.url,
                              headers={"authorization": f"Bearer {key}"}) as client:
        answer = await client.get("/v1/schemas/function_ir@x")
    assert answer.status_code == 404
    assert "module_ir" not in answer.text and "function_ir" in answer.text
