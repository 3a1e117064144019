"""A FAKE vLLM OpenAI-compatible server for unit tests (not vLLM; see tests marked integration).

It exists to produce, on demand, the edge cases a real vLLM only shows by accident: error bodies in
both historical shapes, garbage bodies, slow answers, streams that die or carry an error, and a
server that goes away and comes back on the same port. It runs in-process (aiohttp) on
127.0.0.1 with an ephemeral port, so it shares the test's event loop.

Routes
------
* ``GET /version`` -> ``{"version": fake.version}`` (default ``"0.32.0"``); never needs a key.
* ``GET /v1/models`` -> OpenAI list with one model, ``fake.model`` (default ``"qwen-coder"``).
* ``POST /v1/chat/completions`` and ``POST /v1/completions`` -> every request is appended to
  ``fake.requests`` (``RecordedRequest``: method, path, case-insensitive headers, parsed JSON body,
  raw bytes), then answered by the next scripted behaviour, or by ``fake.default`` when the script
  queue is empty.
* anything else -> 404 ``{"detail": "Not Found"}`` (FastAPI's shape, as vLLM serves it).
* ``fake.hits`` counts requests per path on every route (e.g. to check ``/version`` probing).
* If ``fake.api_key`` is set, ``/v1/...`` without ``Authorization: Bearer <key>`` gets vLLM's
  ``--api-key`` answer: 401 ``{"error": "Unauthorized"}``.

Behaviours (pass to ``fake.script(...)`` in the order requests will arrive)
-------------------------------------------------------------------------
* ``Reply(content, finish_reason="stop", usage=None, chunk_size=4, ...)``: a normal answer in
  vLLM's shape (``chat.completion`` / ``text_completion``). With ``"stream": true`` it is streamed
  the way vLLM streams: role chunk (``delta {"role": "assistant", "content": ""}``, chat only),
  ``content`` in ``chunk_size``-character pieces, a chunk carrying ``finish_reason`` (or, with
  ``finish_with_last_piece=True``, on the last piece, as vLLM does), a usage chunk with
  ``choices: []`` only if ``stream_options.include_usage``, then ``data: [DONE]``.
* ``ErrorReply(status, body)`` plus ``ErrorReply.new_shape(...)`` (vLLM >= 0.10.1,
  ``{"error": {...}}``), ``ErrorReply.old_shape(...)`` (<= 0.10.0, ``{"object": "error", ...}``)
  and ``ErrorReply.unauthorized()``.
* ``Garbage(status=200, body=b"...")``: a body that is not JSON.
* ``RawBody(body)``: 200 with exactly ``body`` as JSON (a malformed answer: ``choices`` not a
  list, content not a string, bad ``usage``...). ``RawStream(events)``: for a streamed request,
  each event as ``data: <json>`` exactly as given, then ``[DONE]``.
* ``FollowSchema()``: what an engine that enforces the constraint answers to a small schema: the
  object of the first ``enum`` value of each property of the schema the request carries
  (``response_format.json_schema.schema``, ``structured_outputs.json`` or ``guided_json``), as
  the gateway's canary sends. A request without such a schema gets ``FREE_TEXT``.
* ``FREE_TEXT``: a ``Reply`` of prose cut off by ``max_tokens``, what an engine that ignores the
  constraint answers; ``FakeUpstream(default=FREE_TEXT)`` is a vLLM whose constraints are dropped.
* ``Slow(delay_s, then=Reply(...))``: wait, then behave like ``then``. If the client goes away
  during the wait, ``fake.cancelled`` is incremented and nothing is sent.
* ``SlowStream(chunk_delay_s, then=Reply(...))``: headers at once, then each SSE event
  ``chunk_delay_s`` apart; a client disconnect mid-stream increments ``fake.cancelled``.
* ``CrashMidStream(after_chunks, then=Reply(...))``: send that many SSE events, then abort the
  TCP connection (RST, no ``[DONE]``). For a non-stream request: half the JSON body, then abort.
* ``StreamError(after_chunks, error_body=new_error_body(...), done=True)``: send that many events,
  then ``data: {"error": {...}}`` inside the 200 stream, then ``[DONE]`` (vLLM still sends it).
  For a non-stream request the error body is returned with its ``code`` as HTTP status.

``fake.cancelled`` counts requests whose client disconnected (or whose handler was cancelled)
before the fake finished answering; stops caused by ``fake.stop()`` or by a scripted crash are not
counted. This is how a test proves the gateway cancels its upstream call when its own client leaves.

Down/up: ``await fake.stop()`` closes the listening socket and drops open connections, so new
connections are refused (as while vLLM loads its model); ``await fake.start()`` binds THE SAME
port again, so a gateway configured with ``fake.url`` sees it come back.

Example::

    async with FakeUpstream() as fake:
        fake.script(ErrorReply.new_shape(503, "busy"), Reply('{"a": 1}'))
        ...  # point the gateway at fake.url and call it twice
        assert fake.requests[0].json["model"] == "qwen-coder"
        await fake.wait_cancelled(1)  # after scripting Slow(...) and disconnecting a client
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "DEFAULT_CONTENT",
    "FREE_TEXT",
    "VLLM_NULL_EXTRAS",
    "Behaviour",
    "CrashMidStream",
    "ErrorReply",
    "FakeUpstream",
    "FollowSchema",
    "Garbage",
    "RawBody",
    "RawStream",
    "RecordedRequest",
    "Reply",
    "Slow",
    "SlowStream",
    "StreamError",
    "new_error_body",
    "old_error_body",
]

DEFAULT_CONTENT = '{"ok": true}'

# Top-level nulls that vLLM's pydantic models serialise in non-stream bodies. Two of them are not
# valid in OpenAI's spec (e.g. ``system_fingerprint`` must be a string when present), which the
# gateway has to clean up. Opt in with ``Reply(..., extra=VLLM_NULL_EXTRAS)``; confirm the exact
# field set against the real server in the integration tests.
VLLM_NULL_EXTRAS: dict[str, Any] = {
    "service_tier": None,
    "system_fingerprint": None,
    "prompt_logprobs": None,
    "kv_transfer_params": None,
}

Endpoint = Literal["chat", "completions"]


def new_error_body(
    message: str = "fake upstream error",
    type: str = "BadRequestError",
    code: int = 400,
    param: str | None = None,
) -> dict[str, Any]:
    """vLLM >= 0.10.1 error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def old_error_body(
    message: str = "fake upstream error",
    type: str = "BadRequestError",
    code: int = 400,
    param: str | None = None,
) -> dict[str, Any]:
    """vLLM <= 0.10.0 error body: ``{"object": "error", "message", "type", "param", "code"}``."""
    return {"object": "error", "message": message, "type": type, "param": param, "code": code}


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    headers: CIMultiDictProxy[str]
    json: Any
    """Parsed JSON body, or None when the body was empty or not JSON."""
    raw: bytes


