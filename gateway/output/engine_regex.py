"""Regular expressions read the way xgrammar 0.2.8's RegexConverter reads them, to find
and split the repeat counts its compiler cannot take (see `gateway.output.engine_rules`).

xgrammar's RepetitionRangeExpander (cpp/grammar_functor.cc, `kUnzipThreshold = 128`) unrolls
`{m,n}` only when n <= 128 (or m <= 128 with no upper bound); larger counts fail
`Check failed: (... per_rule_fsm_hashes[ref_rule_id].has_value())` (grammar_functor.cc:3567)
once compiled with the grammar cache vLLM turns on. `X{m,n}` is sent as consecutive repeats of
X whose counts add up to m..n, each within 128: the same strings.
"""

from __future__ import annotations

import re

REPEAT_LIMIT = 128
# A repeat is split into at most this many pieces (counts up to 512): each piece unrolls
# into about 128 grammar rules, and vLLM compiles them on its GPU worker's time.
MAX_REPEAT_PIECES = 4

_NAMED_GROUP_RE = re.compile(r"\?<[A-Za-z]*>")
_BOUNDS_RE = re.compile(r"(?P<low>[0-9]+)(?P<comma>,(?P<high>[0-9]*))?")
# Any count with more digits than this is past what can be split (and past what Python's
# int() reads: 4300 digits raise ValueError); read no further.
_MAX_COUNT_DIGITS = 9


class _RegexError(Exception):
    """Something xgrammar's converter itself refuses: vLLM answers 400, nothing to fix."""


def split_large_repeats(pattern: str) -> tuple[str, list[str]] | None:
    """`pattern` with each repeat count above REPEAT_LIMIT split into pieces that xgrammar
    compiles (`X{1,255}` -> `X{1,128}X{0,127}`: the same strings), and the repeats found.
    None when a repeat would need more than MAX_REPEAT_PIECES pieces. A pattern xgrammar
    cannot read at all is returned as it is (vLLM refuses it with a 400 before compiling)."""
    try:
        return _split(pattern)
    except _RegexError:
        return pattern, []
    except _TooLarge:
        return None


class _TooLarge(Exception):
    pass


def _split(pattern: str) -> tuple[str, list[str]]:
    out: list[str] = []  # pieces of the rewritten pattern
    groups: list[int] = []  # index in `out` where each open group starts
    atom: int | None = None  # index in `out` where the last quantifiable atom starts
    found: list[str] = []
    split_at = -1  # where in `out` the last split repeat's pieces start
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            end = _escape_end(pattern, i)
            atom = len(out)
            out.append(pattern[i:end])
            i = end
        elif c == "[":
            end = _class_end(pattern, i)
            atom = len(out)
            out.append(pattern[i:end])
            i = end
        elif c == "(":
            groups.append(len(out))
            end = _group_start_end(pattern, i)
            out.append(pattern[i:end])
            atom = None
            i = end
        elif c == ")":
            if not groups:
                raise _RegexError
            out.append(c)
            atom = groups.pop()
            i += 1
        elif c in "*+?":
            out.append(c)
            i += 1
            if i < n and pattern[i] == "?":  # lazy: xgrammar ignores it
                out.append("?")
                i += 1
            atom = None
        elif c == "{":
            end = pattern.find("}", i)
            if end < 0:
                raise _RegexError
            low, high = _bounds(pattern[i + 1:end])
            i = end + 1
            lazy = pattern.startswith("?", i)
            if lazy:
                i += 1
            if atom is None:
                raise _RegexError
            if (high is not None and high > REPEAT_LIMIT) or (high is None and low > REPEAT_LIMIT):
                if split_at >= atom:
                    # A split repeat inside this one: each level would copy the pieces
                    # below it up to 4 times (15 levels of ~110 characters: gigabytes).
                    raise _TooLarge
                split_at = atom
                found.append(pattern[pattern.rfind("{", 0, end):end + 1])
                unit = "".join(out[atom:])
                del out[atom:]
                out.extend(_pieces(unit, low, high))
            else:
                out.append(pattern[pattern.rfind("{", 0, end):end + 1] + ("?" if lazy else ""))
            atom = None
        else:  # ^ $ | . and literals
            out.append(c)
            atom = None if c in "^$|" else len(out) - 1
            i += 1
    if groups:
        raise _RegexError
    return "".join(out), found


def _group_start_end(pattern: str, i: int) -> int:
    """Where a group's content starts: `(`, `(?:` or `(?<name>`; xgrammar refuses others."""
    if not pattern.startswith("?", i + 1):
        return i + 1
    if pattern.startswith("?:", i + 1):
        return i + 3
    match = _NAMED_GROUP_RE.match(pattern, i + 1)
    if match is None:  # lookarounds, flags
        raise _RegexError
    return match.end()


def _escape_end(pattern: str, i: int) -> int:
    if i + 1 >= len(pattern):
        raise _RegexError
    kind = pattern[i + 1]
    if kind == "u" and pattern.startswith("{", i + 2):
        end = pattern.find("}", i + 2)
        if end < 0:
            raise _RegexError
        return end + 1
    return i + {"u": 6, "x": 4, "c": 3}.get(kind, 2)


def _class_end(pattern: str, i: int) -> int:
    j = i + 1
    while j < len(pattern) and pattern[j] != "]":
        j = _escape_end(pattern, j) if pattern[j] == "\\" else j + 1
    if j >= len(pattern):
        raise _RegexError
    return j + 1


def _bounds(text: str) -> tuple[int, int | None]:
    """`m`, `m,` or `m,n` (ASCII digits only, as xgrammar reads them)."""
    match = _BOUNDS_RE.fullmatch(text)
    if match is None:
        raise _RegexError
    if any(len(part.lstrip("0")) > _MAX_COUNT_DIGITS for part in match.group("low", "high")
           if part):
        raise _TooLarge
    low = int(match["low"])
    high = low if match["comma"] is None else (int(match["high"]) if match["high"] else None)
    if high is not None and high < low:
        raise _RegexError
    return low, high


def _pieces(unit: str, low: int, high: int | None) -> list[str]:
    """`unit{low,high}` as consecutive repeats of `unit`, each within REPEAT_LIMIT: counts
    add up, so the concatenation matches exactly the same strings."""
    # Counted first: a client's count (`X{0,10**20}`) is never walked down 128 at a time.
    if (low if high is None else high) > REPEAT_LIMIT * MAX_REPEAT_PIECES:
        raise _TooLarge
    pieces: list[tuple[int, int | None]] = []
    if high is None:  # X{low,}: X{128}... then X{rest,} with rest <= 128
        while low > REPEAT_LIMIT:
            pieces.append((REPEAT_LIMIT, REPEAT_LIMIT))
            low -= REPEAT_LIMIT
        pieces.append((low, None))
    else:
        while high > 0:
            top = min(high, REPEAT_LIMIT)
            bottom = min(low, top)
            pieces.append((bottom, top))
            high -= top
            low -= bottom
    if len(pieces) > MAX_REPEAT_PIECES:
        raise _TooLarge
    return [unit + _quantifier(a, b) for a, b in pieces]


def _quantifier(low: int, high: int | None) -> str:
    if high is None:
        return f"{{{low},}}"
    return f"{{{low}}}" if low == high else f"{{{low},{high}}}"

