"""`POST /v1/completions` (legacy text completions, what LlamaIndex's `OpenAILike` calls
unless `is_chat_model=True`).

A schema is named by `model: "schema/<name>[@v]"` or by `response_format` (as on chat).
vLLM's completions endpoint never honoured `response_format`, so the constraint goes in
the release's own field (`structured_outputs` or, before 0.10.2, `guided_json`).
A structured stream is answered after checking, as one content chunk: a completion
cannot be retracted once streamed, and this route has no error-event convention clients
rely on. An unchecked stream is relayed as vLLM sends it (`streaming.relay_completion`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import InvalidRequestError
from gateway.generation.admission import prepare
from gateway.generation.checking import Route, answer, respond, settlement, success_headers
from gateway.generation.planning import ChatPlan, Mode, ask_for_usage, plan_completion
from gateway.generation.relaying import relayed
from gateway.generation.shapes import SSE_DONE, choices_of, finish_reason, sse, text_of, usage_of
from gateway.generation.streaming import relay_completion
from gateway.output.validation import CheckedOutput
from gateway.routes.common import RawRoute, header, read_json, services_of
from gateway.server.asgi import SSE_MEDIA_TYPE, BodyResponse, JSONResponse
from gateway.services import Services
from gateway.upstream.dialects import Dialect

router = APIRouter(route_class=RawRoute)
_VLLM_CONSTRAINT_FIELDS = ("structured_outputs", "guided_json", "guided_regex",
                           "guided_choice", "guided_grammar", "guided_decoding_backend")


def _plan(body: Any, services: Services, visible: Callable[[str], bool]) -> ChatPlan:
    plan = plan_completion(body, services.registry, services.settings, visible)
    if plan.checked and any(k in body for k in _VLLM_CONSTRAINT_FIELDS):
        raise InvalidRequestError("name the schema once: response_format/schema model, or "
                                  "vLLM's own structured_outputs, not both")
    return plan


def _upstream_body(plan: ChatPlan, dialect: Dialect, model: str,
                   max_tokens: int | None) -> dict[str, Any]:
    body = {k: v for k, v in plan.body.items() if k not in ("response_format", "stream_options")}
    body["model"] = model
    if plan.mode is Mode.SCHEMA and plan.schema is not None:
        body.update(dialect.completions_constraint(plan.schema))
    elif plan.mode is Mode.JSON_OBJECT:
        body.update(dialect.completions_json_object())
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if plan.checked:
        body["stream"] = False  # checked whole, then answered (see the module's docstring)
    elif plan.stream:
        ask_for_usage(body, plan)
    return body


def _shape(data: dict[str, Any], model: str) -> dict[str, Any]:
    choices = []
    for index, raw in enumerate(choices_of(data)):
        choices.append({"index": raw.get("index", index), "text": text_of(raw, "text") or "",
                        "logprobs": raw.get("logprobs"),
                        "finish_reason": finish_reason(raw.get("finish_reason")) or "stop"})
    result: dict[str, Any] = {"id": data.get("id") or "cmpl-gateway",
                              "object": "text_completion", "created": data.get("created") or 0,
                              "model": model, "choices": choices}
    usage = usage_of(data)
    if usage is not None:
        result["usage"] = usage
    return result


def _accept(plan: ChatPlan, choice: dict[str, Any], checked: CheckedOutput) -> None:
    choice["text"] = checked.text


def _reask(body: dict[str, Any], failed: str, findings: str) -> dict[str, Any] | None:
    """The prompt, the failed answer and the findings as one text: a completion has no
    turns. A prompt of token ids cannot be extended with text (None: asked again as is)."""
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        return None
    return {**body, "prompt": f"{prompt}{failed}\n\n{findings}\n\n"}


COMPLETIONS = Route("/v1/completions", "completions", _shape, lambda choice: choice["text"],
                    _accept, _reask)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    services = services_of(request)
    principal = services.authenticator.authenticate(header(request, b"authorization"))
    body = await read_json(request, services.settings.max_request_bytes, services.body_budget,
                           services.settings.request_body_timeout_s)
    plan = _plan(body, services, principal.policy.allows_schema)
    prepared = await prepare(request, services, principal, plan)
    model = plan.body["model"]
    body = _upstream_body(plan, prepared.dialect, prepared.upstream_model, prepared.max_tokens)

    if plan.stream and not plan.checked:
        return await relayed(
            request, services, "/v1/completions", plan, body, prepared,
            lambda events, state: relay_completion(events, plan.include_usage, state),
        )
    completed = await answer(COMPLETIONS, request, services, plan, body, model, prepared)
    headers = success_headers(plan, completed, prepared.headers)
    settle = settlement(COMPLETIONS, services, plan, prepared, completed)
    if plan.stream:
        return await respond(prepared, completed, lambda: _single_chunk_stream(
            completed.response, plan.include_usage, headers, settle))
    return await respond(prepared, completed, lambda: JSONResponse(
        completed.response, headers=headers, after_send=settle))


def _single_chunk_stream(response: dict[str, Any], include_usage: bool,
                         headers: dict[str, str],
                         settle: Callable[[], Awaitable[None]]) -> Response:
    chunk = {k: v for k, v in response.items() if k != "usage"}
    events = [sse(chunk)]
    if include_usage and "usage" in response:
        events.append(sse({**chunk, "choices": [], "usage": response["usage"]}))
    events.append(SSE_DONE)
    return BodyResponse(b"".join(events), media_type=SSE_MEDIA_TYPE, headers=headers,
                        after_send=settle)
