"""The schema registry is checked at startup: a broken file stops the server, naming it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import InvalidSchemaError, SchemaNotFoundError
from gateway.output.registry import SchemaFileError, SchemaRegistry, unenforced_keywords
from gateway.output.validation import CheckFailure, check_output
from gateway.settings import Settings
from tests.conftest import REPO

GOOD: dict[str, Any] = {
    "name": "point", "version": 1, "description": "A point.",
    "schema": {"type": "object", "properties": {"x": {"type": "integer"}},
               "required": ["x"], "additionalProperties": False},
}


def write(directory: Path, name: str, content: object) -> Path:
    path = directory / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_the_shipped_schemas_load_with_versions_and_exact_text() -> None:
    registry = SchemaRegistry.load(REPO / "schemas")
    assert registry.names() == ["function_ir", "module_ir", "test_plan_ir"]
    function_ir = registry.resolve("function_ir")
    assert registry.resolve("function_ir@1") is function_ir
    # Byte-identical, in file order (xgrammar generates properties in that order).
    on_disk = json.loads((REPO / "schemas" / "function_ir.v1.json").read_text())["schema"]
    assert function_ir.schema_json == json.dumps(on_disk, separators=(",", ":")).encode()
    assert list(on_disk["properties"]["intent"]["properties"]) == ["summary", "rationale"]


def test_newest_version_wins_and_versions_can_be_pinned(tmp_path: Path) -> None:
    write(tmp_path, "point.v1.json", GOOD)
    write(tmp_path, "point.v2.json", {**GOOD, "version": 2, "description": "Newer."})
    registry = SchemaRegistry.load(tmp_path)
    assert registry.resolve("point").version == 2
    assert registry.resolve("point@1").version == 1


@pytest.mark.parametrize(("content", "needle"), [
    ("{not json", "cannot read JSON"),
    ({**GOOD, "schema": {"type": "strnig"}}, "not a valid JSON Schema"),
    ({**GOOD, "version": 0}, "'version'"),
    ({**GOOD, "name": "Bad Name"}, "'name'"),
    ({**GOOD, "output_policy": "shrug"}, "'output_policy'"),
    ({**GOOD, "extra": 1}, "unknown keys"),
    ({**GOOD, "schema": {"type": "array", "uniqueItems": True}}, "uniqueItems"),
    ({**GOOD, "schema": {"type": "string", "pattern": "^a+$", "maxLength": 3}},
     "minLength/maxLength beside pattern"),
])
def test_a_broken_file_is_refused_naming_the_file(tmp_path: Path, content: object,
                                                  needle: str) -> None:
    path = write(tmp_path, "point.v1.json", content)
    with pytest.raises(SchemaFileError) as raised:
        SchemaRegistry.load(tmp_path)
    assert str(raised.value).startswith(str(path))
    assert needle in str(raised.value)


def test_duplicate_versions_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "a.json", GOOD)
    write(tmp_path, "b.json", GOOD)
    with pytest.raises(SchemaFileError, match="already defined"):
        SchemaRegistry.load(tmp_path)


def test_unenforced_keywords_are_found_where_they_hide() -> None:
    schema = {"type": "object", "properties": {
        "a": {"type": "array", "items": {"not": {"type": "null"}}},
        "b": {"allOf": [{"type": "string"}, {"minLength": 1}]},
        "c": {"type": "string", "format": "color"},
    }, "$defs": {"d": {"type": "number", "multipleOf": 2}}}
    found = unenforced_keywords(schema)
    assert "/properties/a/items: not" in found
    assert "/properties/b: allOf with several members" in found
    assert "/properties/c: format 'color'" in found
    assert "/$defs/d: multipleOf" in found


def test_serve_refuses_to_start_on_a_broken_schema(tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(REPO / "schemas", schemas)
    broken = write(schemas, "module_ir.v1.json", "{oops")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", "1"],
        env={"IRGW_SCHEMAS_DIR": str(schemas), "IRGW_AUTH_ENABLED": "false",
             "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert str(broken) in result.stderr and "cannot start" in result.stderr


def test_serve_refuses_to_start_on_an_upstream_url_without_a_scheme() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", "1",
         "--upstream", "localhost:8000"],
        env={"IRGW_AUTH_ENABLED": "false", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert "cannot start" in result.stderr and "localhost:8000" in result.stderr


def test_settings_come_from_env_then_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('upstream_url = "http://from-toml:8000"\nmax_retries = 3\nport = 9000\n')
    monkeypatch.setenv("IRGW_MAX_RETRIES", "1")
    settings = Settings(config_file=config)
    assert settings.upstream_url == "http://from-toml:8000"
    assert settings.max_retries == 1  # the environment beats the file
    assert Settings(config_file=config, port=7000).port == 7000  # and the CLI beats both
    monkeypatch.setenv("IRGW_UPSTREAM_URL", "http://from-env:8000/")
    assert Settings().upstream_url == "http://from-env:8000"
    with pytest.raises(FileNotFoundError):
        Settings(config_file=tmp_path / "missing.toml")


def test_serve_refuses_to_start_without_a_key_store() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", "1"],
        env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert "IRGW_KEYS_FILE" in result.stderr and "IRGW_AUTH_ENABLED=false" in result.stderr


def test_adhoc_schemas_reach_vllm_without_what_its_grammar_refuses() -> None:
    # vLLM 0.32 answers 400 to a schema with any of these (its xgrammar backend's list);
    # the grammar gets the rest of the schema, the answer is checked against all of it.
    from gateway.output.registry import adhoc_schema

    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "url": {"type": "string", "format": "uri", "minLength": 1, "maxLength": 40},
            "step": {"type": "integer", "multipleOf": 5},
            "code": {"type": "string", "format": "isbn", "maxLength": 12},
            "extra": {"type": "object", "properties": {"a": {"type": "integer"}},
                      "propertyNames": {"pattern": "^[a-z]+$", "maxLength": 3}},
            "map": {"type": "object", "patternProperties": {"^x": {}, "^y": {}}},
        },
    }
    adhoc = adhoc_schema("Holes", schema, "repair")
    sent = json.loads(adhoc.schema_json)["properties"]
    assert sent["tags"] == {"type": "array", "items": {"type": "string"}}
    assert sent["url"] == {"type": "string", "format": "uri"}
    assert sent["step"] == {"type": "integer"}
    assert sent["code"] == {"type": "string", "maxLength": 12}
    assert sent["extra"] == {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert sent["map"] == {"type": "object"}
    assert adhoc.schema == schema  # what answers are checked against
    assert any("uniqueItems" in warning for warning in adhoc.unenforced)
    with pytest.raises(CheckFailure, match="unique"):
        check_output('{"tags": ["a", "a"]}', adhoc, repair=True)
    # Nothing to drop: the schema's own text goes upstream, byte for byte.
    plain = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}
    assert adhoc_schema("Plain", plain, "repair").schema_json == json.dumps(
        plain, separators=(",", ":")).encode()


def test_adhoc_schema_relaxing_leaves_constants_of_any_shape_alone() -> None:
    from gateway.output.registry import adhoc_schema

    odd = {"type": "object", "properties": {"v": {"const": {"type": [{}], "format": ["x"]}}}}
    assert adhoc_schema("Odd", odd, "repair").schema == odd  # no 500 on unhashable values


def test_adhoc_allof_with_several_members_is_a_clear_400() -> None:
    from gateway.output.registry import adhoc_schema

    schema = {"type": "object", "properties": {
        "v": {"allOf": [{"type": "string"}, {"enum": ["yes", "no"]}]}}}
    with pytest.raises(InvalidSchemaError, match="allOf") as info:
        adhoc_schema("Both", schema, "repair")
    assert info.value.status_code == 400 and "/properties/v" in info.value.message


def test_schema_versions_fit_what_requests_can_pin(tmp_path: Path) -> None:
    (tmp_path / "big.json").write_text(json.dumps({**GOOD, "version": 1_000_000}))
    with pytest.raises(SchemaFileError, match=r"big\.json.*999999"):
        SchemaRegistry.load(tmp_path)


async def test_a_pinned_version_is_the_one_vllm_gets_and_the_answer_is_checked_against(
    tmp_path: Path,
) -> None:
    # Three versions whose `x` has three types: which one vLLM was given, and which one
    # the answer was checked against, shows in what passes. 10 is the newest (not "2").
    import httpx

    from tests.conftest import unit_settings
    from tests.fake_upstream import FakeUpstream, Reply
    from tests.gateway_server import running_gateway

    types = {1: "integer", 2: "string", 10: "boolean"}
    for version, kind in types.items():
        write(tmp_path, f"point.v{version}.json", {**GOOD, "version": version, "schema": {
            **GOOD["schema"], "properties": {"x": {"type": kind}}}})
    answers = {"integer": '{"x": 1}', "string": '{"x": "1"}', "boolean": '{"x": true}'}
    cases = [("schema/point@1", None, 1), ("schema/point@2", None, 2),
             ("schema/point", None, 10), ("qwen-coder", "point@1", 1),
             ("qwen-coder", "point@2", 2), ("qwen-coder", "point", 10)]
    async with FakeUpstream() as fake, \
            running_gateway(unit_settings(fake.url, schemas_dir=tmp_path)) as gw, \
            httpx.AsyncClient(base_url=gw.url) as client:
        for model, name, version in cases:
            body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "p"}]}
            if name is not None:
                body["response_format"] = {"type": "json_schema", "json_schema": {"name": name}}
            for kind, answer in answers.items():
                fake.script(Reply(answer))
                response = await client.post("/v1/chat/completions", json=body)
                sent = fake.requests[-1].json["response_format"]["json_schema"]["schema"]
                assert sent["properties"]["x"]["type"] == types[version], (model, name)
                assert response.status_code == (200 if kind == types[version] else 422), \
                    (model, name, kind)
                assert response.headers["x-irgw-schema"] == f"point@{version}"
        missing = await client.post("/v1/chat/completions", json={
            "model": "schema/point@3", "messages": [{"role": "user", "content": "p"}]})
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "schema_not_found"


def test_a_version_pin_is_written_one_way() -> None:
    # `function_ir@01` resolved on chat and /v1/schemas while /v1/models, which lists
    # `function_ir@1`, answered 404: a pin with a leading zero is no pin of a known version.
    registry = SchemaRegistry.load(REPO / "schemas")
    assert registry.resolve("function_ir@1").version == 1
    for ref in ("function_ir@01", "function_ir@001", "function_ir@0"):
        assert ref not in registry
        with pytest.raises(SchemaNotFoundError):
            registry.resolve(ref)
