"""A minimal HTTP/1.1 client on raw asyncio sockets, for bench/soak.py.

Raw sockets because a soak client must be able to do what no client library does: stop
reading a stream, hang up halfway through a body, send a head of a megabyte or a body
longer than it declares. Responses are parsed by httptools (the parser the server uses).
One request per connection (`connection: close`). Loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools
import orjson

HOST = "127.0.0.1"
CONNECT_TIMEOUT_S = 10.0


class NoAnswer(Exception):
    """The server gave no (complete) answer; `reason` says how the exchange ended."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Reply:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    head_done: bool = False
    complete: bool = False

    def json(self) -> object:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None

    def error_code(self) -> str:
        """The OpenAI-shaped error's `code` (or its `type`), '-' for anything else."""
        data = self.json()
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            error = data["error"]
            return str(error.get("code") or error.get("type") or "?")
        return "-"

    def sse_events(self) -> list[bytes]:
        """The `data:` payloads of a server-sent event stream, in order."""
        events = []
        for block in bytes(self.body).split(b"\n\n"):
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    events.append(line[5:].strip())
        return events


class _Callbacks:
    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.parser: httptools.HttpResponseParser | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.reply.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.reply.status = self.parser.get_status_code()
        self.reply.head_done = True

    def on_body(self, body: bytes) -> None:
        self.reply.body += body

    def on_message_complete(self) -> None:
        self.reply.complete = True


class Conn:
    """One client connection: send bytes, read the answer as far as wanted, hang up."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reply = Reply()
        callbacks = _Callbacks(self.reply)
        self._parser = httptools.HttpResponseParser(callbacks)
        callbacks.parser = self._parser

    @classmethod
    async def open(cls, port: int, *, rcvbuf: int | None = None, limit: int = 1 << 16) -> Conn:
        """Connect to 127.0.0.1:`port`; a small `rcvbuf` and `limit` make a slow reader's
        backlog reach the server instead of piling up in this process."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), CONNECT_TIMEOUT_S)
            reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
        except (OSError, TimeoutError) as exc:
            sock.close()
            raise NoAnswer(f"connect failed ({type(exc).__name__})") from None
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        """Queue bytes; the transport sends them while we read (no deadlock on big bodies)."""
        if not self.writer.is_closing():
            self.writer.write(data)

    async def read(self, deadline: float,
                   enough: Callable[[Reply], bool] | None = None) -> Reply:
        """Read until the answer is complete (or `enough(reply)`); NoAnswer if the server
        hangs up first or `deadline` (monotonic) passes."""
        reply = self.reply
        while not reply.complete and not (enough is not None and enough(reply)):
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoAnswer("client timeout")
            try:
                data = await asyncio.wait_for(self.reader.read(1 << 16), left)
            except TimeoutError:
                raise NoAnswer("client timeout") from None
            except OSError as exc:
                raise NoAnswer(f"connection error ({type(exc).__name__})") from None
            if not data:
                raise NoAnswer("stream cut (EOF mid-answer)" if reply.head_done
                               else "closed without an answer")
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserError:
                raise NoAnswer("unparseable answer") from None
        return reply

    async def wait_closed_by_server(self, hold_s: float) -> float | None:
        """Read and drop for up to `hold_s`; seconds until the server closed, else None."""
        started = time.monotonic()
        deadline = started + hold_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                data = await asyncio.wait_for(self.reader.read(1 << 16), left)
            except TimeoutError:
                return None
            except OSError:
                return time.monotonic() - started
            if not data:
                return time.monotonic() - started
        return None

    def abort(self) -> None:
        """Hang up at once (RST if data is unread), as a crashed or impatient client does."""
        with contextlib.suppress(Exception):
            self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)


def request_bytes(method: str, path: str, port: int, *, key: str | None = None,
                  body: bytes = b"", content_length: int | None = None,
                  extra: bytes = b"") -> bytes:
    """A request's bytes; `content_length` may lie about `body` (oversized or cut bodies)."""
    head = [f"{method} {path} HTTP/1.1", f"host: {HOST}:{port}", "connection: close"]
    if key is not None:
        head.append(f"authorization: Bearer {key}")
    if body or content_length is not None or method == "POST":
        head.append("content-type: application/json")
        head.append(f"content-length: {len(body) if content_length is None else content_length}")
    return "\r\n".join(head).encode() + b"\r\n" + extra + b"\r\n" + body
