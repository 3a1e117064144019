"""Forced tool calls planned and answered (gateway/generation/tools.py), without a server: which
`tool_choice` forces a tool, which schema its arguments are checked against, and the tool
call shape of the answer, whole and streamed. test_routes.py and test_streaming.py check
the same through a running gateway."""

from __future__ import annotations

import re
from typing import Any

import pytest

from gateway.errors import InvalidRequestError, InvalidSchemaError
from gateway.generation.planning import ChatPlan, Mode, plan_chat
from gateway.generation.tools import as_tool_call_chunk, as_tool_call_response
from gateway.output.adhoc import AdhocSchemas
from gateway.output.registry import SchemaRegistry
from gateway.settings import Settings
from tests.conftest import REPO

SETTINGS = Settings(auth_enabled=False, schemas_dir=REPO / "schemas")
REGISTRY = SchemaRegistry.load(REPO / "schemas")
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def tool(name: str, parameters: Any = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def planned(tool_choice: Any, tools: Any, settings: Settings = SETTINGS,
            **extra: Any) -> ChatPlan:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "tools": tools, "tool_choice": tool_choice, **extra}
    return plan_chat(body, REGISTRY, settings)


def refused(tool_choice: Any, tools: Any, **extra: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        planned(tool_choice, tools, **extra)
    assert info.value.status_code == 400
    assert isinstance(info.value.message, str) and info.value.message.strip()
    return info.value


@pytest.mark.parametrize(("tool_choice", "tools"), [
    (None, [tool("a")]), ("auto", [tool("a")]), ("none", [tool("a")]),
    ("required", []), ("required", None), ("required", {"a": tool("a")}),
    ("required", [tool("a"), tool("b")]),  # several: vLLM chooses
    ({"type": "function", "function": {"name": "a"}}, {"a": tool("a")}),  # not a list
])
def test_what_is_left_to_vllm(tool_choice: Any, tools: Any) -> None:
    plan = planned(tool_choice, tools)
    assert plan.mode is Mode.PASSTHROUGH and plan.tool_name is None and not plan.checked


def test_a_named_function_is_the_one_forced_among_several() -> None:
    named = {"type": "function", "function": {"name": "weather"}}
    plan = planned(named, [tool("lookup", {"type": "object"}), tool("weather", CITY)])
    assert plan.mode is Mode.TOOL and plan.tool_name == "weather"
    assert plan.pending is not None and plan.pending.schema == CITY
    assert plan.policy.name == SETTINGS.adhoc_output_policy


@pytest.mark.parametrize(("tool_choice", "tools", "param"), [
    ({"type": "function", "function": {"name": "other"}}, [tool("a")], "tool_choice"),
    ("always", [tool("a")], "tool_choice"),
    ({"type": "function"}, [tool("a")], "tool_choice"),
    ("required", [{"type": "function"}], "tools"),
    ("required", [{"type": "function", "function": {"name": 7}}], "tools"),
    ("required", [tool("r\u00e9sum\u00e9")], "tools"),
    ("required", [tool("a" * 65)], "tools"),
])
def test_what_is_refused(tool_choice: Any, tools: Any, param: str) -> None:
    assert refused(tool_choice, tools).param == param


def test_a_forced_tool_is_one_checked_answer_and_no_other_format() -> None:
    assert refused("required", [tool("a")], n=2).param == "n"
    error = refused("required", [tool("a")],
                    response_format={"type": "json_object"})
    assert error.param == "tool_choice"
    assert planned("required", [tool("a" * 64)], n=1).tool_name == "a" * 64


def test_which_schema_checks_the_arguments() -> None:
    # No parameters and a registered name: the registered schema and its policy.
    registered = planned("required", [tool("function_ir")])
    assert registered.schema is REGISTRY.resolve("function_ir") and registered.pending is None
    assert registered.policy.name == registered.schema.output_policy
    # Parameters win over a registered name; neither: an object with anything in it.
    own = planned("required", [tool("function_ir", CITY)])
    assert own.schema is None and own.pending is not None and own.pending.schema == CITY
    bare = planned("required", [tool("get_time")])
    assert bare.pending is not None and bare.pending.name == "get_time"
    assert bare.pending.schema == {"type": "object", "properties": {}}
    # The operator's policy overrides both.
    strict = SETTINGS.model_copy(update={"output_policy": "error"})
    assert planned("required", [tool("function_ir")], strict).policy.name == "error"
    assert planned("required", [tool("get_time")], strict).policy.name == "error"


def test_each_call_has_its_own_id() -> None:
    ids = {planned("required", [tool("a")]).tool_call_id for _ in range(3)}
    assert len(ids) == 3 and all(str(i).startswith("call_") for i in ids)


def test_an_answer_becomes_the_tool_call() -> None:
    plan = planned("required", [tool("get_time")])
    for reason, finish in (("stop", "tool_calls"), ("length", "length")):
        choice = {"message": {"role": "assistant", "content": '{"a": 1}'},
                  "finish_reason": reason}
        as_tool_call_response(plan, choice)
        assert choice["finish_reason"] == finish and choice["message"]["content"] is None
        assert choice["message"]["tool_calls"] == [{
            "id": plan.tool_call_id, "type": "function",
            "function": {"name": "get_time", "arguments": '{"a": 1}'}}]


def test_a_streamed_answer_becomes_argument_deltas_of_one_call() -> None:
    plan = planned("required", [tool("get_time")])

    def chunk(content: str | None, finish: str | None = None, *, first: bool = False
              ) -> dict[str, Any]:
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if content is not None:
            delta["content"] = content
        out = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        as_tool_call_chunk(plan, out, first=first)
        return out["choices"][0]

    opening = chunk(None, first=True)
    assert opening["delta"]["tool_calls"] == [{
        "index": 0, "id": plan.tool_call_id, "type": "function",
        "function": {"name": "get_time", "arguments": ""}}]
    middle = chunk('{"a"')
    assert middle["delta"] == {"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}
    assert chunk("")["delta"] == {}  # nothing to add: no empty call delta
    assert chunk(None, "stop")["finish_reason"] == "tool_calls"
    assert chunk(None, "length")["finish_reason"] == "length"


def test_a_streamed_tool_call_of_vllms_own_is_not_relayed_unchecked() -> None:
    # The client's arguments are the checked content, and only that: a `tool_calls` (or
    # legacy `function_call`) delta from upstream would be appended to them by the client
    # (`{"a":1}` + `,"b":"x"}`), outside the check, under `irgw-output passed`.
    plan = planned("required", [tool("get_time")])
    for extra in ({"tool_calls": [{"index": 0, "function": {"arguments": ',"b":"x"}'}}]},
                  {"function_call": {"name": "x", "arguments": "{}"}}):
        out = {"choices": [{"index": 0, "delta": dict(extra), "finish_reason": None}]}
        as_tool_call_chunk(plan, out, first=False)
        assert out["choices"][0]["delta"] == {}
        with_content = {"choices": [{"index": 0, "delta": {"content": "1", **extra},
                                     "finish_reason": None}]}
        as_tool_call_chunk(plan, with_content, first=False)
        assert with_content["choices"][0]["delta"] == {
            "tool_calls": [{"index": 0, "function": {"arguments": "1"}}]}


@pytest.mark.parametrize("parameters", [[1], "x", True])
def test_a_forced_tools_bad_parameters_are_named_as_the_tools(parameters: Any) -> None:
    # The 400 named `response_format.json_schema.schema`, which the request never sent.
    named = {"type": "function", "function": {"name": "weather"}}
    plan = planned(named, [tool("lookup", {"type": "object"}), tool("weather", parameters)])
    assert plan.pending is not None
    assert plan.pending.param == "tools[1].function.parameters"
    with pytest.raises(InvalidSchemaError) as info:
        AdhocSchemas.from_settings(SETTINGS).compile(plan.pending)
    assert info.value.param == "tools[1].function.parameters"


def test_a_forced_tool_calls_id_looks_like_openais() -> None:
    # `call_` and 24 characters, as OpenAI writes them; a fresh one per request.
    first, second = (planned("required", [tool("f")]).tool_call_id for _ in range(2))
    assert first is not None and re.fullmatch(r"call_[0-9a-f]{24}", first)
    assert first != second
