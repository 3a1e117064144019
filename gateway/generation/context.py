"""What the generation pipeline (`gateway.generation.pipeline`) works with: a `Route`, the
declaration of what one endpoint does differently, and a `Call`, one admitted request.

Chat and legacy completions keep the same guarantees (limits, checks, repair, retry,
re-ask, typed errors, settlement); they differ in how a body is planned, what vLLM is
sent, where the generated text sits in the answer, how a re-ask is spelt and how a stream
is relayed. A `Route` says exactly that, and nothing else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from gateway.generation.admission import Prepared
from gateway.generation.planning import ChatPlan, Visible
from gateway.generation.streaming import StreamState
from gateway.output.registry import SchemaRegistry
from gateway.output.validation import CheckedOutput
from gateway.services import Services
from gateway.settings import Settings
from gateway.upstream.dialects import Dialect


@dataclass(frozen=True, slots=True)
class Route:
    path: str  # the client's path, and vLLM's endpoint
    label: str  # the `route` label of its metrics
    plan: Callable[[Any, SchemaRegistry, Settings, Visible], ChatPlan]  # the client's body
    # What vLLM is sent: the plan with the dialect's constraint, the model vLLM serves and
    # the settled max_tokens.
    upstream_body: Callable[[ChatPlan, Dialect, str, int | None], dict[str, Any]]
    shape: Callable[[dict[str, Any], str], dict[str, Any]]  # vLLM's answer -> OpenAI's
    text: Callable[[dict[str, Any]], Any]  # a choice's generated text
    accept: Callable[[ChatPlan, dict[str, Any], CheckedOutput], None]  # the checked text back
    # The body of a re-ask: the first body with the failed answer and the findings as a
    # follow-up; None where that cannot be spelt (a prompt of token ids: asked again as is).
    reask: Callable[[dict[str, Any], str, str], dict[str, Any] | None]
    # vLLM's stream events as the client's, noting what was seen in the StreamState.
    relay: Callable[[Call, AsyncIterator[bytes], StreamState], AsyncIterator[bytes]]
    # A checked stream relayed and checked as it goes (chat: a bad end is an error event),
    # or checked whole and answered as one chunk (completions).
    relays_checked: bool
    cached: bool  # answered from the response cache when it holds the answer


@dataclass(slots=True)
class Call:
    """One generation request once admitted: what calling vLLM, checking, relaying,
    answering and settling read. One object instead of each step's own parameter list."""

    route: Route
    request: Request
    services: Services
    plan: ChatPlan
    prepared: Prepared  # the admission, the reservation, the response headers
    body: dict[str, Any]  # what vLLM is sent first
    model: str  # the model the client named: the answer names it back
