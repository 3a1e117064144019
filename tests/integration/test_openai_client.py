"""The official openai client (3.x) against the gateway in front of a real vLLM.

The tests are async and use `AsyncOpenAI` although a sync client would do in an app: the
`live` gateway runs inside the session's event loop, so a blocking call from a sync test
would wait for a server that cannot run. Every request goes through an httpx2 event hook
(`Wire`) so the tests assert what the SDK really put on the wire, not what we assume.

The tiny model writes gibberish that the grammar keeps schema-shaped; now and then an
answer still fails validation and the gateway answers a typed 422. So a structured call is
"a valid parsed object OR the typed gateway error", checked precisely either way, and each
test needs at least one success over a few prompts (temperature 0: different prompts, not
repeats, give different answers).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx2
import openai
import pytest
from jsonschema import Draft202012Validator
from openai import AsyncOpenAI

from tests.conftest import REPO
from tests.function_ir_model import FunctionIR
from tests.integration.conftest import SERVED_MODEL, Live

T = TypeVar("T")

MAX_TOKENS = 350
FUNCTION_IR_SCHEMA: dict[str, Any] = json.loads(
    (REPO / "schemas" / "function_ir.v1.json").read_text()
)["schema"]
FUNCTION_IR = Draft202012Validator(FUNCTION_IR_SCHEMA)
OUTPUT_ERROR_CODES = {"output_validation_failed", "output_truncated"}
PROMPTS = [
    "Describe a Python function that adds two integers.",
    "Describe a function that reverses a string.",
    "Describe a function that parses an ISO 8601 date.",
    "Describe a function that returns the median of a list of floats.",
    "Describe a function that counts the words in a text.",
]
# ------------------------------------------------------------------------------ helpers


@dataclass
class Exchange:
    method: str
    path: str
    body: Any
    sent_at: float
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


class Wire:
    """Records every request the SDK sends and the status/headers it gets back."""

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []

    async def _on_request(self, request: httpx2.Request) -> None:
        raw = request.content
        body = json.loads(raw) if raw else None
        self.exchanges.append(Exchange(request.method, request.url.path, body, time.monotonic()))

    async def _on_response(self, response: httpx2.Response) -> None:
        for exchange in reversed(self.exchanges):
            if exchange.status is None:
                exchange.status = response.status_code
                exchange.headers = dict(response.headers)
                break

    def http_client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(timeout=120,
                                  event_hooks={"request": [self._on_request],
                                               "response": [self._on_response]})

    @property
    def last(self) -> Exchange:
        assert self.exchanges, "the SDK sent nothing"
        return self.exchanges[-1]


@dataclass
class Sdk:
    client: AsyncOpenAI
    wire: Wire


@pytest.fixture
async def sdk(live: Live) -> AsyncIterator[Sdk]:
    wire = Wire()
    async with AsyncOpenAI(base_url=live.url + "/v1", api_key=live.api_key, max_retries=0,
                           http_client=wire.http_client()) as client:
        yield Sdk(client, wire)


def client_for(live: Live, key: str, wire: Wire, max_retries: int = 0) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=live.url + "/v1", api_key=key, max_retries=max_retries,
                       http_client=wire.http_client())


async def new_key(live: Live, **policy: Any) -> str:
    """`live.new_key`, once the gateway accepts it: the gateway re-reads the keys file at
    most every 0.25 s, so a key used at once would get a 401. `/v1/schemas` authenticates
    without touching rate limits (`/v1/models` counts against the key's rpm), so polling it
    spends nothing."""
    key = live.new_key(**policy)
    async with httpx2.AsyncClient(base_url=live.url, headers=live.headers(key)) as http:
        deadline = time.monotonic() + 5
        while (await http.get("/v1/schemas")).status_code == 401:
            assert time.monotonic() < deadline, "the gateway never accepted the new key"
            await asyncio.sleep(0.05)
    return key


def is_output_error(exc: BaseException) -> bool:
    """The gateway's typed answer to an output that failed its check (a 422, or in a stream
    an error event, which the SDK raises as a plain APIError)."""
    return isinstance(exc, openai.APIError) and exc.code in OUTPUT_ERROR_CODES


def assert_output_error(exc: BaseException) -> None:
    assert is_output_error(exc), f"not the gateway's typed output error: {exc!r}"
    body = exc.body if isinstance(exc, openai.APIError) else None
    assert isinstance(body, dict)
    assert body["type"] == "output_validation_error"
    assert {"pointer", "constraint", "raw_output", "attempts"} <= set(body)
    if isinstance(exc, openai.APIStatusError):
        assert exc.status_code == 422 and isinstance(exc, openai.UnprocessableEntityError)


async def until_success(call: Callable[[str], Awaitable[T]], check: Callable[[T], None],
                        tries: int = len(PROMPTS)) -> list[T | BaseException]:
    """Run `call` over different prompts until one succeeds; every attempt must be a
    success that passes `check`, or the gateway's typed output error."""
    outcomes: list[T | BaseException] = []
    for prompt in PROMPTS[:tries]:
        try:
            result = await call(prompt)
        except openai.APIError as exc:
            assert_output_error(exc)
            outcomes.append(exc)
            continue
        check(result)
        outcomes.append(result)
        if len(outcomes) > 1:  # visible with -s: how often the typed-error path ran
            print(f"\n  {len(outcomes) - 1} typed output error(s) before a success: "
                  f"{[getattr(o, 'code', None) for o in outcomes[:-1]]}")
        return outcomes
    pytest.fail(f"no success in {tries} requests, only typed errors: "
                f"{[getattr(o, 'code', o) for o in outcomes]}")


