"""The named, versioned schema registry.

A schema is a file in `schemas/` (`{"name", "version", "description", "schema",
"output_policy"?, "checks"?}`), loaded and checked once at startup. Anything wrong with a
file stops the server with a `SchemaFileError` naming that file, never a failure at
request time.

Each schema keeps the exact JSON text it is sent upstream with: vLLM caches compiled
grammars by the schema's text, and xgrammar generates properties in the order they are
written, so the text is made once, in file order, and reused byte for byte.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import jsonschema_rs
import orjson

from gateway.errors import InvalidSchemaError, SchemaNotFoundError
from gateway.output.checks import CheckSpecError, CompiledCheck, compile_checks
from gateway.output.engine_rules import EngineView, analyse
from gateway.output.policies import DEFAULT_POLICY, POLICIES
from gateway.settings import OutputPolicy

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_REF_RE = re.compile(r"^(?P<name>[A-Za-z0-9_.-]{1,64})(?:@(?P<version>0|[1-9][0-9]{0,5}))?$")

log = logging.getLogger("gateway.output.registry")

class SchemaFileError(Exception):
    """A schema file is unusable; the message starts with the file's path."""


@dataclass(frozen=True)
class RegisteredSchema:
    name: str
    version: int
    description: str
    schema: Mapping[str, Any]
    output_policy: OutputPolicy
    source: str
    adhoc: bool = False
    # Keywords the grammar will not enforce: validation still does, so this is a warning.
    unenforced: tuple[str, ...] = ()
    # What xgrammar is given, when it is not `schema` itself: an ad-hoc schema without the
    # keywords vLLM refuses to compile (`grammar_schema`). Answers are checked against `schema`.
    grammar: Mapping[str, Any] | None = None
    # Checks beyond JSON Schema (gateway/output/checks.py), run after it passed; from the file.
    checks: tuple[CompiledCheck, ...] = ()
    # The constraint's exact text sent to vLLM (it caches grammars by that text).
    schema_json: bytes = field(init=False, repr=False, compare=False)
    # jsonschema-rs answers "valid?" in about a microsecond and explains a failure (paths,
    # keyword, message); its regular expressions never backtrack (Python's `re` does, on
    # patterns the client writes).
    fast_validator: jsonschema_rs.Draft202012Validator = field(init=False, repr=False,
                                                              compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "schema_json",
                           orjson.dumps(self.schema if self.grammar is None else self.grammar))
        object.__setattr__(self, "fast_validator", _fast_validator(self.schema))

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}" if not self.adhoc else f"{self.name} (ad-hoc)"

    @property
    def metric_label(self) -> str:
        # Ad-hoc names come from requests: one label for all keeps the series few.
        return "(ad-hoc)" if self.adhoc else self.ref

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "output_policy": self.output_policy,
            "checks": [{"check": c.name, "at": list(c.at)} for c in self.checks],
            "schema": self.schema,
        }


def _fast_validator(schema: Mapping[str, Any]) -> jsonschema_rs.Draft202012Validator:
    # offline: a schema's remote $ref must never make the gateway fetch anything.
    return jsonschema_rs.Draft202012Validator(dict(schema), validate_formats=True, offline=True)


def unenforced_keywords(schema: Any) -> list[str]:
    """Where `schema` relies on something xgrammar lets through unchecked, or gets in another
    form, as `path: keyword` (the rules and their sources: `gateway.output.engine_rules`)."""
    return analyse(schema).warnings


def grammar_schema(schema: Any) -> Any:
    """`schema` as vLLM's xgrammar backend can take it: without the keywords vLLM 0.32
    refuses to compile (a 400 for the whole request), its patterns' large repeats split
    (xgrammar's compiler crashes on them), so that the rest is still enforced while
    decoding; the answer is then checked against all of `schema`. Pydantic writes some of
    these (`set[str]` is `uniqueItems`). Several `allOf` members cannot be dropped without
    changing the schema: InvalidSchemaError."""
    return _grammar(analyse(schema))


