"""The gateway's own HTTP/1.1 transport to vLLM (gateway/upstream/transport.py), at the byte level.

The servers here are raw asyncio sockets that write exactly the bytes a test scripts, so the
framings a real server may choose (content-length, chunked, close-delimited, `Connection:
close`), broken answers and TLS are each checked against the transport directly. The
behaviour through the whole gateway (retries, 502/503/504, cancelling) is in test_routes.py
and test_chat.py, against the aiohttp-based fake upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.errors import UpstreamError, UpstreamTimeoutError
from gateway.settings import Settings
from gateway.upstream.client import UpstreamClient
from gateway.upstream.transport import ConnectFailed, ConnectionBroken, Pool, ReadTimeout

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """Accepts connections and hands each to `handler`; counts connections and requests."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.connections = 0
        self.heads: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0,
                                                  ssl=self.ssl_context)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def url(self, scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}"

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request's head and body; None when the client closed the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        self.heads.append(head)
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length) if length else b""
        return head + body

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def answer(body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    return head + b"".join(extra) + b"content-length: %d\r\n\r\n" % len(body) + body


def pool_for(url: str, **overrides: float) -> Pool:
    options: dict[str, float] = {"size": 4, "keepalive_s": 4.0, "connect_timeout_s": 2.0,
                                 "read_timeout_s": 2.0, **overrides}
    return Pool(url, size=int(options["size"]), keepalive_s=options["keepalive_s"],
                connect_timeout_s=options["connect_timeout_s"],
                read_timeout_s=options["read_timeout_s"],
                headers=[("content-type", "application/json")])


@contextlib.asynccontextmanager
async def opened(pool: Pool) -> AsyncIterator[Pool]:
    try:
        yield pool
    finally:
        await pool.aclose()


@contextlib.asynccontextmanager
async def client_for(url: str) -> AsyncIterator[UpstreamClient]:
    client = UpstreamClient(Settings(upstream_url=url, auth_enabled=False))
    await client.start()
    try:
        yield client
    finally:
        await client.aclose()


async def test_requests_share_one_kept_alive_connection_and_are_framed_exactly() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await server.read_request(reader)) is not None:
            writer.write(answer(b'{"echo":%d}' % len(request)))

    async with RawServer(serve) as server, opened(pool_for(server.url())) as pool:
        bodies = []
        for i in range(5):
            response = await pool.request("POST", "/v1/chat/completions", b'{"n":%d}' % i,
                                          [("x-request-id", f"req-{i}")])
            assert response.status == 200
            assert response.headers["content-type"] == "application/json"
            bodies.append(await response.read())
        assert server.connections == 1
        assert len(set(bodies)) == 1
        head = server.heads[0].decode()
        assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
        lines = head.lower().split("\r\n")
        assert f"host: 127.0.0.1:{server.port}" in lines
        assert "content-length: 7" in lines
        assert "x-request-id: req-0" in lines
        # Nothing the gateway does not mean to send: no cookies, no compression, no agent.
        assert not any(line.startswith(("cookie", "accept-encoding", "user-agent"))
                       for line in lines)


@pytest.mark.parametrize("framing", ["chunked", "close-delimited"])
async def test_chunked_and_close_delimited_answers_are_read_whole(framing: str) -> None:
    payload = b'{"content":"' + b"x" * 70_000 + b'"}'

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader) is not None:
            if framing == "close-delimited":
                writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + payload)
                await writer.drain()
                return  # the end of the connection is the end of the body
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for start in range(0, len(payload), 4096):
                piece = payload[start:start + 4096]
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
            writer.write(b"0\r\n\r\n")

    async with RawServer(serve) as server, opened(pool_for(server.url())) as pool:
        for _ in range(2):
            response = await pool.request("GET", "/big", None)
            assert await response.read() == payload
        # A chunked answer leaves the connection reusable; a close-delimited one cannot.
        assert server.connections == (1 if framing == "chunked" else 2)


