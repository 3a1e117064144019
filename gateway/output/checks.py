"""Checks beyond JSON Schema: what an IR answer must also be to be usable as code.

JSON Schema cannot say "a Python identifier that is not a keyword", "unique within its
array" or "parses as a type expression". A schema file names such checks:

    "checks": [
      {"check": "python_identifier", "at": ["/signature/name", "/signature/parameters/*/name"]},
      {"check": "unique", "at": "/signature/parameters/*/name"}
    ]

`at` is a JSON pointer (RFC 6901) into the answer where `*` stands for every item of an
array. The registry compiles the list when it loads the file (an unknown check, or a
pointer that leads nowhere in the schema, stops the server naming the file), and
`gateway.output.validation` runs it after the schema validation passed. A finding is a failed
check like any other: the output policy applies and the 422 names its pointer.

A check function that raises is a gateway bug: `CheckCrashedError` (a 500, logged),
never a pass.
"""

from __future__ import annotations

import ast
import functools
import keyword
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError

log = logging.getLogger("gateway.output.checks")

# A type hint is at most this long (the shipped schemas allow 80 characters): bounds the
# parse and the walk, whatever a schema file allows.
MAX_TYPE_EXPRESSION_CHARS = 200
_TYPE_CACHE_ENTRIES = 4096
_MAX_CHECKS_PER_SCHEMA = 64
_MAX_POINTER_SEGMENTS = 16


class CheckCrashedError(GatewayError):
    """A semantic check raised instead of answering: a bug in the gateway."""

    default_code = "internal_error"


class CheckSpecError(ValueError):
    """A schema file's `checks` cannot be used; the message says why."""


@dataclass(frozen=True)
class Finding:
    pointer: str  # where in the answer (RFC 6901)
    message: str
    check: str
    at: str  # the `at` pattern that found it


# -- the checks: value -> what is wrong with it, or None -------------------------------------

def _not_a_string(value: Any) -> str | None:
    return None if isinstance(value, str) else f"expected a string, got {type(value).__name__}"


def check_python_identifier(value: Any) -> str | None:
    if (wrong := _not_a_string(value)) is not None:
        return wrong
    if not value.isidentifier():
        return f"{value!r} is not a Python identifier"
    if keyword.iskeyword(value):
        return f"{value!r} is a Python keyword, not usable as a name"
    return None


def check_test_function_name(value: Any) -> str | None:
    if (wrong := check_python_identifier(value)) is not None:
        return wrong
    if not value.startswith("test"):
        return f"{value!r} does not start with 'test', so pytest would not collect it"
    return None


def check_dotted_module_name(value: Any) -> str | None:
    if (wrong := _not_a_string(value)) is not None:
        return wrong
    for part in value.split("."):
        if not part.isidentifier() or keyword.iskeyword(part):
            return f"{value!r} is not a dotted Python module name ({part!r} is not a name)"
    return None


def check_python_type(value: Any) -> str | None:
    """A Python type expression, read with `ast` and never evaluated: names, dotted names,
    subscripts (tuples, lists, `...`, literals inside them), `|`, None, string literals."""
    if (wrong := _not_a_string(value)) is not None:
        return wrong
    if len(value) > MAX_TYPE_EXPRESSION_CHARS:  # a dotted name too (as the README says)
        return f"type expression longer than {MAX_TYPE_EXPRESSION_CHARS} characters"
    if value == "None" or all(p.isidentifier() and not keyword.iskeyword(p)
                              for p in value.split(".")):
        return None  # `int`, `Path`, `datetime.date`: most hints, without a parse
    return _parsed_type_problem(value)


@functools.lru_cache(maxsize=_TYPE_CACHE_ENTRIES)
def _parsed_type_problem(value: str) -> str | None:
    # Cached: the same hints (`list[str]`, `dict[str, Any]`) come back on most requests,
    # and a parse is not free (bench/README.md, "Figures the code cites"). Bounded by
    # entries, each at most the length bound.
    if not value.strip():
        return "empty type expression"
    try:
        tree = ast.parse(value.strip(), mode="eval")
    except (SyntaxError, ValueError) as exc:  # ValueError: a NUL character
        return f"{value!r} is not a Python type expression ({getattr(exc, 'msg', exc)})"
    wrong = _type_node(tree.body, inside_subscript=False)
    return None if wrong is None else f"{value!r} is not a Python type expression: {wrong}"


def _dotted(node: ast.expr) -> bool:
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name)


