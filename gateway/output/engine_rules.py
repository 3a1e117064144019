"""What vLLM 0.32's xgrammar backend (xgrammar 0.2.8) does with a JSON Schema, mirrored.

Three outcomes for a keyword, each with its own handling:

- vLLM refuses the request (`has_xgrammar_unsupported_json_features`, a 400 for the whole
  request): the grammar gets the schema without it, the answer is still checked against all
  of the schema, and the keyword is named in the warnings. A multi-member `allOf` cannot be
  dropped without changing the schema: refused here, clearly.
- xgrammar compiles the schema but ignores the keyword while decoding: named in the warnings.
- xgrammar's compiler crashes (a `pattern` repeat count above 128, below): the grammar gets
  the pattern in a form it compiles, or none, and the pattern is named in the warnings.

Rules and their sources (installed vLLM 0.32.0, xgrammar 0.2.8):
- vllm/v1/structured_output/backend_xgrammar.py, has_xgrammar_unsupported_json_features:
  `multipleOf` on integer/number; `uniqueItems`/`contains`/`minContains`/`maxContains` on
  arrays; a string `format` outside STRING_SUPPORTED_FORMATS; `minLength`/`maxLength` beside
  `pattern`/`format`; `propertyNames` with length bounds beside a pattern, or beside
  `patternProperties`, `properties` or a non-true `unevaluatedProperties`;
  `patternProperties` beside `properties`, or with several patterns; `allOf` with two or
  more members. Types are read from `type` only (a string or a list of strings).
- xgrammar ignores while decoding (its JSON-schema converter has no rule for them):
  `not`, `if`/`then`/`else`, `dependentRequired`, `dependentSchemas`, draft-07's
  `dependencies`; and the ones vLLM refuses above; only local `$ref`s resolve.
- xgrammar's RepetitionRangeExpander (cpp/grammar_functor.cc, `kUnzipThreshold = 128`)
  unrolls `{m,n}` only when n <= 128 (or m <= 128 with no upper bound); larger counts go
  through a path that fails `Check failed: (... per_rule_fsm_hashes[ref_rule_id]
  .has_value())` (grammar_functor.cc:3567) once compiled with the grammar cache vLLM turns
  on. Seen on the installed wheel: `{1,128}` and `{128,}` compile, `{1,129}`, `{129}`,
  `{0,129}` and `{129,}` crash; `X{1,128}X{0,127}` compiles and matches what `X{1,255}`
  does, which is how such a repeat is sent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gateway.output import engine_regex
from gateway.output.engine_regex import split_large_repeats
from gateway.output.engine_vllm import (
    XGRAMMAR_FORMATS,
    length_beside_pattern,
    types_of,
    vllm_refuses,
)

IGNORED_KEYWORDS = ("not", "if", "then", "else", "dependentRequired", "dependentSchemas",
                    "dependencies", "uniqueItems", "contains", "minContains", "maxContains",
                    "multipleOf")

_ONE_SCHEMA = ("additionalProperties", "unevaluatedProperties", "propertyNames", "items",
               "additionalItems", "unevaluatedItems", "contains", "not", "if", "then", "else")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas",
                "dependencies")
# Values that are data, not schemas: never relaxed (that would change what they mean).
_DATA = ("const", "enum")


@dataclass
class EngineView:
    """A schema as vLLM's xgrammar backend takes it."""

    grammar: Any  # what vLLM is sent
    root: Any = None  # the schema as written, for its local references
    unenforced: list[str] = field(default_factory=list)  # `path: keyword` not enforced
    rewritten: list[str] = field(default_factory=list)  # sent in another, equivalent form
    refused: list[str] = field(default_factory=list)  # cannot be sent at all
    # What xgrammar 0.2.8 fails on as written (a crash, a converter error), and the gateway
    # sends in another form: `schemas lint` reports these as errors.
    compile_errors: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return self.unenforced + self.rewritten


def analyse(schema: Any) -> EngineView:
    """What vLLM is sent for `schema`, and what it will not enforce as written."""
    view = EngineView(grammar=None, root=schema)
    view.grammar = _relax(schema, "", view)
    if not view.refused and vllm_refuses(view.grammar):
        # What the keyword-by-keyword relaxing cannot see (vLLM reads every value as a
        # schema: a property named `allOf` in `dependencies`, ...): a clear 400 here.
        view.refused.append("vLLM 0.32 refuses this schema's shape (its xgrammar check "
                            "reads every value as a schema); simplify it")
    return view