@dataclass(frozen=True)
class Reply:
    """A normal completion; streamed when the request says ``"stream": true``."""

    content: str = DEFAULT_CONTENT
    finish_reason: str = "stop"
    usage: dict[str, int] | None = None
    """None: prompt_tokens=10, completion_tokens=number of pieces."""
    chunk_size: int = 4
    finish_with_last_piece: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    """Merged into the top level of the body (and of every stream chunk)."""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ErrorReply:
    """An HTTP error with a JSON body."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def new_shape(
        cls,
        status: int = 400,
        message: str = "fake upstream error",
        type: str = "BadRequestError",
        param: str | None = None,
    ) -> ErrorReply:
        return cls(status, new_error_body(message, type, status, param))

    @classmethod
    def old_shape(
        cls,
        status: int = 400,
        message: str = "fake upstream error",
        type: str = "BadRequestError",
        param: str | None = None,
    ) -> ErrorReply:
        return cls(status, old_error_body(message, type, status, param))

    @classmethod
    def unauthorized(cls) -> ErrorReply:
        """What vLLM's ``--api-key`` middleware answers: the error is a bare string."""
        return cls(401, {"error": "Unauthorized"})


@dataclass(frozen=True)
class Garbage:
    """A response whose body is not JSON (a proxy error page, a truncated write, ...)."""

    status: int = 200
    body: bytes = b"<html><body>502 Bad Gateway</body></html>"
    content_type: str = "text/html"


@dataclass(frozen=True)
class RawBody:
    """A 200 whose JSON body is exactly ``body``, whatever its shape."""

    body: Any


@dataclass(frozen=True)
class RawStream:
    """A 200 stream of exactly these events (each dumped as JSON), then ``[DONE]``."""

    events: list[Any]


@dataclass(frozen=True)
class FollowSchema:
    """Answer within the request's schema, for schemas made of enum properties."""


@dataclass(frozen=True)
class Slow:
    """Wait ``delay_s`` before behaving like ``then``."""

    delay_s: float
    then: Behaviour = field(default_factory=Reply)


