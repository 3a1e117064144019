"""What vLLM's xgrammar backend gets for a schema, and every keyword it will not enforce."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import InvalidSchemaError
from gateway.output.engine_regex import split_large_repeats
from gateway.output.engine_rules import analyse, vllm_refuses
from gateway.output.registry import SchemaFileError, SchemaRegistry, adhoc_schema
from gateway.output.validation import CheckFailure, check_output


@pytest.mark.parametrize(("pattern", "sent"), [
    ("^[0-9a-zA-Z_-]{1,255}$", "^[0-9a-zA-Z_-]{1,128}[0-9a-zA-Z_-]{0,127}$"),
    ("a{129}", "a{128}a{1}"),
    ("a{0,129}", "a{0,128}a{0,1}"),
    ("a{129,}", "a{128}a{1,}"),
    ("a{300,}", "a{128}a{128}a{44,}"),
    ("(ab|c){1,300}?x", "(ab|c){1,128}(ab|c){0,128}(ab|c){0,44}x"),
    ("(?:x\\d){200}", "(?:x\\d){128}(?:x\\d){72}"),
    ("[{]{130}", "[{]{128}[{]{2}"),
    ("\\u0041{130}", "\\u0041{128}\\u0041{2}"),
    ("^(a(b{200})){2}$", "^(a(b{128}b{72})){2}$"),
    ("^a{1,512}$", "^a{1,128}a{0,128}a{0,128}a{0,128}$"),
])
def test_repeats_above_128_are_split_into_pieces_that_match_the_same_strings(
    pattern: str, sent: str,
) -> None:
    rewritten, found = split_large_repeats(pattern) or ("", [])
    assert rewritten == sent and found
    # The same language: Python's `re` agrees on every length around the bounds.
    for n in (0, 1, 2, 44, 127, 128, 129, 130, 200, 255, 256, 300, 400, 512, 513):
        for text in ("a" * n, "b" * n, "{" * n, "A" * n, "ab" * n, "x1" * n, "c" * n + "x"):
            assert bool(re.fullmatch(pattern, text)) == bool(re.fullmatch(sent, text)), (
                pattern, n, text[:3])


@pytest.mark.parametrize("pattern", [
    "a{1,128}", "a{128,}", "a{128}", "\\{300}", "a{", "a{3,1}", "(?=a){300}", "[a-z]+",
    "^a{1,128}b{1,128}$",
])
def test_what_xgrammar_compiles_or_refuses_by_itself_is_left_alone(pattern: str) -> None:
    assert split_large_repeats(pattern) == (pattern, [])


def test_a_repeat_too_large_to_split_is_left_out_of_the_grammar_and_named() -> None:
    assert split_large_repeats("\\d{0,600}") is None
    schema = {"type": "object", "properties": {"n": {"type": "string", "pattern": "^\\d{600}$",
                                                     "maxLength": 600}}}
    view = analyse(schema)
    assert view.grammar["properties"]["n"] == {"type": "string"}
    assert any("/properties/n: pattern '^\\\\d{600}$'" in w and "not sent" in w
               for w in view.unenforced)


# -- point 2: every keyword dropped for the grammar, or ignored by it, is named

@pytest.mark.parametrize(("node", "warning"), [
    ({"type": "object", "properties": {"a": {}}, "propertyNames": {"pattern": "^[a-z]+$"}},
     "/properties/v: propertyNames beside properties"),
    ({"type": "object", "patternProperties": {"^x": {}}, "propertyNames": {"maxLength": 3}},
     "/properties/v: propertyNames beside patternProperties"),
    ({"type": "object", "unevaluatedProperties": False, "propertyNames": {"maxLength": 3}},
     "/properties/v: propertyNames beside unevaluatedProperties"),
    ({"type": "object", "properties": {"a": {}}, "patternProperties": {"^x": {}}},
     "/properties/v: patternProperties beside properties"),
    ({"type": "object", "patternProperties": {"^x": {}, "^y": {}}},
     "/properties/v: patternProperties with several patterns"),
    ({"type": "object", "dependencies": {"a": ["b"]}}, "/properties/v: dependencies"),
])
def test_adhoc_warnings_name_every_keyword_left_to_the_gateway(node: dict[str, Any],
                                                               warning: str) -> None:
    schema = {"type": "object", "properties": {"v": node}}
    adhoc = adhoc_schema("Holes", schema, "repair")
    assert warning in adhoc.unenforced
    assert not vllm_refuses(json.loads(adhoc.schema_json))


def test_dependencies_is_still_checked_in_the_answer() -> None:
    # Draft 2020-12 dropped `dependencies`; Python's jsonschema ignores it there, but
    # jsonschema-rs (which decides) enforces it: an answer that breaks it is refused.
    schema = {"type": "object", "dependencies": {"card": ["billing"],
                                                 "vip": {"required": ["tier"]}}}
    adhoc = adhoc_schema("Deps", schema, "repair")
    check_output('{"card": 1, "billing": 2}', adhoc, repair=False)
    for answer in ('{"card": 1}', '{"vip": true}'):
        with pytest.raises(CheckFailure, match="required"):
            check_output(answer, adhoc, repair=False)


def test_constants_and_annotations_keep_their_meaning() -> None:
    # vLLM's check reads every value as a schema: an annotation that looks like a refused
    # schema is left out (xgrammar never reads it); a constant cannot be, so a clear 400.
    annotated = {"type": "object", "default": {"type": "integer", "multipleOf": 2},
                 "properties": {"a": {"type": "integer"}}}
    sent = json.loads(adhoc_schema("A", annotated, "repair").schema_json)
    assert "default" not in sent and sent["properties"] == annotated["properties"]
    constant = {"type": "object", "properties": {"a": {"const": {"type": "integer",
                                                                 "multipleOf": 2}}}}
    with pytest.raises(InvalidSchemaError, match="/properties/a/const"):
        adhoc_schema("C", constant, "repair")


# -- registered schemas

def _schema_file(directory: Path, pattern: str) -> Path:
    path = directory / "ids.v1.json"
    path.write_text(json.dumps({
        "name": "ids", "version": 1, "description": "an id",
        "schema": {"type": "object", "properties": {"id": {"type": "string",
                                                           "pattern": pattern}},
                   "required": ["id"], "additionalProperties": False}}))
    return path


def test_a_registered_wide_repeat_loads_split_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    path = _schema_file(tmp_path, "^[a-z]{1,255}$")
    with caplog.at_level(logging.WARNING, logger="gateway.output.registry"):
        item = SchemaRegistry.load(tmp_path).resolve("ids")
    sent = json.loads(item.schema_json)
    assert sent["properties"]["id"]["pattern"] == "^[a-z]{1,128}[a-z]{0,127}$"
    assert item.schema["properties"]["id"]["pattern"] == "^[a-z]{1,255}$"
    assert any("{1,255}" in note for note in item.unenforced)
    assert str(path) in caplog.text and "{1,255}" in caplog.text


def test_a_registered_repeat_too_large_to_split_stops_startup_naming_file_and_pattern(
    tmp_path: Path,
) -> None:
    path = _schema_file(tmp_path, "^[a-z]{1,2000}$")
    with pytest.raises(SchemaFileError) as info:
        SchemaRegistry.load(tmp_path)
    assert str(info.value).startswith(str(path))
    assert "'^[a-z]{1,2000}$'" in str(info.value)


@pytest.mark.parametrize("node", [
    {"type": "object", "properties": {"a": {}}, "propertyNames": {"pattern": "^a"}},
    {"type": "object", "dependencies": {"a": ["b"]}},
])
def test_registered_schemas_may_not_rely_on_keywords_the_engine_drops(
    tmp_path: Path, node: dict[str, Any],
) -> None:
    (tmp_path / "x.v1.json").write_text(json.dumps({
        "name": "x", "version": 1, "description": "x", "schema": node}))
    with pytest.raises(SchemaFileError, match="does not enforce"):
        SchemaRegistry.load(tmp_path)