def _subschemas(node: dict[str, Any], path: str) -> Iterator[tuple[str, str, Any]]:
    """(keyword, path, value) of each place in `node` that holds schemas."""
    for key, value in node.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            yield key, f"{path}/{key}", value
        elif key in _ONE_SCHEMA and isinstance(value, dict):
            yield key, f"{path}/{key}", value
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            yield key, f"{path}/{key}", value


def _relax(node: Any, path: str, view: EngineView) -> Any:
    if not isinstance(node, dict):
        return node
    where = path or "/"
    out = dict(node)
    for key, sub_path, value in _subschemas(node, path):
        if isinstance(value, list):
            out[key] = [_relax(item, f"{sub_path}/{i}", view) for i, item in enumerate(value)]
        elif key in _SCHEMA_MAPS:
            out[key] = {name: _relax(sub, f"{sub_path}/{_escape(name)}", view)
                        for name, sub in value.items()}
        else:
            out[key] = _relax(value, sub_path, view)
    for key in IGNORED_KEYWORDS:
        if key in node:
            view.unenforced.append(f"{where}: {key}")
    types = types_of(node)
    drop: set[str] = set()
    if types & {"integer", "number"}:
        drop.add("multipleOf")
    if "array" in types:
        drop.update(("uniqueItems", "contains", "minContains", "maxContains"))
    fmt = node.get("format")
    if isinstance(fmt, str) and fmt not in XGRAMMAR_FORMATS:
        view.unenforced.append(f"{where}: format {fmt!r}")
        if "string" in types:
            drop.add("format")
    known_format = isinstance(fmt, str) and fmt in XGRAMMAR_FORMATS
    if length_beside_pattern(node) and ("pattern" in node or known_format):
        # (Beside an unknown format, left out, the length bound alone is enforced.)
        view.unenforced.append(f"{where}: minLength/maxLength beside pattern/format")
        if "string" in types:
            drop.update(("minLength", "maxLength"))
    if isinstance(node.get("pattern"), str):
        pattern = _compilable_pattern(node["pattern"], f"{where}: pattern", view)
        if pattern is None:
            drop.add("pattern")
        else:
            out["pattern"] = pattern
    _relax_object(node, out, where, drop, view)
    _converter_rules(node, out, where, types, drop, view)
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) > 1:
        view.unenforced.append(f"{where}: allOf with several members")
        view.refused.append(f"at {where}: vLLM's grammar cannot enforce allOf with several "
                            "members; merge them into one schema")
    for key, value in node.items():
        if key in drop or key in _SCHEMA_MAPS or key in _ONE_SCHEMA or key in _SCHEMA_LISTS:
            continue
        if vllm_refuses(value if isinstance(value, dict) else {"_": value}):
            # Data vLLM's check reads as a schema it refuses (it walks every value).
            if key in _DATA:
                view.refused.append(f"at {where}/{key}: vLLM 0.32 refuses a value here "
                                    "that reads as a schema xgrammar cannot compile")
            else:  # an annotation or unknown keyword: xgrammar never reads it
                drop.add(key)
    return {key: value for key, value in out.items() if key not in drop}


def _relax_object(node: dict[str, Any], out: dict[str, Any], where: str, drop: set[str],
                  view: EngineView) -> None:
    """The object rules: vLLM's (only with `type` object, as it reads them), then the
    repeat limit for a pattern xgrammar does compile (one `patternProperties` key)."""
    if "object" in types_of(node):
        names = out.get("propertyNames")
        if isinstance(names, dict) and length_beside_pattern(names):
            out["propertyNames"] = {k: v for k, v in names.items()
                                    if k not in ("minLength", "maxLength")}
        if "propertyNames" in node:
            beside = [key for key in ("patternProperties", "properties") if key in node]
            if node.get("unevaluatedProperties", True) is not True:
                beside.append("unevaluatedProperties")
            if beside:
                drop.add("propertyNames")
                view.unenforced.append(f"{where}: propertyNames beside {'/'.join(beside)}")
        patterns = node.get("patternProperties")
        if isinstance(patterns, dict) and "properties" in node:
            drop.add("patternProperties")
            view.unenforced.append(f"{where}: patternProperties beside properties")
        elif isinstance(patterns, dict) and len(patterns) > 1:
            drop.add("patternProperties")
            view.unenforced.append(f"{where}: patternProperties with several patterns")
    if isinstance(out.get("patternProperties"), dict) and "patternProperties" not in drop:
        keyed: dict[str, Any] = {}
        for key, sub in out["patternProperties"].items():
            pattern = _compilable_pattern(key, f"{where}: patternProperties key", view)
            if pattern is None:
                drop.add("patternProperties")
            keyed[key if pattern is None else pattern] = sub
        out["patternProperties"] = keyed