def _grammar(view: EngineView) -> Any:
    if view.refused:
        raise InvalidSchemaError(f"response_format.json_schema.schema {view.refused[0]}",
                                 param="response_format.json_schema.schema")
    return view.grammar


def meta_error(schema: Any) -> str | None:
    """Why `schema` is not a valid Draft 2020-12 schema (`at /pointer: message`), or None.
    jsonschema-rs checks it against the meta-schema, without backtracking regexes."""
    try:
        # An empty registry: an unknown `$schema` is refused, never fetched (without it,
        # jsonschema-rs GETs the URL a client wrote).
        jsonschema_rs.meta.validate(schema, registry=jsonschema_rs.Registry([]))
    except jsonschema_rs.ValidationError as exc:
        pointer = "/" + "/".join(str(p) for p in exc.instance_path)
        return f"at {pointer}: {exc.message[:1000]}"
    except (ValueError, TypeError, RecursionError, jsonschema_rs.ReferencingError) as exc:
        return str(exc)[:1000]
    return None


def check_json_schema(schema: Any, *, what: str) -> None:
    """Raise InvalidSchemaError unless `schema` is a valid Draft 2020-12 schema."""
    if not isinstance(schema, dict):  # `false` would accept nothing, `true` anything
        raise InvalidSchemaError(f"{what} must be a JSON object",
                                 param="response_format.json_schema.schema")
    error = meta_error(schema)
    if error is not None:
        raise InvalidSchemaError(
            f"{what} is not a valid JSON Schema (Draft 2020-12): {error}",
            param="response_format.json_schema.schema",
        )


def adhoc_schema(name: str, schema: Any, policy: OutputPolicy) -> RegisteredSchema:
    check_json_schema(schema, what="response_format.json_schema.schema")
    try:  # one reading gives both what vLLM is sent and what it will not enforce
        view = analyse(schema)
    except RecursionError:
        raise InvalidSchemaError("response_format.json_schema.schema is nested too deeply",
                                 param="response_format.json_schema.schema") from None
    relaxed = _grammar(view)
    try:
        return RegisteredSchema(
            name=name,
            version=0,
            description="ad-hoc schema sent with the request",
            schema=schema,
            output_policy=policy,
            source="request",
            adhoc=True,
            unenforced=tuple(view.warnings),
            grammar=None if relaxed == schema else relaxed,
        )
    except (ValueError, TypeError, RecursionError, jsonschema_rs.ReferencingError) as exc:
        raise InvalidSchemaError(
            f"response_format.json_schema.schema cannot be used: {exc}",
            param="response_format.json_schema.schema",
        ) from None


class SchemaRegistry:
    def __init__(self, schemas: list[RegisteredSchema]) -> None:
        self._by_name: dict[str, dict[int, RegisteredSchema]] = {}
        for item in schemas:
            self._by_name.setdefault(item.name, {})[item.version] = item

    @classmethod
    def load(cls, directory: Path) -> SchemaRegistry:
        if not directory.is_dir():
            raise SchemaFileError(f"{directory}: schema directory does not exist")
        seen: dict[tuple[str, int], Path] = {}
        schemas: list[RegisteredSchema] = []
        for path in sorted(directory.glob("*.json")):
            item = _load_file(path)
            if (item.name, item.version) in seen:
                raise SchemaFileError(
                    f"{path}: {item.ref} is already defined in {seen[(item.name, item.version)]}"
                )
            seen[(item.name, item.version)] = path
            schemas.append(item)
        if not schemas:
            raise SchemaFileError(f"{directory}: no schema files (*.json) found")
        return cls(schemas)

    def __iter__(self) -> Iterator[RegisteredSchema]:
        for versions in self._by_name.values():
            yield from (versions[v] for v in sorted(versions))

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def versions(self, name: str) -> list[RegisteredSchema]:
        versions = self._by_name.get(name)
        if not versions:
            raise SchemaNotFoundError(f"Schema {name!r} is not registered", param="name")
        return [versions[v] for v in sorted(versions)]

    def resolve(self, ref: str, *, param: str | None = None,
                visible: Callable[[str], bool] | None = None) -> RegisteredSchema:
        """`name` (newest version) or `name@version`. The 404 for an unknown one lists the
        registered names `visible` allows (a key's scope: it must not learn the others)."""
        match = _REF_RE.fullmatch(ref)
        versions = self._by_name.get(match["name"]) if match else None
        if match is None or not versions:
            known = ", ".join(n for n in self.names() if visible is None or visible(n))
            raise SchemaNotFoundError(
                f"Schema {ref!r} is not registered (registered: {known})", param=param
            )
        if match["version"] is None:
            return versions[max(versions)]
        version = int(match["version"])
        if version not in versions:
            have = ", ".join(f"{match['name']}@{v}" for v in sorted(versions))
            raise SchemaNotFoundError(
                f"Schema {ref!r} is not registered (versions: {have})", param=param
            )
        return versions[version]

    def __contains__(self, ref: str) -> bool:
        try:
            self.resolve(ref)
        except SchemaNotFoundError:
            return False
        return True