def assert_function_ir(text: str | None) -> dict[str, Any]:
    assert text is not None
    document = json.loads(text)  # strict RFC 8259 parse, as any client would do
    errors = [e.message for e in FUNCTION_IR.iter_errors(document)]
    assert not errors, errors
    assert isinstance(document, dict)
    return document


def user(prompt: str) -> list[Any]:
    return [{"role": "system", "content": "Answer with the function's IR as JSON."},
            {"role": "user", "content": prompt}]


# ------------------------------------------------------------------------------ discovery


async def test_models_list_includes_schema_aliases(sdk: Sdk, live: Live) -> None:
    ids = [model.id async for model in sdk.client.models.list()]
    assert live.model in ids
    assert {"schema/function_ir", "schema/function_ir@1", "schema/module_ir",
            "schema/test_plan_ir"} <= set(ids)
    # A model id with a slash: the SDK sends it as a path segment, the gateway's
    # `{model_id:path}` route takes it whole.
    alias = await sdk.client.models.retrieve("schema/function_ir@1")
    assert alias.id == "schema/function_ir@1" and alias.owned_by == "ir-gateway"
    with pytest.raises(openai.NotFoundError):
        await sdk.client.models.retrieve("schema/nope")


# ------------------------------------------------------------------------------ create


@pytest.mark.parametrize("how", ["response_format", "model_alias"])
async def test_create_with_a_registered_schema(sdk: Sdk, live: Live, how: str) -> None:
    async def call(prompt: str) -> Any:
        if how == "response_format":
            return await sdk.client.chat.completions.with_raw_response.create(
                model=live.model, messages=user(prompt), temperature=0, max_tokens=MAX_TOKENS,
                response_format={"type": "json_schema", "json_schema": {"name": "function_ir"}},
            )
        return await sdk.client.chat.completions.with_raw_response.create(
            model="schema/function_ir", messages=user(prompt), temperature=0,
            max_tokens=MAX_TOKENS,
        )

    def check(raw: Any) -> None:
        assert raw.headers["x-irgw-schema"] == "function_ir@1"
        assert raw.headers["x-irgw-output"] in ("passed", "repaired", "retried")
        completion = raw.parse()
        choice = completion.choices[0]
        assert choice.finish_reason == "stop" and choice.message.refusal is None
        # The client sees the model it named, alias included.
        assert completion.model == (live.model if how == "response_format"
                                    else "schema/function_ir")
        assert_function_ir(choice.message.content)

    await until_success(call, check)
    sent = sdk.wire.last.body
    if how == "response_format":
        assert sent["response_format"] == {"type": "json_schema",
                                           "json_schema": {"name": "function_ir"}}
    else:
        assert sent["model"] == "schema/function_ir" and "response_format" not in sent


