"""What a schema file must be, and what the registry answers (gateway/output/registry.py), with the
exact words an operator reads when the server refuses to start, and the 404s a client gets."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.errors import InvalidSchemaError, SchemaNotFoundError
from gateway.output.registry import (
    SchemaFileError,
    SchemaRegistry,
    adhoc_schema,
    check_json_schema,
    meta_error,
)

GOOD: dict[str, Any] = {
    "name": "point", "version": 1, "description": "A point.",
    "schema": {"type": "object", "properties": {"x": {"type": "integer"}},
               "required": ["x"], "additionalProperties": False},
}


def write(directory: Path, name: str, content: object) -> Path:
    path = directory / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def refusal(tmp_path: Path, content: object) -> str:
    path = write(tmp_path, "point.v1.json", content)
    with pytest.raises(SchemaFileError) as error:
        SchemaRegistry.load(tmp_path)
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


def deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {}
    for _ in range(levels):
        schema = {"not": schema}
    return schema


@pytest.mark.parametrize(("content", "message"), [
    ("[1]", "must hold a JSON object"),
    ({**GOOD, "extra": 1, "more": 2}, "unknown keys ['extra', 'more']"),
    ({**GOOD, "name": "a" * 65}, "'name' must match ^[a-z][a-z0-9_]{0,63}$"),
    ({**GOOD, "name": "Point"}, "'name' must match ^[a-z][a-z0-9_]{0,63}$"),
    ({**GOOD, "name": 7}, "'name' must match ^[a-z][a-z0-9_]{0,63}$"),
    ({k: v for k, v in GOOD.items() if k != "version"},
     "'version' must be an integer from 1 to 999999"),
    ({**GOOD, "version": True}, "'version' must be an integer from 1 to 999999"),
    ({**GOOD, "version": "1"}, "'version' must be an integer from 1 to 999999"),
    ({**GOOD, "version": 0}, "'version' must be an integer from 1 to 999999"),
    ({**GOOD, "description": "  "}, "'description' must be a non-empty string"),
    ({k: v for k, v in GOOD.items() if k != "description"},
     "'description' must be a non-empty string"),
    ({**GOOD, "output_policy": 7},
     "'output_policy' must be one of ['repair', 'retry', 'reask', 'error']"),
    ({**GOOD, "schema": [GOOD["schema"]]}, "'schema' must be a JSON object"),
    ({**GOOD, "schema": deep(300)}, "'schema' is nested too deeply"),
    ({**GOOD, "schema": {"type": "integer", "maximum": 2**70}},
     "'schema' cannot be compiled: Integer exceeds 64-bit range"),
    ({**GOOD, "schema": {"minLength": -1}},
     "not a valid JSON Schema (Draft 2020-12): schema at /minLength: -1 is less than the "
     "minimum of 0"),
    ({**GOOD, "schema": {"type": "array", "uniqueItems": True}},
     "uses keywords xgrammar does not enforce while decoding: /: uniqueItems"),
    ({**GOOD, "schema": {"type": "array", "uniqueItems": True,
                         "items": {"type": "array", "uniqueItems": True}}},
     "uses keywords xgrammar does not enforce while decoding: /items: uniqueItems; "
     "/: uniqueItems"),
    ({**GOOD, "checks": [{"check": "unique", "at": "/x"}]},
     "checks[0]: unique needs a '*' in '/x' (the array whose items must differ)"),
])
def test_a_broken_schema_file_is_refused_saying_what_to_fix(tmp_path: Path, content: object,
                                                            message: str) -> None:
    assert refusal(tmp_path, content) == message


def test_the_limits_of_a_schema_file_are_inclusive(tmp_path: Path) -> None:
    write(tmp_path, "a.json", {**GOOD, "name": "p" + "_" * 63, "version": 999_999})
    write(tmp_path, "b.json", {**GOOD, "name": "q", "version": 1})
    registry = SchemaRegistry.load(tmp_path)
    assert registry.resolve("p" + "_" * 63 + "@999999").version == 999_999
    assert registry.resolve("q").output_policy == "repair"  # the default


def test_a_rewritten_pattern_loads_with_a_warning(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "p.json", {**GOOD, "schema": {"type": "string",
                                                           "pattern": "^a{200}$"}})
    with caplog.at_level(logging.WARNING, logger="gateway.output.registry"):
        schema = SchemaRegistry.load(tmp_path).resolve("point")
    note = ("/: pattern '^a{200}$' (repeat {200} above xgrammar's 128: sent to vLLM as "
            "'^a{128}a{72}$', which matches the same strings)")
    assert schema.unenforced == (note,)
    assert [r.getMessage() for r in caplog.records] == [f"{path}: {note}"]
    # vLLM gets the rewritten pattern; the answer is checked against the file's.
    assert orjson.loads(schema.schema_json) == {"type": "string", "pattern": "^a{128}a{72}$"}
    assert schema.schema == {"type": "string", "pattern": "^a{200}$"}
    assert schema.public()["schema"] == schema.schema


def test_a_directory_without_schemas_stops_the_server(tmp_path: Path) -> None:
    with pytest.raises(SchemaFileError) as error:
        SchemaRegistry.load(tmp_path)
    assert str(error.value) == f"{tmp_path}: no schema files (*.json) found"
    with pytest.raises(SchemaFileError) as error:
        SchemaRegistry.load(tmp_path / "missing")
    assert str(error.value) == f"{tmp_path / 'missing'}: schema directory does not exist"


def test_a_version_defined_twice_names_both_files(tmp_path: Path) -> None:
    first = write(tmp_path, "a.json", GOOD)
    second = write(tmp_path, "b.json", {**GOOD, "description": "Again."})
    with pytest.raises(SchemaFileError) as error:
        SchemaRegistry.load(tmp_path)
    assert str(error.value) == f"{second}: point@1 is already defined in {first}"


@pytest.fixture
def registry(tmp_path: Path) -> SchemaRegistry:
    for version in (2, 10, 1):
        write(tmp_path, f"point.v{version}.json", {**GOOD, "version": version,
                                                   "output_policy": "retry"})
    write(tmp_path, "line.json", {**GOOD, "name": "line", "checks": []})
    return SchemaRegistry.load(tmp_path)


def test_the_registry_lists_names_and_versions_in_order(registry: SchemaRegistry) -> None:
    assert registry.names() == ["line", "point"]
    assert [s.version for s in registry.versions("point")] == [1, 2, 10]
    assert [s.ref for s in registry] == ["line@1", "point@1", "point@2", "point@10"]
    assert "point@2" in registry and "point" in registry
    assert "point@3" not in registry and "circle" not in registry and "a b" not in registry
    with pytest.raises(SchemaNotFoundError) as error:
        registry.versions("circle")
    assert (error.value.status_code, error.value.param) == (404, "name")
    assert error.value.message == "Schema 'circle' is not registered"


def test_an_unknown_schema_is_a_404_listing_what_the_caller_may_use(
        registry: SchemaRegistry) -> None:
    with pytest.raises(SchemaNotFoundError) as error:
        registry.resolve("circle", param="model")
    assert error.value.param == "model"
    assert error.value.message == "Schema 'circle' is not registered (registered: line, point)"
    with pytest.raises(SchemaNotFoundError) as error:
        registry.resolve("circle", visible={"point"}.__contains__)
    assert error.value.message == "Schema 'circle' is not registered (registered: point)"
    with pytest.raises(SchemaNotFoundError) as error:
        registry.resolve("point@3", param="response_format.json_schema.name")
    assert error.value.param == "response_format.json_schema.name"
    assert error.value.message == ("Schema 'point@3' is not registered (versions: point@1, "
                                   "point@2, point@10)")
    with pytest.raises(SchemaNotFoundError):
        registry.resolve("point@1234567")  # seven digits: no version a file can have


def test_what_a_client_reads_about_a_schema(registry: SchemaRegistry) -> None:
    point = registry.resolve("point@2")
    assert point.public() == {"name": "point", "version": 2, "description": "A point.",
                              "output_policy": "retry", "checks": [],
                              "schema": GOOD["schema"]}
    assert point.ref == point.metric_label == "point@2"
    adhoc = adhoc_schema("Weather", GOOD["schema"], "error")
    assert adhoc.ref == "Weather (ad-hoc)" and adhoc.metric_label == "(ad-hoc)"
    assert adhoc.output_policy == "error" and adhoc.version == 0


def test_a_schema_lists_its_checks_for_the_client(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"ps": {"type": "array", "items": {
        "type": "string"}}}}
    write(tmp_path, "p.json", {**GOOD, "schema": schema, "checks": [
        {"check": "unique", "at": "/ps/*"},
        {"check": "python_identifier", "at": ["/ps/*"]}]})
    public = SchemaRegistry.load(tmp_path).resolve("point").public()
    assert public["checks"] == [{"check": "unique", "at": ["/ps/*"]},
                                {"check": "python_identifier", "at": ["/ps/*"]}]


def test_an_adhoc_schema_that_is_no_valid_schema_is_a_400_saying_where() -> None:
    with pytest.raises(InvalidSchemaError) as error:
        adhoc_schema("M", {"type": "object", "properties": {"x": {"minLength": -1}}}, "repair")
    assert error.value.param == "response_format.json_schema.schema"
    assert error.value.message == (
        "response_format.json_schema.schema is not a valid JSON Schema (Draft 2020-12): at "
        "/properties/x/minLength: -1 is less than the minimum of 0")
    with pytest.raises(InvalidSchemaError) as error:
        check_json_schema([1], what="response_format.json_schema.schema")
    assert error.value.param == "response_format.json_schema.schema"
    assert error.value.message == "response_format.json_schema.schema must be a JSON object"
    with pytest.raises(InvalidSchemaError) as error:  # valid, but its $ref leads nowhere
        adhoc_schema("M", {"$ref": "#/nowhere"}, "repair")
    assert error.value.param == "response_format.json_schema.schema"
    assert error.value.message.startswith("response_format.json_schema.schema cannot be used: "
                                          "Pointer '/nowhere' does not exist")
    with pytest.raises(InvalidSchemaError) as error:  # what vLLM would refuse to compile
        adhoc_schema("M", {"allOf": [{"type": "string"}, {"minLength": 1}]}, "repair")
    assert error.value.param == "response_format.json_schema.schema"
    assert error.value.message.startswith("response_format.json_schema.schema ")
    assert "allOf" in error.value.message
    assert meta_error({"type": "object"}) is None
    # jsonschema-rs quotes the value: the explanation is cut at 1,000 characters.
    assert len(meta_error({"enum": "x" * 5_000}) or "") == len("at /enum: ") + 1_000


def test_the_grammar_of_a_schema_is_what_vllm_can_compile() -> None:
    from gateway.output.registry import grammar_schema

    assert grammar_schema(GOOD["schema"]) == GOOD["schema"]
    assert grammar_schema({"type": "string", "pattern": "^a{200}$"}) == {
        "type": "string", "pattern": "^a{128}a{72}$"}
    with pytest.raises(InvalidSchemaError, match="allOf"):
        grammar_schema({"allOf": [{"type": "string"}, {"minLength": 1}]})


def test_a_schema_jsonschema_cannot_compile_is_refused_naming_why(tmp_path: Path) -> None:
    message = refusal(tmp_path, {**GOOD, "schema": {"$ref": "#/nowhere"}})
    assert message.startswith("schema cannot be compiled: Pointer '/nowhere' does not exist")


def test_a_schemas_own_meta_schema_is_never_fetched() -> None:
    # A client's `$schema` URL made the gateway send a GET to it (to any host it named).
    import http.server
    import threading

    asked: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/meta.json"
        with pytest.raises(InvalidSchemaError) as error:
            adhoc_schema("M", {"$schema": url, "type": "object"}, "repair")
        assert error.value.param == "response_format.json_schema.schema"
        assert url in error.value.message
    finally:
        server.shutdown()
        server.server_close()
    assert asked == []
    # The draft the gateway validates with may be named.
    draft = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"}
    assert meta_error(draft) is None


def test_an_unknown_meta_schema_is_named_within_the_bound() -> None:
    url = "http://x.invalid/" + "a" * 1_200
    error = meta_error({"$schema": url}) or ""
    assert error.startswith(f"Resource '{url[:100]}") and len(error) == 1_000
