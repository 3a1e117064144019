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
3. A request that stops arriving for `IRGW_REQUEST_READ_TIMEOUT_S` gets a 408 (uvicorn has
   no such limit: a client that stalled mid-request held its connection, and the request's
   task, forever). The timer is armed only when a read ends inside a request, so a request
   that arrives in one read never touches it. After an answer that leaves part of the request
   unread (a 413, a 401, the 408), the connection lingers, then closes: no draining.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from gateway.asgi import DISCONNECT_EXTENSION, DisconnectSignal
from gateway.settings import Settings


class CoalescingTransport:
    """A transport whose writes within one loop turn leave in one `write` of the real one."""

    __slots__ = ("_ended", "_loop", "_pending", "_transport", "close_hook")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._ended = False  # our side is finished: later writes are dropped
        # Asked first by `close()`; True means it took over closing (see `_linger`).
        self.close_hook: Callable[[], bool] | None = None

    def write(self, data: bytes) -> None:
        if self._ended:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def writelines(self, chunks: Any) -> None:  # through `write`, so nothing is reordered
        self.write(b"".join(chunks))

    def write_eof(self) -> None:
        """Send what is held, then end our side where the transport can (not under TLS)."""
        self.flush()
        self._ended = True
        if self._transport.can_write_eof() and not self._transport.is_closing():
            self._transport.write_eof()

    def flush(self) -> None:
        """Send what is held now (also run at the end of the loop turn of the first write)."""
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        if self.close_hook is not None and self.close_hook():
            return
        self.flush()  # what was written before close() is still sent, as with any transport
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._ended or self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:  # get_extra_info and the rarely used rest
        return getattr(self._transport, name)


