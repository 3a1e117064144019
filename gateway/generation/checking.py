"""One non-streamed answer from vLLM, checked under the output policy: the loop both
generation routes share (repair, retry, re-ask, typed errors, the counted outcome), so that
chat and legacy completions keep the same guarantee. Where vLLM is called, where the text
sits and how a re-ask is spelt come from the call's `Route`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from gateway import observe
from gateway.errors import (
    GatewayError,
    OutputTruncatedError,
    OutputValidationError,
    UpstreamError,
    UpstreamStatusError,
)
from gateway.generation.context import Call
from gateway.generation.engine_failures import schema_error_for
from gateway.generation.failures import failure_to_error
from gateway.generation.planning import ChatPlan, Mode
from gateway.output.validation import CheckFailure, check_output
from gateway.server.asgi import ClientDisconnectedError, until_disconnect
from gateway.services import Services


def findings_text(failure: CheckFailure) -> str:
    """What the model is told about its failed answer: where (a JSON pointer), which
    constraint, and why. One finding, the validator's first."""
    where = failure.pointer or "the whole document"
    return ("That answer is not valid for the required JSON schema.\n"
            f"- at {where}: {failure.reason} (constraint: {failure.constraint})\n"
            "Answer again with the whole corrected JSON document, and nothing else.")


def summed_usage(usages: list[dict[str, Any]]) -> dict[str, int]:
    return {key: sum(int(u.get(key) or 0) for u in usages)
            for key in ("prompt_tokens", "completion_tokens", "total_tokens")}


@dataclass
class Completed:
    response: dict[str, Any]
    outcome: str
    attempts: int
    tokens: int
    upstream_s: float  # from the first call to the accepted answer


def _failure_outcome(error: GatewayError) -> str:
    if isinstance(error, OutputTruncatedError):
        return "truncated"
    return "failed" if isinstance(error, OutputValidationError) else "error"


def count_failed_check(services: Services, plan: ChatPlan, error: GatewayError) -> None:
    if plan.schema is not None and isinstance(error, OutputValidationError):
        outcome = "truncated" if isinstance(error, OutputTruncatedError) else "failed"
        services.metrics.output_checked(plan.schema.metric_label, outcome)


async def complete(call: Call) -> Completed:
    """vLLM's answer in OpenAI's shape, its text checked (and repaired) when the plan says
    so; asked for again under a policy that asks again (`retry`: the same body; `reask`:
    with the failed answer and the findings), each attempt's tokens reserved before it runs
    (`Prepared.reserve_retry`; no room: no retry). Raises the typed error when the policy
    runs out; a truncated answer is never retried (the same request would be cut again)."""
    route, services, plan, body = call.route, call.services, call.plan, call.body
    model, rid, reserve_retry = call.model, call.prepared.request_id, call.prepared.reserve_retry
    policy = plan.policy
    attempts = 1 + (services.settings.max_retries if policy.asks_again else 0)
    tokens = 0
    usages: list[dict[str, Any]] = []
    started = time.perf_counter()
    sent = body
    last_failure: CheckFailure | None = None
    for attempt in range(1, attempts + 1):
        try:
            with observe.upstream_attempt(rid) as headers:
                data = await services.upstream.post_json(route.path, sent, headers)
        except GatewayError as failed:
            if (last_failure is not None and sent is not body
                    and isinstance(failed, UpstreamStatusError) and failed.status_code < 500):
                # vLLM refused the gateway's re-ask (its longer prompt past the context):
                # the client's request was fine, so it gets the answer's 422, not a 400.
                error = failure_to_error(last_failure, attempt - 1, tokens)
                error.message += f"; the re-ask was refused by vLLM: {failed.message[:300]}"
                raise error from failed
            error = schema_error_for(failed, plan, services.metrics)
            if tokens:  # the earlier attempts' usage was real GPU work
                error.tokens = (error.tokens or 0) + tokens
            if error is failed:
                raise
            raise error from failed
        response = route.shape(data if isinstance(data, dict) else {}, model)
        usage = response.get("usage")
        tokens += usage["total_tokens"] if usage else 0
        if usage:
            usages.append(usage)
        if not response["choices"]:
            error = UpstreamError("the upstream answered without choices")
            error.tokens = tokens or None
            raise error
        if not plan.checked:
            return Completed(response, "passthrough", attempt, tokens,
                             time.perf_counter() - started)
        if len(response["choices"]) != 1 or response["choices"][0]["index"] != 0:
            # A checked request has n=1: any other choice would reach the client unchecked.
            error = UpstreamError(f"the upstream answered {len(response['choices'])} choices "
                                  "(indexes "
                                  f"{[c['index'] for c in response['choices']][:8]}) for a "
                                  "request with one choice")
            error.tokens = tokens or None
            raise error
        choice = response["choices"][0]
        try:
            with observe.phase("irgw.check"):
                checked = check_output(
                    route.text(choice),
                    plan.schema if plan.mode in (Mode.SCHEMA, Mode.TOOL) else None,
                    repair=policy.repairs,
                    truncated=choice["finish_reason"] == "length",
                )
        except CheckFailure as failure:
            last_failure = failure
            if failure.truncated or attempt == attempts:
                raise failure_to_error(failure, attempt, tokens) from None
            sent = (route.reask(body, failure.raw_output, findings_text(failure))
                    if policy.with_findings else None) or body
            if not await reserve_retry(sent if sent is not body else None):
                error = failure_to_error(failure, attempt, tokens)
                error.message += ("; not retried: this API key's tokens per minute have no "
                                  "room for another attempt now")
                raise error from None
            continue
        upstream_s = time.perf_counter() - started
        route.accept(plan, choice, checked)
        outcome = policy.outcome_after_asking if attempt > 1 else checked.outcome.value
        if policy.sums_usage and len(usages) > 1:  # every attempt's tokens (README)
            response["usage"] = summed_usage(usages)
        return Completed(response, outcome, attempt, tokens, upstream_s)
    raise AssertionError("unreachable")


async def answer(call: Call) -> Completed:
    """`complete` while the client waits for it. When it ends without an answer (a typed
    error, the client gone) the reservation is settled before this raises; after an
    answer, the pipeline's `settlement` does it once the answer is on its way."""
    services, prepared = call.services, call.prepared
    tokens: int | None = None
    answered = False
    try:
        completed = await until_disconnect(call.request, complete(call))
        answered = True
        observe.completed(completed)
        return completed
    except ClientDisconnectedError as gone:
        tokens = prepared.tokens_on_failure(gone)
        prepared.count_usage(services, "cancelled", None, tokens)
        raise
    except GatewayError as error:
        tokens = prepared.tokens_on_failure(error)
        error.headers.update(prepared.headers)
        count_failed_check(services, call.plan, error)
        prepared.count_usage(services, _failure_outcome(error), None, tokens)
        raise
    finally:
        if not answered:
            await prepared.admission.finish(tokens)
