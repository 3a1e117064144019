"""LangChain's `ChatOpenAI.with_structured_output` against the gateway and a real vLLM.

What LangChain sends (recorded below through an httpx2 event hook on the SDK's client):
- `method="json_schema"` (the default): `chat.completions.parse` with the Pydantic class, i.e.
  an ad-hoc strict `json_schema` response_format named after the class;
- `method="function_calling"`: one tool named after the class, a named `tool_choice` and
  `parallel_tool_calls: false`; the gateway serves it as structured output, answered as a
  tool call.
A registered schema is reached with `method="function_calling"` and a tool that is only the
schema's name (no parameters), or with the `schema/<name>` model alias and an output
parser. (`with_structured_output({"type": "json_schema", "json_schema": {"name": ...}})`
cannot work: LangChain insists on converting the dict into a tool and raises ValueError.)

Async for the same reason as test_openai_client: the gateway runs in the test's loop.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import PydanticOutputParser
from langchain_openai import ChatOpenAI

from tests.function_ir_model import FunctionIR
from tests.integration.conftest import Live
from tests.integration.test_openai_client import (
    MAX_TOKENS,
    PROMPTS,
    Wire,
    assert_function_ir,
    new_key,
    until_success,
)

SYSTEM = "Answer with the function's IR as JSON."


def chat_model(live: Live, wire: Wire, model: str | None = None,
               max_tokens: int = MAX_TOKENS) -> ChatOpenAI:
    return ChatOpenAI(base_url=live.url + "/v1", api_key=live.api_key,  # type: ignore[arg-type]
                      model=model or live.model, temperature=0, max_tokens=max_tokens,
                      max_retries=0, http_async_client=wire.http_client())


def messages(prompt: str) -> list[tuple[str, str]]:
    return [("system", SYSTEM), ("human", prompt)]


async def run(call: Callable[[str], Awaitable[Any]], check: Callable[[Any], None]) -> None:
    await until_success(call, check)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
async def test_with_structured_output_pydantic(live: Live, method: str) -> None:
    wire = Wire()
    structured = chat_model(live, wire).with_structured_output(FunctionIR, method=method)

    def check(result: Any) -> None:
        assert isinstance(result, FunctionIR)
        assert_function_ir(result.model_dump_json())

    await run(lambda prompt: structured.ainvoke(messages(prompt)), check)

    sent = wire.last.body
    if method == "json_schema":
        spec = sent["response_format"]["json_schema"]
        assert spec["name"] == "FunctionIR" and spec["strict"] is True
        assert "tools" not in sent
        assert wire.last.headers["x-irgw-schema"] == "FunctionIR (ad-hoc)"
    else:
        assert [t["function"]["name"] for t in sent["tools"]] == ["FunctionIR"]
        assert sent["tool_choice"] == {"type": "function", "function": {"name": "FunctionIR"}}
        assert sent["parallel_tool_calls"] is False
        assert "response_format" not in sent
        assert wire.last.headers["x-irgw-schema"] == "FunctionIR (ad-hoc)"


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
async def test_with_structured_output_include_raw(live: Live, method: str) -> None:
    wire = Wire()
    structured = chat_model(live, wire).with_structured_output(FunctionIR, method=method,
                                                               include_raw=True)

    def check(result: Any) -> None:
        assert set(result) == {"raw", "parsed", "parsing_error"}
        raw = result["raw"]
        assert isinstance(raw, AIMessage)
        assert result["parsing_error"] is None, result["parsing_error"]
        assert isinstance(result["parsed"], FunctionIR)
        if method == "json_schema":
            assert raw.response_metadata["finish_reason"] == "stop"
            assert FunctionIR.model_validate_json(str(raw.content)) == result["parsed"]
        else:
            assert raw.response_metadata["finish_reason"] == "tool_calls"
            [call] = raw.tool_calls
            assert call["name"] == "FunctionIR" and call["id"]
            assert FunctionIR.model_validate(call["args"]) == result["parsed"]

    await run(lambda prompt: structured.ainvoke(messages(prompt)), check)


async def test_with_structured_output_streams(live: Live) -> None:
    # astream with a response_format goes through the SDK's chat.completions.stream helper.
    wire = Wire()
    structured = chat_model(live, wire).with_structured_output(FunctionIR, method="json_schema")

    async def call(prompt: str) -> list[Any]:
        return [chunk async for chunk in structured.astream(messages(prompt))]

    def check(chunks: list[Any]) -> None:
        assert chunks and isinstance(chunks[-1], FunctionIR)

    await run(call, check)
    assert wire.last.body["stream"] is True


async def test_registered_schema_through_function_calling(live: Live) -> None:
    wire = Wire()
    # A tool that is only a registered schema's name: the gateway uses function_ir@1.
    tool = {"type": "function", "function": {"name": "function_ir",
                                             "description": "Record one function's IR."}}
    structured = chat_model(live, wire).with_structured_output(
        tool, method="function_calling", include_raw=True)

    def check(result: Any) -> None:
        assert result["parsing_error"] is None
        [call] = result["raw"].tool_calls
        assert call["name"] == "function_ir" and result["parsed"] == call["args"]
        assert_function_ir(json.dumps(call["args"]))

    await run(lambda prompt: structured.ainvoke(messages(prompt)), check)
    assert wire.last.headers["x-irgw-schema"] == "function_ir@1"
    assert wire.last.body["tools"] == [tool]


async def test_registered_schema_through_the_model_alias(live: Live) -> None:
    wire = Wire()
    chain = chat_model(live, wire, model="schema/function_ir") | PydanticOutputParser(
        pydantic_object=FunctionIR)

    def check(result: Any) -> None:
        assert isinstance(result, FunctionIR)

    await run(lambda prompt: chain.ainvoke(messages(prompt)), check)
    assert wire.last.headers["x-irgw-schema"] == "function_ir@1"
    assert wire.last.body["model"] == "schema/function_ir"
    assert "response_format" not in wire.last.body


async def test_gateway_errors_reach_langchain_typed(live: Live) -> None:
    wire = Wire()
    # LangChain re-raises some openai errors as its own subclasses of them.
    with pytest.raises(openai.NotFoundError) as missing:
        await chat_model(live, wire, model="schema/nope").ainvoke(messages(PROMPTS[0]))
    assert missing.value.code == "schema_not_found"
    with pytest.raises(openai.UnprocessableEntityError) as truncated:
        await chat_model(live, wire, max_tokens=5).with_structured_output(
            FunctionIR, method="json_schema").ainvoke(messages(PROMPTS[0]))
    assert truncated.value.code == "output_truncated"
    restricted = await new_key(live, schemas=["module_ir"])
    with pytest.raises(openai.PermissionDeniedError):
        await ChatOpenAI(base_url=live.url + "/v1", api_key=restricted,  # type: ignore[arg-type]
                         model="schema/function_ir", max_retries=0).ainvoke("hi")
