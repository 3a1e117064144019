"""What the request path calls to be observed: small hooks that find the request's
`Observation` in a context variable, so that no signature along the path changes.

Each hook is a few attribute writes when tracing is off; with tracing on, the phases and
upstream attempts are also child spans of the request's span. Outside a generation
request (no observation) every hook does nothing.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any

from gateway.observe.causes import upstream_cause

if TYPE_CHECKING:
    from gateway.generation.checking import Completed
    from gateway.generation.planning import ChatPlan
    from gateway.generation.streaming import StreamState
    from gateway.observe.observer import Observation

current: ContextVar[Observation | None] = ContextVar("irgw_observation", default=None)
_NOTHING: AbstractContextManager[None] = nullcontext()


def identified(key_id: str | None) -> None:
    """The caller's key id (never its secret), once the key is verified."""
    obs = current.get()
    if obs is not None:
        obs.key_id = key_id


def planned(plan: ChatPlan) -> None:
    obs = current.get()
    if obs is not None:
        obs.plan = plan


def phase(name: str) -> AbstractContextManager[Any]:
    """A child span around a step of the request (admission, checking), when tracing."""
    obs = current.get()
    if obs is None or obs.span is None:
        return _NOTHING
    return obs.observer.tracing.child(obs, name)


class UpstreamAttempt:
    """One call to vLLM: its time is vLLM's, not the gateway's; its span (tracing on) is
    the parent that `traceparent` names to vLLM. Entering gives the headers to send."""

    __slots__ = ("_obs", "_span", "_started", "_stream", "headers")

    def __init__(self, obs: Observation, request_id: str, stream: bool) -> None:
        self._obs = obs
        self._stream = stream
        self._span: Any = None
        self.headers = {"x-request-id": request_id}

    def __enter__(self) -> dict[str, str]:
        obs = self._obs
        obs.attempts += 1
        if obs.span is not None:
            self._span = obs.observer.tracing.attempt(obs, self.headers)
        elif obs.traceparent is not None:  # not tracing: the client's trace goes on in vLLM
            self.headers["traceparent"] = obs.traceparent
        self._started = time.perf_counter()
        obs.attempt_started = self._started
        return self.headers

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        obs = self._obs
        if not self._stream or not obs.stream_opened:
            # A stream's time is counted as it is read (`relayed`), unless it never opened.
            obs.upstream_s += time.perf_counter() - self._started
        if error is not None:
            obs.upstream_cause = upstream_cause(error) or obs.upstream_cause
        if self._span is not None:
            obs.observer.tracing.end_attempt(self._span, error)


def upstream_attempt(request_id: str, *, stream: bool = False
                     ) -> AbstractContextManager[dict[str, str]]:
    obs = current.get()
    if obs is None:
        return nullcontext({"x-request-id": request_id})
    return UpstreamAttempt(obs, request_id, stream)


def completed(done: Completed) -> None:
    """A non-streamed answer accepted: its outcome, attempts, usage, finish reasons."""
    obs = current.get()
    if obs is not None:
        obs.outcome = done.outcome
        obs.answer = done.response


def relayed(events: AsyncIterator[bytes], state: StreamState) -> AsyncIterator[bytes]:
    """vLLM's stream, its waits counted as vLLM's time and its first content chunk timed."""
    obs = current.get()
    if obs is None:
        return events
    obs.stream_opened = True
    obs.stream_state = state
    obs.upstream_s += time.perf_counter() - obs.attempt_started  # the head
    return _timed(events, state, obs)


async def _timed(events: AsyncIterator[bytes], state: StreamState,
                 obs: Observation) -> AsyncIterator[bytes]:
    clock = time.perf_counter
    waiting = 0.0
    try:
        while True:
            asked = clock()
            try:
                data = await anext(events)
            except StopAsyncIteration:
                return
            finally:
                waiting += clock() - asked
            yield data
            # Resumed: the relay has handed the previous event on (or held it back).
            if obs.ttft_s is None and state.content_chunks:
                obs.ttft_s = clock() - obs.started
    except Exception as error:
        obs.upstream_cause = upstream_cause(error) or obs.upstream_cause
        raise
    finally:
        obs.upstream_s += waiting