def _type_node(node: ast.expr, *, inside_subscript: bool, value: bool = False) -> str | None:
    """What makes `node` no type expression, or None. `value`: an item of `Literal[...]`
    or `Annotated[...]`'s metadata, where a string is text. Recursion depth is bounded by
    the length bound: each level costs at least one character."""
    if isinstance(node, ast.Name | ast.Attribute):
        return None if _dotted(node) else f"{ast.unparse(node)!r} is not a dotted name"
    if isinstance(node, ast.Constant):
        if node.value is None or (value and isinstance(node.value, str)):
            return None
        if isinstance(node.value, str):
            # A forward reference, which `typing.get_type_hints` evaluates as code: what is
            # inside the quotes must be a type expression too (`"__import__('os')..."`).
            return _parsed_type_problem(node.value)
        if inside_subscript and (node.value is Ellipsis or isinstance(node.value, bool | int)):
            return None  # Callable[..., T], tuple[int, ...], Literal[1, True]
        return f"the constant {node.value!r} is not a type"
    if isinstance(node, ast.Subscript):
        if not _dotted(node.value):
            return f"only a name can be subscripted, not {ast.unparse(node.value)!r}"
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        name = ast.unparse(node.value).rpartition(".")[2]
        for index, item in enumerate(items):
            text = name == "Literal" or (name == "Annotated" and index > 0)
            if (wrong := _type_node(item, inside_subscript=True, value=text)) is not None:
                return wrong
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        # Each side of a union is a type, even inside brackets: `list[int | 1]` raises.
        return (_type_node(node.left, inside_subscript=False)
                or _type_node(node.right, inside_subscript=False))
    if inside_subscript:
        if isinstance(node, ast.List | ast.Tuple):  # Callable[[int], str], tuple[()]
            for item in node.elts:
                if (wrong := _type_node(item, inside_subscript=True)) is not None:
                    return wrong
            return None
        if (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
                and isinstance(node.operand, ast.Constant) and type(node.operand.value) is int):
            return None  # Literal[-1]
        if isinstance(node, ast.Starred) and _dotted(node.value):
            return None  # tuple[*Ts]
    what = {ast.Call: "a call", ast.Lambda: "a lambda", ast.ListComp: "a comprehension",
            ast.SetComp: "a comprehension", ast.DictComp: "a comprehension",
            ast.GeneratorExp: "a comprehension", ast.Tuple: "a bare tuple (use tuple[...])",
            ast.List: "a bare list (use list[...])"}.get(type(node))
    return f"{what or type(node).__name__} is not allowed in a type expression"


ValueCheck = Callable[[Any], str | None]

# name -> check of one value; `unique` is the one check of a group of values.
VALUE_CHECKS: dict[str, ValueCheck] = {
    "python_identifier": check_python_identifier,
    "test_function_name": check_test_function_name,
    "dotted_module_name": check_dotted_module_name,
    "python_type": check_python_type,
}
UNIQUE = "unique"


def known_checks() -> list[str]:
    return sorted([*VALUE_CHECKS, UNIQUE])


# -- pointers with wildcards ------------------------------------------------------------------

def _segments(pattern: str) -> tuple[str, ...]:
    if not isinstance(pattern, str) or not pattern.startswith("/"):
        raise CheckSpecError(f"'at' must be a JSON pointer starting with '/', got {pattern!r}")
    parts = tuple(p.replace("~1", "/").replace("~0", "~") for p in pattern[1:].split("/"))
    if len(parts) > _MAX_POINTER_SEGMENTS:
        raise CheckSpecError(f"'at' {pattern!r} is deeper than {_MAX_POINTER_SEGMENTS} levels")
    return parts


def _escape(part: str | int) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")


Path = tuple[str | int, ...]


def _pointer(path: Path) -> str:
    return "".join(f"/{_escape(part)}" for part in path)


def _matches(document: Any, segments: tuple[str, ...]) -> list[tuple[Path, Any, Path]]:
    """(path, value, group): `group` is the path of the array the last `*` ran over, so
    that `unique` compares the items of one array, not of all arrays at once. Paths stay
    tuples until a finding needs its pointer: this runs on every answer."""
    current: list[tuple[Path, Any, Path]] = [((), document, ())]
    for part in segments:
        found: list[tuple[Path, Any, Path]] = []
        if part == "*":
            for path, node, _group in current:
                if isinstance(node, list):
                    found.extend(((*path, i), item, path) for i, item in enumerate(node))
        else:
            for path, node, group in current:
                if isinstance(node, dict) and part in node:  # an optional field may be absent
                    found.append(((*path, part), node[part], group))
        current = found
    return current


def _values(document: Any, segments: tuple[str, ...]) -> list[tuple[Any, int]]:
    """The values alone, each with the id of the array the last `*` ran over: the walk
    every answer takes. Paths are worked out (`_matches`) only for an answer with a
    finding."""
    current: list[tuple[Any, int]] = [(document, 0)]
    for part in segments:
        found: list[tuple[Any, int]] = []
        if part == "*":
            for node, _group in current:
                if type(node) is list:  # parsed JSON: plain lists and dicts
                    group = id(node)
                    found.extend([(item, group) for item in node])
        else:
            for node, group in current:
                if type(node) is dict and part in node:
                    found.append((node[part], group))
        current = found
    return current


