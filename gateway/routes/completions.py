"""`POST /v1/completions` (legacy text completions, what LlamaIndex's `OpenAILike` calls
unless `is_chat_model=True`): the generation pipeline (`gateway.generation.pipeline`) with
completions' parts.

A schema is named by `model: "schema/<name>[@v]"` or by `response_format` (as on chat).
vLLM's completions endpoint never honoured `response_format`, so the constraint goes in
the release's own field (`structured_outputs` or, before 0.10.2, `guided_json`).
A structured stream is answered after checking, as one content chunk: a completion
cannot be retracted once streamed, and this route has no error-event convention clients
rely on. An unchecked stream is relayed as vLLM sends it (`streaming.relay_completion`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter

from gateway.errors import InvalidRequestError
from gateway.generation.context import Call, Route
from gateway.generation.pipeline import endpoint as pipeline_endpoint
from gateway.generation.planning import ChatPlan, Mode, Visible, ask_for_usage, plan_completion
from gateway.generation.shapes import choices_of, finish_reason, text_of, usage_of
from gateway.generation.streaming import StreamState, relay_completion
from gateway.output.registry import SchemaRegistry
from gateway.output.validation import CheckedOutput
from gateway.routes.common import RawRoute
from gateway.settings import Settings
from gateway.upstream.dialects import Dialect

_VLLM_CONSTRAINT_FIELDS = ("structured_outputs", "guided_json", "guided_regex",
                           "guided_choice", "guided_grammar", "guided_decoding_backend")


def _plan(body: Any, registry: SchemaRegistry, settings: Settings,
          visible: Visible) -> ChatPlan:
    plan = plan_completion(body, registry, settings, visible)
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


def _text(choice: dict[str, Any]) -> Any:
    return choice["text"]


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


def _relay(call: Call, events: AsyncIterator[bytes],
           state: StreamState) -> AsyncIterator[bytes]:
    return relay_completion(events, call.plan.include_usage, state)


COMPLETIONS = Route("/v1/completions", "completions", plan=_plan, upstream_body=_upstream_body,
                    shape=_shape, text=_text, accept=_accept, reask=_reask, relay=_relay,
                    relays_checked=False, cached=False)
endpoint = pipeline_endpoint(COMPLETIONS)

router = APIRouter(route_class=RawRoute)
# Listed for the OpenAPI document and for the 405 of other methods; a POST goes straight to
# `endpoint` (create_app's table of direct routes).
router.add_api_route(COMPLETIONS.path, endpoint, methods=["POST"], name="completions")
