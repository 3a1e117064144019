"""Connection-level helpers: noticing that the client went away, and acting on it.

A generation the client no longer waits for still holds a GPU slot, so a disconnect must
cancel the upstream call, streamed or not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

import anyio
import orjson
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

T = TypeVar("T")


class ClientDisconnectedError(Exception):
    def __init__(self, *, started: bool = True) -> None:
        super().__init__("the client disconnected")
        self.started = started  # False: gone before the work began (e.g. while queued)


DISCONNECT_EXTENSION = "irgw.disconnect"
# What Starlette makes of "text/event-stream" (it adds the charset to text/ types), so a
# stream answered in one piece carries the same header as a relayed one.
SSE_MEDIA_TYPE = "text/event-stream; charset=utf-8"


class DisconnectSignal:
    """One per client connection, in the scope's extensions (key DISCONNECT_EXTENSION) when
    the server is the gateway's own protocol (gateway.server.protocol): it calls back when the
    connection is lost, so noticing a disconnect costs a callback, not a task per request."""

    __slots__ = ("_callbacks", "lost")

    def __init__(self) -> None:
        self.lost = False
        self._callbacks: list[Callable[[], None]] = []

    def add(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def remove(self, callback: Callable[[], None]) -> None:
        self._callbacks.remove(callback)

    def fire(self) -> None:
        self.lost = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


async def _wait_for_disconnect(receive: Receive) -> None:
    # After the body is read, receive() only returns once the client disconnects.
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await `work`; if the client disconnects first, cancel it and raise
    ClientDisconnectedError. `work` runs in the caller's task."""
    current = asyncio.current_task()
    assert current is not None
    disconnected = False

    def on_disconnect() -> None:
        nonlocal disconnected
        disconnected = True
        current.cancel()

    signal = request.scope.get("extensions", {}).get(DISCONNECT_EXTENSION)
    if signal is not None:
        if signal.lost:
            work.close()
            raise ClientDisconnectedError(started=False)
        signal.add(on_disconnect)
    else:  # another server: a watcher task waits for http.disconnect
        async def watch() -> None:
            await _wait_for_disconnect(request.receive)
            on_disconnect()

        watcher = current.get_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if disconnected:
            current.uncancel()
            raise ClientDisconnectedError from None
        raise
    finally:
        if signal is not None:
            if not disconnected:
                signal.remove(on_disconnect)
        else:
            watcher.cancel()


# The event that ends an OpenAI stream.
SSE_END = b"data: [DONE]\n\n"


class SSEResponse(Response):
    """Server-sent events, relayed as produced, with a cleanup that always runs.

    Unlike a plain StreamingResponse, the stream is cancelled as soon as the client
    disconnects (whatever ASGI spec version the server speaks), and `on_close` runs even
    when the body iterator never started, so upstream connections and rate-limit slots
    are always given back.
    """

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], *, headers: Mapping[str, str],
                 on_close: Callable[[], Awaitable[None]]) -> None:
        self.body_iterator = content
        self.status_code = 200
        self.background = None
        self.on_close = on_close
        self._closed = False
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no", **headers})

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        last: bytes | None = None
        async for chunk in self.body_iterator:
            if last is not None:
                await send({"type": "http.response.body", "body": last, "more_body": True})
                last = None
            if chunk.endswith(SSE_END):
                last = chunk  # held until the stream is settled: see `_close`
                continue
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if last is not None:
            # The request is over before the client reads its end: a client that sends its
            # next request at once must find its key's concurrency slot free.
            await self._close()
            await send({"type": "http.response.body", "body": last, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _close(self) -> None:
        if not self._closed:
            self._closed = True
            with anyio.CancelScope(shield=True):  # a client leaving now must not cut it short
                await self.on_close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:
                async def stream_then_stop() -> None:
                    await self._stream(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream_then_stop)
                await _wait_for_disconnect(receive)
                group.cancel_scope.cancel()
        except* OSError:  # anyio's task group raises a group, never the bare error
            pass  # the client went away while we were writing
        finally:
            with anyio.CancelScope(shield=True):
                aclose = getattr(self.body_iterator, "aclose", None)
                if aclose is not None:
                    await aclose()
                await self._close()


class BodyResponse(Response):
    """An answer whose body is known in full, with its header list built directly:
    Starlette's generic `init_headers` is a visible cost on the hot path. Header names are
    given in lowercase, as ASGI wants them and as all of this code does.

    `after_send` runs once the answer has been handed to the server, or failed to be (the
    client went away): bookkeeping the client need not wait for, which must still happen.
    """

    media_type = "application/octet-stream"

    def __init__(self, content: object, status_code: int = 200,
                 headers: Mapping[str, str] | None = None, media_type: str | None = None,
                 background: BackgroundTask | None = None, *,
                 after_send: Callable[[], Awaitable[None]] | None = None) -> None:
        self.status_code = status_code
        self.background = background
        self.after_send = after_send
        if media_type is not None:
            self.media_type = media_type
        self.body = self.render(content)
        given = headers or {}
        raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in given.items()]
        if "content-length" not in given:
            raw.append((b"content-length", str(len(self.body)).encode("latin-1")))
        if "content-type" not in given:
            raw.append((b"content-type", self.media_type.encode("latin-1")))
        self.raw_headers = raw

    def render(self, content: object) -> bytes:
        if not isinstance(content, bytes):
            raise TypeError(f"a BodyResponse takes bytes, not {type(content).__name__}")
        return content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.after_send is not None:
                await self.after_send()


class JSONResponse(BodyResponse):
    """orjson-rendered JSON (FastAPI's ORJSONResponse is deprecated)."""

    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)
