"""How a chat or completion body becomes a plan (gateway/generation/planning.py), without a server:
which schema and policy, what vLLM is sent, and the 400/403/404 a malformed request gets
(its `param` is what a client's error handling reads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.errors import GatewayError
from gateway.generation.planning import (
    Mode,
    estimate_prompt_tokens,
    plan_chat,
    plan_completion,
    upstream_chat_body,
)
from gateway.output.adhoc import AdhocSchemas
from gateway.output.registry import SchemaRegistry
from gateway.settings import Settings
from gateway.upstream.dialects import dialect_for

REPO = Path(__file__).resolve().parent.parent
REGISTRY = SchemaRegistry.load(REPO / "schemas")
SETTINGS = Settings()
MESSAGES = [{"role": "user", "content": "IR for add"}]
SMALL = {"type": "object", "properties": {"a": {"type": "integer"}}}


def chat(**body: Any) -> dict[str, Any]:
    return {"model": "qwen-coder", "messages": MESSAGES, **body}


def named(name: str) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name}}


def refused(body: Any, settings: Settings = SETTINGS, visible: Any = None, *,
            completion: bool = False) -> GatewayError:
    with pytest.raises(GatewayError) as error:
        (plan_completion if completion else plan_chat)(body, REGISTRY, settings, visible)
    return error.value


@pytest.mark.parametrize(("body", "param", "message"), [
    (["not", "an", "object"], "body", "'body' must be an object"),
    ({"messages": MESSAGES}, "model", "'model' is required and must be a string"),
    (chat(model=""), "model", "'model' is required and must be a string"),
    (chat(model=7), "model", "'model' is required and must be a string"),
    (chat(messages=[]), "messages", "'messages' must be a non-empty array"),
    (chat(messages={"role": "user"}), "messages", "'messages' must be a non-empty array"),
    (chat(stream="yes"), "stream", "'stream' must be a boolean"),
    (chat(stream_options={"include_usage": True}), "stream_options",
     "'stream_options' is only allowed when 'stream' is true"),
    (chat(stream=True, stream_options=["include_usage"]), "stream_options",
     "'stream_options' must be an object"),
    (chat(max_tokens=0), "max_tokens", "'max_tokens' must be a positive integer"),
    (chat(max_tokens=True), "max_tokens", "'max_tokens' must be a positive integer"),
    (chat(max_tokens="5"), "max_tokens", "'max_tokens' must be a positive integer"),
    (chat(max_completion_tokens=-1), "max_completion_tokens",
     "'max_completion_tokens' must be a positive integer"),
    (chat(response_format="json"), "response_format", "'response_format' must be an object"),
    (chat(response_format={"type": "xml"}), "response_format.type",
     "response_format.type must be one of 'text', 'json_object', 'json_schema'"),
    (chat(response_format={"type": "json_schema"}), "response_format.json_schema",
     "'response_format.json_schema' must be an object"),
    (chat(response_format={"type": "json_schema", "json_schema": {}}),
     "response_format.json_schema.name",
     "response_format.json_schema needs a 'name' of a registered schema, or a 'schema'"),
    (chat(response_format=named("")), "response_format.json_schema.name",
     "response_format.json_schema needs a 'name' of a registered schema, or a 'schema'"),
    (chat(response_format={"type": "json_schema",
                           "json_schema": {"name": "a b", "schema": SMALL}}),
     "response_format.json_schema.name",
     "response_format.json_schema.name must be 1-64 characters of a-z, A-Z, 0-9, '_' and '-' "
     "(as OpenAI requires)"),
    (chat(response_format={"type": "json_schema",
                           "json_schema": {"name": "x" * 65, "schema": SMALL}}),
     "response_format.json_schema.name",
     "response_format.json_schema.name must be 1-64 characters of a-z, A-Z, 0-9, '_' and '-' "
     "(as OpenAI requires)"),
    (chat(response_format={"type": "json_schema", "json_schema": {"name": 7, "schema": SMALL}}),
     "response_format.json_schema.name",
     "response_format.json_schema.name must be 1-64 characters of a-z, A-Z, 0-9, '_' and '-' "
     "(as OpenAI requires)"),
    (chat(model="schema/function_ir", n=2), "n", "'n' must be 1 for structured output"),
    (chat(response_format={"type": "json_object"}, n=True), "n",
     "'n' must be 1 for structured output"),
    (chat(response_format=named("function_ir"), n=1.0), "n",
     "'n' must be 1 for structured output"),
    (chat(model="schema/function_ir", response_format=named("module_ir")), "response_format",
     "model 'schema/function_ir' names schema function_ir@1 but response_format names "
     "module_ir@1; name one"),
    (chat(model="schema/function_ir", response_format={
        "type": "json_schema", "json_schema": {"name": "M", "schema": SMALL}}),
     "response_format", "model 'schema/function_ir' names schema function_ir@1 but "
     "response_format names M (ad-hoc); name one"),
])
def test_a_malformed_chat_request_is_a_400_naming_the_field(body: Any, param: str,
                                                            message: str) -> None:
    error = refused(body)
    assert (error.status_code, error.param) == (400, param)
    assert error.message == message


@pytest.mark.parametrize("n", [None, 1])
def test_one_choice_may_be_asked_for_explicitly(n: Any) -> None:
    body = chat(model="schema/function_ir", n=n)
    assert plan_chat(body, REGISTRY, SETTINGS).checked


def test_the_plan_of_a_plain_request_passes_it_through() -> None:
    plan = plan_chat(chat(n=3, max_tokens=5), REGISTRY, SETTINGS)
    assert plan.mode is Mode.PASSTHROUGH and not plan.checked
    assert plan.schema is None and plan.schema_ref is None and plan.model_alias is None
    assert (plan.stream, plan.include_usage, plan.max_tokens) == (False, False, 5)
    plan = plan_chat(chat(response_format={"type": "text"}), REGISTRY, SETTINGS)
    assert plan.mode is Mode.PASSTHROUGH


@pytest.mark.parametrize(("options", "include_usage"), [
    (None, False), ({}, False), ({"include_usage": False}, False),
    ({"include_usage": True}, True),
])
def test_usage_is_included_only_when_the_stream_asks(options: Any, include_usage: bool) -> None:
    body = chat(stream=True) if options is None else chat(stream=True, stream_options=options)
    plan = plan_chat(body, REGISTRY, SETTINGS)
    assert plan.stream and plan.include_usage is include_usage


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    plan = plan_chat(chat(max_completion_tokens=7, max_tokens=9), REGISTRY, SETTINGS)
    assert plan.max_tokens == 7
    assert plan_chat(chat(max_tokens=1), REGISTRY, SETTINGS).max_tokens == 1


@pytest.mark.parametrize("body", [
    chat(model="schema/function_ir"),
    chat(model="schema/function_ir@1"),
    chat(response_format=named("function_ir")),
    chat(response_format=named("function_ir@1")),
    chat(model="schema/function_ir", response_format=named("function_ir@1")),
    # LangChain's json_mode on a `schema/` model: the object schema is the stricter one.
    chat(model="schema/function_ir", response_format={"type": "json_object"}),
])
def test_each_way_of_naming_a_registered_schema(body: dict[str, Any]) -> None:
    plan = plan_chat(body, REGISTRY, SETTINGS)
    assert plan.mode is Mode.SCHEMA and plan.checked
    assert plan.schema is REGISTRY.resolve("function_ir@1")
    assert plan.schema_ref == "function_ir@1" and plan.pending is None
    assert plan.model_alias == (body["model"] if body["model"].startswith("schema/") else None)
    assert plan.policy.name == "repair"


def policy_registry(tmp_path: Path, policy: str) -> SchemaRegistry:
    data = json.loads((REPO / "schemas" / "function_ir.v1.json").read_text())
    data["output_policy"] = policy
    (tmp_path / "function_ir.v1.json").write_text(json.dumps(data))
    return SchemaRegistry.load(tmp_path)


def test_the_policy_is_the_settings_else_the_schema_files_else_repair(tmp_path: Path) -> None:
    registry = policy_registry(tmp_path, "retry")
    body = chat(model="schema/function_ir")
    assert plan_chat(body, registry, SETTINGS).policy.name == "retry"
    assert plan_chat(body, registry, Settings(output_policy="error")).policy.name == "error"
    adhoc = chat(response_format={"type": "json_schema", "json_schema": {"schema": SMALL}})
    assert plan_chat(adhoc, registry, Settings(adhoc_output_policy="reask")
                     ).policy.name == "reask"
    assert plan_chat(adhoc, registry, Settings(output_policy="error",
                                               adhoc_output_policy="reask")
                     ).policy.name == "error"
    json_object = chat(response_format={"type": "json_object"})
    plan = plan_chat(json_object, registry, SETTINGS)
    assert plan.mode is Mode.JSON_OBJECT and plan.checked and plan.schema is None
    assert plan.policy.name == "repair"
    assert plan_chat(json_object, registry, Settings(output_policy="retry")
                     ).policy.name == "retry"


def test_a_registered_schema_that_is_no_object_refuses_json_object_mode(
        tmp_path: Path) -> None:
    data = json.loads((REPO / "schemas" / "function_ir.v1.json").read_text())
    data.update(name="names", checks=[], schema={"type": "array", "items": {"type": "string"}})
    (tmp_path / "names.v1.json").write_text(json.dumps(data))
    registry = SchemaRegistry.load(tmp_path)
    with pytest.raises(GatewayError) as error:
        plan_chat(chat(model="schema/names", response_format={"type": "json_object"}),
                  registry, SETTINGS)
    assert (error.value.status_code, error.value.param) == (400, "response_format")
    assert error.value.message == ("model 'schema/names' names a schema whose answers are not "
                                   "JSON objects; drop response_format json_object")
    assert plan_chat(chat(model="schema/names"), registry, SETTINGS).mode is Mode.SCHEMA


async def test_an_adhoc_schema_is_pending_until_compiled() -> None:
    body = chat(response_format={"type": "json_schema",
                                 "json_schema": {"name": "Weather-1", "schema": SMALL}})
    plan = plan_chat(body, REGISTRY, SETTINGS)
    assert plan.mode is Mode.SCHEMA and plan.schema is None
    assert plan.schema_ref == "Weather-1 (ad-hoc)"
    unnamed = chat(response_format={"type": "json_schema", "json_schema": {"schema": SMALL}})
    assert plan_chat(unnamed, REGISTRY, SETTINGS).schema_ref == "adhoc (ad-hoc)"
    loose = {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}
    plan = plan_chat(chat(response_format={"type": "json_schema", "json_schema": {
        "name": "Loose", "schema": loose}}), REGISTRY, SETTINGS)
    await plan.compile_pending(AdhocSchemas.from_settings(SETTINGS))
    assert plan.pending is None and plan.schema is not None and plan.schema.name == "Loose"
    assert plan.schema_ref == "Loose (ad-hoc)"
    assert plan.warnings == list(plan.schema.unenforced) and plan.warnings  # uniqueItems


def test_a_scoped_key_learns_no_other_schemas_name() -> None:
    only_module = {"module_ir"}.__contains__
    for body in (chat(model="schema/function_ir"), chat(response_format=named("function_ir")),
                 chat(response_format=named("function_ir@2"))):
        error = refused(body, visible=only_module)
        assert (error.status_code, error.code) == (403, "schema_not_allowed")
        assert error.message == "This API key may not use the schema 'function_ir'."
    # A name the scope allows but nobody registered: the 404 lists only what the key sees.
    error = refused(chat(model="schema/nothing"), visible=lambda name: name != "function_ir")
    assert error.message == ("Schema 'nothing' is not registered (registered: module_ir, "
                             "test_plan_ir)")
    error = refused(chat(response_format=named("module_ir@9")), visible=only_module)
    assert (error.status_code, error.param) == (404, "response_format.json_schema.name")
    error = refused(chat(model="schema/nothing"), visible=lambda name: True)
    assert (error.status_code, error.param) == (404, "model")
    assert "function_ir" in error.message
    assert plan_chat(chat(model="schema/module_ir"), REGISTRY, SETTINGS,
                     visible=only_module).schema_ref == "module_ir@1"


@pytest.mark.parametrize("prompt", ["def add(a, b):", [1, 2, 3], ["one prompt"]])
def test_a_checked_completion_takes_one_prompt(prompt: Any) -> None:
    body = {"model": "schema/function_ir", "prompt": prompt}
    assert plan_completion(body, REGISTRY, SETTINGS).mode is Mode.SCHEMA


@pytest.mark.parametrize("prompt", [["a", "b"], [[1, 2], [3]]])
def test_a_checked_completion_with_several_prompts_is_a_400(prompt: Any) -> None:
    error = refused({"model": "schema/function_ir", "prompt": prompt}, completion=True)
    assert (error.status_code, error.param) == (400, "prompt")
    assert error.message == ("structured output takes one prompt per request (a string, or "
                             "one list of token ids)")
    # Unchecked, vLLM answers each.
    assert not plan_completion({"model": "qwen-coder", "prompt": prompt}, REGISTRY,
                               SETTINGS).checked


def test_a_scoped_key_names_no_other_schema_on_completions_either() -> None:
    body = {"model": "schema/function_ir", "prompt": "x"}
    error = refused(body, visible={"module_ir"}.__contains__, completion=True)
    assert (error.status_code, error.code) == (403, "schema_not_allowed")


def test_a_forced_tool_reaches_vllm_as_a_schema_without_the_tool_fields() -> None:
    body = chat(tools=[{"type": "function", "function": {"name": "get_weather"}}],
                tool_choice="required", parallel_tool_calls=False)
    tool_plan = plan_chat(body, REGISTRY, SETTINGS)  # the forced tool planned with it
    tool_plan.schema = AdhocSchemas.from_settings(SETTINGS).compile(tool_plan.pending)
    sent = upstream_chat_body(tool_plan, dialect_for("0.11.0"), "qwen-coder", None)
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(sent)
    assert sent["response_format"]["type"] == "json_schema"


def test_the_clients_other_stream_options_reach_vllm() -> None:
    body = chat(stream=True, stream_options={"include_usage": False,
                                             "continuous_usage_stats": True})
    sent = upstream_chat_body(plan_chat(body, REGISTRY, SETTINGS), dialect_for("0.11.0"),
                              "qwen-coder", None)
    assert sent["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}


def test_a_completion_needs_a_model_and_a_prompt() -> None:
    error = refused({"model": "qwen-coder"}, completion=True)
    assert (error.status_code, error.param, error.message) == (400, "prompt",
                                                               "'prompt' is required")
    assert refused({"prompt": "x"}, completion=True).param == "model"
    assert refused("prompt", completion=True).param == "body"


def test_what_vllm_is_sent_for_a_registered_schema() -> None:
    body = chat(model="schema/function_ir", stream=True, max_completion_tokens=50,
                stream_options={"include_usage": False}, temperature=0.2)
    plan = plan_chat(body, REGISTRY, SETTINGS)
    sent = upstream_chat_body(plan, dialect_for("0.11.0"), "qwen-coder", 40)
    assert sent["model"] == "qwen-coder" and sent["temperature"] == 0.2
    assert sent["max_tokens"] == 40 and "max_completion_tokens" not in sent
    assert sent["stream_options"] == {"include_usage": True}
    constraint = orjson.loads(orjson.dumps(sent["response_format"]))
    assert constraint["json_schema"]["schema"] == REGISTRY.resolve("function_ir@1").schema
    assert body["model"] == "schema/function_ir" and "max_tokens" not in body  # untouched


def test_what_vllm_is_sent_for_a_plain_request() -> None:
    plan = plan_chat(chat(max_completion_tokens=50, response_format={"type": "text"}),
                     REGISTRY, SETTINGS)
    sent = upstream_chat_body(plan, dialect_for("0.11.0"), "qwen-coder", None)
    assert sent == {**plan.body, "model": "qwen-coder"}
    assert "stream_options" not in sent


def test_the_prompt_estimate_counts_text_token_ids_and_tools() -> None:
    messages = [{"role": "user", "content": "x" * 300}]
    text = len(orjson.dumps(messages)) // 3
    assert estimate_prompt_tokens({"messages": messages}) == text + 8
    assert estimate_prompt_tokens({"prompt": "abcdef"}) == len(b'"abcdef"') // 3 + 8
    assert estimate_prompt_tokens({"prompt": [1, 2, 3]}) == len(b"[1,2,3]") // 3 + 3 + 8
    assert estimate_prompt_tokens({"prompt": [[1, 2], [3]]}) == len(b"[[1,2],[3]]") // 3 + 3 + 8
    assert estimate_prompt_tokens({}) == len(b'""') // 3 + 8
    tools = [{"type": "function", "function": {"name": "f", "description": "d" * 3000}}]
    with_tools = estimate_prompt_tokens({"messages": messages, "tools": tools})
    assert with_tools == text + len(orjson.dumps([tools])) // 3 + 8
    functions = [{"name": "f", "description": "d" * 3000}]
    assert estimate_prompt_tokens({"messages": messages, "functions": functions}) == (
        text + len(orjson.dumps([functions])) // 3 + 8)