@dataclass(frozen=True)
class SlowStream:
    """Stream ``then`` with ``chunk_delay_s`` before every SSE event."""

    chunk_delay_s: float
    then: Reply = field(default_factory=Reply)


@dataclass(frozen=True)
class CrashMidStream:
    """Send ``after_chunks`` SSE events of ``then``, then abort the connection."""

    after_chunks: int = 2
    then: Reply = field(default_factory=Reply)


@dataclass(frozen=True)
class StreamError:
    """Send ``after_chunks`` SSE events, then ``data: <error_body>`` inside the 200 stream."""

    after_chunks: int = 2
    error_body: dict[str, Any] = field(
        default_factory=lambda: new_error_body("fake engine failure", "InternalServerError", 500)
    )
    then: Reply = field(default_factory=Reply)
    done: bool = True


Behaviour = (Reply | ErrorReply | Garbage | RawBody | RawStream | FollowSchema | Slow
             | SlowStream | CrashMidStream | StreamError)


@dataclass
class _Call:
    request: web.Request
    endpoint: Endpoint
    body: dict[str, Any]
    cancel_counted: bool = False
    # Set before the fake aborts a connection itself, so its own crash isn't counted as the
    # client leaving.
    aborted_by_fake: bool = False

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def include_usage(self) -> bool:
        options = self.body.get("stream_options")
        return isinstance(options, dict) and bool(options.get("include_usage"))


FREE_TEXT = Reply("Hello! I am a helpful assistant. How can I help you today? I can answer",
                  finish_reason="length")


def _follow_schema(body: dict[str, Any]) -> Reply:
    response_format = body.get("response_format") or {}
    schema = ((response_format.get("json_schema") or {}).get("schema")
              or (body.get("structured_outputs") or {}).get("json") or body.get("guided_json"))
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict) or not all(
            isinstance(p, dict) and p.get("enum") for p in properties.values()):
        return FREE_TEXT
    return Reply(_dumps({name: p["enum"][0] for name, p in properties.items()}))


