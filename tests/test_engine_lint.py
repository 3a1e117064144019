"""xgrammar 0.2.8's JSON-schema converter, mirrored (issue 19, part 3), and `schemas lint`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.output.engine_rules import analyse
from gateway.output.engine_vllm import vllm_refuses
from gateway.output.registry import SchemaFileError, SchemaRegistry
from tests.conftest import REPO

# Each: a schema xgrammar 0.2.8 under-enforces or refuses (seen on the installed wheel;
# tests/integration/test_engine_rules_live.py runs them on the real vLLM), and the warning.
UNDER_ENFORCED: dict[str, tuple[dict[str, Any], str]] = {
    "length without a type": ({"maxLength": 3}, "/: maxLength without a type"),
    "pattern without a type": ({"pattern": "^a+$"}, "/: pattern without a type"),
    "minimum without a type": ({"minimum": 5}, "/: minimum without a type"),
    "keywords beside $ref": (
        {"$defs": {"s": {"type": "string"}}, "$ref": "#/$defs/s", "maxLength": 3},
        "/: maxLength beside $ref"),
    "overlapping oneOf": ({"oneOf": [{"type": "integer"}, {"type": "number"}]},
                          "/: oneOf whose members may overlap (as anyOf)"),
    "$ref to an $anchor": (
        {"$defs": {"s": {"$anchor": "S", "type": "string"}}, "type": "object",
         "properties": {"a": {"$ref": "#S"}}},
        "/properties/a: $ref to an anchor '#S' (any value)"),
    "minProperties above the property count": (
        {"type": "object", "properties": {"a": {"type": "integer"}}, "minProperties": 2},
        "/: minProperties above the property count"),
    "minItems above prefixItems": (
        {"type": "array", "prefixItems": [{"type": "integer"}], "items": False,
         "minItems": 2},
        "/: minItems above the prefixItems count"),
    "propertyNames beside properties": (
        {"type": "object", "properties": {"a": {}}, "propertyNames": {"maxLength": 2}},
        "/: propertyNames beside properties"),
}


@pytest.mark.parametrize("case", list(UNDER_ENFORCED))
def test_each_converter_rule_is_named(case: str) -> None:
    schema, warning = UNDER_ENFORCED[case]
    view = analyse(schema)
    assert warning in view.unenforced
    assert not vllm_refuses(view.grammar)


@pytest.mark.parametrize("members", [
    [{"const": 1}, {"const": 2}],
    [{"type": "string"}, {"type": "integer"}],
    [{"$ref": "#/$defs/cat"}, {"$ref": "#/$defs/dog"}],  # pydantic's discriminated union
])
def test_a_oneof_no_value_can_match_twice_is_not_a_warning(members: list[Any]) -> None:
    pet = {"type": "object", "required": ["kind"]}
    schema = {"oneOf": members, "$defs": {
        "cat": {**pet, "properties": {"kind": {"const": "cat"}}},
        "dog": {**pet, "properties": {"kind": {"const": "dog"}}}}}
    assert not [w for w in analyse(schema).unenforced if "oneOf" in w]


def test_fractional_integer_bounds_are_sent_whole() -> None:
    # xgrammar: "Integer constraint must be a whole number" (a 400 from vLLM). For an
    # integer, 1.5 <= n <= 9.5 is 2 <= n <= 9, and 1.5 < n < 9.5 is 1 < n < 10.
    schema = {"type": "object", "properties": {
        "a": {"type": "integer", "minimum": 1.5, "maximum": 9.5},
        "b": {"type": "integer", "exclusiveMinimum": 1.5, "exclusiveMaximum": 9.5},
        "c": {"type": "number", "minimum": 1.5},
        "d": {"type": "integer", "minimum": 2.0}}}
    sent = analyse(schema).grammar["properties"]
    assert sent["a"] == {"type": "integer", "minimum": 2, "maximum": 9}
    assert sent["b"] == {"type": "integer", "exclusiveMinimum": 1, "exclusiveMaximum": 10}
    assert sent["c"] == schema["properties"]["c"] and sent["d"] == schema["properties"]["d"]


def test_the_shipped_schemas_lint_clean() -> None:
    for path in sorted((REPO / "schemas").glob("*.json")):
        view = analyse(json.loads(path.read_text())["schema"])
        assert view.warnings == [] and view.compile_errors == [], path


def test_registered_schema_relying_on_a_converter_gap_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.v1.json").write_text(json.dumps({
        "name": "x", "version": 1, "description": "x",
        "schema": {"type": "object", "properties": {"a": {"maxLength": 3}}}}))
    with pytest.raises(SchemaFileError, match=r"x\.v1\.json.*/properties/a: maxLength without"):
        SchemaRegistry.load(tmp_path)


def lint(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "schemas", "lint", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_lint_exit_codes_and_output(tmp_path: Path) -> None:
    refused = tmp_path / "refused.json"
    refused.write_text(json.dumps({"type": "array", "uniqueItems": True}))
    crashes = tmp_path / "crashes.json"
    crashes.write_text(json.dumps({"type": "string", "pattern": "^a{1,255}$"}))
    ignored = tmp_path / "ignored.json"
    ignored.write_text(json.dumps({"type": "integer", "not": {"const": 3}}))

    clean = lint(str(REPO / "schemas"))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.count(": ok") == 3

    warned = lint(str(ignored))
    assert warned.returncode == 0
    assert f"{ignored}: warning: /: not" in warned.stdout

    for path in (refused, crashes):
        failed = lint(str(path))
        assert failed.returncode == 1, failed.stdout
        assert f"{path}: error: " in failed.stdout

    as_json = lint("--json", str(tmp_path))
    assert as_json.returncode == 1
    results = {Path(r["path"]).name: r for r in json.loads(as_json.stdout)["schemas"]}
    assert set(results) == {"refused.json", "crashes.json", "ignored.json"}
    assert results["ignored.json"]["errors"] == [] and results["ignored.json"]["warnings"]
    assert any("has_xgrammar_unsupported_json_features" in e
               for e in results["refused.json"]["errors"])
    assert any("{1,255}" in e for e in results["crashes.json"]["errors"])

    missing = lint(str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
