"""Validate JSON instances against OpenAI's own OpenAPI spec (test helper).

The spec is OpenAI's ``openapi.yaml`` (OpenAPI 3.1, openai/openai-openapi at f85dbe2, MIT), carried
by the repository as ``tests/data/openai-openapi.yaml`` (``tests/data/README.md`` says where it came
from and how to refresh it), or read from the path in env ``IRGW_OPENAI_SPEC``.

OpenAI's document still carries OpenAPI 3.0 idioms that a JSON Schema 2020-12 validator would
silently misread, so the component schemas are rewritten once before use:

* ``nullable: true`` becomes ``type: [X, "null"]`` (and ``null`` joins any ``enum``/``const``);
  where the schema constrains through ``$ref``/``allOf``/``anyOf``/``oneOf``/``not`` instead of
  ``type`` it is wrapped in ``anyOf: [<schema>, {"type": "null"}]``. Without this rewrite
  ``finish_reason: null`` in a stream chunk would be reported as invalid.
* ``discriminator``, ``example``, ``xml``, ``externalDocs`` and ``x-*`` keys are dropped: they are
  not JSON Schema, and ``x-oaiMeta`` holds large blobs that only bloat error output.

Usage::

    from tests.openai_spec import errors, validate

    validate("CreateChatCompletionResponse", body)   # AssertionError listing every violation
    assert errors("ErrorResponse", body) == []
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = ["SPEC_URI", "component_names", "errors", "spec_path", "validate"]

# A fixed, non-resolvable base URI: the spec's own refs are document-relative ("#/components/...")
# so they resolve against this, and nothing is ever fetched over the network.
SPEC_URI = "urn:ir-gateway:openai-openapi"

# The spec is ~3 MB of YAML; the C loader parses it in ~1.5 s, the pure-Python one in ~20 s.
_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Keywords whose values are (maps of / lists of) subschemas. Only these are descended into, so a
# property *named* "nullable" or "example" is never mistaken for the keyword.
_SUBSCHEMA_MAPS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
_SUBSCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SUBSCHEMA_SINGLE = frozenset(
    {
        "items",
        "additionalItems",
        "additionalProperties",
        "unevaluatedItems",
        "unevaluatedProperties",
        "contains",
        "propertyNames",
        "not",
        "if",
        "then",
        "else",
    }
)
_DROPPED = frozenset({"nullable", "discriminator", "example", "xml", "externalDocs"})
# Keywords that can reject null even when ``type`` allows it.
_APPLICATORS = frozenset({"$ref", "allOf", "anyOf", "oneOf", "not"})
_ANNOTATIONS = frozenset({"title", "description", "deprecated", "default", "readOnly", "writeOnly"})

_MAX_MESSAGE = 300


def spec_path() -> Path:
    """Where the spec is read from: ``$IRGW_OPENAI_SPEC`` or the repository's own copy."""
    override = os.environ.get("IRGW_OPENAI_SPEC")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent / "data" / "openai-openapi.yaml"


def _make_nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if _APPLICATORS & schema.keys():
        # Widening "type" would not help here: the $ref/allOf/... target still rejects null.
        outer = {k: v for k, v in schema.items() if k in _ANNOTATIONS}
        inner = {k: v for k, v in schema.items() if k not in _ANNOTATIONS}
        return {**outer, "anyOf": [inner, {"type": "null"}]}
    out = dict(schema)
    kind = out.get("type")
    if isinstance(kind, str) and kind != "null":
        out["type"] = [kind, "null"]
    elif isinstance(kind, list) and "null" not in kind:
        out["type"] = [*kind, "null"]
    if "enum" in out and None not in out["enum"]:
        out["enum"] = [*out["enum"], None]
    if "const" in out and out["const"] is not None:
        out["enum"] = [out.pop("const"), None]
    return out


def _convert(schema: Any) -> Any:
    """Rewrite one OpenAPI schema object into plain JSON Schema 2020-12 (recursively)."""
    if not isinstance(schema, dict):
        return schema  # boolean schemas
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED or key.startswith("x-"):
            continue
        if key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _convert(sub) for name, sub in value.items()}
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            out[key] = [_convert(sub) for sub in value]
        elif key in _SUBSCHEMA_SINGLE:
            out[key] = _convert(value)
        else:
            out[key] = value
    if schema.get("nullable") is True:
        out = _make_nullable(out)
    return out


@functools.cache
def _schemas() -> dict[str, Any]:
    path = spec_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"OpenAI OpenAPI spec not found at {path} (set IRGW_OPENAI_SPEC to override)"
        )
    with path.open("rb") as fh:
        document = yaml.load(fh, Loader=_Loader)
    raw = document["components"]["schemas"]
    return {name: _convert(schema) for name, schema in raw.items()}


@functools.cache
def _registry() -> Registry[Any]:
    # Only components.schemas is kept: every $ref in it points back into components.schemas, and
    # leaving out "paths" keeps the processed document small.
    document = {"components": {"schemas": _schemas()}}
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    return Registry().with_resource(SPEC_URI, resource)


@functools.cache
def _validator(component: str) -> Draft202012Validator:
    names = _schemas()
    if component not in names:
        close = difflib.get_close_matches(component, names, n=5)
        raise ValueError(f"unknown OpenAI component schema {component!r}; close matches: {close}")
    root = {"$ref": f"{SPEC_URI}#/components/schemas/{component}"}
    return Draft202012Validator(root, registry=_registry())


def component_names() -> list[str]:
    """All component schema names in the spec, sorted."""
    return sorted(_schemas())


def _pointer(path: Iterable[Any]) -> str:
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in path]
    return "/" + "/".join(parts) if parts else "(root)"


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _describe(error: ValidationError) -> str:
    line = f"{_pointer(error.absolute_path)}: {_shorten(error.message)}"
    if error.context:
        # anyOf/oneOf failures only say "not valid under any of the given schemas"; the closest
        # branch's complaint is what tells a reader what was actually wrong.
        hint = best_match(error.context)
        if hint is not None:
            line += f" [closest: {_pointer(hint.absolute_path)}: {_shorten(hint.message)}]"
    return line


def errors(component: str, instance: object) -> list[str]:
    """Every violation of ``components/schemas/<component>`` as ``"<json-pointer>: <message>"``."""
    found = _validator(component).iter_errors(instance)
    ordered = sorted(found, key=lambda e: ([str(p) for p in e.absolute_path], e.message))
    return [_describe(e) for e in ordered]


def validate(component: str, instance: object) -> None:
    """Assert that ``instance`` conforms to OpenAI's ``component`` schema, listing all errors."""
    problems = errors(component, instance)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise AssertionError(
            f"instance does not match OpenAI schema {component!r} "
            f"({len(problems)} error(s)):\n{listing}"
        )