async def test_connection_close_from_the_server_is_honoured() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(answer(b"{}", b"connection: close\r\n"))
        await writer.drain()
        await asyncio.sleep(0.5)  # the server has not closed yet: the client must not reuse

    async with RawServer(serve) as server, opened(pool_for(server.url())) as pool:
        for _ in range(3):
            assert await (await pool.request("GET", "/version", None)).read() == b"{}"
        assert server.connections == 3


async def test_idle_connections_expire_before_the_servers_keepalive() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader) is not None:
            writer.write(answer(b"{}"))

    async with RawServer(serve) as server, \
            opened(pool_for(server.url(), keepalive_s=0.2)) as pool:
        await (await pool.request("GET", "/version", None)).read()
        await (await pool.request("GET", "/version", None)).read()
        assert server.connections == 1
        await asyncio.sleep(0.3)
        await (await pool.request("GET", "/version", None)).read()
        assert server.connections == 2
        assert pool.open_connections == 1  # the expired one was closed, not leaked


async def test_the_pool_never_opens_more_connections_than_its_size() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader) is not None:
            await asyncio.sleep(0.05)
            writer.write(answer(b"{}"))

    async with RawServer(serve) as server, opened(pool_for(server.url(), size=3)) as pool:
        async def one() -> bytes:
            return await (await pool.request("GET", "/v1/models", None)).read()

        results = await asyncio.gather(*(one() for _ in range(12)))
        assert results == [b"{}"] * 12
        assert server.connections == 3


async def test_an_abandoned_answer_closes_its_connection() -> None:
    """How vLLM learns that nobody reads a generation any more: the connection closes."""
    closed = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        if await reader.read(1) == b"":
            closed.set()

    async with RawServer(serve) as server, opened(pool_for(server.url())) as pool:
        response = await pool.request("POST", "/v1/chat/completions", b"{}")
        chunks = response.iter_chunks()
        assert await anext(chunks) == b"hello"
        response.release()
        await asyncio.wait_for(closed.wait(), 2)
        assert pool.open_connections == 0


async def test_a_large_stream_read_slowly_arrives_intact() -> None:
    """More than the transport buffers before it stops reading the socket (1 MiB)."""
    pieces = [bytes([65 + i % 26]) * 65_536 for i in range(48)]  # 3 MiB

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with RawServer(serve) as server, opened(pool_for(server.url())) as pool:
        response = await pool.request("POST", "/stream", b"{}")
        received = bytearray()
        async for chunk in response.iter_chunks():
            received += chunk
            await asyncio.sleep(0.001)
        assert bytes(received) == b"".join(pieces)


async def test_what_is_not_http_is_a_broken_connection() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()

    async with RawServer(serve) as server, opened(pool_for(server.url())) as pool:
        with pytest.raises(ConnectionBroken, match="not valid HTTP"):
            await pool.request("GET", "/version", None)


async def test_interim_answers_are_skipped_for_the_final_one() -> None:
    """A 103 Early Hints taken as the answer would leave the real 200 to the next request."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader) is not None:
            n = len(server.heads)
            if n == 1:
                writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)  # its own read, apart from the answer
            writer.write(answer(b'{"answer_for":%d}' % n))

    async with RawServer(serve) as server, opened(pool_for(server.url())) as pool:
        for n in (1, 2):
            response = await pool.request("POST", "/v1/chat/completions", b"{}")
            assert response.status == 200
            assert "link" not in response.headers
            assert await response.read() == b'{"answer_for":%d}' % n
        assert server.connections == 1


@pytest.mark.parametrize("apart", [True, False], ids=["while-idle", "after-the-answer"])
async def test_bytes_nobody_asked_for_close_the_connection(apart: bool) -> None:
    """Framing that cannot be trusted: kept, it would garble the next request's answer."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader) is not None:
            writer.write(answer(b'{"answer_for":%d}' % len(server.heads)))
            if len(server.heads) == 1:
                if apart:
                    await writer.drain()
                    await asyncio.sleep(0.05)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 40\r\n\r\n")

    async with RawServer(serve) as server, \
            opened(pool_for(server.url(), read_timeout_s=0.5)) as pool:
        for n in (1, 2):
            response = await pool.request("POST", "/v1/chat/completions", b"{}")
            assert await response.read() == b'{"answer_for":%d}' % n
            await asyncio.sleep(0.2)
        assert server.connections == 2


