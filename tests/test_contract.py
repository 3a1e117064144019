"""The request contract: the gateway's checks and the OpenAPI document cannot disagree.

Both come from the rows of `gateway/generation/contract.py`. These tests hold the pieces
together: each row's check is its JSON Schema fragment; every field the gateway checks is in
the document, which refuses every value the gateway refuses (and, for a field the gateway
checks whole, accepts every value it accepts); and every field planning reads has a row.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.errors import InvalidRequestError
from gateway.generation import contract
from gateway.generation.budget import sequences_of
from gateway.generation.contract import Field, accepts
from gateway.generation.planning import plan_chat, plan_completion
from gateway.openapi_doc.headers import DOCUMENT_PATH
from gateway.openapi_doc.requests import ROUTE_FIELDS
from gateway.output.registry import SchemaRegistry
from gateway.settings import Settings
from tests.conftest import REPO

SETTINGS = Settings(auth_enabled=False, schemas_dir=REPO / "schemas")
REGISTRY = SchemaRegistry.load(REPO / "schemas")
DOC_URI = "urn:ir-gateway:openapi"
PROBES: list[Any] = [
    None, True, False, 0, 1, 2, -1, 1.0, 1.5, "", "x", "function_ir", "has space", "x" * 65,
    "Point\n", "text", "json_object", "json_schema", [], [1], [{}], {}, {"a": 1},
]
FIELDS = [value for value in vars(contract).values() if isinstance(value, Field)] + [
    *contract.JSON_SCHEMA_FIELDS, *contract.SAMPLING]
ENFORCED = [field for field in FIELDS if field.enforced]
BASES = {"ChatCompletionRequest": {"model": "m", "messages": [{"role": "user", "content": "x"}]},
         "CompletionRequest": {"model": "m", "prompt": "x"}}


def _json_schema_disagrees(schema: dict[str, Any], value: Any) -> bool:
    """Where JSON Schema cannot say what the gateway checks: `1.0` is an integer to it (the
    gateway reads the client's text: a float), and Python's `re` lets `$` match before a
    final newline (ECMA-262's does not, nor does the gateway's fullmatch)."""
    integral_float = isinstance(value, float) and value.is_integer()
    return (integral_float and schema.get("type") == "integer") or (
        "pattern" in schema and isinstance(value, str) and value.endswith("\n"))


@pytest.mark.parametrize("field", ENFORCED, ids=lambda f: f"{f.param}:{f.message[:20]}")
def test_each_check_is_its_json_schema_fragment(field: Field) -> None:
    validator = Draft202012Validator(field.enforced)
    for value in PROBES:
        expected = validator.is_valid(value) and not _json_schema_disagrees(field.enforced, value)
        assert field.check(value) is expected, (field.name, value)


def test_the_checks_refuse_what_they_cannot_say() -> None:
    for schema in ({"type": "integer", "minimum": 1, "maximum": 3}, {"minimum": 1},
                   {"type": "string", "format": "uri"}, {"type": "string", "pattern": "^a"}):
        with pytest.raises(ValueError):
            accepts(schema)
    with pytest.raises(ValueError, match="both enforced and documented"):
        Field("x", {"type": "string"}, "'x'", documented={"type": "integer"})
    with pytest.raises(ValueError, match="error message"):
        Field("x", {"type": "string"})


# ---------------------------------------------------------------------------- document


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
    return loaded


def _document_accepts(doc: dict[str, Any], component: str, body: Any) -> bool:
    registry = Registry().with_resource(DOC_URI, Resource.from_contents(doc, DRAFT202012))
    validator = Draft202012Validator({"$ref": f"{DOC_URI}#/components/schemas/{component}"},
                                     registry=registry)
    return validator.is_valid(body)


def _gateway_refuses(component: str, body: dict[str, Any]) -> str | None:
    """The param of the 400 that planning and the budget answer, or None."""
    plan = plan_chat if component == "ChatCompletionRequest" else plan_completion
    try:
        plan(body, REGISTRY, SETTINGS)
        sequences_of(body)
    except InvalidRequestError as exc:
        return exc.param or ""
    return None


def test_every_checked_field_is_documented_as_checked(doc: dict[str, Any]) -> None:
    documented = {f.name for fields in ROUTE_FIELDS.values() for f in fields}
    top_level = [f for f in ENFORCED if "." not in f.param and f not in (
        contract.BODY, contract.ONE_CHOICE)]  # the body itself; n=1 applies to structured
    assert {f.name for f in top_level} <= documented
    for component, fields in ROUTE_FIELDS.items():
        properties = doc["components"]["schemas"][component]["properties"]
        assert list(properties) == [f.name for f in fields], component
        for field in fields:
            assert properties[field.name] == field.schema(), (component, field.name)
            shape = properties[field.name].get("anyOf", [properties[field.name]])[0]
            assert shape.items() >= field.enforced.items(), (component, field.name)


@pytest.mark.parametrize("component", list(ROUTE_FIELDS))
def test_the_document_refuses_what_the_gateway_refuses(doc: dict[str, Any],
                                                       component: str) -> None:
    base = BASES[component]
    for field in ROUTE_FIELDS[component]:
        if not field.enforced:  # passed on to vLLM: the gateway refuses no value of it
            assert [v for v in PROBES if _gateway_refuses(component, {**base, field.name: v})
                    ] == [], field.name
            continue
        # Fields whose documented shape goes further (messages' items, the objects behind
        # a $ref) are checked by vLLM past what the gateway checks: one way only.
        whole = not (field.documented.keys() - {"description", "examples", "default"})
        for value in PROBES:
            body = {**base, field.name: value}
            refused = _gateway_refuses(component, body)
            documented = _document_accepts(doc, component, body)
            if _json_schema_disagrees(field.enforced, value):
                continue  # 1.0: the gateway refuses it, JSON Schema cannot say so
            if refused is not None:
                assert refused.split(".")[0] == field.name, (field.name, value, refused)
                assert not documented, f"{component}.{field.name}={value!r}: the gateway " \
                    "refuses it, the document allows it"
            elif whole:
                assert documented, f"{component}.{field.name}={value!r}: the gateway " \
                    "accepts it, the document refuses it"


def test_the_document_and_gateway_agree_on_response_format(doc: dict[str, Any]) -> None:
    adhoc = {"type": "object", "properties": {}}
    formats: list[Any] = [
        {"type": "text"}, {"type": "json_object"}, {"type": "x"}, {}, {"type": None},
        {"type": "json_schema"}, {"type": "json_schema", "json_schema": 5},
        {"type": "json_schema", "json_schema": {}},
        {"type": "json_schema", "json_schema": {"name": "function_ir"}},
        {"type": "json_schema", "json_schema": {"name": ""}},
        {"type": "json_schema", "json_schema": {"name": 5}},
        {"type": "json_schema", "json_schema": {"schema": adhoc}},
        {"type": "json_schema", "json_schema": {"schema": adhoc, "name": "City_2"}},
        {"type": "json_schema", "json_schema": {"schema": adhoc, "name": "has space"}},
        {"type": "json_schema", "json_schema": {"schema": adhoc, "name": "x" * 65}},
    ]
    for component, base in BASES.items():
        for response_format in formats:
            body = {**base, "response_format": response_format}
            refused = _gateway_refuses(component, body)
            assert (refused is None) == _document_accepts(doc, component, body), (
                component, response_format, refused)
            if refused is not None:
                assert refused.startswith("response_format"), refused


def test_the_document_and_gateway_agree_on_stream_options(doc: dict[str, Any]) -> None:
    for component, base in BASES.items():
        for stream in (..., None, False, True):
            for options in (..., None, {}, {"include_usage": True}, 5):
                body = dict(base)
                if stream is not ...:
                    body["stream"] = stream
                if options is not ...:
                    body["stream_options"] = options
                refused = _gateway_refuses(component, body)
                assert (refused is None) == _document_accepts(doc, component, body), (
                    component, stream, options, refused)


# ---------------------------------------------------------------------------- the code


def _body_keys(path: Path) -> set[str]:
    """Every field a module reads from a body by name: `body.get("x")`, `body["x"]`,
    `"x" in body` (also on `plan.body`)."""
    def is_body(node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id == "body") or (
            isinstance(node, ast.Attribute) and node.attr == "body")

    keys: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        key: ast.AST | None = None
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get" and is_body(node.func.value) and node.args):
            key = node.args[0]
        elif isinstance(node, ast.Subscript) and is_body(node.value):
            key = node.slice
        elif (isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.In | ast.NotIn)
              and is_body(node.comparators[0])):
            key = node.left
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            keys.add(key.value)
    return keys


def test_every_field_planning_reads_has_a_row() -> None:
    generation = REPO / "gateway" / "generation"
    read = set().union(*(_body_keys(generation / name)
                         for name in ("planning.py", "budget.py", "tools.py")))
    assert {"stream_options", "prompt", "tools", "tool_choice"} <= read  # the scan works
    documented = {f.name for fields in ROUTE_FIELDS.values() for f in fields}
    assert read <= documented, f"read but not in the contract: {read - documented}"