# Beside a `$ref`, xgrammar 0.2.8 reads nothing else of the node (seen: `maxLength` and
# `enum` next to a `$ref` to a string are not enforced); these do not constrain anyway.
_BESIDE_REF_OK = frozenset({
    "$ref", "$defs", "definitions", "$id", "$schema", "$anchor", "$comment", "title",
    "description", "default", "examples", "deprecated", "readOnly", "writeOnly"})
_STRING_KEYWORDS = ("minLength", "maxLength", "pattern", "format")
_NUMBER_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _converter_rules(node: dict[str, Any], out: dict[str, Any], where: str, types: set[str],
                     drop: set[str], view: EngineView) -> None:
    """xgrammar 0.2.8's JSON-schema converter, as seen on the installed wheel (compiling
    each case and matching strings against it; tests/integration/test_engine_rules_live.py
    runs them on the real vLLM). Its source for 0.2.8 is not published in a tag; the
    messages quoted are the wheel's (json_schema_converter.cc:4944)."""
    ref = node.get("$ref")
    if isinstance(ref, str):
        if not ref.startswith("#"):
            view.unenforced.append(f"{where}: non-local $ref")
        elif ref != "#" and not ref.startswith("#/"):
            # Seen: `{"$ref": "#S"}` to an `$anchor` compiles to any JSON value.
            view.unenforced.append(f"{where}: $ref to an anchor {ref!r} (any value)")
        beside = [key for key in node if key not in _BESIDE_REF_OK]
        if beside:
            view.unenforced.append(f"{where}: {'/'.join(beside)} beside $ref")
    if not types and "$ref" not in node and "const" not in node and "enum" not in node:
        # Without `type`, xgrammar infers arrays and objects from their keywords, but not
        # strings or numbers: their bounds are dropped (seen: `{"maxLength": 3}` and
        # `{"minimum": 5}` accept anything).
        for key in (*_STRING_KEYWORDS, *_NUMBER_KEYWORDS):
            if key in node:
                view.unenforced.append(f"{where}: {key} without a type")
    one_of = node.get("oneOf")
    if isinstance(one_of, list) and len(one_of) > 1 and not _disjoint(
            [_resolve(view.root, member) for member in one_of]):
        # Compiled as anyOf: an answer matching two members passes the grammar.
        view.unenforced.append(f"{where}: oneOf whose members may overlap (as anyOf)")
    if "integer" in types and "number" not in types:
        _whole_bounds(node, out, where, view)
    if "object" in types or "properties" in node:
        properties = node.get("properties")
        count = len(properties) if isinstance(properties, dict) else 0
        low = node.get("minProperties")
        closed = node.get("additionalProperties", False) is False  # strict mode: closed
        if (_is_int(low) and low > count and closed and "patternProperties" not in node):
            # "minProperties is greater than the number of properties, but additional
            # properties aren't allowed": a 400 from vLLM for the whole request.
            drop.add("minProperties")
            view.unenforced.append(f"{where}: minProperties above the property count")
            view.compile_errors.append(f"{where}: minProperties {low} above the {count} "
                                       "properties xgrammar allows")
    if "array" in types or "prefixItems" in node:
        prefix = node.get("prefixItems")
        count = len(prefix) if isinstance(prefix, list) else 0
        low = node.get("minItems")
        if isinstance(prefix, list) and _is_int(low) and low > count and (
                node.get("items", False) is False):
            drop.add("minItems")
            view.unenforced.append(f"{where}: minItems above the prefixItems count")
            view.compile_errors.append(f"{where}: minItems {low} above the {count} "
                                       "prefixItems xgrammar allows")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _whole_bounds(node: dict[str, Any], out: dict[str, Any], where: str,
                  view: EngineView) -> None:
    """"Integer constraint must be a whole number": an integer's bound 1.5 is refused.
    For integers, `minimum 1.5` means `minimum 2`: sent that way, the same answers."""
    rounding = {"minimum": math.ceil, "maximum": math.floor,
                "exclusiveMinimum": math.floor, "exclusiveMaximum": math.ceil}
    for key, whole in rounding.items():
        value = node.get(key)
        if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
            out[key] = whole(value)
            view.rewritten.append(f"{where}: {key} {value} (sent to vLLM as {out[key]}: "
                                  "xgrammar takes whole numbers only for integers)")
            view.compile_errors.append(f"{where}: {key} {value} on an integer")


