"""HTTP/1.1 to the one upstream: a keep-alive pool of asyncio protocols, parsed by httptools.

Why not aiohttp's ClientSession (the first choice, by bench/upstream_client.py): sampled
under load, it was the gateway's largest single cost per request, and a proxy with no logic
at all built on it already took most of the 1 ms budget; on this transport the same proxy
adds less and the client side costs a fraction of aiohttp's CPU per request (figures:
bench/README.md, "Figures the code cites"; bench/results/upstream_client.md). The hop it
serves is narrow, and that is what keeps this small: one origin, HTTP/1.1, request bodies
already in memory, answers by content-length, chunked or close-delimited. No redirects, cookies,
proxies or compression: none of them belongs on a gateway→vLLM hop, and each would be a way
for one caller's state to reach another's. Parsing is httptools (llhttp, the parser of
uvicorn and Node.js); this module only frames requests and keeps connections.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import cast
from urllib.parse import urlsplit

import httptools

_HIGH_WATER = 1 << 20  # bytes buffered from a stream before we stop reading the socket
_UNSENDABLE = re.compile(r"[\r\n\0]")  # would split or end a header line
# A server that closed a kept-alive connection before reading our request (its keep-alive
# timer won the race) has its FIN or reset reach us within about one round trip of our
# write. A close that comes later means the server had the request and was working on it:
# sending it again would run it twice.
_STALE_WINDOW_S = 0.25


class TransportError(Exception):
    """The request failed below HTTP; subclasses say whether it can have reached vLLM."""


class ConnectFailed(TransportError):
    """No connection could be made (refused, unreachable, timed out): nothing was sent."""


class StaleConnection(TransportError):
    """A reused keep-alive connection closed just after the request was written, before a
    single byte of the answer arrived."""


class ConnectionBroken(TransportError):
    """The connection closed, or sent what is not HTTP, partway through the answer."""


class ReadTimeout(TransportError):
    """Nothing arrived for `read_timeout_s`."""


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; carries one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.reused = False
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._expecting = False  # from send() to the end of the final answer
        self._sent_at = 0.0
        self._reset_answer()

    def _reset_answer(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.error: TransportError | None = None
        self.received_any = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._delimited = False  # by content-length or chunked; otherwise by close

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if not self._expecting:
            # Bytes nobody asked for (after the answer ended, or while idle in the pool): the
            # framing cannot be trusted, and parsing them would hand them to the next request.
            self.close()
            return
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ConnectionBroken("the upstream tried to switch protocols"))
        except httptools.HttpParserError as exc:
            if not self._expecting:  # the answer is whole; what came after it is not ours
                self.close()
                return
            self._fail(ConnectionBroken(f"the upstream's answer is not valid HTTP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.complete or self.error is not None:
            return
        if self.headers_done and not self._delimited:
            self.complete = True  # a close-delimited body ends with the connection
        elif (not self.received_any and self.reused
              and time.monotonic() - self._sent_at < _STALE_WINDOW_S):
            self.error = StaleConnection(f"the upstream closed a kept-alive connection ({exc})")
        else:
            self.error = ConnectionBroken(f"the upstream closed the connection ({exc})")
        self._wake()

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        if not self._expecting:  # more after the answer, in the same read: stop parsing it
            raise ConnectionBroken("the upstream sent an answer nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (100 Continue, 103 Early Hints; 101 raises HttpParserUpgrade):
            # the real one follows on the same connection.
            self.headers.clear()
            return
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        self._delimited = ("content-length" in self.headers
                           or "chunked" in self.headers.get("transfer-encoding", "").lower())
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.headers_done:  # the end of an interim answer
            return
        self._expecting = False
        self.complete = True
        self._wake()

    # -- the caller's side

    def _fail(self, error: TransportError) -> None:
        self.error = error
        self.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self._reset_answer()
        if self._paused:  # the last answer ended while we had stopped reading
            self._paused = False
            self.transport.resume_reading()
        self._expecting = True
        self._sent_at = time.monotonic()
        self.transport.write(data)

    async def wait(self, timeout_s: float) -> None:
        """Until the next event (headers, a body chunk, the end, an error)."""
        if self.error is not None:
            raise self.error
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout_s, self._expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self.error is not None:
            raise self.error

    def _expire(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            self._fail(ReadTimeout("the upstream sent nothing in time"))

    def take(self) -> bytes:
        """Every body byte buffered so far."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def has_body(self) -> bool:
        return bool(self._chunks)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Response:
    """Status and headers of an answer; the body is read (or abandoned) through this."""

    def __init__(self, pool: Pool, conn: _Connection, read_timeout_s: float) -> None:
        self._pool = pool
        self._conn = conn
        self._timeout = read_timeout_s
        self._done = False
        self.status = conn.status
        self.headers = conn.headers

    async def next_chunk(self) -> bytes | None:
        """The body bytes buffered since the last call, waiting if there are none; None at
        the end (the connection is then released). Taking as they come is what keeps a big
        body from stalling at the high-water mark."""
        conn = self._conn
        while not conn.has_body():
            if conn.complete:
                self.release()
                return None
            await conn.wait(self._timeout)
        return conn.take()

    async def read(self) -> bytes:
        parts: list[bytes] = []
        while (chunk := await self.next_chunk()) is not None:
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self.next_chunk()) is not None:
            yield chunk

    def release(self) -> None:
        """Done with the answer: a complete one gives its connection back, anything else closes
        it, which is how vLLM learns to abort a generation nobody will read."""
        if self._done:
            return
        self._done = True
        conn = self._conn
        if conn.complete and conn.keep_alive and not conn.closed:
            self._pool.put_back(conn)
        else:
            self._pool.discard(conn)