# ------------------------------------------------------------------------------ parse


async def test_parse_with_a_pydantic_model(sdk: Sdk, live: Live) -> None:
    async def call(prompt: str) -> Any:
        return await sdk.client.chat.completions.with_raw_response.parse(
            model=live.model, messages=user(prompt), temperature=0, max_tokens=MAX_TOKENS,
            response_format=FunctionIR,
        )

    def check(raw: Any) -> None:
        assert raw.headers["x-irgw-schema"] == "FunctionIR (ad-hoc)"
        message = raw.parse().choices[0].message
        assert isinstance(message.parsed, FunctionIR)
        assert message.parsed == FunctionIR.model_validate_json(message.content or "")
        assert_function_ir(message.content)  # the mirror is faithful to the registry

    await until_success(call, check)
    # What parse() sends: the class name, the strictified schema, strict: true.
    spec = sdk.wire.last.body["response_format"]
    assert spec["type"] == "json_schema"
    assert spec["json_schema"]["name"] == "FunctionIR" and spec["json_schema"]["strict"] is True
    schema = spec["json_schema"]["schema"]
    assert schema["additionalProperties"] is False and set(schema["required"]) == {
        "intent", "signature"}
    assert "$defs" in schema  # nested models stay as local $refs


async def test_parse_naming_a_registered_schema(sdk: Sdk, live: Live) -> None:
    """The idiomatic way: name the schema by the model alias and validate the content with
    the Pydantic mirror. Passing the class as response_format would make the request ad-hoc
    (and with the alias too, the gateway refuses the ambiguity with a 400)."""

    async def call(prompt: str) -> Any:
        return await sdk.client.chat.completions.parse(
            model="schema/function_ir", messages=user(prompt), temperature=0,
            max_tokens=MAX_TOKENS,
        )

    def check(completion: Any) -> None:
        message = completion.choices[0].message
        assert message.parsed is None  # parse() only fills it for a class response_format
        FunctionIR.model_validate_json(message.content)
        assert_function_ir(message.content)

    await until_success(call, check)
    assert "response_format" not in sdk.wire.last.body

    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.client.chat.completions.parse(
            model="schema/function_ir", messages=user(PROMPTS[0]), max_tokens=MAX_TOKENS,
            response_format=FunctionIR,
        )
    assert refused.value.param == "response_format"
    assert "function_ir@1" in refused.value.message and "FunctionIR" in refused.value.message


async def test_truncated_output_is_a_typed_422(sdk: Sdk, live: Live) -> None:
    # 5 tokens cannot hold a function_ir: the gateway answers 422 output_truncated, so the
    # SDK raises UnprocessableEntityError (not its own LengthFinishReasonError) and does
    # not retry it.
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        await sdk.client.chat.completions.parse(
            model=live.model, messages=user(PROMPTS[0]), max_tokens=5, response_format=FunctionIR,
        )
    assert raised.value.code == "output_truncated"
    assert_output_error(raised.value)
    assert len(sdk.wire.exchanges) == 1


# ------------------------------------------------------------------------------ stream


async def test_stream_with_a_pydantic_model(sdk: Sdk, live: Live) -> None:
    seen: list[list[str]] = []

    async def call(prompt: str) -> Any:
        kinds: list[str] = []
        seen.append(kinds)
        deltas: list[str] = []
        async with sdk.client.chat.completions.stream(
            model=live.model, messages=user(prompt), temperature=0, max_tokens=MAX_TOKENS,
            response_format=FunctionIR, stream_options={"include_usage": True},
        ) as stream:
            done: Any = None
            async for event in stream:
                kinds.append(event.type)
                if event.type == "content.delta":
                    deltas.append(event.delta)
                elif event.type == "content.done":
                    done = event.parsed
            final = await stream.get_final_completion()
        return final, done, "".join(deltas)

    def check(result: Any) -> None:
        final, done, streamed = result
        message = final.choices[0].message
        assert isinstance(message.parsed, FunctionIR) and done == message.parsed
        assert streamed == message.content
        assert_function_ir(message.content)
        assert final.usage is not None and final.usage.completion_tokens > 0

    outcomes = await until_success(call, check)
    for kinds, outcome in zip(seen, outcomes, strict=True):
        assert "chunk" in kinds
        if isinstance(outcome, BaseException):
            # The finishing chunk is held back until the check: a failed answer never
            # gets a content.done, the SDK raises instead.
            assert "content.done" not in kinds
        else:
            assert kinds.index("content.done") > kinds.index("content.delta")
    body = sdk.wire.last.body
    assert body["stream"] is True and body["response_format"]["json_schema"]["name"] == (
        "FunctionIR")


