"""The HTTP server side: uvicorn's httptools protocol with two changes, and its config.

1. A response's writes are coalesced. uvicorn writes a response's head and its body in two
   `write` calls, so a JSON answer leaves as two syscalls and two TCP segments, and the
   client may wake up twice to read it. Writes are held until the response is complete or
   the loop turn that made them ends, whichever comes first (write coalescing, as Netty's
   flush consolidation does): a whole JSON answer is one syscall and one segment, sent
   before any bookkeeping that follows it, and a streamed answer's events still go out as
   they come.
2. The connection tells the app when the client goes away (`asgi.DisconnectSignal`, in the
   scope's extensions), so a request need not keep a task waiting on `receive()` just to
   notice a disconnect. Under any other server the app falls back to such a task.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.asgi import DISCONNECT_EXTENSION, DisconnectSignal
from gateway.settings import Settings


class CoalescingTransport:
    """A transport whose writes within one loop turn leave in one `write` of the real one."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def writelines(self, chunks: Any) -> None:  # through `write`, so nothing is reordered
        self.write(b"".join(chunks))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def flush(self) -> None:
        """Send what is held now (also run at the end of the loop turn of the first write)."""
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()  # what was written before close() is still sent, as with any transport
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:  # get_extra_info and the rarely used rest
        return getattr(self._transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a `CoalescingTransport` and telling
    the app of a lost connection through a `DisconnectSignal`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.disconnect_signal = DisconnectSignal()
        self._extensions = {DISCONNECT_EXTENSION: self.disconnect_signal}
        super().connection_made(
            CoalescingTransport(transport, self.loop)  # type: ignore[arg-type]
        )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = self._extensions  # type: ignore[typeddict-unknown-key]

    def on_response_complete(self) -> None:
        # The answer is whole: send it now, before the app's and uvicorn's own bookkeeping
        # for the request runs (rate-limit settlement, metrics, the keep-alive timer).
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.disconnect_signal.fire()

    def send_400_response(self, msg: str) -> None:
        # What cannot be parsed as HTTP gets OpenAI's error shape too (uvicorn: text/plain).
        body = orjson.dumps({"error": {"message": msg, "type": "invalid_request_error",
                                       "param": None, "code": "invalid_http_request"}})
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How the gateway is served: `uvicorn.run(app, **uvicorn_options(settings))` in
    `ir-gateway serve`, and the same options in the tests' servers."""
    return {
        "host": settings.host, "port": settings.port, "log_level": settings.log_level,
        "loop": "uvloop", "http": GatewayHttpProtocol, "access_log": False,
        # Nothing here reads the client's address (keys identify callers), so rewriting it
        # from X-Forwarded-For on every request would only cost time.
        "proxy_headers": False,
        # `server: uvicorn` tells a caller nothing it needs and a scanner what to try.
        "server_header": False,
        "timeout_keep_alive": settings.keepalive_timeout_s,
        # uvicorn's default waits for every request, however long its stream runs.
        "timeout_graceful_shutdown": settings.shutdown_grace_s,
    }