def _resolve(root: Any, member: Any) -> Any:
    """A member's local `#/...` reference followed (pydantic writes unions that way)."""
    for _ in range(8):
        ref = member.get("$ref") if isinstance(member, dict) else None
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return member
        member = root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            member = member.get(part) if isinstance(member, dict) else None
    return member


def _tags(member: dict[str, Any]) -> dict[str, str]:
    """A member's required properties with one possible value: {name: value as JSON}."""
    properties = member.get("properties")
    required = member.get("required")
    if not isinstance(properties, dict) or not isinstance(required, list):
        return {}
    tags = {}
    for name in required:
        sub = properties.get(name) if isinstance(name, str) else None
        if isinstance(sub, dict) and "const" in sub:
            tags[name] = json.dumps(sub["const"], sort_keys=True)
        elif isinstance(sub, dict) and isinstance(sub.get("enum"), list) and len(
                sub["enum"]) == 1:
            tags[name] = json.dumps(sub["enum"][0], sort_keys=True)
    return tags


def _disjoint(members: list[Any]) -> bool:
    """Members no value can match twice: distinct constants, distinct types, or objects
    told apart by a required property's constant (a discriminated union)."""
    if all(isinstance(m, dict) for m in members):
        tags = [_tags(m) for m in members]
        for name in set(tags[0]).intersection(*tags[1:]):
            if len({t[name] for t in tags}) == len(tags):
                return True
    values: list[Any] = []
    kinds: list[set[str]] = []
    for member in members:
        if not isinstance(member, dict):
            return False
        if "const" in member:
            values.append(member["const"])
        elif isinstance(member.get("enum"), list):
            values.extend(member["enum"])
        elif types_of(member):
            kinds.append(types_of(member))
        else:
            return False
    if values and kinds:
        return False
    if values:
        seen = [json.dumps(v, sort_keys=True) for v in values]
        return len(seen) == len(set(seen))
    flat = [kind for group in kinds for kind in group]
    if "integer" in flat and "number" in flat:
        return False
    return len(flat) == len(set(flat))


def _compilable_pattern(pattern: str, what: str, view: EngineView) -> str | None:
    """`pattern` as xgrammar can compile it: large repeats split, or None (left out)."""
    result = split_large_repeats(pattern)
    if result is None:
        view.compile_errors.append(f"{what} {pattern!r}: a repeat above "
                                   f"{engine_regex.REPEAT_LIMIT} crashes xgrammar 0.2.8's "
                                   "compiler (vLLM answers 500)")
        view.unenforced.append(
            f"{what} {pattern!r} (a repeat count above {engine_regex.REPEAT_LIMIT} that "
            f"xgrammar 0.2.8 cannot compile, too large to split in "
            f"{engine_regex.MAX_REPEAT_PIECES}; not sent to vLLM)")
        return None
    rewritten, found = result
    if found:
        view.compile_errors.append(f"{what} {pattern!r}: repeat {', '.join(found)} crashes "
                                   "xgrammar 0.2.8's compiler (vLLM answers 500)")
        view.rewritten.append(
            f"{what} {pattern!r} (repeat {', '.join(found)} above xgrammar's "
            f"{engine_regex.REPEAT_LIMIT}: "
            f"sent to vLLM as {rewritten!r}, which matches the same strings)")
    return rewritten


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")