async def test_nothing_arriving_in_time_is_a_read_timeout() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345")
        await writer.drain()
        await asyncio.sleep(2)

    async with RawServer(serve) as server, \
            opened(pool_for(server.url(), read_timeout_s=0.2)) as pool:
        response = await pool.request("GET", "/version", None)
        with pytest.raises(ReadTimeout):
            await response.read()
        response.release()
        assert pool.open_connections == 0


async def test_refused_connections_are_connect_failures() -> None:
    async with RawServer(lambda r, w: asyncio.sleep(0)) as server:
        url = server.url()
    async with opened(pool_for(url)) as pool:
        with pytest.raises(ConnectFailed):
            await pool.request("GET", "/version", None)


async def test_header_values_that_would_split_the_request_are_refused() -> None:
    async with opened(pool_for("http://127.0.0.1:9")) as pool:
        with pytest.raises(ValueError, match="cannot be sent"):
            await pool.request("GET", "/version", None, [("x-request-id", "a\r\nx-evil: 1")])


def test_only_http_urls_are_accepted() -> None:
    with pytest.raises(ValueError, match="http"):
        pool_for("ftp://example.com")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


async def test_https_upstreams_are_verified_and_named(tls_files: tuple[Path, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Modal serves vLLM over HTTPS by host name: the certificate is checked against the
    system's trust store (here a test CA through SSL_CERT_FILE) and the name is sent (SNI)."""
    cert, key = tls_files
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader) is not None:
            writer.write(answer(b'{"version":"0.32.0"}'))

    async with RawServer(serve, server_ctx) as server:
        # Not trusted: the handshake fails, which is a connect failure (nothing was sent).
        async with opened(pool_for(server.url("https", "localhost"))) as pool:
            with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
                await pool.request("GET", "/version", None)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        client = UpstreamClient(Settings(upstream_url=server.url("https", "localhost"),
                                         auth_enabled=False))
        await client.start()
        try:
            assert (await client.dialect()).version == "0.32.0"
        finally:
            await client.aclose()
        assert f"host: localhost:{server.port}" in server.heads[-1].decode().lower()


async def test_client_errors_map_to_gateway_errors() -> None:
    """Through UpstreamClient: a read timeout is a 504, a connection cut mid-answer a 502."""
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        await asyncio.sleep(2)

    async with RawServer(slow) as server:
        client = UpstreamClient(Settings(upstream_url=server.url(), auth_enabled=False,
                                         upstream_timeout_s=0.2))
        await client.start()
        try:
            with pytest.raises(UpstreamTimeoutError):
                await client.post_json("/v1/chat/completions", {}, {})
        finally:
            await client.aclose()

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial\":")
        await writer.drain()

    async with RawServer(cut) as server:
        client = UpstreamClient(Settings(upstream_url=server.url(), auth_enabled=False))
        await client.start()
        try:
            with pytest.raises(UpstreamError, match="broke mid-answer"):
                await client.post_json("/v1/chat/completions", {}, {})
        finally:
            await client.aclose()


async def test_a_closed_pool_fails_at_once_instead_of_retrying_as_if_vllm_were_booting() -> None:
    pool = pool_for("http://127.0.0.1:9")
    await pool.aclose()
    with pytest.raises(ConnectionBroken, match="closed"):
        await pool.request("GET", "/version", None)


