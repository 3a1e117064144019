"""The constraint each vLLM release is sent (gateway/upstream/dialects.py): a field a
release does not read is a 200 with unconstrained output, so each range is pinned here."""

from __future__ import annotations

import orjson
import pytest

from gateway.output.registry import adhoc_schema
from gateway.upstream.dialects import UnsupportedVersionError, dialect_for

SCHEMA = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}},
          "required": ["b", "a"], "additionalProperties": False}


@pytest.mark.parametrize(("version", "name", "field"), [
    ("0.9.2", "vllm-0.9", "guided_json"),
    ("0.10.1", "vllm-0.9", "guided_json"),
    ("0.10.2", "vllm-0.10", "structured_outputs"),
    ("0.11.9", "vllm-0.10", "structured_outputs"),
    ("0.12.0", "vllm-0.12+", "structured_outputs"),
    ("0.32.0", "vllm-0.12+", "structured_outputs"),
    ("v0.34.0rc1", "vllm-0.12+", "structured_outputs"),
])
def test_each_release_gets_the_field_it_reads(version: str, name: str, field: str) -> None:
    dialect = dialect_for(version)
    assert (dialect.name, dialect.completions_field) == (name, field)
    schema = adhoc_schema("my schema!", SCHEMA, "repair")
    completions = orjson.loads(orjson.dumps(dialect.completions_constraint(schema)))
    if field == "guided_json":
        assert completions == {"guided_json": SCHEMA}
    else:  # guided_* is silently ignored from 0.12 on: never sent there
        assert completions == {"structured_outputs": {"json": SCHEMA}}
    chat = orjson.loads(orjson.dumps(dialect.chat_constraint(schema)))
    assert chat == {"response_format": {"type": "json_schema", "json_schema": {
        "name": "my_schema_", "schema": SCHEMA, "strict": True}}}
    # Property order is generation order: the schema text keeps the file's order.
    assert orjson.dumps(dialect.chat_constraint(schema)).index(b'"b"') < \
        orjson.dumps(dialect.chat_constraint(schema)).index(b'"a"')


def test_json_object_on_completions() -> None:
    assert dialect_for("0.10.0").completions_json_object() == {"guided_json": {"type": "object"}}
    assert dialect_for("0.32.0").completions_json_object() == {
        "structured_outputs": {"json_object": True}}


@pytest.mark.parametrize("version", ["0.9.1", "0.8.5", "garbage", ""])
def test_releases_it_does_not_know_are_refused(version: str) -> None:
    with pytest.raises(UnsupportedVersionError):
        dialect_for(version)


@pytest.mark.parametrize("version", ["0.10.0", "0.11.0", "0.32.0"])
def test_vllm_is_sent_the_grammar_form_not_what_it_refuses(version: str) -> None:
    # vLLM 0.32 refuses to compile `uniqueItems` (a 400 for the whole request): the grammar
    # drops it, the gateway still checks the answer against the client's schema.
    client = {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}}}
    schema = adhoc_schema("tagged", client, "repair")
    dialect = dialect_for(version)
    for constraint in (dialect.chat_constraint(schema), dialect.completions_constraint(schema)):
        text = orjson.dumps(constraint)
        assert b"uniqueItems" not in text and b'"tags"' in text
    assert schema.schema == client  # what answers are checked against


@pytest.mark.parametrize(("name", "sent"), [("a" * 80, "a" * 64), ("f\u00fcr.v2", "f_r_v2")])
def test_the_schemas_name_is_sent_as_openai_allows_it(name: str, sent: str) -> None:
    # OpenAI's rule for json_schema.name: 1-64 characters of a-z, A-Z, 0-9, '_' and '-'
    constraint = dialect_for("0.32.0").chat_constraint(adhoc_schema(name, SCHEMA, "repair"))
    assert constraint["response_format"]["json_schema"]["name"] == sent
