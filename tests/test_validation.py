"""The output check on its own: what passes, what is repaired, what fails and how it is
named. Found by a review of the whole check; each case let a bad answer through as
"passed", changed its meaning, or turned into a 500."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.errors import InvalidSchemaError
from gateway.generation.shapes import chat_completion
from gateway.output.registry import SchemaFileError, SchemaRegistry, adhoc_schema
from gateway.output.validation import CheckFailure, StreamingEscaper, check_output
from tests import openai_spec
from tests.fake_upstream import FakeUpstream, Reply
from tests.sse import read_events

NAME = {"type": "object", "properties": {"name": {"type": "string", "pattern": "^[a-z]+$"}},
        "required": ["name"], "additionalProperties": False}


def schema(body: dict[str, Any]) -> Any:
    return adhoc_schema("t", body, "repair")


def test_a_pattern_anchor_does_not_let_a_trailing_newline_through() -> None:
    # Python's `re` matches `$` before a final newline; JSON Schema's patterns are ECMA-262.
    with pytest.raises(CheckFailure) as failure:
        check_output('{"name": "abc\\n"}', schema(NAME), repair=True)
    assert failure.value.pointer == "/name"
    assert check_output('{"name": "abc"}', schema(NAME), repair=True).outcome == "passed"


@pytest.mark.parametrize(("fmt", "bad", "good"), [
    ("date-time", "yesterday", "2026-11-28T10:00:00Z"),
    ("uri", "not a uri", "https://example.com/x"),
    ("email", "a@b@c", "dev@example.com"),
])
def test_formats_are_checked(fmt: str, bad: str, good: str) -> None:
    when = schema({"type": "object", "properties": {"v": {"type": "string", "format": fmt}}})
    with pytest.raises(CheckFailure) as failure:
        check_output(json.dumps({"v": bad}), when, repair=True)
    assert failure.value.pointer == "/v" and "format" in failure.value.constraint
    check_output(json.dumps({"v": good}), when, repair=True)


def test_a_raw_control_character_after_a_backslash_is_not_repaired() -> None:
    # `\<LF>` is no escape; "repairing" it gave a backslash and an `n` the model never wrote.
    text = '{"name": "x\\\ny"}'
    with pytest.raises(CheckFailure, match="not valid JSON"):
        check_output(text, None, repair=True)
    escaper = StreamingEscaper()  # the streamed answer fails the same way
    with pytest.raises(CheckFailure):
        check_output(escaper.feed(text[:11]) + escaper.feed(text[11:]), None, repair=False)
    # A raw control character elsewhere is still repaired, losslessly.
    repaired = check_output('{"name": "x\ny"}', None, repair=True)
    assert repaired.outcome == "repaired" and repaired.document == {"name": "x\ny"}


SHORT = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


@pytest.mark.parametrize("code", range(0x20), ids=lambda code: f"U+{code:04X}")
def test_every_raw_control_character_is_repaired_to_its_one_escape(code: int) -> None:
    # Those without a short escape (\x01, \x1f, ...) become \u00XX: never dropped, never
    # spelt another way. The same, whole and streamed (cut right before the character).
    char = chr(code)
    text = '{"name": "a' + char + 'b"}'
    escape = SHORT.get(char, f"\\u{code:04x}")
    escaper = StreamingEscaper()
    streamed = escaper.feed(text[:11]) + escaper.feed(text[11:])
    assert escaper.repaired and streamed == '{"name": "a' + escape + 'b"}'
    for answer, repair in ((text, True), (streamed, False)):
        checked = check_output(answer, None, repair=repair)
        assert checked.document == {"name": "a" + char + "b"}
        assert checked.text == '{"name": "a' + escape + 'b"}'
    assert check_output(text, None, repair=True).outcome == "repaired"


@pytest.mark.parametrize(("backslashes", "repairable"), [(1, False), (2, True), (3, False),
                                                       (4, True)])
def test_an_escaped_backslash_before_a_raw_control_character_is_repaired(
        backslashes: int, repairable: bool) -> None:
    # `\\<LF>` is an escaped backslash, then a raw newline: losslessly repaired, streamed or
    # not (the whole-text repair took the second backslash as escaping the newline).
    text = '{"name": "x' + "\\" * backslashes + '\ny"}'
    escaper = StreamingEscaper()
    streamed = escaper.feed(text[:10]) + escaper.feed(text[10:])
    if repairable:
        whole = check_output(text, None, repair=True)
        assert whole.outcome == "repaired"
        assert whole.document == {"name": "x" + "\\" * (backslashes // 2) + "\ny"}
        assert check_output(streamed, None, repair=False).document == whole.document
    else:
        for answer, repair in ((text, True), (streamed, False)):
            with pytest.raises(CheckFailure, match="not valid JSON"):
                check_output(answer, None, repair=repair)


@pytest.mark.parametrize("answer", ["[1, 2]", "42", '"text"', "null"])
def test_json_object_mode_wants_an_object(answer: str) -> None:
    with pytest.raises(CheckFailure, match="not a JSON object"):
        check_output(answer, None, repair=True)
    assert check_output('{"a": [1]}', None, repair=True).document == {"a": [1]}


def test_a_recursive_schema_and_a_failing_answer_are_a_check_failure() -> None:
    tree = {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#"}}},
            "additionalProperties": False}
    deep: dict[str, Any] = {}
    for _ in range(300):
        deep = {"kids": [deep]}
    deep_bad = {"kids": [deep, {"x": 1}]}
    with pytest.raises(CheckFailure):
        check_output(json.dumps(deep_bad), schema(tree), repair=True)
    with pytest.raises(CheckFailure):
        check_output("5", schema({"$ref": "#", "type": "string"}), repair=True)


def test_the_whole_document_is_pointed_at_with_an_empty_pointer() -> None:
    with pytest.raises(CheckFailure) as failure:  # RFC 6901: "/" is the key ""
        check_output("5", schema(NAME), repair=True)
    assert failure.value.pointer == ""
    with pytest.raises(CheckFailure) as failure:
        check_output('{"a/b": 1}', schema({"type": "object", "properties": {
            "a/b": {"type": "string"}}}), repair=True)
    assert failure.value.pointer == "/a~1b"
    assert failure.value.constraint == "type at schema#/properties/a~1b/type"
    with pytest.raises(CheckFailure) as failure:  # "~" first, so "~1" is not read as "/"
        check_output('{"a~/b": 1}', schema({"type": "object", "properties": {
            "a~/b": {"type": "string"}}}), repair=True)
    assert failure.value.pointer == "/a~0~1b"
    # What a client's error body carries about the failure, under these names.
    assert set(failure.value.error_extra()) == {
        "pointer", "constraint", "raw_output", "raw_output_truncated"}
    assert failure.value.error_extra()["constraint"] == failure.value.constraint


def test_an_answer_that_cannot_be_repaired_is_reported_as_the_model_wrote_it() -> None:
    # `\<LF>` cannot be repaired; the `\x01` elsewhere could, but a half-repaired text is
    # neither what the model wrote nor a valid answer.
    text = '{"a": "x\\\ny", "b": "\x01"}'
    with pytest.raises(CheckFailure) as failure:
        check_output(text, None, repair=True)
    assert failure.value.raw_output == text


@pytest.mark.parametrize("bad", [False, True, [], "x"])
def test_an_adhoc_schema_must_be_an_object(bad: Any) -> None:
    # `false` was sent to vLLM as `{}`, and every answer passed.
    with pytest.raises(InvalidSchemaError, match="must be a JSON object"):
        schema(bad)


def test_a_deeply_nested_adhoc_schema_is_a_400_not_a_500() -> None:
    nested: dict[str, Any] = {"type": "string"}
    for _ in range(200):
        nested = {"type": "object", "properties": {"a": nested}}
    with pytest.raises(InvalidSchemaError):
        schema(nested)


@pytest.mark.parametrize(("body", "why"), [
    ('"schema": {"type": "integer", "maximum": 100000000000000000000000}', "compiled"),
    ('"schema": ' + '{"type": "object", "properties": {"a": ' * 200 + "{}" + "}}" * 200,
     "nested too deeply"),
])
def test_a_schema_file_that_cannot_be_used_is_named(tmp_path: Path, body: str,
                                                    why: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"name": "broken", "version": 1, "description": "x", ' + body + "}")
    with pytest.raises(SchemaFileError, match=why) as error:
        SchemaRegistry.load(tmp_path)
    assert str(path) in str(error.value)


def test_names_with_a_trailing_newline_are_not_names(tmp_path: Path) -> None:
    registry = SchemaRegistry.load(Path(__file__).resolve().parent.parent / "schemas")
    assert "function_ir" in registry and "function_ir\n" not in registry
    (tmp_path / "x.json").write_text(json.dumps({
        "name": "x\n", "version": 1, "description": "x", "schema": {"type": "object"}}))
    with pytest.raises(SchemaFileError, match="'name' must match"):
        SchemaRegistry.load(tmp_path)


# -- the answer's shape


def test_logprobs_have_openais_shape() -> None:
    raw = {"id": "c", "created": 1, "choices": [{
        "index": 0, "message": {"role": "assistant", "content": "{}"}, "finish_reason": "stop",
        "logprobs": {"content": [{"token": "{", "logprob": -0.1, "bytes": [123],
                                  "top_logprobs": []}]}}]}
    shaped = chat_completion(raw, "m")
    assert shaped["choices"][0]["logprobs"]["refusal"] is None
    openai_spec.validate("CreateChatCompletionResponse", shaped)


BODY = {"model": "schema/function_ir", "messages": [{"role": "user", "content": "add"}]}


@pytest.mark.parametrize("reason", ["abort", "error"])
async def test_a_generation_vllm_aborted_is_an_upstream_error(
        client: httpx.AsyncClient, fake: FakeUpstream, reason: str) -> None:
    from tests.ir_samples import VALID

    fake.script(Reply(VALID, finish_reason=reason))
    response = await client.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 502 and reason in response.json()["error"]["message"]
    fake.script(Reply(VALID, finish_reason=reason))
    async with client.stream("POST", "/v1/chat/completions",
                             json={**BODY, "stream": True}) as streamed:
        events, _ = await read_events(streamed)
    assert events[-1] == "[DONE]" and events[-2]["error"]["type"] == "upstream_error"


async def test_vllms_repetition_stop_is_a_cut_off_answer(client: httpx.AsyncClient,
                                                        fake: FakeUpstream) -> None:
    fake.script(Reply("just some prose", finish_reason="repetition"))
    response = await client.post("/v1/chat/completions", json={**BODY, "model": "qwen-coder"})
    assert response.json()["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(("n", "status"), [(None, 200), (1, 200), (True, 400), (1.0, 400),
                                           (2, 400)])
async def test_n_for_structured_output(client: httpx.AsyncClient, fake: FakeUpstream,
                                       n: Any, status: int) -> None:
    from tests.ir_samples import VALID

    fake.script(Reply(VALID))
    response = await client.post("/v1/chat/completions", json={**BODY, "n": n})
    assert response.status_code == status, response.text


async def test_adhoc_schemas_share_one_metrics_label(client: httpx.AsyncClient,
                                                     fake: FakeUpstream) -> None:
    """Their names come from requests: a label each would grow the series without end."""
    for name in ("One", "Two"):
        fake.script(Reply('{"city": "Paris"}'))
        response = await client.post("/v1/chat/completions", json={
            "model": "qwen-coder", "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": {
                "type": "object", "properties": {"city": {"type": "string"}}}}}})
        assert response.headers["x-irgw-schema"] == f"{name} (ad-hoc)"
    metrics = (await client.get("/metrics")).text
    assert 'irgw_output_checks_total{outcome="passed",schema="(ad-hoc)"} 2.0' in metrics
    assert "One" not in metrics and "Two" not in metrics


def test_an_escaped_quote_does_not_end_the_string_whole_or_split_across_pieces() -> None:
    # `\"` inside a string keeps the scanner inside it, so the raw control after it is
    # still repaired; also when a stream's piece ends right after the backslash.
    text = '{"a": "say \\"hi\\"\x01\n"}'
    repaired = check_output(text, None, repair=True)
    assert repaired.outcome == "repaired" and repaired.document == {"a": 'say "hi"\x01\n'}
    for cut in range(1, len(text)):
        escaper = StreamingEscaper()
        joined = escaper.feed(text[:cut]) + escaper.feed(text[cut:])
        assert check_output(joined, None, repair=False).document == repaired.document, cut


def test_an_answer_that_is_one_string_is_repaired_from_its_first_quote() -> None:
    checked = check_output('"a\x01"', schema({"type": "string"}), repair=True)
    assert checked.outcome == "repaired" and checked.document == "a\x01"


def test_raw_output_is_flagged_truncated_only_past_the_limit() -> None:
    from gateway.output.validation import _MAX_RAW_OUTPUT

    for size, cut in ((_MAX_RAW_OUTPUT, False), (_MAX_RAW_OUTPUT + 1, True)):
        extra = CheckFailure("r", "", "c", "x" * size).error_extra()
        assert extra["raw_output_truncated"] is cut
        assert len(extra["raw_output"]) == _MAX_RAW_OUTPUT


def failure_of(text: str | None, body: Any = None, *, truncated: bool = False,
               repair: bool = True) -> CheckFailure:
    with pytest.raises(CheckFailure) as failure:
        check_output(text, None if body is None else schema(body), repair=repair,
                     truncated=truncated)
    return failure.value


def test_a_failure_reads_reason_where_and_constraint() -> None:
    # The 422's message quotes this: where in the answer only when it is a part of it.
    inside = failure_of('{"name": "A1"}', NAME)
    assert str(inside) == (f"{inside.reason} at /name "
                           "(pattern at schema#/properties/name/pattern)")
    assert "A1" in inside.reason
    whole = failure_of('{"name": ', NAME)
    assert str(whole) == f"{whole.reason} ({whole.constraint})"
    assert whole.reason.startswith("not valid JSON: ")
    assert whole.constraint == "RFC 8259 at character 9"
    not_object = failure_of("[1]")
    assert (not_object.pointer, not_object.constraint) == ("", "json_object")
    assert str(not_object) == "the answer is JSON but not a JSON object (json_object)"


def test_no_content_is_a_failure_and_a_cut_off_answer_says_so() -> None:
    empty = failure_of(None, NAME)
    assert (empty.reason, empty.pointer, empty.constraint, empty.raw_output) == (
        "the model returned no content", "", "content", "")
    assert not empty.truncated and failure_of(None, NAME, truncated=True).truncated
    cut = failure_of('{"name": "ab', NAME, truncated=True)
    assert cut.truncated and cut.constraint == "max_tokens" and cut.pointer == ""
    assert cut.reason.startswith("the answer was cut off by max_tokens before the JSON "
                                 "document was complete (not valid JSON: ")
    assert cut.raw_output == '{"name": "ab'
    # A complete answer that fails its schema at a cap keeps its pointer.
    cut = failure_of('{"name": "A\x01"}', NAME, truncated=True)
    assert cut.truncated and cut.pointer == "/name"
    assert cut.raw_output == '{"name": "A\\u0001"}'  # what was checked: the repaired text
    assert not failure_of('{"name": "A1"}', NAME).truncated


def test_a_long_explanation_is_cut_at_its_bound() -> None:
    from gateway.output.validation import _MAX_REASON

    bound = {"type": "string", "maxLength": 3}
    for size in range(_MAX_REASON - 40, _MAX_REASON + 5):
        reason = failure_of(json.dumps("x" * size), bound).reason
        if reason.endswith("..."):
            assert len(reason) == _MAX_REASON + 3
            break
        assert len(reason) <= _MAX_REASON
    else:
        raise AssertionError("no explanation reached the bound")
    # At exactly the bound, a reason is given whole.
    whole = [failure_of(json.dumps("x" * size), bound).reason
             for size in range(_MAX_REASON - 40, _MAX_REASON + 5)]
    assert any(len(r) == _MAX_REASON and not r.endswith("...") for r in whole)


def test_a_top_level_number_cut_by_max_tokens_is_truncated_not_passed() -> None:
    # "12" of "1234" is valid JSON and a valid integer: only finish_reason tells it was cut.
    cut = failure_of("12", {"type": "integer"}, truncated=True)
    assert cut.truncated and cut.constraint == "max_tokens"
    assert failure_of("-0.5", {"type": "number"}, truncated=True).truncated
    # Ended by a space, or not a number, or not cut: the answer stands.
    assert check_output("12 ", schema({"type": "integer"}), repair=True,
                        truncated=True).document == 12
    assert check_output("true", schema({"type": "boolean"}), repair=True,
                        truncated=True).document is True
    assert check_output("12", schema({"type": "integer"}), repair=True).document == 12


def test_an_answer_with_a_name_twice_in_one_object_is_refused() -> None:
    # orjson keeps the last value: `{"name": "class", "name": "x"}` was checked as "x",
    # while a reader that keeps the first sees "class" (the IR's identifier check refuses it).
    ident = {"type": "object", "properties": {"name": {"type": "string",
                                                       "pattern": "^[a-z]+$"}}}
    for text in ('{"name": "class", "name": "x"}', '{"a": {"b": 1, "b": 2}}',
                 '[{"k": 1, "k": 1}]'):
        failure = failure_of(text, ident if text.startswith('{"name"') else {})
        assert failure.constraint == "unique member names"
    assert "'name' twice" in failure_of('{"name": "a", "name": "b"}', ident).reason
    # Colons and quotes inside strings are not members; the same name in two objects is fine.
    for text in ('{"a": "x:y", "b": [{"c": "\\":"}]}', '[{"a": 1}, {"a": 2}]',
                 '{"a\\"": 1, "b": ":"}'):
        assert check_output(text, schema({}), repair=True).document == json.loads(text)


def test_a_refused_repeat_or_cut_number_says_where_and_keeps_the_answer() -> None:
    # What the 422 carries for debugging: the whole answer, the document as the place.
    text = '{"a": 1, "a": 2}'
    twice = failure_of(text, {})
    assert (twice.pointer, twice.constraint, twice.raw_output) == ("", "unique member names",
                                                                   text)
    cut = failure_of("1234", {"type": "integer"}, truncated=True)
    assert (cut.pointer, cut.constraint, cut.raw_output) == ("", "max_tokens", "1234")
    assert "more digits could follow" in cut.reason
    # Nested past what Python's reader takes (orjson reads 1024 levels), with a colon in a
    # string so the quick count cannot clear it: refused as uncheckable, not passed.
    deep = '{"note": "a:b", "x": ' + "[" * 1010 + "]" * 1010 + "}"
    uncheckable = failure_of(deep, {})
    assert uncheckable.constraint == "unique member names" and uncheckable.pointer == ""
    assert uncheckable.raw_output == deep
    assert uncheckable.reason.startswith("the answer cannot be checked for repeated names")
