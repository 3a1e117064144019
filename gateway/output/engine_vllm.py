"""vLLM 0.32's own check of a JSON Schema for its xgrammar backend, rule for rule.

Source: vllm/v1/structured_output/backend_xgrammar.py (vLLM 0.32.0, installed),
`has_xgrammar_unsupported_json_features`, `_schema_types`, `_has_pattern_and_length_bounds`
and STRING_SUPPORTED_FORMATS. A schema it flags is a 400 for the whole request ("The
provided JSON schema contains features not supported by xgrammar."), checked in vLLM's
frontend before anything is compiled. `gateway.output.engine_rules` sends what it flags without
the flagged keywords.
"""

from __future__ import annotations

from typing import Any

XGRAMMAR_FORMATS = frozenset({
    "email", "date", "time", "date-time", "duration", "ipv4", "ipv6", "hostname", "uuid",
    "uri", "uri-reference", "uri-template", "json-pointer", "relative-json-pointer",
})


def types_of(node: dict[str, Any]) -> set[str]:
    """vLLM's `_schema_types`: `type` as a set, nothing else counts."""
    kind = node.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return {item for item in kind if isinstance(item, str)}
    return set()


def length_beside_pattern(node: dict[str, Any]) -> bool:
    return ("pattern" in node or "format" in node) and (
        "minLength" in node or "maxLength" in node)


def vllm_refuses(schema: Any) -> bool:
    """vLLM 0.32's `has_xgrammar_unsupported_json_features`, rule for rule: it walks every
    dict value (constants and annotations too). Line numbers: backend_xgrammar.py."""
    def check(obj: dict[str, Any]) -> bool:
        types = types_of(obj)
        if types & {"integer", "number"} and "multipleOf" in obj:  # :306
            return True
        if "array" in types and any(  # :311
                key in obj for key in ("uniqueItems", "contains", "minContains", "maxContains")):
            return True
        if "string" in types and "format" in obj and obj["format"] not in XGRAMMAR_FORMATS:
            # :322
            return True
        if "string" in types and length_beside_pattern(obj):  # :333
            return True
        if "object" in types and "propertyNames" in obj:  # :340-359
            names = obj.get("propertyNames")
            if isinstance(names, dict) and length_beside_pattern(names):
                return True
            if ("patternProperties" in obj or "properties" in obj
                    or obj.get("unevaluatedProperties", True) is not True):
                return True
        if "object" in types and isinstance(obj.get("patternProperties"), dict) and (  # :365
                "properties" in obj or len(obj["patternProperties"]) > 1):
            return True
        all_of = obj.get("allOf")
        if isinstance(all_of, list) and len(all_of) >= 2:  # :388
            return True
        for value in obj.values():
            if isinstance(value, dict) and check(value):
                return True
            if isinstance(value, list) and any(
                    isinstance(item, dict) and check(item) for item in value):
                return True
        return False

    return isinstance(schema, dict) and check(schema)