async def test_a_stale_retry_takes_a_new_connection_not_the_next_idle_one() -> None:
    """Idle connections go stale together (the server's keep-alive timer fired for all)."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = True
        while await server.read_request(reader) is not None:
            if not first and server.connections <= 2:
                return  # the keep-alive timer "already fired": closed, request unhandled
            first = False
            await asyncio.sleep(0.05)  # keeps both warm-up requests in flight together
            writer.write(answer(b'{"version":"0.12.0"}'))

    async with RawServer(serve) as server, client_for(server.url()) as client:
        await asyncio.gather(client.get_json("/version"), client.get_json("/version"))
        assert client.pool.open_connections == 2
        assert await client.post_json("/v1/chat/completions", {}, {}) == {"version": "0.12.0"}
        assert server.connections == 3


async def test_a_close_long_after_the_request_is_not_retried() -> None:
    """The server had the POST and worked on it: sending it again would run it twice."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await server.read_request(reader)) is not None:
            if request.startswith(b"POST"):
                await asyncio.sleep(0.5)  # generating, then dropped without a byte
                return
            writer.write(answer(b'{"version":"0.12.0"}'))

    async with RawServer(serve) as server, client_for(server.url()) as client:
        await client.get_json("/version")  # the POST goes on a reused connection
        with pytest.raises(UpstreamError, match="closed the connection"):
            await client.post_json("/v1/chat/completions", {}, {})
        assert sum(head.startswith(b"POST") for head in server.heads) == 1


async def test_sse_data_lines_of_one_event_are_joined() -> None:
    events = (b": keep-alive comment\r\n\r\n"
              b'data: {"a":1}\r\n\r\n'
              b'event: message\nid: 7\ndata:{"b":2}\n\n'
              b'data: {"multi":\ndata: "line"}\n\n'
              b"data: [DONE]")  # the last event cut short of its blank line

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(len(events)):  # a byte per read: lines and events split anywhere
            writer.write(b"1\r\n%s\r\n" % events[i:i + 1])
            await writer.drain()
        writer.write(b"0\r\n\r\n")

    async with RawServer(serve) as server, client_for(server.url()) as client:
        async with client.stream("/v1/chat/completions", {}, {}) as payloads:
            received = [data async for data in payloads]
    assert received == [b'{"a":1}', b'{"b":2}', b'{"multi":\n"line"}', b"[DONE]"]


async def test_an_unsupported_vllm_release_is_an_upstream_error() -> None:
    """A 502 that names the release, not a 500 "internal error" on every request."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader) is not None:
            writer.write(answer(b'{"version":"0.9.1"}'))

    async with RawServer(serve) as server, client_for(server.url()) as client:
        with pytest.raises(UpstreamError, match=r"0\.9\.1 is older than 0\.9\.2"):
            await client.dialect()


async def test_modals_result_url_redirects_are_followed() -> None:
    # Modal answers a web request still running at 150 s with a 303 to a result URL on the
    # same host, which blocks until the answer is ready (or redirects again at 150 s).
    gets = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal gets
        while (request := await server.read_request(reader)) is not None:
            line = request.split(b"\r\n", 1)[0]
            result = b"/v1/chat/completions?__modal_function_call_id=fc-1"
            if line.startswith(b"POST /v1/chat/completions "):
                location = result
            elif line == b"GET " + result + b" HTTP/1.1" and gets == 0:
                gets += 1
                location = server.url().encode() + result  # absolute, as a proxy may send
            elif line == b"POST /v1/elsewhere HTTP/1.1":
                location = b"https://example.com/v1/chat/completions"
            else:
                writer.write(answer(b'{"answer": 42}'))
                continue
            writer.write(b"HTTP/1.1 303 See Other\r\nlocation: %s\r\ncontent-length: 0\r\n\r\n"
                         % location)

    async with RawServer(handler) as server, client_for(server.url()) as client:
        got = await client.post_json("/v1/chat/completions", {"prompt": "x"},
                                     {"x-request-id": "req-1"})
        assert got == {"answer": 42}
        lines = [head.split(b"\r\n", 1)[0] for head in server.heads]
        result = b"GET /v1/chat/completions?__modal_function_call_id=fc-1 HTTP/1.1"
        assert lines == [b"POST /v1/chat/completions HTTP/1.1", result, result]
        assert all(b"x-request-id: req-1" in head for head in server.heads)
        # A redirect anywhere else is not followed: an upstream error, not an empty answer.
        with pytest.raises(UpstreamError, match="303"):
            await client.post_json("/v1/elsewhere", {}, {})
