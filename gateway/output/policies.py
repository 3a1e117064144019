"""The output policies: what the gateway does when an answer fails its check.

One table of objects, so that what a policy does is read from its fields and never from a
comparison of its name (issue 18): adding a policy is adding a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The names a schema file, a setting or a request may use (pydantic validates settings
# against it); `POLICIES` has one row for each, in this order (a test keeps them equal).
PolicyName = Literal["repair", "retry", "reask", "error"]


@dataclass(frozen=True, slots=True)
class Policy:
    name: PolicyName
    repairs: bool  # the lossless repair (escaping raw control characters in strings)
    asks_again: bool  # another call to vLLM after a failed check, up to IRGW_MAX_RETRIES
    with_findings: bool  # ...with the failed answer and the findings as a follow-up turn
    # The response's usage: every attempt's tokens summed (True) or the accepted answer's.
    sums_usage: bool
    outcome_after_asking: str  # x-irgw-output (and the metric) when a later attempt passed
    summary: str


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy("repair", repairs=True, asks_again=False, with_findings=False,
                     sums_usage=False, outcome_after_asking="repaired",
                     summary="repair losslessly, else a typed 422"),
        Policy("retry", repairs=True, asks_again=True, with_findings=False,
                     sums_usage=False, outcome_after_asking="retried",
                     summary="repair, else send the same request again"),
        Policy("reask", repairs=True, asks_again=True, with_findings=True,
                     sums_usage=True, outcome_after_asking="reasked",
                     summary="repair, else ask again with the failed answer and the "
                     "validator's findings"),
        Policy("error", repairs=False, asks_again=False, with_findings=False,
                     sums_usage=False, outcome_after_asking="failed",
                     summary="no repair, no retry: any failure is a 422"),
    )
}
DEFAULT_POLICY = POLICIES["repair"]


def policy_named(name: str) -> Policy:
    """The policy called `name`; KeyError names the choices."""
    try:
        return POLICIES[name]
    except KeyError:
        raise KeyError(f"unknown output policy {name!r}; one of {list(POLICIES)}") from None
