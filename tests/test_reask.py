"""The `reask` output policy (issue 19, part 1) through a real gateway and the fake upstream:
the second request carries the failed answer and the findings, usage sums the attempts,
each re-ask is reserved first, and a key may choose the policy per request only if allowed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest

from gateway.access.keys import KeyStore
from gateway.cli import main
from gateway.output.policies import POLICIES, PolicyName
from gateway.output.registry import SchemaFileError, SchemaRegistry
from tests.conftest import REPO, unit_settings
from tests.fake_upstream import ErrorReply, FakeUpstream, Reply
from tests.gateway_server import running_gateway
from tests.ir_samples import BAD_NAME, VALID
from tests.test_limits_e2e import keyed_settings, new_key

FIRST = {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}
SECOND = {"prompt_tokens": 90, "completion_tokens": 31, "total_tokens": 121}
CHAT = {"model": "schema/function_ir", "messages": [{"role": "user", "content": "add"}]}
COMPLETION = {"model": "schema/function_ir", "prompt": "IR for add: "}


def test_the_table_has_one_row_per_policy_name() -> None:
    assert tuple(POLICIES) == get_args(PolicyName)
    assert all(name == policy.name for name, policy in POLICIES.items())


def test_a_schema_file_may_name_reask_and_nothing_unknown(tmp_path: Path) -> None:
    source = json.loads((REPO / "schemas" / "function_ir.v1.json").read_text())
    (tmp_path / "function_ir.v1.json").write_text(json.dumps({**source,
                                                              "output_policy": "reask"}))
    assert SchemaRegistry.load(tmp_path).resolve("function_ir").output_policy == "reask"
    for wrong in ("Reask", ["reask"]):
        (tmp_path / "function_ir.v1.json").write_text(json.dumps({**source,
                                                                  "output_policy": wrong}))
        with pytest.raises(SchemaFileError, match="output_policy"):
            SchemaRegistry.load(tmp_path)


async def _outcomes(client: httpx.AsyncClient, outcome: str, want: float) -> float:
    """The counter, once the answer's settlement (after it was sent) has counted it."""
    line = f'irgw_output_checks_total{{outcome="{outcome}",schema="function_ir@1"}} '
    value = 0.0
    for _ in range(50):
        text = (await client.get("/metrics")).text
        found = [ln for ln in text.splitlines() if ln.startswith(line)]
        value = float(found[0].split()[-1]) if found else 0.0
        if value == want:
            break
        await asyncio.sleep(0.02)
    return value


async def test_chat_reasks_with_the_failed_answer_and_the_findings(fake: FakeUpstream) -> None:
    settings = unit_settings(fake.url, output_policy="reask", max_retries=2)
    fake.script(Reply(BAD_NAME, usage=FIRST), Reply(VALID, usage=SECOND))
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 200, response.text
        assert response.headers["x-irgw-output"] == "reasked"
        assert response.headers["x-irgw-attempts"] == "2"
        assert response.json()["choices"][0]["message"]["content"] == VALID
        # Every attempt's tokens: both were spent for this answer.
        assert response.json()["usage"] == {
            key: FIRST[key] + SECOND[key] for key in FIRST}
        assert await _outcomes(client, "reasked", 1) == 1
    first, second = (r.json["messages"] for r in fake.requests)
    assert first == CHAT["messages"]
    assert second[:1] == CHAT["messages"]
    assert second[1] == {"role": "assistant", "content": BAD_NAME}
    assert second[2]["role"] == "user" and len(second) == 3
    findings = second[2]["content"]
    assert "/signature/name" in findings and "pattern" in findings  # pointer and constraint
    # The constraint is still sent: the re-ask is constrained like the first attempt.
    assert fake.requests[1].json["response_format"] == fake.requests[0].json["response_format"]


async def test_each_reask_starts_from_the_conversation_and_the_latest_answer(
        fake: FakeUpstream) -> None:
    settings = unit_settings(fake.url, output_policy="reask", max_retries=2)
    other_bad = BAD_NAME.replace("2add", "3add")
    fake.script(Reply(BAD_NAME), Reply(other_bad), Reply(other_bad))
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 422
    assert response.json()["error"]["attempts"] == 3
    third = fake.requests[2].json["messages"]
    assert len(third) == 3 and third[1]["content"] == other_bad


async def test_completions_reask_appends_the_answer_and_findings_to_the_prompt(
        fake: FakeUpstream) -> None:
    settings = unit_settings(fake.url, output_policy="reask")
    fake.script(Reply(BAD_NAME), Reply(VALID))
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        response = await client.post("/v1/completions", json=COMPLETION)
        assert response.status_code == 200, response.text
        assert response.headers["x-irgw-output"] == "reasked"
        assert response.json()["choices"][0]["text"] == VALID
        # A prompt of token ids cannot take text: asked again as it was.
        fake.script(Reply(BAD_NAME), Reply(VALID))
        ids = await client.post("/v1/completions", json={**COMPLETION, "prompt": [1, 2, 3]})
        assert ids.headers["x-irgw-output"] == "reasked"
    prompt = fake.requests[1].json["prompt"]
    assert prompt.startswith(COMPLETION["prompt"] + BAD_NAME)
    assert "/signature/name" in prompt[len(COMPLETION["prompt"] + BAD_NAME):]
    assert fake.requests[3].json["prompt"] == [1, 2, 3]


