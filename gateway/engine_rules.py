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

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gateway import engine_regex
from gateway.engine_regex import split_large_repeats

XGRAMMAR_FORMATS = frozenset({
    "email", "date", "time", "date-time", "duration", "ipv4", "ipv6", "hostname", "uuid",
    "uri", "uri-reference", "uri-template", "json-pointer", "relative-json-pointer",
})
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
    unenforced: list[str] = field(default_factory=list)  # `path: keyword` not enforced
    rewritten: list[str] = field(default_factory=list)  # sent in another, equivalent form
    refused: list[str] = field(default_factory=list)  # cannot be sent at all

    @property
    def warnings(self) -> list[str]:
        return self.unenforced + self.rewritten


def types_of(node: dict[str, Any]) -> set[str]:
    """vLLM's `_schema_types`: `type` as a set, nothing else counts."""
    kind = node.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return {item for item in kind if isinstance(item, str)}
    return set()


def _length_beside_pattern(node: dict[str, Any]) -> bool:
    return ("pattern" in node or "format" in node) and (
        "minLength" in node or "maxLength" in node)


def vllm_refuses(schema: Any) -> bool:
    """vLLM 0.32's `has_xgrammar_unsupported_json_features`, rule for rule: it walks every
    dict value (constants and annotations too), which the relaxing below does not change."""
    def check(obj: dict[str, Any]) -> bool:
        types = types_of(obj)
        if types & {"integer", "number"} and "multipleOf" in obj:
            return True
        if "array" in types and any(
                key in obj for key in ("uniqueItems", "contains", "minContains", "maxContains")):
            return True
        if "string" in types and "format" in obj and obj["format"] not in XGRAMMAR_FORMATS:
            return True
        if "string" in types and _length_beside_pattern(obj):
            return True
        if "object" in types and "propertyNames" in obj:
            names = obj.get("propertyNames")
            if isinstance(names, dict) and _length_beside_pattern(names):
                return True
            if ("patternProperties" in obj or "properties" in obj
                    or obj.get("unevaluatedProperties", True) is not True):
                return True
        if "object" in types and isinstance(obj.get("patternProperties"), dict) and (
                "properties" in obj or len(obj["patternProperties"]) > 1):
            return True
        all_of = obj.get("allOf")
        if isinstance(all_of, list) and len(all_of) >= 2:
            return True
        for value in obj.values():
            if isinstance(value, dict) and check(value):
                return True
            if isinstance(value, list) and any(
                    isinstance(item, dict) and check(item) for item in value):
                return True
        return False

    return isinstance(schema, dict) and check(schema)


def analyse(schema: Any) -> EngineView:
    """What vLLM is sent for `schema`, and what it will not enforce as written."""
    view = EngineView(grammar=None)
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
    if _length_beside_pattern(node) and ("pattern" in node or known_format):
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
    ref = node.get("$ref")
    if isinstance(ref, str) and not ref.startswith("#"):
        view.unenforced.append(f"{where}: non-local $ref")
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
        if isinstance(names, dict) and _length_beside_pattern(names):
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


def _compilable_pattern(pattern: str, what: str, view: EngineView) -> str | None:
    """`pattern` as xgrammar can compile it: large repeats split, or None (left out)."""
    result = split_large_repeats(pattern)
    if result is None:
        view.unenforced.append(
            f"{what} {pattern!r} (a repeat count above {engine_regex.REPEAT_LIMIT} that "
            f"xgrammar 0.2.8 cannot compile, too large to split in "
            f"{engine_regex.MAX_REPEAT_PIECES}; not sent to vLLM)")
        return None
    rewritten, found = result
    if found:
        view.rewritten.append(
            f"{what} {pattern!r} (repeat {', '.join(found)} above xgrammar's "
            f"{engine_regex.REPEAT_LIMIT}: "
            f"sent to vLLM as {rewritten!r}, which matches the same strings)")
    return rewritten


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")