class Pool:
    """Keep-alive connections to one origin, most recently used first."""

    def __init__(self, base_url: str, *, size: int, keepalive_s: float, connect_timeout_s: float,
                 read_timeout_s: float, headers: Iterable[tuple[str, str]] = ()) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream URL must be http(s)://host[:port][/prefix]: {base_url!r}")
        secure = parts.scheme == "https"
        default_port = 443 if secure else 80
        self._host = parts.hostname
        self._port = parts.port or default_port
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if secure else None
        self._prefix = parts.path.rstrip("/")
        authority = self._host if ":" not in self._host else f"[{self._host}]"
        if self._port != default_port:
            authority += f":{self._port}"
        self._fixed_head = _header_lines([("host", authority), *headers])
        self._keepalive_s = keepalive_s
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._closed = False

    async def request(self, method: str, path: str, body: bytes | None,
                      headers: Iterable[tuple[str, str]] = (), *, fresh: bool = False) -> Response:
        """Send one request and wait for the answer's head. A reused connection that turns out
        to be closed raises StaleConnection: the caller decides whether to try again, with
        `fresh` to pass over the idle connections, which may have gone stale together."""
        head = (f"{method} {self._prefix}{path} HTTP/1.1\r\n".encode("latin-1")
                + self._fixed_head + _header_lines(headers))
        if body is not None:
            head += b"content-length: %d\r\n" % len(body)
        data = head + b"\r\n" + (body or b"")
        await self._slots.acquire()
        try:
            conn = await self._checkout(fresh=fresh)
        except BaseException:
            self._slots.release()
            raise
        try:
            conn.send(data)
            while not conn.headers_done:
                await conn.wait(self._read_timeout_s)
        except BaseException:
            self.discard(conn)
            raise
        return Response(self, conn, self._read_timeout_s)

    async def _checkout(self, *, fresh: bool = False) -> _Connection:
        if self._closed:  # shutting down: not a reason to retry until the connect deadline
            raise ConnectionBroken("the upstream client is closed")
        now = time.monotonic()
        while self._idle and not fresh:  # passed over ones expire or are found stale by others
            conn = self._idle.pop()
            if (conn.closed or conn.transport is None or conn.transport.is_closing()
                    or now - conn.idle_since > self._keepalive_s):
                self._forget(conn)
                continue
            conn.reused = True
            return conn
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop), self._host, self._port, ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None)
        except TimeoutError as exc:
            raise ConnectFailed(f"connecting to {self._host}:{self._port} timed out") from exc
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake
            raise ConnectFailed(f"cannot connect to {self._host}:{self._port}: {exc}") from exc
        self._open.add(conn)
        return conn

    def put_back(self, conn: _Connection) -> None:
        self._slots.release()
        if self._closed:
            self._forget(conn)
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def discard(self, conn: _Connection) -> None:
        self._slots.release()
        self._forget(conn)

    def _forget(self, conn: _Connection) -> None:
        conn.close()
        self._open.discard(conn)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def aclose(self) -> None:
        self._closed = True
        self._idle.clear()
        for conn in list(self._open):
            self._forget(conn)
        await asyncio.sleep(0)  # let the transports run their close callbacks


def _header_lines(headers: Iterable[tuple[str, str]]) -> bytes:
    lines = []
    for name, value in headers:
        if not name or _UNSENDABLE.search(name) or _UNSENDABLE.search(value):
            raise ValueError(f"header {name!r} has a value that cannot be sent")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")
