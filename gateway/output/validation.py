"""Strict checking of the model's answer: an RFC 8259 parse, then JSON Schema validation.

xgrammar 0.2.8 lets raw control characters (U+0000-U+001F) into strings bounded by
`maxLength` (xgrammar#800). Inside a JSON string such a character has exactly one
escaped spelling, so escaping it is the one repair that cannot change the meaning;
it is the only repair the gateway makes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from gateway.output.checks import run_checks
from gateway.output.registry import RegisteredSchema

# The characters the repair's scanner stops at: everything between them is copied as is,
# so the scan is one pass over the text (the old regex rescanned an unterminated string
# from every quote in it: quadratic, 3 s for 32k characters of `\"`).
_SPECIAL_RE = re.compile(r'["\\\x00-\x1f]')
_SHORT_ESCAPES = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_MAX_RAW_OUTPUT = 16_384  # raw output echoed in an error body, for debugging
_MAX_REASON = 1_000  # jsonschema-rs quotes the failing value in its message
# orjson reads an integer past 64 bits as a float (18446744073709551617 became ...616.0);
# such a literal has 19 digits or more (-2**63 - 1 has 19), and only then is the answer
# read again exactly.
_LONG_INTEGER_RE = re.compile(r"[0-9]{19}")


class Outcome(StrEnum):
    PASSED = "passed"
    REPAIRED = "repaired"


@dataclass(frozen=True)
class CheckedOutput:
    text: str
    document: Any
    outcome: Outcome


@dataclass(frozen=True)
class CheckFailure(Exception):
    """Why an answer is not acceptable; `pointer` is a JSON pointer into the answer."""

    reason: str
    pointer: str
    constraint: str
    raw_output: str
    truncated: bool = False

    def __str__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        where = f" at {self.pointer}" if self.pointer else ""
        return f"{self.reason}{where} ({self.constraint})"

    def error_extra(self) -> dict[str, Any]:
        raw = self.raw_output
        return {
            "pointer": self.pointer,
            "constraint": self.constraint,
            "raw_output": raw[:_MAX_RAW_OUTPUT],
            "raw_output_truncated": len(raw) > _MAX_RAW_OUTPUT,
        }


def escape_controls_in_strings(text: str) -> str:
    """Escape raw control characters inside JSON string literals, and nowhere else.

    Not when one follows a backslash: `\\<LF>` is no escape, and no spelling of it is
    certainly what was meant (the text is returned as it is, and fails its parse)."""
    escaper = StreamingEscaper()
    fixed = escaper.feed(text)
    return text if escaper.unrepairable else fixed


class StreamingEscaper:
    """The same repair for a stream of text pieces, carrying string state across pieces.
    Linear: it visits only quotes, backslashes and control characters (`scanned` counts
    them), and copies the runs between them whole."""

    def __init__(self) -> None:
        self.in_string = False
        self.escaped = False
        self.repaired = False
        self.unrepairable = False  # a control character right after an escaping backslash
        self.scanned = 0

    def feed(self, piece: str) -> str:
        out: list[str] = []
        start = 0
        escape_at = 0 if self.escaped else -1  # where the character a backslash escapes is
        for match in _SPECIAL_RE.finditer(piece):
            self.scanned += 1
            at = match.start()
            char = piece[at]
            if at == escape_at:
                if char < " ":
                    self.unrepairable = True  # left as it is: the parse fails on it
                continue
            if char == "\\":
                escape_at = at + 1  # outside a string too: that text fails its parse anyway
            elif char == '"':
                self.in_string = not self.in_string
            elif self.in_string:  # a raw control character inside a string
                self.repaired = True
                out.append(piece[start:at])
                out.append(_SHORT_ESCAPES.get(char) or f"\\u{ord(char):04x}")
                start = at + 1
        self.escaped = escape_at == len(piece)
        out.append(piece[start:])
        return "".join(out)


def parse_strict(text: str) -> Any:
    """RFC 8259: no raw control characters in strings, no NaN, valid UTF-8. Raises CheckFailure."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise CheckFailure(
            reason=f"not valid JSON: {exc.msg}",
            pointer="",
            constraint=f"RFC 8259 at character {exc.pos}",
            raw_output=text,
        ) from None


def _pointer(path: Iterable[Any]) -> str:
    """RFC 6901: "" is the whole document."""
    return "".join(f"/{str(p).replace('~', '~0').replace('/', '~1')}" for p in path)


def exact_document(document: Any, text: str) -> Any:
    """`document` with its integers exact: orjson reads one past 64 bits as a float, which
    would then be validated as the wrong number (`multipleOf: 2` passed 2**64 + 1). The text
    is already known to be strict JSON; only one with a 19-digit run is read again, by the
    standard library, whose integers are exact. One longer than Python reads (4300 digits),
    or a document nested past its recursion limit, is refused: it cannot be checked."""
    if _LONG_INTEGER_RE.search(text) is None:
        return document
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CheckFailure(
            reason=f"the answer has a number that cannot be checked exactly: {exc}",
            pointer="",
            constraint="exact integers",
            raw_output=text,
        ) from None


