"""The limiter's interfaces, and what every quota store shares: verdicts, headers, errors.

Limits are token buckets refilled continuously (the same arithmetic as GCRA): a bucket
holds at most the per-minute limit, so a key with `rpm=50` can burst 50 requests and
then gets one every 1.2 s; there is no window edge to double-burst across.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.access.auth import Principal
from gateway.errors import InvalidRequestError, RateLimitError

WINDOW_S = 60.0
# Float slack when comparing bucket levels, far below one token.
EPSILON = 1e-6
# A concurrency refusal has no computable wait; one second is a polite guess.
CONCURRENCY_RETRY_S = 1.0

AsyncCallback = Callable[[], Awaitable[None]]


class Admission:
    """A request let through. Call `settle` once usage is known, `release` in `finally`."""

    def __init__(
        self,
        headers: dict[str, str],
        *,
        settle: Callable[[int | None], Awaitable[None]] | None = None,
        release: AsyncCallback | None = None,
        cancel: AsyncCallback | None = None,
        take: Callable[[int], Awaitable[bool]] | None = None,
    ) -> None:
        self.headers = headers
        self._settle = settle
        self._take = take
        self._releases: list[AsyncCallback] = [release] if release is not None else []
        self._cancel = cancel
        self._settled = False
        self._released = False

    async def settle(self, actual_tokens: int | None) -> None:
        """Charge real usage against the reservation; `None` refunds the whole reservation.

        Never called: the estimate stays charged, which errs on the safe side.
        """
        if self._settled:
            return
        self._settled = True
        if self._settle is not None:
            await self._settle(actual_tokens)

    async def reserve(self, tokens: int) -> bool:
        """Reserve `tokens` more for this request (a retry, before it runs) if the key's
        token bucket holds them now; they are settled with the rest. False: no room, the
        attempt must not run (it would put the key into debt)."""
        if self._settled:
            return False
        return True if self._take is None else await self._take(tokens)

    async def release(self) -> None:
        """Free the key's concurrency slot and the global in-flight slot."""
        if self._released:
            return
        self._released = True
        for release in reversed(self._releases):
            await release()

    async def finish(self, actual_tokens: int | None) -> None:
        """`settle`, then `release`: what every request does once, when it is over. The
        slots are freed even if settling fails or is cancelled (a stalled Redis, shutdown):
        a slot held forever would lock the key out."""
        try:
            await self.settle(actual_tokens)
        finally:
            await self.release()

    async def cancel(self) -> None:
        """The request never reached the upstream: give back everything, then release."""
        try:
            if not self._settled:
                self._settled = True
                if self._cancel is not None:
                    await self._cancel()
                elif self._settle is not None:
                    await self._settle(None)
        finally:
            await self.release()

    def add_release(self, release: AsyncCallback) -> None:
        """Run `release` too when this admission is released (before the earlier ones)."""
        self._releases.append(release)


class AdmissionControl(Protocol):
    """What a route asks of the limits: `Limiter` (ratelimit/limiter.py), or a wrapper of one
    (access/budgets.BudgetedLimiter)."""

    async def admit(self, principal: Principal, estimated_tokens: int) -> Admission:
        """Admit, or raise `RateLimitError` (429: a key limit), `OverloadedError` (503: the
        in-flight cap, or Redis down with the `closed` policy) or `InvalidRequestError`
        (400: `estimated_tokens` exceeds the key's TPM, so no wait would help).

        `estimated_tokens` is what one call to vLLM may cost: the prompt estimate plus
        n x prompts x the `max_tokens` that will be sent (gateway/generation/budget.py). A retry
        reserves its own with `Admission.reserve` before it runs.
        """
        ...

    async def admit_read(self, principal: Principal) -> dict[str, str]:
        """Count one request against the key's requests per minute only (no tokens, no
        concurrency or in-flight slot): a read that costs little but is not free. Raises
        `RateLimitError` when out; returns the `x-ratelimit-*` headers."""
        ...

    async def aclose(self) -> None: ...


