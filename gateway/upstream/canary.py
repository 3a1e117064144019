"""The canary: proof that vLLM really enforces the schema the gateway sends it.

vLLM accepts unknown request fields, so a constraint spelt in a way a release no longer
reads (a renamed field after an upgrade, a frontend that picks another backend, a
misconfigured server) is silently dropped: a 200 with free text, which the gateway then
refuses, on every request. The canary asks, on chat and on legacy completions, spelt as
the gateway spells every request for that release, for a tiny answer whose schema is an
enum of two strings no model would write unprompted; only an engine that constrains
returns one of them. A verdict is cached (`IRGW_CANARY_INTERVAL_S`) and read by
`/readyz`, which fails while the engine is found not to constrain.

It runs in the background from startup when `IRGW_READY_PROBE=always`. Under `with_key`
it runs only when a caller with a key asks `/readyz` (a request to vLLM can start a
scaled-to-zero GPU). Before vLLM accepts connections it has no verdict: that period is
`/readyz`'s "upstream not accepting connections", never "not constraining".
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.background import Periodic
from gateway.errors import GatewayError, UpstreamStatusError
from gateway.observe.prometheus import Metrics
from gateway.output.registry import RegisteredSchema
from gateway.output.validation import CheckFailure, check_output
from gateway.settings import Settings
from gateway.upstream.client import UpstreamClient
from gateway.upstream.dialects import Dialect, UnsupportedVersionError, dialect_for

log = logging.getLogger("gateway.upstream.canary")

# Two strings a model would not write unprompted, to a prompt that asks for something else.
CANARY_SCHEMA = RegisteredSchema(
    name="irgw_canary",
    version=1,
    description="the gateway's canary: is the constraint applied?",
    schema={"type": "object", "properties": {"v": {"enum": ["qzx7", "vkj3"]}},
            "required": ["v"], "additionalProperties": False},
    output_policy="error",
    source="gateway",
)
_PROMPT = "Say hello and introduce yourself."
# A verdict other than "constraining" is looked at again this soon (bounded by the
# interval): a restarted or fixed vLLM is seen quickly, and a broken one costs two tiny
# requests per period.
_RECHECK_S = 15.0


class Verdict(StrEnum):
    CONSTRAINING = "constraining"
    NOT_CONSTRAINING = "not_constraining"  # free text, or vLLM refused the constrained request
    INCONCLUSIVE = "inconclusive"  # no answer to judge (vLLM down, slow, a 5xx)


_GAUGE = {Verdict.CONSTRAINING: 1, Verdict.NOT_CONSTRAINING: 0, Verdict.INCONCLUSIVE: -1}


@dataclass(frozen=True)
class CanaryResult:
    verdict: Verdict
    reason: str
    upstream_version: str | None
    checked_at: float  # time.monotonic()

    def public(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "reason": self.reason,
                "age_s": round(time.monotonic() - self.checked_at, 1)}


class Canary:
    def __init__(self, settings: Settings, upstream: UpstreamClient, metrics: Metrics) -> None:
        self.enabled = settings.canary
        self._settings = settings
        self._upstream = upstream
        self._metrics = metrics
        self._interval_s = settings.canary_interval_s
        self._result: CanaryResult | None = None
        self._lock = asyncio.Lock()  # one canary at a time, however many probes ask
        self._loop = Periodic("irgw-canary", self._run_once, self._interval_s, step_first=True)

    @property
    def last(self) -> CanaryResult | None:
        return self._result

    def start(self) -> None:
        if self.enabled and self._settings.ready_probe == "always":
            self._loop.start()

    async def aclose(self) -> None:
        await self._loop.stop()

    async def _run_once(self) -> float:
        """One run; the delay until the next."""
        result = await self.refresh()
        return (self._interval_s if result.verdict is Verdict.CONSTRAINING
                else min(self._interval_s, _RECHECK_S))

    def _fresh(self, upstream_version: str | None) -> CanaryResult | None:
        result = self._result
        if result is None or (upstream_version is not None
                              and result.upstream_version != upstream_version):
            return None  # another release answers now: its spelling must be proved again
        if self._loop.running:
            # The loop keeps it fresh: a readiness probe (often given a second) never waits
            # for a run the loop is about to make anyway.
            return result
        age = time.monotonic() - result.checked_at
        limit = (self._interval_s if result.verdict is Verdict.CONSTRAINING
                 else min(self._interval_s, _RECHECK_S))
        return result if age < limit else None

    async def result(self, upstream_version: str | None = None) -> CanaryResult:
        """The cached verdict, or a new one when it is stale or was made against another
        vLLM release."""
        cached = self._fresh(upstream_version)
        if cached is not None:
            return cached
        async with self._lock:
            cached = self._fresh(upstream_version)  # another probe may have just run it
            return cached if cached is not None else await self._run_and_record()

    async def refresh(self) -> CanaryResult:
        async with self._lock:
            return await self._run_and_record()

    async def _run_and_record(self) -> CanaryResult:
        try:
            async with asyncio.timeout(self._settings.canary_timeout_s):
                verdict, reason, version = await self._run()
        except TimeoutError:
            verdict, reason, version = (Verdict.INCONCLUSIVE, "no answer within "
                                        f"{self._settings.canary_timeout_s:g} s", None)
        previous = self._result
        self._result = CanaryResult(verdict, reason, version, time.monotonic())
        self._metrics.canary_status = _GAUGE[verdict]
        self._metrics.canary_checked(verdict.value)
        self._log(previous, self._result)
        return self._result

    def _log(self, previous: CanaryResult | None, result: CanaryResult) -> None:
        where = self._settings.upstream_url
        if result.verdict is Verdict.NOT_CONSTRAINING:
            # Every time: this state fails every schema request.
            log.error("CANARY FAILED: vLLM at %s does NOT enforce structured-output "
                      "constraints: %s. Every schema request will fail its check; /readyz "
                      "answers 503 until this is fixed", where, result.reason)
        elif result.verdict is Verdict.CONSTRAINING:
            if previous is None or previous.verdict is not Verdict.CONSTRAINING:
                log.info("canary: vLLM %s at %s enforces the schema constraint (chat and "
                         "completions)", result.upstream_version, where)
        elif previous is None or previous.reason != result.reason:
            log.warning("canary: no verdict on vLLM at %s yet: %s", where, result.reason)

    async def _run(self) -> tuple[Verdict, str, str | None]:
        try:
            data = await self._upstream.get_json("/version", deadline_s=0)
            version = data.get("version") if isinstance(data, dict) else None
            dialect = dialect_for(str(version))
            model = self._settings.upstream_model or (await self._upstream.model_ids())[0]
        except (GatewayError, UnsupportedVersionError, IndexError) as error:
            return Verdict.INCONCLUSIVE, f"vLLM not ready: {error}", None
        for path in ("/v1/chat/completions", "/v1/completions"):
            try:
                data = await self._upstream.post_json(
                    path, self._body(path, dialect, model), {"x-request-id": "irgw-canary"})
            except UpstreamStatusError as error:  # a 4xx: the constrained request refused
                return (Verdict.NOT_CONSTRAINING,
                        f"{path}: vLLM refused the canary's constrained request "
                        f"({error.status_code}: {error.message})", version)
            except GatewayError as error:
                return Verdict.INCONCLUSIVE, f"{path}: {error}", version
            wrong = _judge(data, chat=path == "/v1/chat/completions")
            if wrong is not None:
                return (Verdict.NOT_CONSTRAINING,
                        f"{path} answered text that ignores the schema it was sent "
                        f"({dialect.name} spelling): {wrong}", version)
        return Verdict.CONSTRAINING, "both routes answered within the schema", version

    def _body(self, path: str, dialect: Dialect, model: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "max_tokens": self._settings.canary_max_tokens,
                                "temperature": 0}
        if path == "/v1/chat/completions":
            body["messages"] = [{"role": "user", "content": _PROMPT}]
            body.update(dialect.chat_constraint(CANARY_SCHEMA))
        else:
            body["prompt"] = _PROMPT + "\n"
            body.update(dialect.completions_constraint(CANARY_SCHEMA))
        return body


def _judge(data: Any, *, chat: bool) -> str | None:
    """What is wrong with the canary's answer, or None if it kept to the schema."""
    try:
        choice = data["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        finish = choice.get("finish_reason")
    except (KeyError, IndexError, TypeError):
        return "an answer without a choice"
    try:
        # Cut off by max_tokens counts: a constrained answer is a dozen tokens, free text
        # runs on.
        check_output(text, CANARY_SCHEMA, repair=False, truncated=finish == "length")
    except CheckFailure as failure:
        shown = text if isinstance(text, str) else repr(text)
        return f"{failure.reason}; the answer began {shown[:80]!r}"
    return None