def _dumps(obj: Any) -> str:
    # Compact separators: vLLM serialises with pydantic's model_dump_json, which has no spaces.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class FakeUpstream:
    """A scriptable fake vLLM server; use as ``async with FakeUpstream() as fake:``."""

    def __init__(
        self,
        *,
        model: str = "qwen-coder",
        version: str = "0.32.0",
        default: Behaviour | None = None,
        api_key: str | None = None,
        max_model_len: int = 4096,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.model = model
        self.version = version
        self.default: Behaviour = default if default is not None else Reply()
        self.api_key = api_key
        self.max_model_len = max_model_len
        self.requests: list[RecordedRequest] = []
        self.hits: Counter[str] = Counter()
        self.cancelled = 0
        self._host = host
        self._port = port
        self._queue: deque[Behaviour] = deque()
        self._runner: web.AppRunner | None = None
        self._stopping = False

    # -- control -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("FakeUpstream has not been started yet")
        return self._port

    @property
    def url(self) -> str:
        """Base URL without ``/v1``, e.g. ``http://127.0.0.1:43121``."""
        return f"http://{self._host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def pending(self) -> int:
        """Scripted behaviours not used yet."""
        return len(self._queue)

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next completion requests, in arrival order."""
        self._queue.extend(behaviours)

    def reset(self) -> None:
        """Forget recorded requests, hits, cancellations and unused script entries."""
        self.requests.clear()
        self.hits.clear()
        self.cancelled = 0
        self._queue.clear()

    async def start(self) -> None:
        """Listen; after a ``stop()`` this re-binds the port used before."""
        if self._runner is not None:
            return
        runner = web.AppRunner(
            self._make_app(),
            handle_signals=False,
            access_log=None,
            # Without this aiohttp lets handlers run on after the client has gone, and the fake
            # could not observe that the gateway dropped its upstream call.
            handler_cancellation=True,
            # stop() stands for a dead server: in-flight handlers get no grace period.
            shutdown_timeout=0.1,
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
        try:
            await self._bind(site)
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if self._port == 0:
            self._port = int(runner.addresses[0][1])

    async def _bind(self, site: web.TCPSite) -> None:
        # Re-binding right after close can briefly fail while the kernel tears the old socket
        # down; a short retry keeps restart tests from flaking.
        for attempt in range(50):
            try:
                await site.start()
                return
            except OSError:
                if self._port == 0 or attempt == 49:
                    raise
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Close the listening socket and every open connection: new connections are refused."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping = True
        try:
            await runner.cleanup()
        finally:
            self._stopping = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def wait_requests(self, n: int = 1, within_s: float = 5.0) -> None:
        """Wait until at least ``n`` completion requests have arrived (AssertionError if not)."""
        await self._wait(lambda: len(self.requests) >= n, within_s, f"{n} request(s)")

    async def wait_cancelled(self, n: int = 1, within_s: float = 5.0) -> None:
        """Wait until at least ``n`` requests were abandoned by their client."""
        await self._wait(lambda: self.cancelled >= n, within_s, f"{n} cancellation(s)")

    async def _wait(self, done: Callable[[], bool], within_s: float, what: str) -> None:
        # An AssertionError naming the counters reads better in a failing test than a bare
        # TimeoutError from asyncio.timeout.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while not done():
            if loop.time() >= deadline:
                raise AssertionError(
                    f"fake upstream: expected {what} within {within_s}s; "
                    f"requests={len(self.requests)} cancelled={self.cancelled}"
                )
            await asyncio.sleep(0.005)

    # -- HTTP --------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        # vLLM takes bodies of any size (aiohttp's default refuses past 1 MiB).
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/version", self._version)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.api_key is None or not request.path.startswith("/v1"):
            return None
        if request.headers.get("Authorization") == f"Bearer {self.api_key}":
            return None
        return web.json_response({"error": "Unauthorized"}, status=401)

    async def _version(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        return web.json_response({"version": self.version})

    async def _models(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        if denied := self._unauthorized(request):
            return denied
        created = int(time.time())
        model = {
            "id": self.model,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": self.model,
            "parent": None,
            "max_model_len": self.max_model_len,
        }
        return web.json_response({"object": "list", "data": [model]})

    async def _not_found(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        return web.json_response({"detail": "Not Found"}, status=404)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._completion(request, "chat")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._completion(request, "completions")

    async def _completion(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        self.hits[request.path] += 1
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.requests.append(
            RecordedRequest(
                request.method,
                request.path,
                CIMultiDictProxy(CIMultiDict(request.headers)),
                body,
                raw,
            )
        )
        if denied := self._unauthorized(request):
            return denied
        if not isinstance(body, dict):
            return web.json_response(
                new_error_body("request body must be a JSON object"), status=400
            )
        behaviour = self._queue.popleft() if self._queue else self.default
        call = _Call(request, endpoint, body)
        try:
            return await self._perform(call, behaviour)
        except asyncio.CancelledError:
            self._count_cancel(call)
            raise

    def _count_cancel(self, call: _Call) -> None:
        if call.cancel_counted or call.aborted_by_fake or self._stopping:
            return
        call.cancel_counted = True
        self.cancelled += 1

    async def _perform(self, call: _Call, behaviour: Behaviour) -> web.StreamResponse:
        match behaviour:
            case Reply():
                if call.stream:
                    return await self._send_sse(call, [*self._events(call, behaviour), "[DONE]"])
                return web.json_response(
                    self._body(call, behaviour), headers=behaviour.headers, dumps=_dumps
                )
            case ErrorReply(status=status, body=body, headers=headers):
                return web.json_response(body, status=status, headers=headers, dumps=_dumps)
            case FollowSchema():
                return await self._perform(call, _follow_schema(call.body))
            case Garbage(status=status, body=body, content_type=content_type):
                return web.Response(status=status, body=body, content_type=content_type)
            case RawBody(body=body):
                return web.json_response(body, dumps=_dumps)
            case RawStream(events=events):
                return await self._send_sse(call, [*(_dumps(e) for e in events), "[DONE]"])
            case Slow(delay_s=delay, then=then):
                if not await self._sleep_watching(call, delay):
                    return web.Response(status=499)
                return await self._perform(call, then)
            case SlowStream(chunk_delay_s=delay, then=reply):
                events = [*self._events(call, reply), "[DONE]"]
                if call.stream:
                    return await self._send_sse(call, events, delay=delay)
                if not await self._sleep_watching(call, delay * len(events)):
                    return web.Response(status=499)
                return await self._perform(call, reply)
            case CrashMidStream(after_chunks=after, then=reply):
                if call.stream:
                    events = self._events(call, reply)[:after]
                    return await self._send_sse(call, events, abort=True)
                return await self._send_truncated_json(call, _dumps(self._body(call, reply)))
            case StreamError(after_chunks=after, error_body=error_body, then=reply, done=done):
                if not call.stream:
                    inner = error_body.get("error")
                    code = (inner if isinstance(inner, dict) else error_body).get("code")
                    status = code if isinstance(code, int) and 400 <= code < 600 else 500
                    return web.json_response(error_body, status=status, dumps=_dumps)
                events = [*self._events(call, reply)[:after], _dumps(error_body)]
                return await self._send_sse(call, [*events, "[DONE]"] if done else events)
        raise TypeError(f"unknown fake upstream behaviour: {behaviour!r}")

    # -- bodies ------------------------------------------------------------------------------

    def _usage(self, reply: Reply) -> dict[str, int]:
        if reply.usage is not None:
            return dict(reply.usage)
        completion = len(self._pieces(reply))
        return {
            "prompt_tokens": 10,
            "completion_tokens": completion,
            "total_tokens": 10 + completion,
        }

    @staticmethod
    def _pieces(reply: Reply) -> list[str]:
        size = max(1, reply.chunk_size)
        return [reply.content[i : i + size] for i in range(0, len(reply.content), size)]

    def _body(self, call: _Call, reply: Reply) -> dict[str, Any]:
        choice: dict[str, Any]
        if call.endpoint == "chat":
            message = {
                "role": "assistant",
                "content": reply.content,
                "refusal": None,
                "tool_calls": [],
            }
            choice = {"index": 0, "message": message, "logprobs": None}
            prefix, kind = "chatcmpl", "chat.completion"
        else:
            choice = {"index": 0, "text": reply.content, "logprobs": None}
            prefix, kind = "cmpl", "text_completion"
        choice["finish_reason"] = reply.finish_reason
        choice["stop_reason"] = None
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.model,
            "choices": [choice],
            "usage": self._usage(reply),
            **reply.extra,
        }

    def _events(self, call: _Call, reply: Reply) -> list[str]:
        """Every SSE ``data:`` payload of a streamed reply, without the final ``[DONE]``."""
        chat = call.endpoint == "chat"
        head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.model,
        }

        def chunk(text: str | None, finish: str | None, *, role: bool = False) -> str:
            choice: dict[str, Any] = {"index": 0}
            if chat:
                delta: dict[str, Any] = {"role": "assistant"} if role else {}
                if text is not None:
                    delta["content"] = text
                choice["delta"] = delta
            else:
                choice["text"] = text or ""
            choice["logprobs"] = None
            choice["finish_reason"] = finish
            if finish is not None:
                choice["stop_reason"] = None
            return _dumps({**head, "choices": [choice], **reply.extra})

        events: list[str] = []
        if chat:
            events.append(chunk("", None, role=True))
        pieces = self._pieces(reply)
        if reply.finish_with_last_piece and pieces:
            events.extend(chunk(p, None) for p in pieces[:-1])
            events.append(chunk(pieces[-1], reply.finish_reason))
        else:
            events.extend(chunk(p, None) for p in pieces)
            events.append(chunk(None if chat else "", reply.finish_reason))
        if call.include_usage:
            events.append(
                _dumps({**head, "choices": [], "usage": self._usage(reply), **reply.extra})
            )
        return events

    # -- wire helpers ------------------------------------------------------------------------

    @staticmethod
    def _client_gone(request: web.Request) -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()

    async def _sleep_watching(self, call: _Call, seconds: float) -> bool:
        """Sleep; False (and the cancellation counted) if the client left meanwhile."""
        # Polling the transport as well as relying on handler cancellation: either signal alone
        # has been enough so far, but a missed disconnect would make a cancellation test hang.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (remaining := deadline - loop.time()) > 0:
            if self._client_gone(call.request):
                self._count_cancel(call)
                return False
            await asyncio.sleep(min(remaining, 0.01))
        return True

    async def _send_sse(
        self, call: _Call, payloads: Sequence[str], *, delay: float = 0.0, abort: bool = False
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            },
        )
        await response.prepare(call.request)
        for payload in payloads:
            if delay and not await self._sleep_watching(call, delay):
                return response
            try:
                await response.write(f"data: {payload}\n\n".encode())
            except ConnectionResetError:
                self._count_cancel(call)
                return response
        if abort:
            await self._abort(call)
            return response
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    async def _send_truncated_json(self, call: _Call, text: str) -> web.StreamResponse:
        data = text.encode()
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.content_length = len(data)
        await response.prepare(call.request)
        await response.write(data[: len(data) // 2])
        await self._abort(call)
        return response

    async def _abort(self, call: _Call) -> None:
        call.aborted_by_fake = True
        transport = call.request.transport
        if transport is None:
            return
        # abort() discards unsent bytes; wait for the buffer to drain so the client really sees
        # the chunks that were "sent" before the crash.
        for _ in range(200):
            if transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.005)
        transport.abort()