class QuotaStore(Protocol):
    """Where a key's RPM, TPM and concurrency are kept: the one thing a limiter backend is
    (`MemoryQuotas`, `RedisQuotas`, `FallbackQuotas`). The `Limiter` runs the guards and the
    in-flight gate around it."""

    async def admit(self, principal: Principal, estimated_tokens: int) -> Admission:
        """Check every limit the key has and commit all of them or none: an `Admission`
        whose settle, cancel, reserve and release act on what it took (headers from
        `ratelimit_headers`), or `RateLimitError` from `rate_limit_error`. Only called for a
        key with limits and with tokens that fit its TPM (`check_fits`); a read comes as
        `reads_only(principal)` with 0 tokens."""
        ...

    async def aclose(self) -> None: ...


def reads_only(principal: Principal) -> Principal | None:
    """The key as `admit_read` limits it: its requests per minute, nothing else."""
    if principal.policy.rpm is None:
        return None
    policy = principal.policy.model_copy(update={"tpm": None, "concurrency": None})
    return Principal(principal.key_id, principal.name, policy)


@dataclass(frozen=True, slots=True)
class BucketView:
    """One bucket after the decision, for headers."""

    limit: int
    remaining: int
    reset_s: float  # until the bucket is full again


@dataclass(frozen=True, slots=True)
class Verdict:
    refused: frozenset[str]  # subset of {"requests", "tokens", "concurrency"}
    retry_after_s: float
    requests: BucketView | None
    tokens: BucketView | None
    concurrency_limit: int | None = None

    @property
    def admitted(self) -> bool:
        return not self.refused


def bucket_view(limit: int | None, level: float | None) -> BucketView | None:
    """Headers' view of a bucket holding `level` units (negative: in debt)."""
    if limit is None or level is None:
        return None
    return BucketView(
        limit=limit,
        remaining=max(0, math.floor(level + EPSILON)),
        reset_s=max(0.0, (limit - level) * WINDOW_S / limit),
    )


def check_fits(principal: Principal, estimated_tokens: int) -> None:
    """Refuse a request no wait could admit: a 429 would only invite useless retries."""
    if estimated_tokens < 0:
        raise ValueError(f"estimated_tokens must not be negative: {estimated_tokens}")
    tpm = principal.policy.tpm
    if tpm is not None and estimated_tokens > tpm:
        raise InvalidRequestError(
            f"This request may use up to {estimated_tokens} tokens (prompt + max_tokens), "
            f"more than this API key's limit of {tpm} tokens per minute. Lower max_tokens "
            "or shorten the prompt.",
            param="max_tokens",
            code="request_too_large",
        )


def ratelimit_headers(verdict: Verdict) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers; a limit the key does not have gets none."""
    headers: dict[str, str] = {}
    for kind, view in (("requests", verdict.requests), ("tokens", verdict.tokens)):
        if view is None:
            continue
        headers[f"x-ratelimit-limit-{kind}"] = str(view.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, view.remaining))
        headers[f"x-ratelimit-reset-{kind}"] = go_duration(view.reset_s)
    return headers


def rate_limit_error(principal: Principal, verdict: Verdict) -> RateLimitError:
    wait_s = verdict.retry_after_s if verdict.retry_after_s > 0 else CONCURRENCY_RETRY_S
    headers = ratelimit_headers(verdict)
    headers["retry-after"] = str(max(1, math.ceil(wait_s)))
    headers["retry-after-ms"] = str(max(1, math.ceil(wait_s * 1000)))
    reasons = []
    if "requests" in verdict.refused and verdict.requests is not None:
        reasons.append(f"requests per minute (limit {verdict.requests.limit})")
    if "tokens" in verdict.refused and verdict.tokens is not None:
        reasons.append(f"tokens per minute (limit {verdict.tokens.limit})")
    if "concurrency" in verdict.refused:
        reasons.append(f"requests in flight (limit {verdict.concurrency_limit})")
    who = principal.key_id or principal.name
    error = RateLimitError(
        f"Rate limit reached for API key {who} on {' and '.join(reasons)}. "
        f"Please try again in {go_duration(wait_s)}.",
        headers=headers,
    )
    error.refused = tuple(sorted(verdict.refused))
    return error


def go_duration(seconds: float) -> str:
    """Format like Go's `time.Duration` at millisecond precision, as OpenAI does:
    "0s", "120ms", "1.2s", "6m0s", "1h0m0s". Rounded up, so waiting that long is enough."""
    ms = math.ceil(seconds * 1000 - 1e-6)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    text = f"{secs}.{millis:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text