def _schema_at(schema: Mapping[str, Any], segments: tuple[str, ...],
               pattern: str) -> Mapping[str, Any]:
    """The subschema `segments` lead to, following properties, items and local $refs;
    CheckSpecError where they lead nowhere (a typo would make the check check nothing)."""
    node: Any = schema
    for depth, part in enumerate((*segments, None)):
        for _ in range(8):  # a chain of $refs, bounded
            ref = node.get("$ref") if isinstance(node, dict) else None
            if not isinstance(ref, str):
                break
            if not ref.startswith("#/"):
                raise CheckSpecError(f"'at' {pattern!r}: only local $refs can be followed")
            node = schema
            for step in _segments(ref[1:]):
                node = node.get(step) if isinstance(node, dict) else None
        if part is None:
            break
        if not isinstance(node, dict):
            raise CheckSpecError(f"'at' {pattern!r} leads nowhere in the schema")
        if part == "*":
            node = node.get("items")
        else:
            properties = node.get("properties")
            node = properties.get(part) if isinstance(properties, dict) else None
        if not isinstance(node, dict):
            where = "/" + "/".join(segments[: depth + 1])
            raise CheckSpecError(f"'at' {pattern!r}: the schema has nothing at {where}")
    return node


# -- compiled checks --------------------------------------------------------------------------

@dataclass(frozen=True)
class CompiledCheck:
    name: str
    at: tuple[str, ...]  # the patterns as written
    segments: tuple[tuple[str, ...], ...]

    def run(self, document: Any) -> list[Finding]:
        return [] if self._clean(document) else self._findings(document)

    def _clean(self, document: Any) -> bool:
        """True when nothing is wrong, found without building any pointer; False sends the
        answer to `_findings`, which decides (and words) what is wrong, if anything."""
        if self.name == UNIQUE:
            for segments in self.segments:
                seen: set[tuple[int, Any]] = set()
                for value, group in _values(document, segments):
                    key = (group, value)
                    try:
                        if key in seen:
                            return False
                        seen.add(key)
                    except TypeError:  # an unhashable value: the slow path compares reprs
                        return False
            return True
        check = VALUE_CHECKS[self.name]
        return all(check(value) is None for segments in self.segments
                   for value, _group in _values(document, segments))

    def _findings(self, document: Any) -> list[Finding]:
        findings: list[Finding] = []
        for pattern, segments in zip(self.at, self.segments, strict=True):
            if self.name == UNIQUE:
                seen: dict[tuple[Path, str], Path] = {}
                for path, value, group in _matches(document, segments):
                    key = (group, repr(value))
                    if key in seen:
                        findings.append(Finding(_pointer(path), f"duplicate {value!r} (first "
                                                f"at {_pointer(seen[key])}); must be unique",
                                                self.name, pattern))
                    else:
                        seen[key] = path
                continue
            check = VALUE_CHECKS[self.name]
            for path, value, _group in _matches(document, segments):
                if (message := check(value)) is not None:
                    findings.append(Finding(_pointer(path), message, self.name, pattern))
        return findings


def compile_checks(raw: Any, schema: Mapping[str, Any]) -> tuple[CompiledCheck, ...]:
    """A schema file's `checks` field, checked against the names known and the schema."""
    if not isinstance(raw, list) or len(raw) > _MAX_CHECKS_PER_SCHEMA:
        raise CheckSpecError(f"'checks' must be a list of at most {_MAX_CHECKS_PER_SCHEMA} "
                             'objects {"check": NAME, "at": POINTER or [POINTER, ...]}')
    compiled: list[CompiledCheck] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != {"check", "at"}:
            raise CheckSpecError(f"checks[{i}] must be an object with exactly 'check' and 'at'")
        name, at = item["check"], item["at"]
        if name != UNIQUE and name not in VALUE_CHECKS:
            raise CheckSpecError(f"checks[{i}]: unknown check {name!r} (known: "
                                 f"{', '.join(known_checks())})")
        patterns = (at,) if isinstance(at, str) else at
        if not isinstance(patterns, list | tuple) or not patterns:
            raise CheckSpecError(f"checks[{i}]: 'at' must be a pointer or a non-empty list")
        segments = tuple(_segments(p) for p in patterns)
        for pattern, parts in zip(patterns, segments, strict=True):
            target = _schema_at(schema, parts, pattern)
            if name != UNIQUE and target.get("type", "string") != "string":
                raise CheckSpecError(f"checks[{i}]: {name} checks strings, but {pattern!r} "
                                     f"is of type {target.get('type')!r}")
            if name == UNIQUE and "*" not in parts:
                raise CheckSpecError(f"checks[{i}]: unique needs a '*' in {pattern!r} "
                                     "(the array whose items must differ)")
        compiled.append(CompiledCheck(name, tuple(patterns), segments))
    return tuple(compiled)


def run_checks(document: Any, checks: tuple[CompiledCheck, ...], schema_ref: str) -> list[Finding]:
    """Every finding of every check, in the file's order. A check that raises is logged
    and becomes CheckCrashedError: a crashed check must never read as a pass."""
    findings: list[Finding] = []
    for check in checks:
        try:
            findings.extend(check.run(document))
        except Exception as exc:
            log.exception("semantic check %s on %s raised %s: a gateway bug", check.name,
                          schema_ref, type(exc).__name__)
            raise CheckCrashedError(
                f"internal error in the gateway: the {check.name} check of {schema_ref} "
                "failed to run"
            ) from exc
    return findings