async def test_stream_of_a_truncated_answer_raises_the_typed_error(sdk: Sdk, live: Live) -> None:
    # In a stream the verdict cannot be a status code: the gateway ends the stream with
    # `data: {"error": ...}`, which the SDK raises as APIError with the gateway's code.
    events: list[str] = []
    with pytest.raises(openai.APIError) as raised:
        async with sdk.client.chat.completions.stream(
            model=live.model, messages=user(PROMPTS[0]), max_tokens=5, response_format=FunctionIR,
        ) as stream:
            async for event in stream:
                events.append(event.type)
    assert raised.value.code == "output_truncated"
    assert_output_error(raised.value)
    assert "content.delta" in events and "content.done" not in events
    assert sdk.wire.last.status == 200  # the error came inside the 200 stream


# ------------------------------------------------------------------------------ tools


async def test_forced_tool_call_with_a_registered_schema(sdk: Sdk, live: Live) -> None:
    # A tool named after a registered schema, without parameters, means that schema.
    tools: list[Any] = [{"type": "function", "function": {
        "name": "function_ir", "description": "Record one function's IR."}}]

    async def call(prompt: str) -> Any:
        return await sdk.client.chat.completions.with_raw_response.create(
            model=live.model, messages=user(prompt), temperature=0, max_tokens=MAX_TOKENS,
            tools=tools, tool_choice={"type": "function", "function": {"name": "function_ir"}},
        )

    def check(raw: Any) -> None:
        assert raw.headers["x-irgw-schema"] == "function_ir@1"
        choice = raw.parse().choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        [tool_call] = choice.message.tool_calls
        assert tool_call.type == "function" and tool_call.function.name == "function_ir"
        assert tool_call.id.startswith("call_")
        assert_function_ir(tool_call.function.arguments)

    await until_success(call, check)


async def test_parse_with_a_pydantic_tool(sdk: Sdk, live: Live) -> None:
    # openai.pydantic_function_tool makes a strict tool: parse() fills parsed_arguments.
    tool = openai.pydantic_function_tool(FunctionIR, name="record_function")

    async def call(prompt: str) -> Any:
        return await sdk.client.chat.completions.parse(
            model=live.model, messages=user(prompt), temperature=0, max_tokens=MAX_TOKENS,
            tools=[tool], tool_choice="required",
        )

    def check(completion: Any) -> None:
        [tool_call] = completion.choices[0].message.tool_calls
        assert tool_call.function.name == "record_function"
        assert isinstance(tool_call.function.parsed_arguments, FunctionIR)

    await until_success(call, check)
    sent = sdk.wire.last.body
    assert sent["tool_choice"] == "required"
    assert sent["tools"][0]["function"]["strict"] is True


async def test_stream_a_forced_pydantic_tool(sdk: Sdk, live: Live) -> None:
    # The gateway turns content deltas into tool-call argument deltas; the SDK's stream
    # helper must assemble them into one parsed tool call.
    tool = openai.pydantic_function_tool(FunctionIR, name="record_function")

    async def call(prompt: str) -> Any:
        kinds: list[str] = []
        async with sdk.client.chat.completions.stream(
            model=live.model, messages=user(prompt), temperature=0, max_tokens=MAX_TOKENS,
            tools=[tool], tool_choice={"type": "function", "function": {"name": "record_function"}},
        ) as stream:
            done: Any = None
            async for event in stream:
                kinds.append(event.type)
                if event.type == "tool_calls.function.arguments.done":
                    done = event.parsed_arguments
            return await stream.get_final_completion(), done, kinds

    def check(result: Any) -> None:
        final, done, kinds = result
        choice = final.choices[0]
        assert choice.finish_reason == "tool_calls"
        [tool_call] = choice.message.tool_calls
        assert tool_call.function.name == "record_function"
        assert isinstance(tool_call.function.parsed_arguments, FunctionIR)
        assert done == tool_call.function.parsed_arguments
        assert "tool_calls.function.arguments.delta" in kinds
        assert_function_ir(tool_call.function.arguments)

    await until_success(call, check)


