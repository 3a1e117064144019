"""The HTTP server side: uvicorn's httptools protocol with these changes, and its config.

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
4. The front door's limits (uvicorn has none of them): a request head is at most
   `IRGW_MAX_REQUEST_HEAD_BYTES` and `IRGW_MAX_REQUEST_HEADERS` (431 beyond), counted as it
   arrives, before the parser gathers it (httptools joins a header's pieces by copying, so a
   100 MB header cost seconds of CPU); it must arrive whole within
   `IRGW_REQUEST_HEAD_TIMEOUT_S` of its first byte, or of the connection's opening (a
   connection that never sends a byte is closed then); past `IRGW_MAX_CONNECTIONS` a new
   connection gets a 503 and is closed at once; a client that reads nothing of what it is
   sent for `IRGW_WRITE_TIMEOUT_S` is dropped (its request, and its vLLM call, cancelled).
   Between kept-alive requests uvicorn's own `timeout_keep_alive` closes an idle connection.

The subclass leans on uvicorn's internals, so it runs only on the uvicorn series the tests
ran (gateway/server/serving.py, which also holds the server's options).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from http import HTTPStatus

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from gateway.errors import (
    GatewayError,
    HeaderFieldsTooLargeError,
    InvalidRequestError,
    OverloadedError,
    RequestTimeoutError,
)
from gateway.server.asgi import DISCONNECT_EXTENSION, DisconnectSignal
from gateway.server.coalescing import CoalescingTransport

__all__ = ["CoalescingTransport", "GatewayHttpProtocol"]

log = logging.getLogger("gateway.server.protocol")

# A refused connection (over IRGW_MAX_CONNECTIONS) is logged at most this often, with the
# count since the last line: a flood must not turn into a flood of log lines.
REFUSAL_LOG_EVERY_S = 10.0


class _HeadRefusedError(Exception):
    """Raised inside a parser callback to stop parsing a head that is refused."""


class _RefusalLog:
    """Counts refused connections; logs at most one line per REFUSAL_LOG_EVERY_S."""

    def __init__(self) -> None:
        self.refused = 0
        self._unlogged = 0
        self._last = -REFUSAL_LOG_EVERY_S

    def refused_one(self, limit: int) -> None:
        self.refused += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._last >= REFUSAL_LOG_EVERY_S:
            log.warning("refused %d connection(s): %d open, the limit (IRGW_MAX_CONNECTIONS)",
                        self._unlogged, limit)
            self._unlogged = 0
            self._last = now


REFUSALS = _RefusalLog()


# After a final answer sent while the client is still sending (a 413 on the declared length,
# a 401, a 408): how long what it still sends is read and dropped before the connection
# closes. Closing with unread input makes the kernel reset the connection, and a client that
# writes its whole body before reading (httpx, the openai client) then never sees the answer
# (nginx's lingering close does the same).
LINGER_S = 5.0


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a `CoalescingTransport`, telling the
    app of a lost connection through a `DisconnectSignal`, timing out stalled requests and
    enforcing the front door's limits."""

    # Set per server by `uvicorn_options` (these defaults are Settings' own).
    read_timeout_s: float = 30.0
    head_timeout_s: float = 20.0
    max_head_bytes: int = 32 * 1024
    max_headers: int = 100
    max_connections: int = 4096
    write_timeout_s: float = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        over_limit = len(self.connections) >= self.max_connections
        self.disconnect_signal = DisconnectSignal()
        self._extensions = {DISCONNECT_EXTENSION: self.disconnect_signal}
        self._reading = False  # a request has begun and has not arrived whole
        self._discarding = False  # answered for good: what still comes is dropped
        self._last_read = 0.0  # when the request being read last made progress
        self._read_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._shutting_down = False
        # An error answer for a request that never became one, held until the answer under
        # way is sent: (status line, code, message).
        self._deferred_error: GatewayError | None = None
        # The next bytes are a request head; how many of it arrived; its deadline's timer,
        # armed here (for a connection that never sends a byte) and by a read ending inside
        # a head, never for a head that arrives in one read.
        self._head_pending = True
        self._head_bytes = 0
        self._head_refused: GatewayError | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._upgrade_left: int | None = None  # an upgrade request's body bytes to come
        # The cycle of the request before the one being read (None on a fresh connection).
        self._cycle_before: RequestResponseCycle | None = None
        coalescing = CoalescingTransport(transport, self.loop)
        coalescing.close_hook = self._close_requested
        super().connection_made(coalescing)  # type: ignore[arg-type]
        if over_limit:
            REFUSALS.refused_one(self.max_connections)
            self._discarding = True
            self._send_error(OverloadedError(
                "the gateway has too many open connections; retry shortly",
                code="too_many_connections", headers={"retry-after": "1"}))
            self.transport.close()
            return
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._head_pending:
            room = self.max_head_bytes - self._head_bytes
            if len(data) > room:
                self._feed_past_head_limit(memoryview(data), room)
                return
            self._head_bytes += len(data)
        self._feed(data)
        if self._head_pending and self._head_bytes and self._head_timer is None \
                and not self._discarding:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)
        if self._reading:  # this read ended inside a request: the client has to go on
            self._last_read = self.loop.time()
            if self._read_timer is None and not self.transport.is_closing():
                self._read_timer = self.loop.call_later(self.read_timeout_s,
                                                        self._read_timed_out)

    def _feed_past_head_limit(self, data: memoryview, room: int) -> None:
        """A read that carries more than the head still may be: the head must end within
        `room` bytes; what follows it (a body, another request) is fed on as usual."""
        self._head_bytes += room
        self._feed(data[:room])
        if self._discarding or self.transport.is_closing():
            return
        if self._head_pending and self._head_bytes >= self.max_head_bytes:
            self._refuse(HeaderFieldsTooLargeError(
                f"the request head is larger than {self.max_head_bytes} bytes "
                "(IRGW_MAX_REQUEST_HEAD_BYTES)"))
            return
        self.data_received(data[room:])  # type: ignore[arg-type]

    def _feed(self, data: bytes | memoryview) -> None:
        # uvicorn's `data_received`, with a refused head answered as what it is (431, 408)
        # rather than as a parse error.
        if self._upgrade_left is not None:  # the parser is past the last request
            self._feed_upgrade_body(data)
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # What follows the head is its body, then nothing (above). uvicorn's two
            # warnings per upgrade request (a log any client could flood) are not written.
            self._feed_upgrade_body(data[upgrade.args[0]:])
        except httptools.HttpParserError:
            if self._head_refused is not None:
                self._refuse(self._head_refused)
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)

    def on_message_begin(self) -> None:
        self._reading = True
        self._cycle_before = self.cycle
        super().on_message_begin()
        self.scope["extensions"] = self._extensions  # type: ignore[typeddict-unknown-key]

    def on_headers_complete(self) -> None:
        if len(self.headers) > self.max_headers:
            self._head_refused = HeaderFieldsTooLargeError(
                f"the request has more than {self.max_headers} header fields "
                "(IRGW_MAX_REQUEST_HEADERS)")
            raise _HeadRefusedError
        upgrade_body = self._upgrade_body_length() if self.parser.should_upgrade() else None
        self._head_pending = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        if upgrade_body is not None:
            # Never upgraded (`ws: none`, no h2c): answered as HTTP/1.1, and the last request
            # on the connection, whose parser is past it. httptools ends an upgrade request at
            # its head; its body (`curl --http2 -d`) is read here (`_feed_upgrade_body`).
            self.cycle.keep_alive = False
            self._upgrade_left = upgrade_body

    def _upgrade_body_length(self) -> int:
        lengths = [value for name, value in self.headers if name == b"content-length"]
        if any(name == b"transfer-encoding" for name, _ in self.headers) or len(lengths) > 1 \
                or (lengths and not lengths[0].isdigit()):
            self._head_refused = InvalidRequestError(
                "a request with an Upgrade header takes a body with one Content-Length, not "
                "chunked; the gateway does not upgrade (send it without Upgrade: curl "
                "--http1.1)")
            raise _HeadRefusedError
        return int(lengths[0]) if lengths else 0

    def _feed_upgrade_body(self, data: bytes | memoryview) -> None:
        left = self._upgrade_left or 0
        if left:
            piece = bytes(data[:left])
            self._upgrade_left = left - len(piece)
            self.on_body(piece)
            if self._upgrade_left == 0:
                self.on_message_complete()

    def on_message_complete(self) -> None:
        if self._upgrade_left:  # an upgrade request's body is still to come
            return
        self._reading = False
        self._head_pending = True
        self._head_bytes = 0
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # The answer is whole: send it now, before the app's and uvicorn's own bookkeeping
        # for the request runs (rate-limit settlement, metrics, the keep-alive timer).
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()
        if self._deferred_error is not None:
            error, self._deferred_error = self._deferred_error, None
            self._send_error(error)
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
        self._send_error(RequestTimeoutError(
            f"the request stalled: nothing of it arrived for {self.read_timeout_s:g} s "
            "(IRGW_REQUEST_READ_TIMEOUT_S)"))
        self._linger()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._head_pending or self._discarding or self.transport.is_closing():
            return
        if self._head_bytes == 0:  # a connection that never sent a byte: nobody to answer
            self._discarding = True
            self.transport.close()
            return
        self._refuse(RequestTimeoutError(
            f"the request head did not arrive whole within {self.head_timeout_s:g} s "
            "(IRGW_REQUEST_HEAD_TIMEOUT_S)"))

    def pause_writing(self) -> None:
        # The client reads slower than it is sent, or not at all: it has `write_timeout_s`
        # to take something before it is dropped.
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.write_timeout_s,
                                                     self._write_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_timed_out(self) -> None:
        self._write_timer = None
        if not self.flow.write_paused:
            return
        log.info("dropped a client that read nothing for %g s (IRGW_WRITE_TIMEOUT_S), "
                 "%d bytes unsent", self.write_timeout_s, self.transport.get_write_buffer_size())
        # abort, not close: close would wait for the buffer to be read. The connection's loss
        # cancels the request (and its vLLM call) and frees its slot.
        self.transport.abort()

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
        for timer in (self._read_timer, self._close_timer, self._head_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)
        self.disconnect_signal.fire()
        if self.cycle is not None:
            # What arrived of a request that was answered before it was read (a 413, a 503),
            # or that lost its client: nobody can read it now, and uvicorn's cycle, in a
            # reference cycle with this protocol, would hold it until the collector runs.
            self.cycle.body = b""

    def send_400_response(self, msg: str) -> None:
        # What cannot be parsed as HTTP gets OpenAI's error shape too (uvicorn: text/plain).
        self._refuse(InvalidRequestError(msg, code="invalid_http_request"))

    def _refuse(self, error: GatewayError) -> None:
        """Answer a request that never became one with `error`; nothing after it on this
        connection is a request."""
        self._discarding = True
        cycle = self.cycle
        if self._earlier_answer_pending() or (
                cycle is not None and cycle.response_started and not cycle.response_complete):
            # An answer is under way (a pipelined request's): the error follows it.
            self.pipeline.clear()
            self._deferred_error = error
            return
        self._abandon_app()
        self._send_error(error)
        self._linger()

    def _send_error(self, error: GatewayError) -> None:
        """An error the app never saw (the request never became one), in OpenAI's shape and
        with a request id as every other error has; the connection closes after it."""
        body = orjson.dumps(error.body())
        extra = b"".join(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1"))
                         for name, value in error.headers.items())
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"x-request-id: req_%s\r\n%sconnection: close\r\n\r\n%s"
            % (error.status_code, HTTPStatus(error.status_code).phrase.encode(), len(body),
               os.urandom(16).hex().encode(), extra, body)
        )
