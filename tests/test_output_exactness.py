"""The output check under hostile answers (issue 17: 1, 4, 9, 10): explaining a failure runs
no backtracking regex, repair is linear, integers past 64 bits are checked exactly, and a
checked stream is one choice."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import httpx
import pytest

from gateway.output.registry import adhoc_schema
from gateway.output.validation import CheckFailure, StreamingEscaper, check_output
from tests.conftest import REPO
from tests.fake_upstream import FakeUpstream, RawStream, Reply
from tests.sse import read_events

CATASTROPHIC = "^(a+)+$"
EVIL = "a" * 30 + "!"  # Python's `re` needs ~2**30 steps to give up on it (seconds per a)
# Inside `not` (xgrammar does not enforce it): evaluated by Python's jsonschema while it
# looked for the best explanation of another failure (a missing property).
IN_NOT = {"type": "object", "properties": {"s": {"not": {"pattern": CATASTROPHIC}}},
          "required": ["s", "t"]}


def adhoc_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"model": "qwen-coder", "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "evil", "schema": schema}}}


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("schema", "answer"), [
    ({"pattern": CATASTROPHIC}, json.dumps(EVIL)),
    (IN_NOT, json.dumps({"s": EVIL})),
])
async def test_a_catastrophic_pattern_is_explained_without_stalling_the_loop(
        client: httpx.AsyncClient, fake: FakeUpstream, schema: dict[str, Any],
        answer: str) -> None:
    fake.script(Reply(answer))
    # A generous bound, three orders of magnitude above the fixed path: the backtracking
    # engine held the loop for longer than this, and neither request could finish.
    async with asyncio.timeout(20):
        checked, health = await asyncio.gather(
            client.post("/v1/chat/completions", json=adhoc_body(schema)),
            client.get("/healthz"))
    assert checked.status_code == 422, checked.text
    assert checked.json()["error"]["code"] == "output_validation_failed"
    assert health.status_code == 200


def test_the_gateway_never_imports_python_jsonschema() -> None:
    # Deterministic: with Python's jsonschema unimportable, the gateway still loads, and
    # explains both failures (its backtracking `re` is out of the picture for good).
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["jsonschema"] = None
        import gateway.app
        from gateway.output.registry import adhoc_schema
        from gateway.output.validation import CheckFailure, check_output
        for schema, answer in ((({{"pattern": {CATASTROPHIC!r}}}), json.dumps({EVIL!r})),
                               ({IN_NOT!r}, json.dumps({{"s": {EVIL!r}}}))):
            try:
                check_output(answer, adhoc_schema("t", schema, "repair"), repair=True)
            except CheckFailure as failure:
                print(failure.constraint)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["pattern at schema#/pattern",
                                           "required at schema#/required"]


def test_explanations_are_bounded() -> None:
    # jsonschema-rs quotes the failing value; a megabyte of it is not an error message.
    with pytest.raises(CheckFailure) as failure:
        check_output(json.dumps("x" * 100_000), adhoc_schema("t", {"maxLength": 3}, "repair"),
                     repair=True)
    assert "maxLength" in failure.value.constraint
    assert len(failure.value.reason) < 2000


# -- 4: repair is linear


@pytest.mark.timeout(120)
def test_repairing_a_megabyte_of_escaped_quotes_is_linear() -> None:
    # A truncated answer full of `\"`: the whole-text repair rescanned the unterminated
    # string from every quote in it (3.1 s for 32k characters, ~50 minutes for this one).
    body = '\\"' * 500_000
    text = '{"a": "' + body + '\n'  # a raw newline to repair, and cut off
    with pytest.raises(CheckFailure) as failure:
        check_output(text, None, repair=True, truncated=True)
    assert failure.value.truncated
    assert failure.value.raw_output == '{"a": "' + body + "\\n"  # repaired, then cut off
    # Counted work: one step per quote, backslash or control character, whole or streamed.
    escaper = StreamingEscaper()
    streamed = "".join(escaper.feed(text[i:i + 4096]) for i in range(0, len(text), 4096))
    assert streamed == failure.value.raw_output
    assert escaper.scanned == text.count('"') + text.count("\\") + 1


def test_a_complete_answer_full_of_escapes_is_repaired_and_exact() -> None:
    value = 'say \\"hi\\"\t' * 50_000
    checked = check_output('{"a": "' + value + '"}', None, repair=True)
    assert checked.outcome == "repaired"
    assert checked.document == {"a": json.loads('"' + value.replace("\t", "\\t") + '"')}


# -- 9: integers past 64 bits


@pytest.mark.parametrize(("answer", "passes"), [
    ('{"n": 18446744073709551617}', False),  # 2**64 + 1: odd (orjson read 2**64 as a float)
    ('{"n": 18446744073709551618}', True),
    ('{"n": -9223372036854775809}', False),
    ('{"n": 100000000000000000000000000000000000001}', False),
    ('{"n": ' + "7" * 300 + "}", False),  # past 64 bits, short of orjson's infinity
    ('{"n": 9223372036854775806}', True),  # 19 digits, within 64 bits: orjson's own int
    ('{"n": 18446744073709551614, "s": "123456789012345678901"}', True),
])
def test_integers_past_64_bits_are_checked_exactly(answer: str, passes: bool) -> None:
    even = adhoc_schema("t", {"type": "object", "properties": {
        "n": {"type": "integer", "multipleOf": 2}}}, "repair")
    if passes:
        assert check_output(answer, even, repair=True).outcome == "passed"
    else:
        with pytest.raises(CheckFailure) as failure:
            check_output(answer, even, repair=True)
        assert failure.value.pointer == "/n" and "multipleOf" in failure.value.constraint


async def test_a_big_integer_fails_its_check_through_the_gateway(
        client: httpx.AsyncClient, fake: FakeUpstream) -> None:
    fake.script(Reply('{"n": 18446744073709551617}'))
    response = await client.post("/v1/chat/completions", json=adhoc_body(
        {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 2}}}))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "output_validation_failed"
    assert response.json()["error"]["pointer"] == "/n"


# -- 10: a checked stream is one choice


def _chunk(index: int, content: str | None, finish: str | None = None) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


async def test_a_stream_split_across_two_choices_is_an_upstream_error(
        client: httpx.AsyncClient, fake: FakeUpstream) -> None:
    # Choice 0 says `{"name":`, choice 1 says `"x"}`: joined, a valid answer.
    fake.script(RawStream([_chunk(0, '{"name":'), _chunk(1, '"x"}'), _chunk(0, None, "stop"),
                           _chunk(1, None, "stop")]))
    body = {**adhoc_body({"type": "object", "properties": {"name": {"type": "string"}},
                          "required": ["name"]}), "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        events, _ = await read_events(response)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "upstream_error"
    assert "index 1" in events[-2]["error"]["message"]


async def test_an_answer_with_two_choices_is_an_upstream_error(
        client: httpx.AsyncClient, fake: FakeUpstream) -> None:
    # Not streamed, the second choice reached the client unchecked.
    fake.script(Reply('{"name": "x"}', extra={"choices": [
        {"index": 0, "message": {"content": '{"name": "x"}'}, "finish_reason": "stop"},
        {"index": 1, "message": {"content": "not JSON"}, "finish_reason": "stop"}]}))
    response = await client.post("/v1/chat/completions", json=adhoc_body(
        {"type": "object", "properties": {"name": {"type": "string"}}}))
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"


def test_an_integer_too_long_to_read_exactly_is_a_check_failure_not_a_500() -> None:
    # Python reads at most 4300 digits, but orjson already refuses a number past a double's
    # range (its parse fails first): the answer fails, never a 500. The exact re-read's own
    # failure is the next test.
    schema = adhoc_schema("t", {"type": "object"}, "repair")
    answer = '{"n": ' + "7" * 5000 + "}"
    with pytest.raises(CheckFailure) as failure:
        check_output(answer, schema, repair=True)
    assert failure.value.pointer == "" and failure.value.raw_output == answer
    assert failure.value.constraint and failure.value.reason


def test_a_long_integer_nested_past_pythons_recursion_limit_is_a_check_failure() -> None:
    # orjson reads 1,024 levels; the exact re-read (for the 19-digit integer) cannot. The
    # answer cannot be checked exactly, so it fails, saying why; it is never a pass or a 500.
    schema = adhoc_schema("t", {"type": "array"}, "repair")
    answer = "[" * 1_020 + "12345678901234567890" + "]" * 1_020
    with pytest.raises(CheckFailure) as failure:
        check_output(answer, schema, repair=True)
    assert failure.value.reason.startswith(
        "the answer has a number that cannot be checked exactly: maximum recursion depth")
    assert failure.value.constraint == "exact integers"
    assert failure.value.pointer == "" and failure.value.raw_output == answer
    # The same number less deeply nested is read exactly and passes.
    check_output("[" * 10 + "12345678901234567890" + "]" * 10, schema, repair=True)
