"""Planning (gateway/generation/planning.py), without a server: which schema a request names
(by response_format or by a `schema/` model), which mode and policy follow, what is refused
and with which status and param, and the body vLLM is sent. test_routes.py and test_chat.py
check the same through a running gateway; tools' forced calls are in test_tools.py."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.access.records import KeyPolicy
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    PermissionDeniedError,
    SchemaNotFoundError,
)
from gateway.generation.planning import (
    ChatPlan,
    Mode,
    estimate_prompt_tokens,
    plan_chat,
    plan_completion,
    upstream_chat_body,
)
from gateway.output.adhoc import AdhocSchemas
from gateway.output.policies import DEFAULT_POLICY
from gateway.output.registry import SchemaRegistry
from gateway.settings import Settings
from gateway.upstream.dialects import dialect_for

OBJECT = {"type": "object", "properties": {"total": {"type": "integer"}},
          "required": ["total"], "additionalProperties": False}
PERSON = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
# Four schemas with policies other than the default, two versions of one name, an answer
# that is not an object, and a pattern the engine gets in another form (a warning).
FILES: list[dict[str, Any]] = [
    {"name": "invoice", "version": 1, "output_policy": "retry", "schema": OBJECT},
    {"name": "invoice", "version": 2, "output_policy": "reask", "schema": OBJECT},
    {"name": "tags", "version": 1, "output_policy": "error",
     "schema": {"type": "array", "items": {"type": "string"}}},
    {"name": "ids", "version": 1, "output_policy": "repair",
     "schema": {"type": "object", "properties": {"id": {"type": "string",
                                                        "pattern": "^[a-z]{1,255}$"}}}},
]
MESSAGES = [{"role": "user", "content": "hi"}]
SETTINGS = Settings(auth_enabled=False)
DIALECT = dialect_for("0.32.0")
Visible = Callable[[str], bool] | None  # the names a key's scope allows; None: all


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> SchemaRegistry:
    directory: Path = tmp_path_factory.mktemp("schemas")
    for item in FILES:
        path = directory / f"{item['name']}.v{item['version']}.json"
        path.write_text(json.dumps({**item, "description": f"{item['name']} for tests"}))
    return SchemaRegistry.load(directory)


def chat(registry: SchemaRegistry, settings: Settings = SETTINGS, visible: Visible = None,
         **body: Any) -> ChatPlan:
    return plan_chat({"model": "m", "messages": MESSAGES, **body}, registry, settings, visible)


def named(name: str) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name}}


def adhoc(schema: Any = PERSON, **spec: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {**spec, "schema": schema}}


def refusal(error_type: type[GatewayError], call: Any, *args: Any, **kwargs: Any
            ) -> GatewayError:
    with pytest.raises(error_type) as info:
        call(*args, **kwargs)
    assert isinstance(info.value.message, str) and info.value.message.strip()
    return info.value


def bad_chat(registry: SchemaRegistry, **body: Any) -> InvalidRequestError:
    error = refusal(InvalidRequestError, chat, registry, **body)
    assert error.status_code == 400 and isinstance(error, InvalidRequestError)
    return error


# -- what a request is

def test_a_plain_request_is_passed_through_unchecked(registry: SchemaRegistry) -> None:
    body = {"model": "m", "messages": MESSAGES, "temperature": 0.2, "n": 3}
    plan = plan_chat(body, registry, SETTINGS)
    assert plan.mode is Mode.PASSTHROUGH and not plan.checked
    assert plan.schema is None and plan.pending is None and plan.schema_ref is None
    assert plan.model_alias is None and plan.body == body  # n=3 is vLLM's to answer
    assert chat(registry, response_format={"type": "text"}).mode is Mode.PASSTHROUGH


@pytest.mark.parametrize(("body", "param"), [
    ([], "body"), ("x", "body"), (None, "body"),
    ({"messages": MESSAGES}, "model"), ({"model": "", "messages": MESSAGES}, "model"),
    ({"model": 7, "messages": MESSAGES}, "model"),
    ({"model": "m"}, "messages"), ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": {"role": "user"}}, "messages"),
])
def test_a_body_without_model_or_messages_is_a_400_naming_it(
        registry: SchemaRegistry, body: Any, param: str) -> None:
    error = refusal(InvalidRequestError, plan_chat, body, registry, SETTINGS)
    assert (error.status_code, error.param) == (400, param)


def test_a_registered_name_is_its_newest_version_unless_one_is_named(
        registry: SchemaRegistry) -> None:
    newest = chat(registry, response_format=named("invoice"))
    assert newest.mode is Mode.SCHEMA and newest.checked
    assert newest.schema is registry.resolve("invoice@2") and newest.schema_ref == "invoice@2"
    assert newest.policy.name == "reask" and newest.model_alias is None
    first = chat(registry, response_format=named("invoice@1"))
    assert first.schema is registry.resolve("invoice@1") and first.policy.name == "retry"


def test_a_schema_model_names_the_schema(registry: SchemaRegistry) -> None:
    plan = plan_chat({"model": "schema/invoice@1", "messages": MESSAGES}, registry, SETTINGS)
    assert plan.mode is Mode.SCHEMA and plan.model_alias == "schema/invoice@1"
    assert plan.schema is registry.resolve("invoice@1") and plan.policy.name == "retry"
    # response_format text, or naming the same schema, adds nothing and is no conflict
    for response_format in ({"type": "text"}, named("invoice@1")):
        same = plan_chat({"model": "schema/invoice@1", "messages": MESSAGES,
                          "response_format": response_format}, registry, SETTINGS)
        assert same.mode is Mode.SCHEMA and same.schema is plan.schema


@pytest.mark.parametrize("response_format", [named("invoice@2"), named("tags"), adhoc()])
def test_a_schema_model_and_another_schema_is_a_400(registry: SchemaRegistry,
                                                     response_format: Any) -> None:
    error = refusal(InvalidRequestError, plan_chat, {
        "model": "schema/invoice@1", "messages": MESSAGES,
        "response_format": response_format}, registry, SETTINGS)
    assert error.param == "response_format" and "invoice@1" in error.message


def test_json_object_is_checked_as_any_object(registry: SchemaRegistry) -> None:
    plan = chat(registry, response_format={"type": "json_object"})
    assert plan.mode is Mode.JSON_OBJECT and plan.checked and plan.schema is None
    assert plan.policy is DEFAULT_POLICY
    strict = SETTINGS.model_copy(update={"output_policy": "error"})
    assert chat(registry, strict, response_format={"type": "json_object"}).policy.name == "error"


def test_json_object_on_a_schema_model_enforces_the_schema_if_it_is_an_object(
        registry: SchemaRegistry) -> None:
    plan = plan_chat({"model": "schema/invoice", "messages": MESSAGES,
                      "response_format": {"type": "json_object"}}, registry, SETTINGS)
    assert plan.mode is Mode.SCHEMA and plan.schema is registry.resolve("invoice@2")
    error = refusal(InvalidRequestError, plan_chat, {
        "model": "schema/tags", "messages": MESSAGES,
        "response_format": {"type": "json_object"}}, registry, SETTINGS)
    assert error.param == "response_format"


def test_an_adhoc_schema_is_only_noted_until_admitted(registry: SchemaRegistry) -> None:
    plan = chat(registry, response_format=adhoc(name="Person"))
    assert plan.mode is Mode.SCHEMA and plan.checked and plan.schema is None
    assert plan.pending is not None and plan.pending.name == "Person"
    assert plan.pending.schema == PERSON and plan.schema_ref == "Person (ad-hoc)"
    assert plan.policy.name == SETTINGS.adhoc_output_policy
    # no name: one is given; a registered name with a schema is still ad-hoc, not the file's
    assert chat(registry, response_format=adhoc()).pending.name == "adhoc"  # type: ignore[union-attr]
    shadow = chat(registry, response_format=adhoc(name="invoice"))
    assert shadow.schema is None and shadow.pending is not None
    assert shadow.pending.schema == PERSON
    # ad-hoc schemas follow the operator's adhoc policy, and the global override wins
    retry = SETTINGS.model_copy(update={"adhoc_output_policy": "retry"})
    assert chat(registry, retry, response_format=adhoc()).policy.name == "retry"
    error = SETTINGS.model_copy(update={"adhoc_output_policy": "retry", "output_policy": "error"})
    assert chat(registry, error, response_format=adhoc()).policy.name == "error"


async def test_a_compiled_adhoc_schema_becomes_the_plans_schema(registry: SchemaRegistry
                                                               ) -> None:
    plan = chat(registry, response_format=adhoc({
        "type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}},
        name="Tagged"))
    await plan.compile_pending(AdhocSchemas.from_settings(SETTINGS))
    assert plan.pending is None and plan.schema is not None and plan.schema.adhoc
    assert plan.schema.name == "Tagged" and plan.schema_ref == "Tagged (ad-hoc)"
    # what the engine will not enforce travels to the response's warnings header
    assert any("uniqueItems" in warning for warning in plan.warnings)


@pytest.mark.parametrize("name", ["", "has space", "x" * 65, 7, "r\u00e9sum\u00e9", "a.b"])
def test_an_adhoc_name_outside_openais_rule_is_a_400(registry: SchemaRegistry,
                                                     name: Any) -> None:
    error = bad_chat(registry, response_format=adhoc(name=name))
    assert error.param == "response_format.json_schema.name"


@pytest.mark.parametrize(("response_format", "param"), [
    ("json_object", "response_format"), ([], "response_format"),
    ({"type": "xml"}, "response_format.type"), ({}, "response_format.type"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": "invoice"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {}}, "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": ""}}, "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": 3}}, "response_format.json_schema.name"),
])
def test_a_malformed_response_format_is_a_400_naming_the_field(
        registry: SchemaRegistry, response_format: Any, param: str) -> None:
    assert bad_chat(registry, response_format=response_format).param == param


@pytest.mark.parametrize(("where", "ref", "param"), [
    ("response_format", "receipt", "response_format.json_schema.name"),
    ("response_format", "invoice@3", "response_format.json_schema.name"),
    ("model", "receipt", "model"),
    ("model", "invoice@3", "model"),
])
def test_an_unknown_schema_is_a_404_naming_where_it_was_named(
        registry: SchemaRegistry, where: str, ref: str, param: str) -> None:
    body: dict[str, Any] = {"model": "m", "messages": MESSAGES}
    if where == "model":
        body["model"] = f"schema/{ref}"
    else:
        body["response_format"] = named(ref)
    error = refusal(SchemaNotFoundError, plan_chat, body, registry, SETTINGS)
    assert (error.status_code, error.code, error.param) == (404, "schema_not_found", param)
    # what the client may name instead: the versions of a known name, else the names
    assert ("invoice@1, invoice@2" in error.message) == ref.startswith("invoice")


# -- a key's scope

def scope(*names: str) -> Visible:
    return KeyPolicy(schemas=list(names)).allows_schema


@pytest.mark.parametrize("ref", ["tags", "tags@1", "receipt", "invoice2"])
@pytest.mark.parametrize("where", ["response_format", "model"])
def test_a_name_outside_the_keys_scope_is_a_403_registered_or_not(
        registry: SchemaRegistry, ref: str, where: str) -> None:
    body: dict[str, Any] = {"model": "m", "messages": MESSAGES}
    if where == "model":
        body["model"] = f"schema/{ref}"
    else:
        body["response_format"] = named(ref)
    error = refusal(PermissionDeniedError, plan_chat, body, registry, SETTINGS,
                    scope("invoice"))
    assert (error.status_code, error.code) == (403, "schema_not_allowed")


def test_a_404_inside_the_scope_lists_only_the_names_the_key_may_use(
        registry: SchemaRegistry) -> None:
    visible = scope("invoice", "receipt")
    assert chat(registry, visible=visible,
                response_format=named("invoice")).schema is registry.resolve("invoice")
    error = refusal(SchemaNotFoundError, chat, registry, visible=visible,
                    response_format=named("receipt"))
    assert error.status_code == 404 and "invoice" in error.message
    assert "tags" not in error.message and "ids" not in error.message
    # a scope does not apply to an ad-hoc schema's name (the key's ad-hoc right does, later)
    assert chat(registry, visible=visible, response_format=adhoc(name="tags")).pending


# -- stream, n, max_tokens

def test_stream_and_its_options(registry: SchemaRegistry) -> None:
    assert not chat(registry).stream
    plain = chat(registry, stream=True)
    assert plain.stream and not plain.include_usage
    usage = chat(registry, stream=True, stream_options={"include_usage": True})
    assert usage.stream and usage.include_usage
    assert not chat(registry, stream=True, stream_options={"include_usage": False}).include_usage
    assert not chat(registry, stream=False, stream_options=None).stream


@pytest.mark.parametrize(("body", "param"), [
    ({"stream": "true"}, "stream"), ({"stream": 1}, "stream"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"stream": False, "stream_options": {}}, "stream_options"),
    ({"stream": True, "stream_options": "usage"}, "stream_options"),
    ({"stream": True, "stream_options": []}, "stream_options"),
])
def test_stream_option_misuse_is_a_400(registry: SchemaRegistry, body: dict[str, Any],
                                       param: str) -> None:
    assert bad_chat(registry, **body).param == param


@pytest.mark.parametrize("n", [2, 0, -1, True, 1.0, "1"])
@pytest.mark.parametrize("response_format", [named("invoice"), {"type": "json_object"},
                                             adhoc()])
def test_a_checked_answer_is_one_answer(registry: SchemaRegistry, n: Any,
                                        response_format: Any) -> None:
    assert bad_chat(registry, n=n, response_format=response_format).param == "n"


def test_n_of_one_or_none_is_a_checked_answer(registry: SchemaRegistry) -> None:
    for n in (1, None):
        assert chat(registry, n=n, response_format=named("invoice")).checked
    assert bad_chat(registry, n=2, model="schema/invoice").param == "n"


def test_max_completion_tokens_is_read_before_max_tokens(registry: SchemaRegistry) -> None:
    assert chat(registry).max_tokens is None
    assert chat(registry, max_tokens=50).max_tokens == 50
    assert chat(registry, max_completion_tokens=30).max_tokens == 30
    assert chat(registry, max_tokens=50, max_completion_tokens=30).max_tokens == 30


@pytest.mark.parametrize("value", [0, -5, True, 1.5, "10"])
@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
def test_a_token_limit_that_is_not_a_positive_integer_is_a_400(
        registry: SchemaRegistry, key: str, value: Any) -> None:
    assert bad_chat(registry, **{key: value}).param == key


def test_the_schemas_engine_notes_become_the_plans_warnings(registry: SchemaRegistry) -> None:
    assert any("{1,255}" in w for w in chat(registry, response_format=named("ids")).warnings)
    assert chat(registry, response_format=named("invoice")).warnings == []


# -- completions

def completion(registry: SchemaRegistry, prompt: Any, **body: Any) -> ChatPlan:
    return plan_completion({"model": "m", "prompt": prompt, **body}, registry, SETTINGS)


def test_a_completion_names_its_schema_as_a_chat_does(registry: SchemaRegistry) -> None:
    plan = completion(registry, "Say it", response_format=named("invoice@1"))
    assert plan.mode is Mode.SCHEMA and plan.schema is registry.resolve("invoice@1")
    alias = plan_completion({"model": "schema/invoice", "prompt": "x"}, registry, SETTINGS)
    assert alias.schema is registry.resolve("invoice@2") and alias.model_alias
    assert completion(registry, "x").mode is Mode.PASSTHROUGH
    # no messages needed; a prompt is
    error = refusal(InvalidRequestError, plan_completion, {"model": "m", "messages": MESSAGES},
                    registry, SETTINGS)
    assert error.param == "prompt"
    assert refusal(InvalidRequestError, plan_completion, {"prompt": "x"}, registry,
                   SETTINGS).param == "model"


@pytest.mark.parametrize("prompt", ["one", ["one"], [1, 2, 3], [[1, 2, 3]], ""])
def test_a_checked_completion_takes_one_prompt(registry: SchemaRegistry, prompt: Any) -> None:
    for response_format in (named("invoice"), {"type": "json_object"}):
        assert completion(registry, prompt, response_format=response_format).checked


@pytest.mark.parametrize("prompt", [["one", "two"], [[1, 2], [3, 4]], ["one", [1, 2]]])
def test_several_prompts_are_refused_only_when_checked(registry: SchemaRegistry,
                                                        prompt: Any) -> None:
    for response_format in (named("invoice"), {"type": "json_object"}, adhoc()):
        error = refusal(InvalidRequestError, completion, registry, prompt,
                        response_format=response_format)
        assert error.param == "prompt"
    assert completion(registry, prompt).mode is Mode.PASSTHROUGH  # vLLM answers each


def test_a_checked_completion_is_one_answer(registry: SchemaRegistry) -> None:
    error = refusal(InvalidRequestError, completion, registry, "x", n=2,
                    response_format=named("invoice"))
    assert error.param == "n"


# -- the body vLLM gets

def sent(body: dict[str, Any]) -> dict[str, Any]:
    """As vLLM reads it (the schema rides as pre-serialised bytes)."""
    return orjson.loads(orjson.dumps(body))


def test_a_named_schema_is_sent_as_the_dialects_constraint(registry: SchemaRegistry) -> None:
    plan = chat(registry, response_format=named("invoice@1"), temperature=0.3)
    client_body = dict(plan.body)
    body = sent(upstream_chat_body(plan, DIALECT, "Qwen/Qwen3-8B", None))
    assert body["model"] == "Qwen/Qwen3-8B" and body["temperature"] == 0.3
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "invoice", "schema": OBJECT, "strict": True}}
    assert plan.body == client_body  # the client's body is left as it came


def test_a_schema_model_is_sent_the_upstream_model_and_the_constraint(
        registry: SchemaRegistry) -> None:
    plan = plan_chat({"model": "schema/tags", "messages": MESSAGES}, registry, SETTINGS)
    body = sent(upstream_chat_body(plan, DIALECT, "upstream-model", None))
    assert body["model"] == "upstream-model"
    assert body["response_format"]["json_schema"]["schema"] == FILES[2]["schema"]


def test_unconstrained_bodies_keep_the_clients_response_format(registry: SchemaRegistry
                                                               ) -> None:
    for response_format in ({"type": "json_object"}, {"type": "text"}):
        plan = chat(registry, response_format=response_format)
        assert sent(upstream_chat_body(plan, DIALECT, "up", None))["response_format"] == \
            response_format
    assert "response_format" not in upstream_chat_body(chat(registry), DIALECT, "up", None)


async def test_an_adhoc_schema_is_sent_once_compiled(registry: SchemaRegistry) -> None:
    plan = chat(registry, response_format=adhoc(name="Person", strict=False))
    await plan.compile_pending(AdhocSchemas.from_settings(SETTINGS))
    constraint = sent(upstream_chat_body(plan, DIALECT, "up", None))["response_format"]
    # strict is always sent true: vLLM may read `strict: false` as "no grammar"
    assert constraint["json_schema"] == {"name": "Person", "schema": PERSON, "strict": True}


def test_the_gateways_max_tokens_replaces_the_clients(registry: SchemaRegistry) -> None:
    plan = chat(registry, max_completion_tokens=40, response_format=named("invoice"))
    body = upstream_chat_body(plan, DIALECT, "up", 25)
    assert body["max_tokens"] == 25 and "max_completion_tokens" not in body
    untouched = upstream_chat_body(plan, DIALECT, "up", None)
    assert untouched["max_completion_tokens"] == 40 and "max_tokens" not in untouched


def test_a_stream_always_asks_vllm_for_usage(registry: SchemaRegistry) -> None:
    # the limiter settles with vLLM's real usage, whether the client asked for it or not
    for options in (None, {"include_usage": False}, {"include_usage": True}):
        extra = {"stream_options": options} if options is not None else {}
        plan = chat(registry, stream=True, **extra)
        body = upstream_chat_body(plan, DIALECT, "up", None)
        assert body["stream_options"]["include_usage"] is True
        assert plan.include_usage is bool(options and options["include_usage"])
    kept = chat(registry, stream=True, stream_options={"continuous_usage_stats": True})
    assert upstream_chat_body(kept, DIALECT, "up", None)["stream_options"] == {
        "continuous_usage_stats": True, "include_usage": True}
    assert "stream_options" not in upstream_chat_body(chat(registry), DIALECT, "up", None)


def forced_tool_plan(registry: SchemaRegistry, **body: Any) -> ChatPlan:
    """The plan for a forced tool call, however planning is wired: by `plan_chat` alone,
    or by `plan_chat` then `tools.plan_tool_call` (issue 18 folds the second into the first)."""
    plan = chat(registry, **body)
    tools = importlib.import_module("gateway.generation.tools")
    if plan.mode is Mode.PASSTHROUGH and hasattr(tools, "plan_tool_call"):
        tools.plan_tool_call(plan, registry, SETTINGS)
    return plan


async def test_a_forced_tool_is_sent_as_a_schema_without_the_tools(
        registry: SchemaRegistry) -> None:
    # vLLM refuses a forced tool_choice without a tool parser: the gateway sends the tool's
    # parameters as the constraint, and nothing of the tools
    weather = {"type": "function", "function": {"name": "weather", "parameters": PERSON}}
    other = {"type": "function", "function": {"name": "other"}}
    plan = forced_tool_plan(registry, tools=[other, weather], parallel_tool_calls=False,
                            tool_choice={"type": "function", "function": {"name": "weather"}})
    assert plan.mode is Mode.TOOL and plan.checked and plan.tool_name == "weather"
    await plan.compile_pending(AdhocSchemas.from_settings(SETTINGS))
    body = sent(upstream_chat_body(plan, DIALECT, "up", 20))
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(body)
    assert body["response_format"]["json_schema"] == {"name": "weather", "schema": PERSON,
                                                      "strict": True}
    assert body["max_tokens"] == 20 and body["messages"] == MESSAGES
    # tools left to vLLM's choice are sent as they came
    auto = chat(registry, tools=[weather], tool_choice="auto")
    assert sent(upstream_chat_body(auto, DIALECT, "up", None))["tools"] == [weather]


# -- the prompt's reservation

def test_the_prompt_estimate_grows_with_the_prompt() -> None:
    short = estimate_prompt_tokens({"messages": [{"role": "user", "content": "hi"}]})
    long = estimate_prompt_tokens({"messages": [{"role": "user", "content": "hi " * 1000}]})
    assert 0 < short < long
    assert estimate_prompt_tokens({}) > 0  # a request is never reserved at nothing


def test_the_prompt_estimate_is_not_below_the_tokens_vllm_will_count() -> None:
    text = "word " * 2000  # 10,000 bytes: at most ~10,000 tokens, usually ~2,000
    assert estimate_prompt_tokens({"prompt": text}) >= len(text) // 4
    # token ids are exactly one token each, in one prompt or several, however few bytes
    # an id takes ("7," is two)
    assert estimate_prompt_tokens({"prompt": [7] * 5000}) >= 5000
    assert estimate_prompt_tokens({"prompt": [[7] * 3000, [7] * 3000]}) >= 6000


@pytest.mark.parametrize("key", ["tools", "functions"])
def test_tool_definitions_count_towards_the_prompt(key: str) -> None:
    # the chat template renders them into the prompt: a long description costs tokens
    body = {"messages": [{"role": "user", "content": "hi"}]}
    description = "a long description " * 1700  # ~33 KB
    tools = [{"type": "function", "function": {"name": "f", "description": description}}]
    with_tools = estimate_prompt_tokens({**body, key: tools})
    assert with_tools >= estimate_prompt_tokens(body) + len(description) // 4


@pytest.mark.parametrize("echo", [True, 1])
def test_echo_is_refused_where_the_answer_is_checked(registry: SchemaRegistry,
                                                     echo: Any) -> None:
    # With echo, vLLM writes the prompt before the answer: a valid answer was then a 422
    # ("not valid JSON at character 0") after its tokens were spent.
    structured = {"model": "schema/invoice", "prompt": "add", "echo": echo}
    with pytest.raises(InvalidRequestError) as info:
        plan_completion(structured, registry, SETTINGS)
    assert info.value.param == "echo" and info.value.status_code == 400
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "echo": echo,
            "response_format": {"type": "json_object"}}
    with pytest.raises(InvalidRequestError):
        plan_chat(chat, registry, SETTINGS)
    forced = {**chat, "response_format": None, "tool_choice": "required",
              "tools": [{"type": "function", "function": {"name": "f"}}]}
    with pytest.raises(InvalidRequestError):
        plan_chat(forced, registry, SETTINGS)
    # Unchecked, or echo off: as before.
    assert not plan_completion({"model": "m", "prompt": "add", "echo": echo}, registry,
                               SETTINGS).checked
    assert plan_completion({**structured, "echo": False}, registry, SETTINGS).checked


def test_the_echo_refusal_says_what_to_do(registry: SchemaRegistry) -> None:
    with pytest.raises(InvalidRequestError) as info:
        plan_completion({"model": "schema/invoice", "prompt": "add", "echo": True}, registry,
                        SETTINGS)
    assert "drop echo" in info.value.message
