"""The request contract's checks built in the test, not at import: `accepts` turns each
JSON Schema fragment the contract uses into the check a request field gets, and `Field`
puts that check, its 400 and its `param` together.

tests/test_contract.py checks the contract's own rows, which are built when the module is
imported; these build checks and rows afresh, so that a change to how they are built shows
(the rows a future change adds go through the same code).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from gateway.errors import InvalidRequestError
from gateway.generation import contract
from gateway.generation.contract import Field, accepts
from gateway.openapi_doc.headers import DOCUMENT_PATH

PROBES: list[Any] = [
    None, True, False, 0, 1, 2, -1, 1.0, 1.5, "", "x", "ab", "abcd", "text", "has space",
    "ab\n", [], [1], [1, 2], {}, {"a": 1},
]
# Every keyword `accepts` knows, with and without `type`, plus the contract's own fragments.
FRAGMENTS: list[dict[str, Any]] = [
    {},
    {"description": "annotations are not checks", "title": "t"},
    {"type": "boolean"},
    {"type": "integer"},
    {"type": "string"},
    {"type": "array"},
    {"type": "object", "description": "an object"},
    {"enum": ["text", "x"]},
    {"type": "string", "enum": ["text", "ab"]},
    {"type": "integer", "enum": [1, 2]},
    {"type": "integer", "minimum": 1},
    {"type": "integer", "minimum": 0, "examples": [3]},
    {"type": "string", "minLength": 1},
    {"type": "string", "minLength": 2, "description": "two or more"},
    {"type": "array", "minItems": 1},
    {"type": "array", "minItems": 2},
    {"type": "integer", "const": 1},
    {"type": "string", "const": "x"},
    {"type": "string", "pattern": "^[a-z]{1,2}$"},
    {"type": "string", "pattern": contract.ADHOC_NAME_PATTERN},
    *(value.enforced for value in vars(contract).values() if isinstance(value, Field)),
]


def _disagrees(schema: dict[str, Any], value: Any) -> bool:
    """Where JSON Schema cannot say what the gateway checks (see tests/test_contract.py):
    `1.0` as an integer, and `$` before a final newline."""
    return (isinstance(value, float) and value.is_integer() and schema.get("type") == "integer"
            ) or ("pattern" in schema and isinstance(value, str) and value.endswith("\n"))


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=json.dumps)
def test_a_fragments_check_accepts_what_json_schema_accepts(fragment: dict[str, Any]) -> None:
    check = accepts(fragment)
    validator = Draft202012Validator(fragment)
    for value in PROBES:
        expected = validator.is_valid(value) and not _disagrees(fragment, value)
        assert check(value) is expected, (fragment, value)


def test_the_checks_read_the_clients_types() -> None:
    """`true` is no integer and `1.0` is no integer: the gateway reads what the client wrote."""
    assert not accepts({"type": "integer", "minimum": 1})(True)
    assert not accepts({"type": "integer", "minimum": 1})(1.0)
    assert not accepts({"type": "integer", "const": 1})(1.0)
    assert not accepts({"type": "integer", "enum": [1]})(True)
    assert not accepts({"type": "string", "pattern": "^x$"})("x\n")


@pytest.mark.parametrize(("fragment", "says"), [
    ({"type": "integer", "minimum": 1, "maximum": 3}, "one keyword besides `type`"),
    ({"minimum": 1}, "'minimum' needs a `type`"),
    ({"type": "string", "pattern": "^a"}, "anchored: '^a'"),
    ({"type": "string", "pattern": "a$"}, "anchored: 'a$'"),
    ({"type": "string", "format": "uri"}, "does not check 'format'"),
])
def test_a_fragment_the_checks_cannot_say_is_refused_naming_why(fragment: dict[str, Any],
                                                                 says: str) -> None:
    with pytest.raises(ValueError) as info:
        accepts(fragment)
    assert says in str(info.value)


def test_a_row_checks_its_fragment_and_answers_its_400() -> None:
    row = Field("count", {"type": "integer", "minimum": 1}, "'count' must be a positive integer",
                documented={"description": "How many."})
    assert row.param == "count"  # the error names the field itself by default
    assert row.read({"count": 3}) == 3
    assert row.read({}) is None and row.read({"count": None}) is None  # unset
    assert row.validate(2) == 2
    for body in ({"count": 0}, {"count": "3"}, {"count": True}):
        with pytest.raises(InvalidRequestError) as info:
            row.read(body)
        assert info.value.status_code == 400
        assert info.value.param == "count"
        assert info.value.message == "'count' must be a positive integer"
    with pytest.raises(InvalidRequestError):
        row.validate(0)


def test_a_nested_rows_error_names_its_path() -> None:
    row = Field("type", {"enum": ["a", "b"]}, "type must be 'a' or 'b'", required=True,
                param="outer.type")
    assert row.param == "outer.type"
    assert row.read({"type": "b"}) == "b"
    for body in ({}, {"type": None}, {"type": "c"}):
        with pytest.raises(InvalidRequestError) as info:
            row.read(body)
        assert info.value.param == "outer.type"


def test_null_is_checked_when_it_is_not_unset() -> None:
    row = Field("flag", {"type": "boolean"}, "'flag' must be a boolean", null_is_unset=False)
    assert row.read({}) is None
    assert row.read({"flag": False}) is False
    with pytest.raises(InvalidRequestError):
        row.read({"flag": None})


def test_a_row_may_document_more_than_it_enforces_but_not_restate_it() -> None:
    row = Field("x", {"type": "string"}, "'x' must be a string",
                documented={"description": "d", "maxLength": 9})
    assert row.schema() == {"description": "d",
                            "anyOf": [{"type": "string", "maxLength": 9}, {"type": "null"}]}
    with pytest.raises(ValueError, match=r"\['type'\] both enforced and documented"):
        Field("x", {"type": "string"}, "'x'", documented={"type": "integer"})


def test_the_contracts_references_point_into_the_document() -> None:
    ref = contract._ref("ChatMessage")
    assert ref == {"$ref": "#/components/schemas/ChatMessage"}
    doc = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
    assert "ChatMessage" in doc["components"]["schemas"]