async def test_retry_still_reports_the_accepted_answers_usage(fake: FakeUpstream) -> None:
    settings = unit_settings(fake.url, output_policy="retry")
    fake.script(Reply(BAD_NAME, usage=FIRST), Reply(VALID, usage=SECOND))
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.headers["x-irgw-output"] == "retried"
    assert response.json()["usage"] == SECOND
    assert fake.requests[1].json["messages"] == CHAT["messages"]


async def test_a_stream_cannot_be_reasked(fake: FakeUpstream) -> None:
    settings = unit_settings(fake.url, output_policy="reask")
    fake.script(Reply(BAD_NAME), Reply(VALID))
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 200
    assert "output_validation_failed" in response.text and response.text.endswith(
        "data: [DONE]\n\n")
    assert len(fake.requests) == 1


@pytest.mark.parametrize(("policy", "tpm", "status"), [
    ("retry", 900, 200), ("reask", 900, 422), ("reask", 1300, 200)])
async def test_a_reask_runs_only_if_the_key_has_room_for_it(
        fake: FakeUpstream, tmp_path: Path, policy: str, tpm: int, status: int) -> None:
    """One attempt reserves ~410 tokens, so a retry fits a TPM of 900 after the first; a
    re-ask's prompt also holds the failed answer and the findings (~150 tokens more, reserved
    too): it does not fit 900, and fits 1300."""
    _, _, key = new_key(tmp_path, tpm=tpm)
    settings = keyed_settings(fake, tmp_path / "keys.json", output_policy=policy)
    fake.script(Reply(BAD_NAME), Reply(VALID))
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 400},
                                     headers={"authorization": f"Bearer {key}"})
    assert response.status_code == status, response.text
    if status == 422:
        error = response.json()["error"]
        assert error["attempts"] == 1 and "not retried" in error["message"]
        assert len(fake.requests) == 1
    else:
        assert response.headers["x-irgw-attempts"] == "2"


@pytest.mark.parametrize("allowed", [True, False])
async def test_a_key_chooses_the_policy_per_request_only_if_allowed(
        fake: FakeUpstream, tmp_path: Path, allowed: bool) -> None:
    _, _, key = new_key(tmp_path, allow_policy_override=allowed)
    settings = keyed_settings(fake, tmp_path / "keys.json")  # the schema's policy: repair
    fake.script(Reply(BAD_NAME), Reply(VALID))
    auth = {"authorization": f"Bearer {key}"}
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        chosen = await client.post("/v1/chat/completions", json=CHAT,
                                   headers={**auth, "x-irgw-output-policy": "reask"})
        unknown = await client.post("/v1/chat/completions", json=CHAT,
                                    headers={**auth, "x-irgw-output-policy": "hope"})
        fake.script(Reply(BAD_NAME))
        plain = await client.post("/v1/chat/completions", json=CHAT, headers=auth)
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "invalid_output_policy"
    assert plain.status_code == 422  # no header: the schema's own policy, one attempt
    if allowed:
        assert chosen.status_code == 200, chosen.text
        assert chosen.headers["x-irgw-output"] == "reasked"
        assert len(fake.requests) == 3
    else:
        assert chosen.status_code == 403
        error: dict[str, Any] = chosen.json()["error"]
        assert (error["code"], error["param"]) == ("policy_override_not_allowed",
                                                   "x-irgw-output-policy")
        assert len(fake.requests) == 1  # refused before vLLM saw anything


def test_keys_create_allow_policy_override(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    keys_file = tmp_path / "keys.json"
    for name, flags in (("eval", ["--allow-policy-override"]), ("plain", [])):
        assert main(["keys", "create", "--keys-file", str(keys_file), "--name", name,
                     *flags]) == 0
    capsys.readouterr()
    assert main(["keys", "list", "--keys-file", str(keys_file)]) == 0
    listed = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()[1:]}
    records = {r.name: r.policy for r in KeyStore(keys_file).list()}
    assert records["eval"].allow_policy_override and "policy_override=yes" in listed["eval"]
    assert not records["plain"].allow_policy_override
    assert "policy_override" not in listed["plain"]


async def test_a_reask_vllm_refuses_ends_with_the_answers_422(fake: FakeUpstream) -> None:
    """The re-ask's prompt holds the failed answer: past the model's context vLLM says 400.
    The client's request was fine; what it gets is the finding about its answer."""
    settings = unit_settings(fake.url, output_policy="reask")
    fake.script(Reply(BAD_NAME), ErrorReply.new_shape(
        400, "This model's maximum context length is 2048 tokens. However, you requested "
        "2100 tokens.", param="messages"))
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["pointer"], error["attempts"]) == (
        "output_validation_failed", "/signature/name", 1)
    assert "re-ask was refused by vLLM" in error["message"]
    assert len(fake.requests) == 2
