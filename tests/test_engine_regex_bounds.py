"""Splitting a pattern's large repeats costs time and memory in proportion to the pattern,
whatever a client sends in an ad-hoc schema (the split runs on the event loop)."""

from __future__ import annotations

import re

import httpx
import pytest

from gateway.output.engine_regex import split_large_repeats
from tests.conftest import unit_settings
from tests.fake_upstream import FakeUpstream
from tests.gateway_server import running_gateway
from tests.test_adhoc_admission import adhoc_body


@pytest.mark.timeout(60)  # a hang guard: the count was walked down 128 at a time
@pytest.mark.parametrize("pattern", ["a{0,1000000000000000000000}",
                                     "a{1000000000000000000000,}",
                                     "a{1000000000000000000000}"])
def test_a_huge_repeat_count_is_refused_without_counting_it_down(pattern: str) -> None:
    assert split_large_repeats(pattern) is None


@pytest.mark.parametrize("pattern", ["a{" + "9" * 5000 + "}", "a{0," + "9" * 5000 + "}",
                                     "a{" + "9" * 5000 + ",}"])
def test_a_count_longer_than_python_reads_is_too_large_not_an_exception(pattern: str) -> None:
    assert split_large_repeats(pattern) is None


def test_a_split_repeat_inside_another_is_left_out_rather_than_multiplied() -> None:
    # Each nested split copied the inner (already split) unit up to 4 times: 15 levels,
    # ~110 characters, made a pattern of gigabytes.
    pattern = "a"
    for _ in range(3):
        pattern = f"({pattern}){{512}}"
    assert split_large_repeats(pattern) is None
    # One level inside an unsplit repeat is still split.
    assert split_large_repeats("(a{200}){2}") == ("(a{128}a{72}){2}", ["{200}"])


async def test_an_adhoc_pattern_with_an_unreadable_count_is_answered_not_a_500(
        fake: FakeUpstream) -> None:
    schema = {"type": "object", "properties": {
        "s": {"type": "string", "pattern": "^a{" + "9" * 5000 + "}$"}}}
    async with running_gateway(unit_settings(fake.url)) as base, \
            httpx.AsyncClient(base_url=base.url) as client:
        response = await client.post("/v1/chat/completions", json=adhoc_body(schema))
    assert response.status_code < 500, response.text


@pytest.mark.parametrize(("pattern", "sent"), [
    ("\\d{130}", "\\d{128}\\d{2}"),
    ("\\x41{130}", "\\x41{128}\\x41{2}"),  # \xHH: one atom of 4 characters
    ("\\u0041{130}", "\\u0041{128}\\u0041{2}"),  # \uHHHH: 6
    ("\\u{1F600}{130}", "\\u{1F600}{128}\\u{1F600}{2}"),  # \u{...}: up to its brace
    ("\\cA{130}", "\\cA{128}\\cA{2}"),  # \cX: 3
    ("a{2}\\u{1F600}{130}", "a{2}\\u{1F600}{128}\\u{1F600}{2}"),
    ("a{130}\\d", "a{128}a{2}\\d"),  # an escape that ends the pattern
    ("x\\.{130}", "x\\.{128}\\.{2}"),
    ("[\\]a]{130}", "[\\]a]{128}[\\]a]{2}"),  # an escaped `]` does not end the class
    ("[\\x41-\\x5a]{130}", "[\\x41-\\x5a]{128}[\\x41-\\x5a]{2}"),
])
def test_an_escape_is_repeated_whole(pattern: str, sent: str) -> None:
    assert split_large_repeats(pattern) == (sent, ["{130}"])
    for text in ("A" * 130, "]" * 130, "1" * 130, "." * 130, "\x01" * 130):
        if "\\u{" not in pattern and "\\c" not in pattern:  # Python's `re` reads neither
            assert bool(re.fullmatch(pattern, text)) == bool(re.fullmatch(sent, text))


@pytest.mark.parametrize("pattern", [
    "a\\", "a{130}\\", "\\u{1F600", "[a", "[a\\", "[\\", "(a{130}", "a{130})", "a{130",
    "(?=a)b{130}", "{130}", "a|{130}",
])
def test_a_pattern_xgrammar_cannot_read_is_sent_as_it_is(pattern: str) -> None:
    assert split_large_repeats(pattern) == (pattern, [])  # vLLM answers it with a 400


@pytest.mark.parametrize(("pattern", "sent"), [
    ("(?:a{130})", "(?:a{128}a{2})"),  # the group's opening is not an atom to repeat
    ("(?<n>a{130})", "(?<n>a{128}a{2})"),
    ("x(?<n>a{130})", "x(?<n>a{128}a{2})"),
    ("a{256,}", "a{128}a{128,}"),  # no empty `a{0,}` piece: each piece costs rules
])
def test_repeats_inside_groups_and_open_ended_ones_split_as_few_pieces(pattern: str,
                                                                       sent: str) -> None:
    assert split_large_repeats(pattern) == (sent, [pattern[pattern.index("{"):
                                                           pattern.index("}") + 1]])


@pytest.mark.parametrize(("pattern", "sent", "found"), [
    # Lazy quantifiers (xgrammar ignores the `?`) are kept, and what follows them is read.
    ("a*?b{200}", "a*?b{128}b{72}", ["{200}"]),
    ("a??b{130}", "a??b{128}b{2}", ["{130}"]),
    ("a+?", "a+?", []),
    ("x{2}?y{300}", "x{2}?y{128}y{128}y{44}", ["{300}"]),
    ("(?:ab){129}?c*?", "(?:ab){128}(?:ab){1}c*?", ["{129}"]),
    # A literal X is an atom like any other letter.
    ("X{200}", "X{128}X{72}", ["{200}"]),
    # A count with nothing to repeat is xgrammar's to refuse: sent as it is.
    ("({300})", "({300})", []),
    ("a*{300}", "a*{300}", []),
    ("a|{300}", "a|{300}", []),
])
def test_lazy_quantifiers_literals_and_counts_without_an_atom(pattern: str, sent: str,
                                                              found: list[str]) -> None:
    assert split_large_repeats(pattern) == (sent, found)


@pytest.mark.parametrize("pattern", ["a{2}{300}", "a{2}{3}", "a{200}{300}"])
def test_a_count_right_after_a_count_is_sent_as_it_is(pattern: str) -> None:
    # Nothing to repeat (xgrammar refuses it): not split, not an exception.
    assert split_large_repeats(pattern) == (pattern, [])