def _load_file(path: Path) -> RegisteredSchema:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SchemaFileError(f"{path}: cannot read JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise SchemaFileError(f"{path}: must hold a JSON object")
    data = cast(dict[str, Any], raw)
    unknown = set(data) - {"name", "version", "description", "schema", "output_policy",
                           "checks"}
    if unknown:
        raise SchemaFileError(f"{path}: unknown keys {sorted(unknown)}")
    name, version = data.get("name"), data.get("version")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise SchemaFileError(f"{path}: 'name' must match {_NAME_RE.pattern}")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= 999_999:
        # Six digits at most: `name@version` in requests is read with that bound.
        raise SchemaFileError(f"{path}: 'version' must be an integer from 1 to 999999")
    description = data.get("description")
    if not isinstance(description, str) or not description.strip():
        raise SchemaFileError(f"{path}: 'description' must be a non-empty string")
    policy = data.get("output_policy", DEFAULT_POLICY.name)
    if not isinstance(policy, str) or policy not in POLICIES:
        raise SchemaFileError(f"{path}: 'output_policy' must be one of {list(POLICIES)}")
    schema = data.get("schema")
    if not isinstance(schema, dict):
        raise SchemaFileError(f"{path}: 'schema' must be a JSON object")
    try:  # orjson, which writes what vLLM is sent, stops at 255 levels
        orjson.dumps(schema)
    except orjson.JSONEncodeError as exc:
        why = "is nested too deeply" if "ecursion" in str(exc) else f"cannot be compiled: {exc}"
        raise SchemaFileError(f"{path}: 'schema' {why}") from None
    error = meta_error(schema)
    if error is not None:
        raise SchemaFileError(f"{path}: not a valid JSON Schema (Draft 2020-12): schema {error}")
    view = analyse(schema)
    holes = view.unenforced + view.refused
    if holes:
        raise SchemaFileError(
            f"{path}: uses keywords xgrammar does not enforce while decoding: {'; '.join(holes)}"
        )
    for note in view.rewritten:
        # Enforced all the same (the rewritten pattern matches the same strings): said once
        # here, and in each answer's x-irgw-schema-warnings.
        log.warning("%s: %s", path, note)
    try:
        checks = compile_checks(data.get("checks", []), schema)
    except CheckSpecError as exc:
        raise SchemaFileError(f"{path}: {exc}") from None
    try:  # compiles both validators and the text sent to vLLM
        return RegisteredSchema(
            name=name,
            version=version,
            description=description,
            schema=schema,
            output_policy=cast(OutputPolicy, policy),
            source=str(path),
            unenforced=tuple(view.rewritten),
            grammar=None if view.grammar == schema else view.grammar,
            checks=checks,
        )
    except (ValueError, TypeError, RecursionError, jsonschema_rs.ReferencingError) as exc:
        raise SchemaFileError(f"{path}: schema cannot be compiled: {exc}") from None