# After a final answer sent while the client is still sending (a 413 on the declared length,
# a 401, a 408): how long what it still sends is read and dropped before the connection
# closes. Closing with unread input makes the kernel reset the connection, and a client that
# writes its whole body before reading (httpx, the openai client) then never sees the answer
# (nginx's lingering close does the same).
LINGER_S = 5.0


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a `CoalescingTransport`, telling the
    app of a lost connection through a `DisconnectSignal` and timing out stalled requests."""

    read_timeout_s: float = 30.0  # set per server by `uvicorn_options`

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.disconnect_signal = DisconnectSignal()
        self._extensions = {DISCONNECT_EXTENSION: self.disconnect_signal}
        self._reading = False  # a request has begun and has not arrived whole
        self._discarding = False  # answered for good: what still comes is dropped
        self._last_read = 0.0  # when the request being read last made progress
        self._read_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._shutting_down = False
        self._deferred_400: str | None = None  # a parse error's answer, after the one under way
        # The cycle of the request before the one being read (None on a fresh connection).
        self._cycle_before: RequestResponseCycle | None = None
        coalescing = CoalescingTransport(transport, self.loop)
        coalescing.close_hook = self._close_requested
        super().connection_made(coalescing)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        super().data_received(data)
        if self._reading:  # this read ended inside a request: the client has to go on
            self._last_read = self.loop.time()
            if self._read_timer is None and not self.transport.is_closing():
                self._read_timer = self.loop.call_later(self.read_timeout_s,
                                                        self._read_timed_out)

    def on_message_begin(self) -> None:
        self._reading = True
        self._cycle_before = self.cycle
        super().on_message_begin()
        self.scope["extensions"] = self._extensions  # type: ignore[typeddict-unknown-key]

    def on_message_complete(self) -> None:
        self._reading = False
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # The answer is whole: send it now, before the app's and uvicorn's own bookkeeping
        # for the request runs (rate-limit settlement, metrics, the keep-alive timer).
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()
        if self._deferred_400 is not None:
            message, self._deferred_400 = self._deferred_400, None
            self._send_error(b"400 Bad Request", "invalid_http_request", message)
            self._linger()
        elif self._reading:
            if self.cycle is not self._cycle_before and self.cycle.response_complete:
                # Answered before its body was read (a 401, a 413): the rest of the upload
                # is not worth reading on.
                self._linger()
            else:
                # A pipelined request's turn comes: the wait so far was the gateway's.
                self._last_read = self.loop.time()

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if not self._reading or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused or self._earlier_answer_pending():
            self._last_read = now  # not the client's delay: a pipelined request waits its turn
        idle = now - self._last_read
        if idle < self.read_timeout_s:
            self._read_timer = self.loop.call_later(self.read_timeout_s - idle,
                                                    self._read_timed_out)
            return
        cycle = self.cycle
        if cycle is not self._cycle_before and cycle.response_started:  # under way: cut it
            self.transport.close()
            return
        self._abandon_app()
        # (The openai client retries a 408.)
        self._send_error(
            b"408 Request Timeout", "request_timeout",
            f"the request stalled: nothing of it arrived for {self.read_timeout_s:g} s "
            "(IRGW_REQUEST_READ_TIMEOUT_S)",
        )
        self._linger()

    def _earlier_answer_pending(self) -> bool:
        before = self._cycle_before
        return before is not None and not before.response_complete

    def _abandon_app(self) -> None:
        """The request being read will never arrive whole: if its app already runs (it
        waits for the body), it sees the client gone."""
        cycle = self.cycle
        if cycle is not None and cycle is not self._cycle_before and not cycle.response_started:
            cycle.disconnected = True
            cycle.message_event.set()

    def _linger(self) -> None:
        """No more requests on this connection: send what is written and end our side, drop
        what the client still sends for `LINGER_S`, then close."""
        self._reading = False
        self._discarding = True
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        self.transport.write_eof()
        if self._shutting_down:
            self.transport.close()
        else:
            self._close_timer = self.loop.call_later(LINGER_S, self.transport.close)

    def _close_requested(self) -> bool:
        # uvicorn closes right after an answer when the client asked for `connection: close`
        # (or spoke HTTP/1.0); with part of the request still unread, linger instead.
        if self._reading and not self._discarding and not self._shutting_down:
            self._linger()
            return True
        return False

    def shutdown(self) -> None:
        self._shutting_down = True
        if self._discarding:  # lingering: nothing more is owed to this client
            self.transport.close()
            return
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._read_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)
        self.disconnect_signal.fire()

    def send_400_response(self, msg: str) -> None:
        # What cannot be parsed as HTTP gets OpenAI's error shape too (uvicorn: text/plain),
        # and nothing after it on this connection is a request.
        self._discarding = True
        cycle = self.cycle
        if self._earlier_answer_pending() or (
                cycle is not None and cycle.response_started and not cycle.response_complete):
            # An answer is under way (a pipelined request's): the 400 follows it.
            self.pipeline.clear()
            self._deferred_400 = msg
            return
        self._abandon_app()
        self._send_error(b"400 Bad Request", "invalid_http_request", msg)
        self._linger()

    def _send_error(self, status: bytes, code: str, message: str) -> None:
        """An error the app never saw (the request never became one), in OpenAI's shape and
        with a request id as every other error has; the connection closes after it."""
        body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error",
                                       "param": None, "code": code}})
        self.transport.write(
            b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"x-request-id: req_%s\r\nconnection: close\r\n\r\n%s"
            % (status, len(body), os.urandom(16).hex().encode(), body)
        )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How the gateway is served: `uvicorn.run(app, **uvicorn_options(settings))` in
    `ir-gateway serve`, and the same options in the tests' servers."""
    return {
        "host": settings.host, "port": settings.port, "log_level": settings.log_level,
        "loop": "uvloop", "access_log": False,
        "http": type("GatewayHttpProtocol", (GatewayHttpProtocol,),
                     {"read_timeout_s": settings.request_read_timeout_s}),
        # Nothing here reads the client's address (keys identify callers), so rewriting it
        # from X-Forwarded-For on every request would only cost time.
        "proxy_headers": False,
        # `server: uvicorn` tells a caller nothing it needs and a scanner what to try.
        "server_header": False,
        "timeout_keep_alive": settings.keepalive_timeout_s,
        # uvicorn's default waits for every request, however long its stream runs.
        "timeout_graceful_shutdown": settings.shutdown_grace_s,
    }