# ------------------------------------------------------------------------------ completions


async def test_completions_with_a_schema_alias(sdk: Sdk) -> None:
    async def call(prompt: str) -> Any:
        return await sdk.client.completions.with_raw_response.create(
            model="schema/function_ir", prompt=prompt + "\nJSON:", temperature=0,
            max_tokens=MAX_TOKENS,
        )

    def check(raw: Any) -> None:
        assert raw.headers["x-irgw-schema"] == "function_ir@1"
        completion = raw.parse()
        assert completion.object == "text_completion" and completion.model == "schema/function_ir"
        assert completion.choices[0].finish_reason == "stop"
        assert_function_ir(completion.choices[0].text)

    await until_success(call, check)
    assert sdk.wire.last.path == "/v1/completions"


async def test_completions_stream_with_a_schema_alias(sdk: Sdk) -> None:
    # A structured completions stream is answered after the check, as one chunk.
    async def call(prompt: str) -> Any:
        chunks = [chunk async for chunk in await sdk.client.completions.create(
            model="schema/function_ir", prompt=prompt + "\nJSON:", temperature=0,
            max_tokens=MAX_TOKENS, stream=True, stream_options={"include_usage": True},
        )]
        return chunks

    def check(chunks: Any) -> None:
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        assert chunks[-1].usage is not None and not chunks[-1].choices
        assert_function_ir(text)

    await until_success(call, check)


