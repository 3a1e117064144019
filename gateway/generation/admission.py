"""What every generation route does between resolving the schema and calling vLLM:
check the key's scopes, settle `max_tokens`, reserve quota, compile an ad-hoc schema, and
name the response headers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from gateway import observe
from gateway.access.auth import Principal
from gateway.access.cache import CACHE_KEY
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    PermissionDeniedError,
    UpstreamTimeoutError,
)
from gateway.generation.budget import token_budget
from gateway.generation.planning import ChatPlan, estimate_prompt_tokens
from gateway.output.policies import POLICIES
from gateway.ratelimit.base import Admission
from gateway.server.asgi import ClientDisconnectedError
from gateway.server.reading import header, request_id
from gateway.services import Services
from gateway.upstream.dialects import Dialect


@dataclass
class Prepared:
    request_id: str
    upstream_model: str
    dialect: Dialect
    max_tokens: int | None
    reserved: int  # tokens reserved against the key's TPM until settled
    admission: Admission
    headers: dict[str, str]
    per_attempt: int  # what one more call to vLLM (a retry) reserves
    key_id: str | None = None  # for usage accounting
    schema: str = "-"  # the schema's ref (name@version), "(ad-hoc)", or "-" for none
    cache_key: str | None = None  # a cacheable request that missed: its answer is stored
    prompt_tokens: int = 0  # the first attempt's prompt estimate, within `per_attempt`

    def count_usage(self, services: Services, outcome: str | None,
                    usage: dict[str, int] | None, tokens: int | None = None) -> None:
        """Add this request to the key's usage (a dict update; written later, off the path)."""
        if services.usage is not None:
            services.usage.record(self.key_id, self.schema, outcome or "error", usage, tokens)

    async def reserve_retry(self, body: dict[str, Any] | None = None) -> bool:
        """Reserve a retry's tokens before it runs; False: the key has no room for it now.
        A re-ask's `body` is longer than the first (the failed answer and the findings
        ride in it): its prompt's estimate is reserved on top of the first attempt's."""
        tokens = self.per_attempt
        if body is not None:
            tokens += max(0, estimate_prompt_tokens(body) - self.prompt_tokens)
        if not await self.admission.reserve(tokens):
            return False
        self.reserved += tokens
        return True

    def tokens_on_failure(self, error: BaseException) -> int | None:
        """What a request that ends without an answer is charged. A client gone while vLLM
        worked on it, or a timeout, gave up a generation vLLM was running: its usage is lost,
        so the reservation stays charged. Gone before the call (it waited in the queue):
        vLLM never saw it, nothing is charged. Otherwise what earlier attempts used."""
        if isinstance(error, ClientDisconnectedError):
            return self.reserved if error.started else None
        if isinstance(error, UpstreamTimeoutError):
            return max(error.tokens or 0, self.reserved)
        return error.tokens if isinstance(error, GatewayError) else None


POLICY_HEADER = b"x-irgw-output-policy"


def choose_policy(request: Request, principal: Principal, plan: ChatPlan) -> None:
    """A policy named per request (`x-irgw-output-policy`), for a key allowed to choose;
    checked before admission, so a refused choice costs nothing. A request without the
    header keeps the schema's (or the settings') policy; an unchecked one ignores it."""
    name = header(request, POLICY_HEADER)
    if name is None:
        return
    policy = POLICIES.get(name.strip())
    if policy is None:
        raise InvalidRequestError(
            f"x-irgw-output-policy must be one of {list(POLICIES)}",
            param="x-irgw-output-policy", code="invalid_output_policy",
        )
    if not principal.policy.allow_policy_override:
        raise PermissionDeniedError(
            "this API key may not choose the output policy per request (x-irgw-output-policy);"
            " ask for a key with allow_policy_override, or drop the header",
            param="x-irgw-output-policy", code="policy_override_not_allowed",
        )
    if plan.checked:
        plan.policy = policy


async def prepare(request: Request, services: Services, principal: Principal,
                  plan: ChatPlan) -> Prepared:
    """Authorize (the schema named, or the ad-hoc right), admit, then compile an ad-hoc
    schema: a refused key never costs a compile, and a compile is counted against the key's
    limits. A schema refused after admission (a cap, not a schema) gives the tokens back."""
    observe.planned(plan)
    choose_policy(request, principal, plan)
    if plan.pending is not None:
        services.authenticator.check_schema(principal, plan.pending.name, adhoc=True)
    elif plan.schema is not None:
        services.authenticator.check_schema(principal, plan.schema.name, adhoc=plan.schema.adhoc)
    budget = token_budget(plan, principal.policy, services.settings.default_max_tokens)
    model = plan.body["model"]
    upstream_model = await services.default_model() if plan.model_alias else model
    dialect = await services.upstream.dialect()
    with observe.phase("irgw.admission"):
        admission = await services.limiter.admit(principal, budget.reserved)
    try:  # authorized and admitted: only now is an ad-hoc schema measured and compiled
        await plan.compile_pending(services.adhoc)
    except BaseException:
        await admission.finish(None)
        raise

    rid = request_id(request)
    headers = {"x-request-id": rid, **admission.headers}
    if plan.schema is not None:
        headers["x-irgw-schema"] = plan.schema.ref
        if plan.warnings:
            # They quote the client's schema (property names, formats): escaped, so that no
            # character can break the header or fail to encode once vLLM has answered.
            warnings = "; ".join(plan.warnings).encode("unicode_escape").decode("ascii")
            headers["x-irgw-schema-warnings"] = warnings[:1000]
    cache_key = request.scope.get(CACHE_KEY)
    if cache_key is not None:
        headers["x-irgw-cache"] = "miss"
    return Prepared(rid, upstream_model, dialect, budget.max_tokens, budget.reserved,
                    admission, headers, budget.reserved, principal.key_id,
                    plan.schema.metric_label if plan.schema is not None else "-", cache_key,
                    prompt_tokens=budget.prompt_tokens)
