"""What checking a request body costs: the gateway's hand-written checks against a typed model.

Usage::

    .venv/bin/python bench/request_contract.py   # ~10 s, writes bench/results/request_contract.md

Issue 18 asks for one definition of the request contract, typed (pydantic or msgspec) if
that costs nothing measurable on the hot path. This times, per request body, in this
process and warm (back to back; the best of 40 interleaved rounds of ~10 ms, so the
figures are the code's own cost, not the shared machine's noise):

- `plan_chat`: the gateway's whole planning step as it runs (field checks, schema
  resolution, policy), and the field checks alone (`gateway.generation.contract`);
- a pydantic v2 model of the same checks (strict: `n: true` and `1.0` stay errors; unknown
  fields ignored, the client's dict is kept as sent), once with `messages: list[Any]` (only
  what the gateway checks today) and once with typed messages (what a model that also
  writes the document would say);
- the same two as msgspec Structs (`msgspec.convert`, strict), when msgspec is installed
  (it is not a dependency: `.venv/bin/pip install msgspec` to include it).

The bodies: a typical named-schema chat body (three messages, `response_format` naming a
registered schema) and a 200 KB one (100 messages of 2 KB, as a long conversation sends).
A typed model would run *in addition* to most of planning (schema resolution, policy and
the cross-field rules stay code), so its figure is what it would add per request.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pydantic import BaseModel, ConfigDict, Field, model_validator  # noqa: E402

from gateway.generation import contract  # noqa: E402
from gateway.generation.planning import plan_chat  # noqa: E402
from gateway.output.registry import SchemaRegistry  # noqa: E402
from gateway.settings import Settings  # noqa: E402

RESULTS = REPO / "bench" / "results" / "request_contract.md"
ROUNDS = 40
TYPICAL: dict[str, Any] = {
    "model": "tiny-qwen2",
    "messages": [
        {"role": "system", "content": "You write the IR of Python functions."},
        {"role": "user", "content": "IR for a function that adds two ints"},
        {"role": "assistant", "content": "Which module should it go in?"},
    ],
    "response_format": {"type": "json_schema", "json_schema": {"name": "function_ir"}},
    "max_tokens": 300,
    "temperature": 0,
}
LARGE: dict[str, Any] = {
    **TYPICAL,
    "messages": [{"role": ("user", "assistant")[i % 2], "content": "x" * 2048}
                 for i in range(100)],
}


def _field_checks(body: Any) -> None:
    """What `plan_chat` checks of a body, in its order, without the schema resolution."""
    body = contract.BODY.validate(body)
    contract.MODEL.read(body)
    contract.MESSAGES.read(body)
    stream = contract.STREAM.read(body) or False
    stream_options = body.get("stream_options")
    if stream_options is not None:
        if not stream:
            raise contract.STREAM_OPTIONS_NEED_STREAM.error()
        contract.STREAM_OPTIONS.validate(stream_options)
    contract.MAX_COMPLETION_TOKENS.read(body) or contract.MAX_TOKENS.read(body)
    response_format = contract.RESPONSE_FORMAT.read(body)
    if response_format is not None and contract.RESPONSE_FORMAT_TYPE.read(
            response_format) == "json_schema":
        spec = contract.JSON_SCHEMA.read(response_format)
        (contract.ADHOC_NAME if "schema" in spec else contract.REGISTERED_NAME).read(spec)
    contract.ONE_CHOICE.read(body)


# ---------------------------------------------------------------------------- pydantic

_STRICT = ConfigDict(strict=True, extra="ignore")


class _Text(BaseModel):
    model_config = _STRICT
    type: Literal["text"]


class _JsonObject(BaseModel):
    model_config = _STRICT
    type: Literal["json_object"]


class _JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _adhoc_name(self) -> _JsonSchemaSpec:  # the name rule holds only with a schema
        if self.schema_ is not None and self.name is not None and not (
                contract.ADHOC_NAME_RE.fullmatch(self.name)):
            raise ValueError("name")
        return self


class _JsonSchema(BaseModel):
    model_config = _STRICT
    type: Literal["json_schema"]
    json_schema: _JsonSchemaSpec


_ResponseFormat = Annotated[_Text | _JsonObject | _JsonSchema, Field(discriminator="type")]


class _StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool | None = None


class _Message(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_call_id: str | None = None


def _request_model(messages: Any) -> type[BaseModel]:
    class ChatRequest(BaseModel):
        model_config = _STRICT
        model: Annotated[str, Field(min_length=1)]
        messages: Annotated[messages, Field(min_length=1)]  # type: ignore[valid-type]
        response_format: _ResponseFormat | None = None
        stream: bool = False
        stream_options: _StreamOptions | None = None
        max_tokens: Annotated[int, Field(ge=1)] | None = None
        max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
        n: int | None = None

        @model_validator(mode="after")
        def _stream_options_need_stream(self) -> ChatRequest:
            if self.stream_options is not None and not self.stream:
                raise ValueError("stream_options")
            return self

    return ChatRequest


PydanticLoose = _request_model(list[Any])
PydanticTyped = _request_model(list[_Message])


# ---------------------------------------------------------------------------- msgspec

try:
    import msgspec
except ImportError:  # not a dependency: the msgspec rows are left out
    msgspec = None

if msgspec is not None:
    class _MsText(msgspec.Struct, tag_field="type", tag="text"):
        pass

    class _MsJsonObject(msgspec.Struct, tag_field="type", tag="json_object"):
        pass

    class _MsSpec(msgspec.Struct):
        name: str | None = None
        schema: dict[str, Any] | None = None
        strict: bool | None = None

        def __post_init__(self) -> None:  # the name rule holds only with a schema
            if self.schema is not None and self.name is not None and not (
                    contract.ADHOC_NAME_RE.fullmatch(self.name)):
                raise ValueError("name")

    class _MsJsonSchema(msgspec.Struct, tag_field="type", tag="json_schema"):
        json_schema: _MsSpec

    class _MsStreamOptions(msgspec.Struct):
        include_usage: bool | None = None

    class _MsMessage(msgspec.Struct):
        role: Literal["system", "developer", "user", "assistant", "tool"]
        content: str | list[dict[str, Any]] | None = None
        name: str | None = None
        tool_call_id: str | None = None

    class _MsRequest(msgspec.Struct, kw_only=True):
        model: Annotated[str, msgspec.Meta(min_length=1)]
        response_format: _MsText | _MsJsonObject | _MsJsonSchema | None = None
        stream: bool = False
        stream_options: _MsStreamOptions | None = None
        max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
        max_completion_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
        n: int | None = None

        def __post_init__(self) -> None:
            if self.stream_options is not None and not self.stream:
                raise ValueError("stream_options")

    class _MsLoose(_MsRequest, kw_only=True):
        messages: Annotated[list[Any], msgspec.Meta(min_length=1)]

    class _MsTyped(_MsRequest, kw_only=True):
        messages: Annotated[list[_MsMessage], msgspec.Meta(min_length=1)]


def _msgspec_cases() -> dict[str, Callable[[dict[str, Any]], Any]]:
    if msgspec is None:
        return {}
    return {
        "msgspec, the checks as today (`messages: list[Any]`)":
            lambda body: msgspec.convert(body, _MsLoose, strict=True),
        "msgspec, typed messages": lambda body: msgspec.convert(body, _MsTyped, strict=True),
    }


# ---------------------------------------------------------------------------- timing

def _loops(fn: Callable[[dict[str, Any]], Any], body: dict[str, Any]) -> int:
    """Calls that take about 10 ms: short enough that some rounds miss the other load."""
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < 0.01:
        fn(body)
        calls += 1
    return max(20, calls)


def _measure(cases: dict[str, Callable[[dict[str, Any]], Any]],
             bodies: tuple[dict[str, Any], ...]) -> dict[tuple[str, int], float]:
    """µs per call, the minimum over interleaved rounds (every case in every round, so a
    burst of other load on the shared machine hits them all alike)."""
    runs = [(name, i, fn, body, _loops(fn, body))
            for name, fn in cases.items() for i, body in enumerate(bodies)]
    best: dict[tuple[str, int], float] = {}
    for _ in range(ROUNDS):
        for name, i, fn, body, loops in runs:
            started = time.perf_counter()
            for _ in range(loops):
                fn(body)
            elapsed = (time.perf_counter() - started) / loops * 1e6
            best[name, i] = min(best.get((name, i), elapsed), elapsed)
    return best


def main() -> None:
    registry = SchemaRegistry.load(REPO / "schemas")
    settings = Settings(upstream_url="http://127.0.0.1:1", schemas_dir=REPO / "schemas")
    cases: dict[str, Callable[[dict[str, Any]], Any]] = {
        "gateway: `plan_chat` (checks + schema resolution + policy)":
            lambda body: plan_chat(body, registry, settings),
        "gateway: the field checks alone (`contract` rows, as `plan_chat` reads them)":
            _field_checks,
        "pydantic, the checks as today (`messages: list[Any]`)": PydanticLoose.model_validate,
        "pydantic, typed messages": PydanticTyped.model_validate,
        **_msgspec_cases(),
    }
    for fn in cases.values():  # every case accepts both bodies: they check the same thing
        fn(TYPICAL), fn(LARGE)
    best = _measure(cases, (TYPICAL, LARGE))
    rows = [(name, best[name, 0], best[name, 1]) for name in cases]
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                         capture_output=True, text=True).stdout.strip()
    import pydantic
    versions = f"pydantic {pydantic.VERSION}"
    versions += f", msgspec {msgspec.__version__}" if msgspec else ", msgspec not installed"
    lines = [
        "# The request contract: hand-written checks against a typed model",
        "",
        f"Generated by `.venv/bin/python bench/request_contract.py` on "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, git {git}, {versions}; warm, "
        f"best of {ROUNDS} interleaved rounds, µs per request body. Method in the script's "
        "docstring.",
        "",
        "| what runs | typical chat body (µs) | 200 KB body, 100 messages (µs) |",
        "|---|---:|---:|",
        *(f"| {name} | {typical:.2f} | {large:.2f} |" for name, typical, large in rows),
        "",
        "What was chosen and why: docs/architecture.md, *The request contract*.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