@pytest.mark.parametrize("include_usage", [True, False])
async def test_unchecked_completions_stream(sdk: Sdk, include_usage: bool) -> None:
    # No schema: vLLM's chunks are relayed as they come; the gateway asks vLLM for usage
    # either way (its token limits settle on it) and passes it on only when asked.
    stream = await sdk.client.completions.create(
        model=SERVED_MODEL, prompt="def add(a, b):", temperature=0, max_tokens=12, stream=True,
        stream_options={"include_usage": True} if include_usage else None,
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text and chunks[0].object == "text_completion"
    with_usage = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert len(with_usage) == 1 and not with_usage[0].choices
        assert with_usage[0].usage.completion_tokens > 0
    else:
        assert with_usage == []
    assert sdk.wire.last.status == 200 and "x-irgw-schema" not in sdk.wire.last.headers


# ------------------------------------------------------------------------------ errors


async def test_bad_key_raises_authentication_error(live: Live) -> None:
    wire = Wire()
    async with client_for(live, "irgw-AAAAAAAAAAAA-" + "x" * 40, wire) as client:
        with pytest.raises(openai.AuthenticationError) as raised:
            await client.chat.completions.create(model="schema/function_ir",
                                                 messages=user(PROMPTS[0]))
    assert raised.value.status_code == 401 and raised.value.code == "invalid_api_key"
    assert wire.last.headers["www-authenticate"] == "Bearer"


async def test_unknown_schema_raises_not_found(sdk: Sdk, live: Live) -> None:
    with pytest.raises(openai.NotFoundError) as by_format:
        await sdk.client.chat.completions.create(
            model=live.model, messages=user(PROMPTS[0]),
            response_format={"type": "json_schema", "json_schema": {"name": "no_such_schema"}},
        )
    assert by_format.value.code == "schema_not_found"
    assert by_format.value.param == "response_format.json_schema.name"
    with pytest.raises(openai.NotFoundError) as by_model:
        await sdk.client.chat.completions.create(model="schema/function_ir@99",
                                                 messages=user(PROMPTS[0]))
    assert by_model.value.code == "schema_not_found" and by_model.value.param == "model"


async def test_invalid_adhoc_schema_raises_bad_request(sdk: Sdk, live: Live) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await sdk.client.chat.completions.create(
            model=live.model, messages=user(PROMPTS[0]),
            response_format={"type": "json_schema", "json_schema": {
                "name": "broken", "schema": {"type": "objekt"}}},
        )
    assert raised.value.code == "invalid_schema"
    assert len(sdk.wire.exchanges) == 1  # a 400 is never retried


async def test_schema_the_key_may_not_use_raises_permission_denied(live: Live) -> None:
    wire = Wire()
    key = await new_key(live, schemas=["module_ir"], allow_adhoc=False)
    async with client_for(live, key, wire) as client:
        with pytest.raises(openai.PermissionDeniedError) as registered:
            await client.chat.completions.create(model="schema/function_ir",
                                                 messages=user(PROMPTS[0]))
        assert registered.value.code == "schema_not_allowed"
        # parse(response_format=Model) is an ad-hoc schema: refused for this key too.
        with pytest.raises(openai.PermissionDeniedError) as adhoc:
            await client.chat.completions.parse(model=live.model, messages=user(PROMPTS[0]),
                                                response_format=FunctionIR)
        assert adhoc.value.code == "adhoc_schema_not_allowed"
    assert [e.status for e in wire.exchanges] == [403, 403]


async def test_rate_limit_raises_rate_limit_error(live: Live) -> None:
    wire = Wire()
    key = await new_key(live, rpm=1)
    async with client_for(live, key, wire, max_retries=0) as client:
        # Plain text, one token: the cheapest request that spends the key's one request.
        await client.chat.completions.create(model=live.model, messages=user("hi"), max_tokens=1)
        with pytest.raises(openai.RateLimitError) as raised:
            await client.chat.completions.create(model=live.model, messages=user("hi"),
                                                 max_tokens=1)
    assert raised.value.code == "rate_limit_exceeded"
    headers = raised.value.response.headers
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert int(headers["retry-after"]) >= 1 and int(headers["retry-after-ms"]) >= 1
    assert [e.status for e in wire.exchanges] == [200, 429]  # max_retries=0: no retry


async def test_sdk_retry_honours_retry_after(live: Live) -> None:
    """With default retries the SDK waits what `retry-after-ms` says, not its own 0.5 s
    backoff. rpm=30 refills one request every 2 s: drain the bucket, then one call."""
    rpm = 30
    drain_wire, wire = Wire(), Wire()
    key = await new_key(live, rpm=rpm)
    async with client_for(live, key, drain_wire, max_retries=0) as drain, \
            client_for(live, key, wire, max_retries=2) as patient:
        for _ in range(3):
            for _ in range(rpm + 5):
                try:
                    await drain.chat.completions.create(model=live.model, messages=user("hi"),
                                                        max_tokens=1)
                except openai.RateLimitError:
                    break
            else:
                pytest.fail(f"{rpm + 5} requests with rpm={rpm} and no 429")
            start = len(wire.exchanges)
            await patient.chat.completions.create(model=live.model, messages=user("hi"),
                                                  max_tokens=1)
            tried = wire.exchanges[start:]
            if tried[0].status == 429:
                break
            # A refill landed between the drain's 429 and this call: drain again.
        else:
            pytest.fail("never saw a 429 on the retried call")
    assert [e.status for e in tried][-1] == 200
    for refused, retry in itertools.pairwise(tried):
        if refused.status != 429:
            continue
        waited_s = retry.sent_at - refused.sent_at
        asked_s = int(refused.headers["retry-after-ms"]) / 1000
        # The SDK's own first backoff is at most 0.5 s; asked_s is up to 2 s here.
        assert waited_s >= asked_s * 0.9, (waited_s, asked_s)
        assert waited_s < asked_s + 1.0, (waited_s, asked_s)


def test_pydantic_mirror_matches_registered_schema() -> None:
    # Guard for the tests above: the mirror accepts exactly what the registry does on a
    # few hand-made documents.
    sample = {"intent": {"summary": "s", "rationale": "r"},
              "signature": {"name": "f", "parameters": [{"name": "a", "type_hint": "int"}],
                            "returns": "int"}}
    FunctionIR.model_validate(sample)
    assert not list(FUNCTION_IR.iter_errors(sample))
    bad = {**sample, "signature": {**sample["signature"], "name": "2f"}}
    assert list(FUNCTION_IR.iter_errors(bad))
    with pytest.raises(ValueError):
        FunctionIR.model_validate(bad)