def validate_document(document: Any, schema: RegisteredSchema, text: str) -> None:
    """jsonschema-rs decides and explains. Its first error names the instance path, the
    schema path (whose last step is the keyword) and a message; its regular expressions
    run in linear time (Python's `re` backtracks: `^(a+)+$` against 27 a's and a `!`
    held the event loop for seconds while a failure was being explained)."""
    if schema.fast_validator.is_valid(document):
        return
    error = next(iter(schema.fast_validator.iter_errors(document)), None)
    schema_path = list(error.schema_path) if error is not None else []
    reason = error.message if error is not None else "the answer does not match the schema"
    if len(reason) > _MAX_REASON:
        reason = reason[:_MAX_REASON] + "..."
    raise CheckFailure(
        reason=reason,
        pointer=_pointer(error.instance_path) if error is not None else "",
        constraint=f"{schema_path[-1] if schema_path else 'schema'} at "
        f"schema#{_pointer(schema_path)}",
        raw_output=text,
    )


def raise_first_finding(document: Any, schema: RegisteredSchema, text: str) -> None:
    """The schema file's semantic checks; CheckFailure for the first finding."""
    findings = run_checks(document, schema.checks, schema.ref)
    if findings:
        first, more = findings[0], len(findings) - 1
        raise CheckFailure(
            reason=first.message + (f" (and {more} more finding{'s' * (more > 1)})"
                                    if more else ""),
            pointer=first.pointer,
            constraint=f"check {first.check} at {first.at}",
            raw_output=text,
        )


def refuse_repeated_names(document: Any, text: str) -> None:
    """RFC 8259 leaves an object with a name twice to the reader: orjson keeps the last
    value, others the first, so `{"name": "class", "name": "x"}` was checked as `x` and
    could be read as `class`. Every member has a `:`, so as many members parsed as colons
    in the text means none was lost (most answers: 2 µs); else, colons inside strings or a
    name twice, the standard library reads it again and tells (~17 µs a KB)."""
    members, stack = 0, [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            members += len(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    if members == text.count(":"):
        return
    repeated: list[str] = []

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                repeated.append(name)
            seen.add(name)
        return dict(pairs)

    try:
        json.loads(text, object_pairs_hook=unique)
    except (ValueError, RecursionError) as exc:  # past Python's digits or nesting
        raise CheckFailure(reason=f"the answer cannot be checked for repeated names: {exc}",
                           pointer="", constraint="unique member names",
                           raw_output=text) from None
    if repeated:
        raise CheckFailure(reason=f"an object in the answer has {repeated[0]!r} twice "
                           "(RFC 8259: readers disagree on which value counts)", pointer="",
                           constraint="unique member names", raw_output=text)


def _number_may_go_on(document: Any, text: str) -> bool:
    """A cut answer is invalid JSON, but for one shape: a number at the top level, which
    is valid at any digit (`12` of `1234`). One followed by a space ended there."""
    return (isinstance(document, int | float) and not isinstance(document, bool)
            and text[-1:].isdigit())


def check_output(
    text: str | None, schema: RegisteredSchema | None, *, repair: bool, truncated: bool = False
) -> CheckedOutput:
    """Parse and validate one answer. `schema=None` checks only that it is a JSON object
    (json_object).

    Raises CheckFailure; `truncated` (finish_reason "length") is carried into the failure so
    the caller can report a cut-off answer as such.
    """
    if text is None:
        raise CheckFailure("the model returned no content", "", "content", "", truncated)
    outcome = Outcome.PASSED
    try:
        try:
            document = parse_strict(text)
        except CheckFailure:
            fixed = escape_controls_in_strings(text) if repair else text
            if fixed == text:
                raise
            document = parse_strict(fixed)
            text, outcome = fixed, Outcome.REPAIRED
        refuse_repeated_names(document, text)
        if truncated and _number_may_go_on(document, text):
            raise CheckFailure(reason="a number at the top level, cut where more digits could "
                               "follow", pointer="", constraint="max_tokens", raw_output=text)
        if schema is not None:
            document = exact_document(document, text)
            validate_document(document, schema, text)
            if schema.checks:  # checks beyond JSON Schema (gateway/output/checks.py)
                raise_first_finding(document, schema, text)
        elif not isinstance(document, dict):  # json_object: OpenAI's JSON mode is an object
            raise CheckFailure(reason="the answer is JSON but not a JSON object", pointer="",
                               constraint="json_object", raw_output=text)
    except CheckFailure as failure:
        if truncated:
            raise CheckFailure(
                reason="the answer was cut off by max_tokens before the JSON document was "
                f"complete ({failure.reason})",
                pointer=failure.pointer,
                constraint="max_tokens",
                raw_output=failure.raw_output,
                truncated=True,
            ) from None
        raise
    return CheckedOutput(text=text, document=document, outcome=outcome)
