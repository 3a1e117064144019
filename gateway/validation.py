"""Strict checking of the model's answer: an RFC 8259 parse, then JSON Schema validation.

xgrammar 0.2.8 lets raw control characters (U+0000-U+001F) into strings bounded by
`maxLength` (xgrammar#800). Inside a JSON string such a character has exactly one
escaped spelling, so escaping it is the one repair that cannot change the meaning;
it is the only repair the gateway makes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from jsonschema.exceptions import best_match

from gateway.checks import run_checks
from gateway.registry import RegisteredSchema

_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_CONTROL_RE = re.compile(r"[\x00-\x1f]")
# A control character after an odd run of backslashes: the last backslash escapes it.
_ESCAPED_CONTROL_RE = re.compile(r"(?<!\\)(?:\\\\)*\\[\x00-\x1f]")
_SHORT_ESCAPES = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_MAX_RAW_OUTPUT = 16_384  # raw output echoed in an error body, for debugging


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


def _escape_control(match: re.Match[str]) -> str:
    char = match.group()
    return _SHORT_ESCAPES.get(char) or f"\\u{ord(char):04x}"


def escape_controls_in_strings(text: str) -> str:
    """Escape raw control characters inside JSON string literals, and nowhere else.

    Not when one follows a backslash: `\\<LF>` is no escape, and no spelling of it is
    certainly what was meant (the text is returned as it is, and fails its parse)."""
    if _ESCAPED_CONTROL_RE.search(text):
        return text
    return _STRING_RE.sub(lambda m: _CONTROL_RE.sub(_escape_control, m.group()), text)


class StreamingEscaper:
    """The same repair for a stream of text pieces, carrying string state across pieces."""

    def __init__(self) -> None:
        self.in_string = False
        self.escaped = False
        self.repaired = False

    def feed(self, piece: str) -> str:
        out: list[str] = []
        for char in piece:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
                elif char < " ":
                    self.repaired = True
                    out.append(_SHORT_ESCAPES.get(char) or f"\\u{ord(char):04x}")
                    continue
            elif char == '"':
                self.in_string = True
            out.append(char)
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


def validate_document(document: Any, schema: RegisteredSchema, text: str) -> None:
    """jsonschema-rs decides; python-jsonschema only words the failure, as its `best_match`
    picks the most relevant error. They can disagree (Python's `re` lets `$` match before
    a final newline; its format checks need libraries not installed): rs still decides."""
    if schema.fast_validator.is_valid(document):
        return
    try:
        error = best_match(schema.validator.iter_errors(document))
    except RecursionError:  # a recursive schema and a deep answer: rs words it instead
        error = None
    if error is not None:
        raise CheckFailure(
            reason=error.message,
            pointer=_pointer(error.absolute_path),
            constraint=f"{error.validator} at schema#{_pointer(error.absolute_schema_path)}",
            raw_output=text,
        )
    fast = next(iter(schema.fast_validator.iter_errors(document)), None)
    schema_path = list(fast.schema_path) if fast is not None else []
    raise CheckFailure(
        reason=fast.message if fast is not None else "the answer does not match the schema",
        pointer=_pointer(fast.instance_path) if fast is not None else "",
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
        if schema is not None:
            validate_document(document, schema, text)
            if schema.checks:  # checks beyond JSON Schema (gateway/checks.py)
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
