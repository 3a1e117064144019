"""The chat route against a fake upstream: naming schemas, policies, truncation, errors."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests import openai_spec
from tests.conftest import unit_settings
from tests.fake_upstream import ErrorReply, FakeUpstream, Garbage, Reply
from tests.gateway_server import running_gateway
from tests.ir_samples import BAD_NAME, FUNCTION_IR, RAW_CONTROL, TRUNCATED, VALID

MESSAGES = [{"role": "user", "content": "IR for a function that adds two ints"}]


def named(name: str) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name}}


async def chat(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    body.setdefault("model", "qwen-coder")
    body.setdefault("messages", MESSAGES)
    return await client.post("/v1/chat/completions", json=body)


@pytest.mark.parametrize(
    ("model", "response_format", "ref"),
    [
        ("qwen-coder", named("function_ir"), "function_ir@1"),
        ("qwen-coder", named("function_ir@1"), "function_ir@1"),
        ("schema/function_ir", None, "function_ir@1"),
        ("schema/function_ir@1", None, "function_ir@1"),
        ("schema/module_ir", None, "module_ir@1"),
        # LangChain's json_mode on a `schema/` model: the schema, stricter, is enforced.
        ("schema/function_ir", {"type": "json_object"}, "function_ir@1"),
    ],
)
async def test_each_way_of_naming_a_schema(
    client: httpx.AsyncClient, fake: FakeUpstream, model: str,
    response_format: dict[str, Any] | None, ref: str,
) -> None:
    name = ref.split("@")[0]
    content = VALID if name == "function_ir" else json.dumps({
        "purpose": "math", "module_name": "mathx", "imports": [],
        "functions": [{"intent": "add", "name": "add", "parameters": [], "returns": "int",
                       "visibility": "public"}],
    })
    fake.script(Reply(content))
    body: dict[str, Any] = {"model": model}
    if response_format:
        body["response_format"] = response_format
    response = await chat(client, **body)
    assert response.status_code == 200, response.text
    assert response.headers["x-irgw-schema"] == ref
    assert response.headers["x-irgw-output"] == "passed"
    assert json.loads(response.json()["choices"][0]["message"]["content"])
    openai_spec.validate("CreateChatCompletionResponse", response.json())
    sent = fake.requests[-1].json["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == name

    sent = fake.requests[-1].json
    assert sent["model"] == "qwen-coder"  # the alias became the real upstream model
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["strict"] is True
    assert sent["response_format"]["json_schema"]["name"] == name
    assert not any(key.startswith("guided_") for key in sent)


async def test_schema_text_is_byte_identical_and_in_file_order(
    client: httpx.AsyncClient, fake: FakeUpstream, gateway: Any,
) -> None:
    for _ in range(3):
        fake.script(Reply(VALID))
        assert (await chat(client, model="schema/function_ir")).status_code == 200
    raws = [r.raw for r in fake.requests if r.path == "/v1/chat/completions"]
    texts = {raw[raw.index(b'"schema":') : raw.index(b',"strict"')] for raw in raws}
    assert len(texts) == 1
    registered = gateway.app.services.registry.resolve("function_ir").schema_json
    assert texts.pop() == b'"schema":' + registered
    assert list(fake.requests[-1].json["response_format"]["json_schema"]["schema"]) == [
        "type", "properties", "required", "additionalProperties"]


async def test_unknown_schema_is_404(client: httpx.AsyncClient, fake: FakeUpstream) -> None:
    for body in ({"response_format": named("nope")}, {"model": "schema/nope"},
                 {"response_format": named("function_ir@9")}):
        response = await chat(client, **body)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "schema_not_found"
        openai_spec.validate("ErrorResponse", response.json())
    assert not fake.requests  # nothing reached the GPU


async def test_adhoc_schema_is_checked_and_used(client: httpx.AsyncClient,
                                                fake: FakeUpstream) -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}},
              "required": ["x"], "additionalProperties": False}
    fake.script(Reply('{"x": 3}'))
    response = await chat(client, response_format={
        "type": "json_schema", "json_schema": {"name": "Point", "schema": schema, "strict": True}})
    assert response.status_code == 200, response.text
    assert fake.requests[-1].json["response_format"]["json_schema"]["schema"] == schema

    fake.script(Reply('{"x": "three"}'))
    response = await chat(client, response_format={
        "type": "json_schema", "json_schema": {"name": "Point", "schema": schema}})
    assert response.status_code == 422
    assert response.json()["error"]["pointer"] == "/x"


async def test_invalid_adhoc_schema_is_400(client: httpx.AsyncClient, fake: FakeUpstream) -> None:
    response = await chat(client, response_format={
        "type": "json_schema",
        "json_schema": {"name": "Bad", "schema": {"type": "object", "properties": {"a": {
            "type": "strnig"}}}}})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_schema"
    assert "/properties/a/type" in error["message"]
    assert not fake.requests


async def test_repair_policy_escapes_raw_control_characters(
    client: httpx.AsyncClient, fake: FakeUpstream,
) -> None:
    fake.script(Reply(RAW_CONTROL))
    response = await chat(client, model="schema/function_ir")
    assert response.status_code == 200, response.text
    assert response.headers["x-irgw-output"] == "repaired"
    content = response.json()["choices"][0]["message"]["content"]
    assert json.loads(content)["intent"]["summary"] == "Add two\nintegers.\t"


async def test_error_policy_refuses_what_repair_would_fix(fake: FakeUpstream) -> None:
    settings = unit_settings(fake.url, output_policy="error")
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        fake.script(Reply(RAW_CONTROL))
        response = await chat(client, model="schema/function_ir")
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "output_validation_failed"
    assert "RFC 8259" in error["message"]
    assert error["raw_output"] == RAW_CONTROL
    openai_spec.validate("ErrorResponse", response.json())


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
async def test_retry_policy_asks_again_then_gives_up(fake: FakeUpstream, route: str) -> None:
    # Both routes: LlamaIndex's OpenAILike sends its structured calls to /v1/completions.
    settings = unit_settings(fake.url, output_policy="retry", max_retries=2)
    body: dict[str, Any] = {"model": "schema/function_ir"}
    if route == "/v1/completions":
        body["prompt"] = "add"
    else:
        body["messages"] = [{"role": "user", "content": "add"}]
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        fake.script(Reply(BAD_NAME), Reply(VALID, usage={
            "prompt_tokens": 10, "completion_tokens": 30, "total_tokens": 40}))
        response = await client.post(route, json=body)
        assert response.status_code == 200
        assert response.headers["x-irgw-output"] == "retried"
        assert response.headers["x-irgw-attempts"] == "2"
        choice = response.json()["choices"][0]
        assert (choice.get("text") or choice["message"]["content"]) == VALID
        assert response.json()["usage"]["total_tokens"] == 40  # the accepted answer's

        fake.script(Reply(BAD_NAME), Reply(BAD_NAME), Reply(BAD_NAME))
        response = await client.post(route, json=body)
    assert response.status_code == 422
    assert response.json()["error"]["attempts"] == 3
    assert len(fake.requests) == 5


async def test_answer_that_fails_the_schema_names_the_constraint(
    client: httpx.AsyncClient, fake: FakeUpstream,
) -> None:
    fake.script(Reply(BAD_NAME))
    response = await chat(client, response_format=named("function_ir"))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "output_validation_failed"
    assert error["pointer"] == "/signature/name"
    assert "pattern" in error["message"] and "/signature/name" in error["message"]
    assert error["raw_output"] == BAD_NAME
    # The gateway has already judged (and, by policy, retried) this answer: nothing may tell
    # the openai client, which obeys `x-should-retry: true` on any status, to send it again.
    assert "x-should-retry" not in response.headers


async def test_truncated_answer_is_reported_never_stop(client: httpx.AsyncClient,
                                                       fake: FakeUpstream) -> None:
    fake.script(Reply(TRUNCATED, finish_reason="length"))
    response = await chat(client, model="schema/function_ir", max_tokens=20)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "output_truncated"
    assert "max_tokens" in error["message"]
    assert fake.requests[-1].json["max_tokens"] == 20


async def test_default_max_tokens_applies_to_structured_requests(
    client: httpx.AsyncClient, fake: FakeUpstream, gateway: Any,
) -> None:
    fake.script(Reply(VALID))
    await chat(client, model="schema/function_ir")
    assert fake.requests[-1].json["max_tokens"] == gateway.settings.default_max_tokens


async def test_json_object_and_text_pass_through(client: httpx.AsyncClient,
                                                 fake: FakeUpstream) -> None:
    fake.script(Reply('{"free": "form"}'))
    response = await chat(client, response_format={"type": "json_object"})
    assert response.status_code == 200
    assert fake.requests[-1].json["response_format"] == {"type": "json_object"}
    fake.script(Reply("[1, 2]"))  # JSON, but not the object JSON mode promises
    response = await chat(client, response_format={"type": "json_object"})
    assert response.status_code == 422
    assert "not a JSON object" in response.json()["error"]["message"]
    fake.script(Reply("hello there"))
    response = await chat(client, response_format={"type": "text"})
    assert response.json()["choices"][0]["message"]["content"] == "hello there"
    assert "x-irgw-schema" not in response.headers


@pytest.mark.parametrize("reply", [
    ErrorReply.new_shape(400, "This model's maximum context length is 4096 tokens"),
    ErrorReply.old_shape(400, "This model's maximum context length is 4096 tokens"),
])
async def test_upstream_errors_in_both_shapes_are_normalised(
    client: httpx.AsyncClient, fake: FakeUpstream, reply: ErrorReply,
) -> None:
    fake.script(reply)
    response = await chat(client, model="schema/function_ir")
    assert response.status_code == 400
    body = response.json()
    openai_spec.validate("ErrorResponse", body)
    assert body["error"]["message"] == "This model's maximum context length is 4096 tokens"
    assert body["error"]["type"] == "BadRequestError"


@pytest.mark.parametrize("reply", [
    ErrorReply.new_shape(500, "engine dead", type="InternalServerError"),
    ErrorReply.unauthorized(),
    Garbage(),
])
async def test_upstream_faults_are_502(client: httpx.AsyncClient, fake: FakeUpstream,
                                       reply: Any) -> None:
    fake.script(reply)
    response = await chat(client, model="schema/function_ir")
    assert response.status_code == 502
    openai_spec.validate("ErrorResponse", response.json())


async def test_request_id_is_passed_upstream_and_returned(
    client: httpx.AsyncClient, fake: FakeUpstream,
) -> None:
    fake.script(Reply(VALID))
    response = await client.post("/v1/chat/completions", headers={"x-request-id": "abc-123"},
                                 json={"model": "schema/function_ir", "messages": MESSAGES})
    assert response.headers["x-request-id"] == "abc-123"
    assert fake.requests[-1].headers["x-request-id"] == "abc-123"
    fake.script(Reply(VALID))
    response = await chat(client, model="schema/function_ir")
    generated = response.headers["x-request-id"]
    assert generated.startswith("req_") and fake.requests[-1].headers["x-request-id"] == generated


async def test_vllm_extras_are_dropped_from_the_response(client: httpx.AsyncClient,
                                                         fake: FakeUpstream) -> None:
    from tests.fake_upstream import VLLM_NULL_EXTRAS

    fake.script(Reply(VALID, extra=VLLM_NULL_EXTRAS))
    response = await chat(client, model="schema/function_ir")
    body = response.json()
    openai_spec.validate("CreateChatCompletionResponse", body)
    assert "kv_transfer_params" not in body
    message = body["choices"][0]["message"]
    assert message["refusal"] is None and body["choices"][0]["logprobs"] is None
    assert json.loads(message["content"]) == FUNCTION_IR


async def test_adhoc_schema_with_a_remote_ref_is_refused_without_fetching(
    client: httpx.AsyncClient, fake: FakeUpstream,
) -> None:
    response = await chat(client, response_format={"type": "json_schema", "json_schema": {
        "name": "Remote", "schema": {"$ref": "https://example.invalid/schema.json"}}})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_schema"
    assert "Retrieval is disabled" in response.json()["error"]["message"]
    assert not fake.requests
